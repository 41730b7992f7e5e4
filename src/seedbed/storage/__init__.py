"""Where result files live: local files by default, behind the small ``Storage`` protocol."""

from __future__ import annotations

from seedbed.storage.base import Storage, StoredFileNotFound
from seedbed.storage.local import LocalStorage

__all__ = ["LocalStorage", "Storage", "StoredFileNotFound"]
