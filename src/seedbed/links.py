"""The URLs seedbed issues for its files: storage keys, signed download links, own-URL parsing.

Every file is served at ``<base>/files/<key>``, where the key carries 128 random bits
(results: ``results/<taskId>_<i>_<random>.<ext>``) or a per-API-key secret segment (uploads:
``uploads/<segment>/<uploadPath>/<fileName>``), so knowing a task id or an upload's name does
not reveal its URL. ``POST /api/v1/common/download-url`` turns such a URL into a link that is
also signed and expires (``?expires=<unix s>&signature=<hex>``), an HMAC with the server
secret. Every replica of a deployment must hold the same secret (a link signed by one is
followed through another), so it comes from, in order: the ``server_secret`` setting; on
PostgreSQL, the database (made once by the first process, ``Store.server_secret``); on SQLite,
``<data_dir>/server-secret`` (made at first start, mode 0600), as it always has.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from seedbed.storage.local import is_valid_key

__all__ = [
    "RESULTS",
    "SECRET_FILE",
    "UPLOADS",
    "Links",
    "OwnUrl",
    "file_path",
    "load_or_create_secret",
    "parse_secret",
]

RESULTS = "results/"
UPLOADS = "uploads/"
SECRET_FILE = "server-secret"
_FILES_PATH = re.compile(r"^/files/(?P<key>.+)$")


def file_path(key: str) -> str:
    """``/files/<key>``, the key percent-encoded: an upload's folders and name may hold spaces,
    ``#``, ``?``, ``%`` or any Unicode. Results' keys have none of these and come out as they are.
    """
    return "/files/" + quote(key, safe="/")


def load_or_create_secret(data_dir: Path) -> bytes:
    """The server secret: 32 random bytes in ``<data_dir>/server-secret``, made once (0600).

    Created with ``O_EXCL``, so two processes starting at once agree on one secret: the loser
    of the race reads the winner's file.
    """
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    for _ in range(50):
        text = path.read_text().strip()
        if len(text) == 64:  # a racing creator may not have written it yet
            return bytes.fromhex(text)
        time.sleep(0.01)
    raise RuntimeError(f"{path} does not hold a server secret (64 hex characters)")


def parse_secret(value: str) -> bytes:
    """The ``server_secret`` setting: 64 hex characters (``openssl rand -hex 32``)."""
    text = value.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != 32:
        raise ValueError("server_secret must be 64 hex characters (e.g. `openssl rand -hex 32`)")
    return secret


@dataclass(frozen=True)
class OwnUrl:
    """A URL of this server's file space: its storage key and signature, if it has one."""

    key: str
    expires: int | None
    signature: str | None


class Links:
    """Signing and reading the URLs of this server's files."""

    def __init__(self, secret: bytes | None = None) -> None:
        #: None until the store is open, where the secret lives in the database
        self._key = secret

    @property
    def ready(self) -> bool:
        return self._key is not None

    def set_secret(self, secret: bytes) -> None:
        """The secret, once read from the store (the app's start-up, before any request)."""
        self._key = secret

    @property
    def _secret(self) -> bytes:
        if self._key is None:
            raise RuntimeError("the server secret is not loaded yet")
        return self._key

    def upload_segment(self, key_id: str) -> str:
        """The secret path segment of an API key's uploads: stable (so the same fileName
        overwrites), unguessable without the server secret."""
        return hmac.new(self._secret, f"uploads:{key_id}".encode(), hashlib.sha256).hexdigest()[:32]

    def _signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, base_url: str, key: str, expires: int) -> str:
        """``<base>/files/<key>?expires=<Unix s>&signature=<hex>`` (the key percent-encoded,
        the signature over the key itself)."""
        signature = self._signature(key, expires)
        return f"{base_url}{file_path(key)}?expires={expires}&signature={signature}"

    def signature_valid(self, key: str, expires: int, signature: str, now: float) -> bool:
        """A signature this server made for ``key`` and ``expires``, not yet expired."""
        if now > expires:
            return False
        return hmac.compare_digest(self._signature(key, expires), signature)

    def check_query(self, key: str, query: Mapping[str, str], now: float) -> bool | None:
        """A request's download-link parameters for ``key``: None when it carries none (a
        plain URL), True for a valid, unexpired signature, False for anything else."""
        if "signature" not in query and "expires" not in query:
            return None
        expires = query.get("expires", "")
        return expires.isdecimal() and self.signature_valid(
            key, int(expires), query.get("signature", ""), now
        )

    @staticmethod
    def parse(url: str, *, origin: str | None = None) -> OwnUrl | None:
        """The key of a URL in this server's file space (``/files/results/...`` or
        ``/files/uploads/...``), or None. With ``origin``, the URL must also start with it."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        if origin is not None:
            own = urlsplit(origin)
            if (parts.scheme, parts.netloc.lower()) != (own.scheme, own.netloc.lower()):
                return None
            prefix = own.path.rstrip("/")
            if prefix:
                if not parts.path.startswith(prefix + "/"):
                    return None
                parts = parts._replace(path=parts.path[len(prefix) :])
        match = _FILES_PATH.match(parts.path)
        if match is None:
            return None
        try:
            key = unquote(match["key"], errors="strict")
        except UnicodeDecodeError:
            return None
        if not key.startswith((RESULTS, UPLOADS)) or not is_valid_key(key):
            return None
        expires: int | None = None
        signature: str | None = None
        for pair in parts.query.split("&") if parts.query else []:
            name, _, value = pair.partition("=")
            if name == "expires" and value.isdecimal():
                expires = int(value)
            elif name == "signature":
                signature = value
        return OwnUrl(key=key, expires=expires, signature=signature)
