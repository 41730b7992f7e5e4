"""Files under a directory; the API serves them itself (``GET /files/<key>``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from seedbed.errors import StorageFull
from seedbed.storage.base import LIST_BATCH, StorageConflict, StoredFileNotFound

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "LocalStorage",
    "is_valid_key",
    "segment_problem",
    "space_folder",
]

log = logging.getLogger(__name__)

#: the longest name of one file or folder, in bytes of UTF-8 (Linux's NAME_MAX)
MAX_SEGMENT_BYTES = 255
#: the longest key, in bytes of UTF-8 (well inside PATH_MAX with any data directory)
MAX_KEY_BYTES = 1024

#: the first segment names the space (``results``, ``uploads``)
_SPACE = re.compile(r"^[a-z]+/")
#: characters no segment may hold: control characters (C0, DEL, C1), lone surrogates (not
#: encodable) and the backslash (a separator elsewhere). ``/`` separates segments.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\\ud800-\udfff]")
#: errors that mean the file system is out of space or the quota is used up
_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def segment_problem(segment: str) -> str | None:
    """Why ``segment`` cannot be one folder or file name of a key (``"is empty"``, ...), or
    ``None`` when it can.

    Only what is unsafe or impossible is refused: empty names, ``.`` and ``..`` (they would
    leave the folder), backslashes, control characters and names over 255 bytes. Dots,
    spaces and any other Unicode are fine: keys are percent-encoded in URLs.
    """
    if not segment:
        return "is empty (two '/' in a row, or one at the end)"
    if segment in (".", ".."):
        return "is not allowed ('.' and '..' name no folder or file of their own)"
    found = _FORBIDDEN.search(segment)
    if found is not None:
        char = found.group()
        if char == "\\":
            return "contains a backslash"
        if "\ud800" <= char <= "\udfff":
            return "contains a character that is not valid Unicode"
        return f"contains the control character {char!r}"
    if len(segment.encode()) > MAX_SEGMENT_BYTES:
        return f"is longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def space_folder(space: str) -> str:
    """``space`` (``results``, ``uploads``) checked as the first segment of keys."""
    if not re.fullmatch(r"[a-z]+", space):
        raise ValueError(f"not a storage space: {space!r}")
    return space


def is_valid_key(key: str) -> bool:
    """A key that stays inside the storage root: ``<space>/<segment>/.../<name>``."""
    if not _SPACE.match(key) or _FORBIDDEN.search(key) or len(key.encode()) > MAX_KEY_BYTES:
        return False
    return all(segment_problem(segment) is None for segment in key.split("/")[1:])


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        # made at once: free-space checks (``shutil.disk_usage``) read it before any file
        root.mkdir(parents=True, exist_ok=True)
        # where reserved files are made and their names synced, beside the encodes
        self._makers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seedbed-storage")

    def path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise StoredFileNotFound(key)
        return self.root / key

    async def put(self, key: str, data: bytes, content_type: str, *, unique: bool = False) -> None:
        """Store ``data``; ``StorageFull`` when the disk or quota is full (nothing is left
        behind), ``StorageConflict`` when a folder of the key is a file or the key a folder
        (or, ``unique``, when the file exists already)."""
        path = self.path(key)
        with _translated(key, len(data)):
            await asyncio.to_thread(self._write_new if unique else self._write, path, data)

    def put_here(self, key: str, data: bytes, content_type: str) -> bool:
        path = self.path(key)
        with _translated(key, len(data)):
            self._write_new(path, data)
        return True

    def reserve_here(self, key: str) -> _Reserved:
        # A new name costs a journal commit of its own: made ahead, while the picture is
        # encoded, the sync after the data has only the data left (ext4 here, 60 KB: a new
        # file's write and syncs 2.6 ms, a reserved file's 1.1; docs/benchmarks.md, issue 18).
        path = self.path(key)
        return _Reserved(key, path, self._makers.submit(_make_named, path))

    async def read(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise StoredFileNotFound(key) from exc

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.path(key).unlink)
        except FileNotFoundError:
            pass

    async def list_files(
        self, folder: str, *, starting: str = ""
    ) -> AsyncIterator[list[tuple[str, float]]]:
        # the folder is walked on a thread, a batch at a time: results hold every task's files
        walk = self._walk(os.path.join(self.root, space_folder(folder)), f"{folder}/{starting}")
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(walk, LIST_BATCH))):
            yield batch

    def _walk(self, folder: str, starting: str) -> Iterator[tuple[str, float]]:
        # Streamed (a results folder may hold millions of names): a task's retry looks for
        # its few files by name; only the names that match are checked further. Paths stay
        # strings joined to the root as given, so that a key is the path past the root.
        root = os.path.join(self.root, "")
        pending = [folder]
        while pending:
            try:
                listing = os.scandir(pending.pop())
            except (FileNotFoundError, NotADirectoryError):
                continue
            with listing:
                for entry in listing:
                    key = entry.path[len(root) :].replace(os.sep, "/")
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                        continue
                    if not key.startswith(starting) or not entry.is_file(follow_symlinks=False):
                        continue
                    if not is_valid_key(key):
                        continue
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        yield key, entry.stat(follow_symlinks=False).st_mtime

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Write beside the target and rename: a crash never leaves a half-written file. The
        # data reaches the disk before the rename, and the rename (with any folder made for
        # it) before this returns, so a task that says success after it keeps its file through
        # a power loss, not only a process crash. (ext4 on this machine, 60 KB: write and
        # rename 0.06 ms; with the fdatasync 0.30; with the folder's fsync too 0.48.)
        made = _missing_folders(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            try:
                _write_synced(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sync_names(path, made)

    @staticmethod
    def _write_new(path: Path, data: bytes) -> None:
        # A unique key (a result's random name): nobody reads it before the task's finish
        # names it, so it is written in place, as durably as ``_write`` but with one journal
        # commit instead of two: the new name is part of the commit that the file's fdatasync
        # makes (ext4, XFS), so the folder's fsync after it has little left to do (in the
        # server here 0.15-0.25 ms, against 0.6-0.85 after a rename). A crash mid-write leaves
        # a partial file under a name no task refers to; an error removes it.
        fd, made = _create_new(path)
        try:
            try:
                _write_synced(fd, data)
            finally:
                os.close(fd)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        _sync_names(path, made)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _make_named(path: Path) -> int:
    """Make the new, empty file ``path`` and sync its name (and any folder made for it):
    open for writing, its descriptor returned. Nothing is left behind when this fails."""
    fd, made = _create_new(path)
    try:
        _sync_names(path, made)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


class _Reserved:
    """A result file made ahead by ``LocalStorage.reserve_here`` (``storage.base.Reserved``)."""

    def __init__(self, key: str, path: Path, made: Future[int]) -> None:
        self.key = key
        self._path = path
        self._made = made
        self._lock = threading.Lock()
        self._ended = False

    def put(self, data: bytes) -> None:
        with self._lock:
            if self._ended:
                raise RuntimeError(f"{self.key}: reservation already ended")
            self._ended = True
        with _translated(self.key, len(data)):
            fd = self._made.result()  # raises what making it met: the file is not there
            try:
                _write_synced(fd, data)
            except BaseException:
                self._path.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)

    def discard(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if self._made.cancel():
            return  # never begun
        try:
            fd = self._made.result()  # being made: a wait of one sync at most
        except Exception:
            return  # never made
        os.close(fd)
        self._path.unlink(missing_ok=True)


@contextlib.contextmanager
def _translated(key: str, size: int) -> Iterator[None]:
    """A failed write as storage's errors: ``StorageFull``, ``StorageConflict``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            # the key is not logged: an upload's key holds its owner's secret folder
            log.warning("storage is full: %d bytes not stored (%s)", size, exc.strerror)
            raise StorageFull() from exc
        if isinstance(exc, FileExistsError | NotADirectoryError | IsADirectoryError):
            raise StorageConflict(key) from exc
        raise


def _create_new(path: Path) -> tuple[int, list[Path]]:
    """Create ``path`` (it must not exist) and any folder it needs: its descriptor, open for
    writing, and the folders made (deepest first)."""
    made = _missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600), made


def _write_synced(fd: int, data: bytes) -> None:
    """Write all of ``data`` at ``fd`` and sync it: the file's data and size, not its times
    (fsync where the platform has no fdatasync)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    getattr(os, "fdatasync", os.fsync)(fd)


def _sync_names(path: Path, made: Sequence[Path]) -> None:
    """Make ``path``'s name durable, and the names of the folders ``made`` for it."""
    for folder in (path.parent, *(m.parent for m in made)):
        _sync_folder(folder)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` will make for ``folder``, deepest first."""
    missing: list[Path] = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` durable (a rename or a new entry is the folder's data)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
