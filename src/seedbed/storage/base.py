"""The ``Storage`` protocol: put, read and delete files by key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["LIST_BATCH", "Reserved", "Storage", "StorageConflict", "StoredFileNotFound"]

#: files per batch of ``Storage.list_files`` (S3 lists at most 1,000 per request)
LIST_BATCH = 1000


class StoredFileNotFound(Exception):
    """No file is stored under this key (never stored, or deleted by retention)."""


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str, *, unique: bool = False) -> None:
        """Store ``data`` under ``key`` atomically (readers see all of it or nothing).

        ``unique``: ``key`` is a fresh random name that nothing refers to until this returns
        and that nobody else writes (a result's): storage may then write it in place, as
        nobody can read it half-written.
        """

    def put_here(self, key: str, data: bytes, content_type: str) -> bool:
        """``put(key, data, content_type, unique=True)`` on the calling thread, where storing
        is a local write: a post-processing thread stores the file it has just encoded
        without a hop to another thread. False, having done nothing, where storing is network
        I/O (S3): ``put`` it instead. Raises as ``put`` does."""

    def reserve_here(self, key: str) -> Reserved | None:
        """Begin ``put_here`` of the unique ``key`` before its data exists (on any thread;
        it does not block): where storing is a local write, the file is made and its
        name synced in the background, beside the encode that makes its data, so that
        ``Reserved.put`` has only the data to write and sync. None where storing is network
        I/O (S3). A reservation ends with ``put`` or ``discard``."""

    async def read(self, key: str) -> bytes:
        """Raise ``StoredFileNotFound`` when absent."""

    async def delete(self, key: str) -> None: ...

    def list_files(
        self, folder: str, *, starting: str = ""
    ) -> AsyncIterator[list[tuple[str, float]]]:
        """The files stored under ``folder`` (a space, the keys' first segment: ``results``),
        in batches: each file's key and when it was written (Unix seconds). Names that are not
        valid keys (which seedbed could neither have made nor delete) are left out.
        ``starting``: only keys that start with ``folder/starting`` (one task's results)."""


class Reserved(Protocol):
    """A file begun by ``Storage.reserve_here``: its name exists and is being synced."""

    key: str

    def put(self, data: bytes) -> None:
        """Write ``data`` and make it durable, on the calling thread (``put_here``'s promise).
        Raises as ``put`` does; the file is then removed (the key is not used again)."""

    def discard(self) -> None:
        """Remove the file unless ``put`` stored it (an output that failed, was canceled or
        took another key). Where the file is still being made, waits for that (one sync)."""


class StorageConflict(Exception):
    """A folder of the key is already a file, or the key itself is already a folder."""
