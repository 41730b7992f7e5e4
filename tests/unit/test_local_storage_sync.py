"""LocalStorage.put makes a result durable before it returns (issue 18): the worker finishes a
task (success, with the file's link) only after ``put``, so a power loss after the finish must
not lose the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seedbed.storage import LocalStorage


async def test_put_syncs_the_data_before_the_rename_and_the_folders_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
