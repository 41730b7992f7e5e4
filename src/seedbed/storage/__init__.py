"""Where result and upload files live, behind the small ``Storage`` protocol: local files by
default, or an S3-compatible object store (``s3://BUCKET[/PREFIX]``) shared by every process of
a deployment."""

from __future__ import annotations

from pathlib import Path

from seedbed.storage.base import Storage, StoredFileNotFound
from seedbed.storage.local import LocalStorage
from seedbed.storage.s3 import S3Storage, is_s3_url

__all__ = ["LocalStorage", "S3Storage", "Storage", "StoredFileNotFound", "open_storage"]


def open_storage(
    url: str | None, *, files_dir: Path, s3_endpoint_url: str | None = None
) -> LocalStorage | S3Storage:
    """``s3://BUCKET[/PREFIX]`` → ``S3Storage``; none (the default) → local files in
    ``files_dir``; a local path → local files there."""
    if url is None or url == "":
        return LocalStorage(files_dir)
    if is_s3_url(url):
        return S3Storage(url, endpoint_url=s3_endpoint_url)
    if "://" in url and not url.lower().startswith("file://"):
        raise ValueError(f"unsupported storage URL {url!r}: use s3://BUCKET[/PREFIX] or a path")
    return LocalStorage(Path(url.removeprefix("file://")))
