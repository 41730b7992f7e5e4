"""LocalStorage.put makes a result durable before it returns (issue 18): the worker finishes a
task (success, with the file's link) only after ``put``, so a power loss after the finish must
not lose the file. A unique key (a result's) is written in place: one sync of its data, one of
its folder, no temporary file. A reserved key (`reserve_here`) has its name made and synced
ahead, while its picture is encoded, and only its data synced at `put`."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from seedbed.errors import StorageFull
from seedbed.storage import LocalStorage
from seedbed.storage.base import StorageConflict


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record each fdatasync, fsync (with the path of the file or folder) and rename."""
    calls: list[tuple[str, str]] = []
    real_fdatasync, real_fsync, real_replace = os.fdatasync, os.fsync, os.replace

    def target(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def fdatasync(fd: int) -> None:
        calls.append(("fdatasync", target(fd)))
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        calls.append(("fsync", target(fd)))
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


async def test_put_syncs_the_data_before_the_rename_and_the_folders_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_syncs(monkeypatch)
    root = tmp_path / "files"
    storage = LocalStorage(root)
    await storage.put("results/2026/a.jpg", b"picture", "image/jpeg")

    assert (root / "results/2026/a.jpg").read_bytes() == b"picture"
    kinds = [kind for kind, _ in calls]
    assert kinds[:2] == ["fdatasync", "replace"]
    assert Path(calls[0][1]).name.startswith(".tmp-")  # the data, before its rename
    # after the rename: the file's folder, then the parents of the folders made for it
    assert calls[2:] == [
        ("fsync", str(root / "results/2026")),
        ("fsync", str(root / "results")),
        ("fsync", str(root)),
    ]

    calls.clear()
    await storage.put("results/2026/b.jpg", b"again", "image/jpeg")
    assert [kind for kind, _ in calls] == ["fdatasync", "replace", "fsync"]
    assert calls[2] == ("fsync", str(root / "results/2026"))


@pytest.mark.parametrize("how", ["put", "put_here"])
async def test_a_unique_key_is_written_in_place_synced_then_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    calls = _record_syncs(monkeypatch)
    root = tmp_path / "files"
    storage = LocalStorage(root)
    key = "results/t1_0_abc.jpg"
    if how == "put":
        await storage.put(key, b"picture", "image/jpeg", unique=True)
    else:
        assert storage.put_here(key, b"picture", "image/jpeg") is True
    path = root / key
    assert path.read_bytes() == b"picture"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # as a renamed temporary file is
    # no temporary file and no rename: the data, then the new name's folder (and the one
    # made for it)
    assert calls == [
        ("fdatasync", str(path)),
        ("fsync", str(root / "results")),
        ("fsync", str(root)),
    ]
    assert sorted(p.name for p in (root / "results").iterdir()) == ["t1_0_abc.jpg"]


async def test_a_unique_key_that_exists_is_refused_and_left_alone(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.put("results/t1_0_abc.jpg", b"first", "image/jpeg", unique=True)
    with pytest.raises(StorageConflict):
        await storage.put("results/t1_0_abc.jpg", b"second", "image/jpeg", unique=True)
    with pytest.raises(StorageConflict):
        storage.put_here("results/t1_0_abc.jpg", b"second", "image/jpeg")
    assert (tmp_path / "results/t1_0_abc.jpg").read_bytes() == b"first"


async def test_a_unique_write_that_fails_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full)
    storage = LocalStorage(tmp_path)
    with pytest.raises(StorageFull):
        storage.put_here("results/t1_0_abc.jpg", b"picture", "image/jpeg")
    assert list((tmp_path / "results").iterdir()) == []


def test_a_reserved_key_has_its_name_synced_ahead_and_its_data_at_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_syncs(monkeypatch)
    root = tmp_path / "files"
    storage = LocalStorage(root)
    key = "results/t1_0_abc.jpg"
    reserved = storage.reserve_here(key)
    assert reserved.key == key
    path = root / key
    # the name first (and the folders made for it), on the storage's own thread
    reserved.put(b"picture")
    assert calls == [
        ("fsync", str(root / "results")),
        ("fsync", str(root)),
        ("fdatasync", str(path)),
    ]
    assert path.read_bytes() == b"picture"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reserved.discard()  # once stored, a discard keeps it
    assert path.read_bytes() == b"picture"
    with pytest.raises(RuntimeError, match="already ended"):
        reserved.put(b"again")  # a reservation stores once
    assert sorted(p.name for p in (root / "results").iterdir()) == ["t1_0_abc.jpg"]


def test_a_discarded_reservation_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    made = storage.reserve_here("results/t1_0_abc.jpg")
    made._made.result()  # the file is made ...
    assert (tmp_path / "results/t1_0_abc.jpg").exists()
    made.discard()  # ... and removed at the discard
    assert list((tmp_path / "results").iterdir()) == []
    made.discard()  # twice is once
    with pytest.raises(RuntimeError, match="already ended"):
        made.put(b"picture")
    # discarded at once, while it may still be being made: gone when discard returns
    for n in range(20):
        storage.reserve_here(f"results/t{n}_0_abc.jpg").discard()
    assert list((tmp_path / "results").iterdir()) == []


def test_a_reservation_that_cannot_be_made_fails_at_put_leaving_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_here("results/t1_0_abc.jpg", b"first", "image/jpeg")
    with pytest.raises(StorageConflict):  # the key exists: refused, the file left alone
        storage.reserve_here("results/t1_0_abc.jpg").put(b"second")
    assert (tmp_path / "results/t1_0_abc.jpg").read_bytes() == b"first"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the name cannot be synced: made, then removed
    with pytest.raises(StorageFull):
        storage.reserve_here("results/t2_0_abc.jpg").put(b"picture")
    monkeypatch.undo()
    monkeypatch.setattr(os, "fdatasync", full)  # the data cannot be synced: removed
    with pytest.raises(StorageFull):
        storage.reserve_here("results/t3_0_abc.jpg").put(b"picture")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["t1_0_abc.jpg"]
