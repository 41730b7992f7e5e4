"""Files under a directory; the API serves them itself (``GET /files/<key>``)."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path

from seedbed.storage.base import StoredFileNotFound

__all__ = ["LocalStorage", "is_valid_key"]

# Keys are made by seedbed itself; the pattern keeps a key read from a URL inside the root.
_KEY = re.compile(r"^[a-z]+(?:/[A-Za-z0-9_-]+)*/[A-Za-z0-9_-]+\.[a-z0-9]{1,5}$")


def is_valid_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key)) and ".." not in key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise StoredFileNotFound(key)
        return self.root / key

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write, self.path(key), data)

    async def read(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except FileNotFoundError as exc:
            raise StoredFileNotFound(key) from exc

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.path(key).unlink)
        except FileNotFoundError:
            pass

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Write beside the target and rename: a crash never leaves a half-written file.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
