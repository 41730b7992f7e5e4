"""Files in an S3-compatible object store (AWS S3, R2, MinIO, Garage, SeaweedFS): ``s3://BUCKET[/PREFIX]``.

Every process of a deployment (API replicas, workers on other hosts) writes results and uploads
to the same bucket, so any replica can answer for any file. The client is obstore (Rust's
``object_store``): in ``bench/s3_bench.py`` it was the fastest of boto3, aioboto3 and obstore for
large and small objects and for presigning, imports in a twentieth of their time, and needs no
thread: its calls are awaited on the event loop (``docs/dependencies.md``).

Credentials and region come from the standard variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``; on AWS also instance and
container roles), read by obstore itself; ``endpoint_url`` (``SEEDBED_S3_ENDPOINT_URL``) names
a store other than AWS. The bucket must exist: seedbed never creates or deletes buckets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from seedbed.storage.base import LIST_BATCH, Reserved, StoredFileNotFound
from seedbed.storage.local import is_valid_key, space_folder

if TYPE_CHECKING:
    from obstore.store import S3Config, S3Store

__all__ = [
    "ObjectStoreError",
    "S3Location",
    "S3Object",
    "S3Storage",
    "is_s3_url",
    "parse_s3_url",
]


def is_s3_url(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    """Where seedbed's keys live in the store: ``<prefix>/<key>`` in ``bucket``."""

    bucket: str
    prefix: str = ""

    def object_name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://BUCKET[/PREFIX]`` → its bucket and prefix (no leading or trailing ``/``)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise ValueError(f"not an S3 storage URL (s3://BUCKET[/PREFIX]): {url!r}")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        # credentials or an endpoint in the URL would end up in logs: they have their own
        # settings (AWS_* variables, SEEDBED_S3_ENDPOINT_URL)
        raise ValueError(f"an S3 storage URL is s3://BUCKET[/PREFIX], nothing more: {url!r}")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError(f"the prefix of {url!r} has an empty, '.' or '..' segment")
    return S3Location(bucket=parts.netloc, prefix=prefix)


@dataclass
class S3Object:
    """An object opened for serving: its size and type, and its bytes as they arrive."""

    size: int
    content_type: str | None
    chunks: AsyncIterator[bytes]


class S3Storage:
    """The ``Storage`` protocol on one bucket (and prefix), plus what serving files needs:
    ``open`` (stream an object through the server) and ``presigned_url`` (send the client to
    the store directly)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str | None = None,
    ) -> None:
        """Credentials and region given here win over the environment's (tests pass them)."""
        # No ``root`` attribute, unlike LocalStorage: code that sees one takes it for a folder
        # (the health monitor's free-space check).
        self.location = parse_s3_url(url)
        config: S3Config = {}
        if access_key_id is not None:
            config["access_key_id"] = access_key_id
        if secret_access_key is not None:
            config["secret_access_key"] = secret_access_key
        if region is not None:
            config["region"] = region
        if endpoint_url:
            config["endpoint"] = endpoint_url.rstrip("/")
            # Path-style addressing (endpoint/bucket/key): what every S3-compatible server takes.
            config["virtual_hosted_style_request"] = False
        self._store = _build_store(self.location.bucket, config)

    def _name(self, key: str) -> str:
        # The same rule as local files: URLs can name only keys seedbed could have made.
        if not is_valid_key(key):
            raise StoredFileNotFound(key)
        return self.location.object_name(key)

    async def put(self, key: str, data: bytes, content_type: str, *, unique: bool = False) -> None:
        """One PUT: S3 makes it visible whole or not at all (``unique`` changes nothing)."""
        import obstore

        name = self._name(key)
        with _translated("PUT", key):
            await obstore.put_async(
                self._store, name, data, attributes={"Content-Type": content_type}
            )

    def put_here(self, key: str, data: bytes, content_type: str) -> bool:
        return False  # a network round trip: ``put`` it on the loop

    def reserve_here(self, key: str) -> Reserved | None:
        return None  # an object appears whole with its PUT: nothing to make ahead

    async def read(self, key: str) -> bytes:
        import obstore

        name = self._name(key)
        with _translated("GET", key):
            result = await obstore.get_async(self._store, name)
            return bytes(await result.bytes_async())

    async def delete(self, key: str) -> None:
        """Absent already is fine (S3's DELETE of a missing key succeeds too)."""
        import obstore

        name = self._name(key)
        with contextlib.suppress(StoredFileNotFound), _translated("DELETE", key):
            await obstore.delete_async(self._store, name)

    async def list_files(
        self, folder: str, *, starting: str = ""
    ) -> AsyncIterator[list[tuple[str, float]]]:
        import obstore

        prefix = self.location.object_name(space_folder(folder))
        skip = len(self.location.prefix) + 1 if self.location.prefix else 0
        # S3 lists in key order, its prefixes whole segments: names that start with
        # ``starting`` are listed from just before the first of them, up to the first that
        # does not (one request for a task's few results, not a list of every task's)
        begin = f"{folder}/{starting}"
        offset = self.location.object_name(begin) if starting else None
        with _translated("LIST", folder):
            async for chunk in obstore.list(
                self._store, prefix, offset=offset, chunk_size=LIST_BATCH
            ):
                found = [(meta["path"][skip:], meta["last_modified"]) for meta in chunk]
                batch = [(key, when.timestamp()) for key, when in found if is_valid_key(key)]
                if starting and any(not key.startswith(begin) for key, _ in found):
                    yield [(key, when) for key, when in batch if key.startswith(begin)]
                    return
                yield batch

    async def open(self, key: str) -> S3Object:
        """The object's size and type, and its bytes in chunks; ``StoredFileNotFound`` when
        absent. Read the chunks to the end (or close them) to free the connection."""
        import obstore

        name = self._name(key)
        with _translated("GET", key):
            result = await obstore.get_async(self._store, name)
        content_type = result.attributes.get("Content-Type")
        return S3Object(
            size=int(result.meta["size"]),
            content_type=str(content_type) if content_type else None,
            chunks=_chunks(result, key),
        )

    async def presigned_url(self, key: str, expires_in: float) -> str:
        """A URL of the store that GETs ``key`` for ``expires_in`` seconds, without
        credentials. Computed locally (no request): whether the object exists is not checked."""
        import obstore

        name = self._name(key)
        with _translated("sign", key):
            url = await obstore.sign_async(self._store, "GET", name, timedelta(seconds=expires_in))
        return str(url)


class ObjectStoreError(ConnectionError):
    """The object store refused a request or could not be reached (credentials, network, its
    own errors). A ``ConnectionError``: the worker retries around it instead of failing the
    task (``faults.is_infrastructure_fault``). The message names the operation and the kind
    of error, never the key: an upload's key holds its owner's secret folder, and readiness
    answers repeat the message."""


@contextlib.contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    from obstore.exceptions import BaseError, NotFoundError

    try:
        yield
    except (FileNotFoundError, NotFoundError) as exc:
        raise StoredFileNotFound(key) from exc
    except BaseError as exc:
        raise ObjectStoreError(f"object store {operation} failed: {type(exc).__name__}") from exc


async def _chunks(result: Any, key: str) -> AsyncIterator[bytes]:
    with _translated("GET", key):
        async for chunk in result:
            yield bytes(chunk)


def _build_store(bucket: str, config: S3Config) -> S3Store:
    """What ``config`` leaves out comes from the environment (variables, instance roles)."""
    try:
        from obstore.store import S3Store
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError("s3:// storage needs the s3 extra: pip install 'seedbed[s3]'") from exc
    # Stores on a private network (MinIO, SeaweedFS) are often plain HTTP: the operator named
    # the scheme, so it is allowed.
    plain_http = config.get("endpoint", "").lower().startswith("http://")
    return S3Store(
        bucket, config=config, client_options={"allow_http": True} if plain_http else None
    )
