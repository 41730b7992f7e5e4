"""The ``Storage`` protocol: put, read and delete files by key."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Storage", "StorageConflict", "StoredFileNotFound"]


class StoredFileNotFound(Exception):
    """No file is stored under this key (never stored, or deleted by retention)."""


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` atomically (readers see all of it or nothing)."""

    async def read(self, key: str) -> bytes:
        """Raise ``StoredFileNotFound`` when absent."""

    async def delete(self, key: str) -> None: ...


class StorageConflict(Exception):
    """A folder of the key is already a file, or the key itself is already a folder."""
