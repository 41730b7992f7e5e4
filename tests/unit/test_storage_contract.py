"""One contract for every ``Storage``: local files and S3 (a real SeaweedFS, ``tests/services.py``).

Then what only object storage has: what serving needs (``open``, ``presigned_url``), the URL
form and prefixes.
"""

from __future__ import annotations

import asyncio
import os
import random
import string
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import services
from seedbed.storage import LocalStorage, Storage, StoredFileNotFound
from seedbed.storage.base import LIST_BATCH
from seedbed.storage.s3 import ObjectStoreError, S3Storage, parse_s3_url


def s3_storage(weed: services.SeaweedFS, url: str | None = None) -> S3Storage:
    return S3Storage(
        url or weed.storage_url(),
        endpoint_url=weed.endpoint_url,
        access_key_id=weed.access_key,
        secret_access_key=weed.secret_key,
        region=weed.region,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "files")
    else:
        # asked for here, so that the local runs never start SeaweedFS
        yield s3_storage(request.getfixturevalue("seaweedfs_server"))


def key(name: str = "a.png", space: str = "results") -> str:
    return f"{space}/{uuid.uuid4().hex}/{name}"


async def test_put_then_read(storage: Storage) -> None:
    k = key()
    await storage.put(k, b"\x89PNG some bytes", "image/png")
    assert await storage.read(k) == b"\x89PNG some bytes"


async def test_a_unique_put_then_read(storage: Storage) -> None:
    k = key("t_0_random.jpg")
    await storage.put(k, b"\xff\xd8 a result", "image/jpeg", unique=True)
    assert await storage.read(k) == b"\xff\xd8 a result"


async def test_put_here_stores_where_storing_is_a_local_write(storage: Storage) -> None:
    """Local files are stored on the calling thread; S3 says no (a network round trip, for
    ``put`` on the loop) and stores nothing."""
    k = key("t_0_random.png")
    stored = await asyncio.to_thread(storage.put_here, k, b"\x89PNG here", "image/png")
    assert stored is isinstance(storage, LocalStorage)
    if stored:
        assert await storage.read(k) == b"\x89PNG here"
    else:
        with pytest.raises(StoredFileNotFound):
            await storage.read(k)


async def _listed(storage: Storage, space: str) -> dict[str, float]:
    found: dict[str, float] = {}
    async for batch in storage.list_files(space):
        for name, written in batch:
            assert name not in found
            found[name] = written
    return found


async def test_list_files_names_every_file_of_a_space_and_when_it_was_written(
    storage: Storage,
) -> None:
    results = [f"results/{uuid.uuid4().hex}_{i}_r.png" for i in range(3)]
    deep = key("nested.png")  # a folder inside the space
    upload = key(space="uploads")
    before = time.time()
    for name in [*results, deep, upload]:
        await storage.put(name, b"x", "image/png")
    listed = await _listed(storage, "results")
    assert set(results) | {deep} <= set(listed)
    assert upload not in listed
    for name in [*results, deep]:
        assert before - 5 <= listed[name] <= time.time() + 5, (name, listed[name])
    await storage.delete(results[0])
    assert results[0] not in await _listed(storage, "results")
    with pytest.raises(ValueError):
        await _listed(storage, "../results")


async def test_list_files_starting_lists_one_tasks_results(storage: Storage) -> None:
    task = uuid.uuid4().hex
    mine = {f"results/{task}_{i}_r{i}.png" for i in range(3)}
    # neighbours in key order on both sides, and a name the task's id only begins
    others = [f"results/{task[:-1]}_0_r.png", f"results/{task}0_0_r.png", f"results/{task}"]
    others += [f"results/{task[:-1]}{'f' if task[-1] != 'f' else 'e'}_0_r.png"]
    await asyncio.gather(*(storage.put(n, b"x", "image/png") for n in [*mine, *others]))
    found = [
        key
        async for batch in storage.list_files("results", starting=f"{task}_")
        for key, _ in batch
    ]
    assert sorted(found) == sorted(mine)
    none = [b async for b in storage.list_files("results", starting=f"{uuid.uuid4().hex}_")]
    assert sum(len(batch) for batch in none) == 0


async def test_local_files_under_a_relative_root_list_their_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for root in (Path("."), Path("files")):
        storage = LocalStorage(root)
        await storage.put("results/t1_0_r.png", b"x", "image/png")
        await storage.put("uploads/k/a.png", b"x", "image/png")
        assert set(await _listed(storage, "uploads")) == {"uploads/k/a.png"}
        found = [
            n async for batch in storage.list_files("results", starting="t1_") for n, _ in batch
        ]
        assert found == ["results/t1_0_r.png"]


async def test_list_files_comes_in_batches(storage: Storage) -> None:
    space = "batch" + "".join(random.choices(string.ascii_lowercase, k=8))
    names = {f"{space}/f{i:04d}.png" for i in range(LIST_BATCH + 3)}
    await asyncio.gather(*(storage.put(name, b"x", "image/png") for name in names))
    sizes = [len(batch) async for batch in storage.list_files(space)]
    assert sum(sizes) == len(names) and max(sizes) <= LIST_BATCH and len(sizes) >= 2
    assert set(await _listed(storage, space)) == names


async def test_a_second_put_replaces_the_first(storage: Storage) -> None:
    k = key(space="uploads")
    await storage.put(k, b"first", "image/png")
    await storage.put(k, b"second, longer", "image/jpeg")
    assert await storage.read(k) == b"second, longer"


async def test_large_objects_round_trip(storage: Storage) -> None:
    data = os.urandom(6 * 1024 * 1024)  # over multipart's usual 5 MiB part size
    k = key()
    await storage.put(k, data, "image/png")
    assert await storage.read(k) == data


async def test_empty_objects_round_trip(storage: Storage) -> None:
    k = key()
    await storage.put(k, b"", "image/png")
    assert await storage.read(k) == b""


async def test_reading_a_missing_key_raises_not_found(storage: Storage) -> None:
    with pytest.raises(StoredFileNotFound):
        await storage.read(key())


async def test_delete_removes_and_deleting_again_is_fine(storage: Storage) -> None:
    k = key()
    await storage.put(k, b"x", "image/png")
    await storage.delete(k)
    with pytest.raises(StoredFileNotFound):
        await storage.read(k)
    await storage.delete(k)  # already gone: retention may race a second sweeper
    await storage.delete(key())  # never stored


async def test_keys_are_independent(storage: Storage) -> None:
    folder = f"results/{uuid.uuid4().hex}"
    await storage.put(f"{folder}/0.png", b"zero", "image/png")
    await storage.put(f"{folder}/1.png", b"one", "image/png")
    await storage.delete(f"{folder}/0.png")
    assert await storage.read(f"{folder}/1.png") == b"one"


async def test_concurrent_puts_of_different_keys(storage: Storage) -> None:
    keys = [key(f"{i}.png") for i in range(20)]
    await asyncio.gather(*(storage.put(k, k.encode(), "image/png") for k in keys))
    assert await asyncio.gather(*(storage.read(k) for k in keys)) == [k.encode() for k in keys]


async def test_unicode_and_spaces_in_names(storage: Storage) -> None:
    k = key("café photo (1).png", space="uploads")
    await storage.put(k, b"unicode", "image/png")
    assert await storage.read(k) == b"unicode"


@pytest.mark.parametrize("bad", ["results/../escape.png", "results/a/./b.png", "results//a.png"])
async def test_keys_that_seedbed_never_makes_are_refused(storage: Storage, bad: str) -> None:
    with pytest.raises(StoredFileNotFound):
        await storage.read(bad)
    with pytest.raises(StoredFileNotFound):
        await storage.put(bad, b"x", "image/png")
    with pytest.raises(StoredFileNotFound):
        await storage.delete(bad)


# -- S3 only: serving, URLs, prefixes -------------------------------------------------------


async def test_open_streams_the_object_with_its_size_and_type(
    seaweedfs_server: services.SeaweedFS,
) -> None:
    storage = s3_storage(seaweedfs_server)
    data = os.urandom(3 * 1024 * 1024)
    k = key("r.jpg")
    await storage.put(k, data, "image/jpeg")
    opened = await storage.open(k)
    assert (opened.size, opened.content_type) == (len(data), "image/jpeg")
    assert b"".join([chunk async for chunk in opened.chunks]) == data
    with pytest.raises(StoredFileNotFound):
        await storage.open(key())


async def test_presigned_urls_get_the_object_without_credentials(
    seaweedfs_server: services.SeaweedFS,
) -> None:
    storage = s3_storage(seaweedfs_server)
    k = key("p.png")
    await storage.put(k, b"presigned bytes", "image/png")
    url = await storage.presigned_url(k, 60)
    assert url.startswith(seaweedfs_server.endpoint_url) and "X-Amz-Signature=" in url
    async with httpx.AsyncClient(trust_env=False) as client:
        got = await client.get(url)
        assert got.status_code == 200, got.text
        assert (got.content, got.headers["content-type"]) == (b"presigned bytes", "image/png")
        # the same URL with its signature altered, and the object without one: refused
        tampered = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
        assert (await client.get(tampered)).status_code == 403
        assert (await client.get(url.split("?")[0])).status_code == 403


async def test_presigned_urls_expire(seaweedfs_server: services.SeaweedFS) -> None:
    storage = s3_storage(seaweedfs_server)
    k = key("e.png")
    await storage.put(k, b"short-lived", "image/png")
    url = await storage.presigned_url(k, 1)
    await asyncio.sleep(2.1)
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(url)).status_code == 403


async def test_prefixes_keep_deployments_apart(seaweedfs_server: services.SeaweedFS) -> None:
    prefixes = ["".join(random.choices(string.ascii_lowercase, k=12)) for _ in range(2)]
    one, two = (s3_storage(seaweedfs_server, seaweedfs_server.storage_url(p)) for p in prefixes)
    k = key()
    await one.put(k, b"one's", "image/png")
    with pytest.raises(StoredFileNotFound):
        await two.read(k)
    # in the bucket the object is <prefix>/<key>: a store on the bucket's root finds it there
    root = s3_storage(seaweedfs_server, f"s3://{seaweedfs_server.bucket}")
    assert await root.read(f"{prefixes[0]}/{k}") == b"one's"
    # each lists its own keys, without the prefix
    assert set(await _listed(one, "results")) == {k}
    assert await _listed(two, "results") == {}
    # and one task's results by name, past the prefix
    task = k.split("/")[1]
    mine = f"results/{task}_0_r.png"
    await one.put(mine, b"mine", "image/png")
    await two.put(mine, b"two's", "image/png")
    found = [n async for batch in one.list_files("results", starting=f"{task}_") for n, _ in batch]
    assert found == [mine]


async def test_store_errors_are_connection_errors_without_the_key(
    seaweedfs_server: services.SeaweedFS,
) -> None:
    """The worker retries around a ``ConnectionError`` (``faults``); the key is never in the
    message (an upload's key holds its owner's secret folder)."""
    storage = S3Storage(
        seaweedfs_server.storage_url(),
        endpoint_url=seaweedfs_server.endpoint_url,
        access_key_id=seaweedfs_server.access_key,
        secret_access_key="not the secret",
        region=seaweedfs_server.region,
    )
    k = key(space="uploads")
    for call in (storage.put(k, b"x", "image/png"), storage.read(k), storage.open(k)):
        with pytest.raises(ObjectStoreError) as raised:
            await call
        assert isinstance(raised.value, ConnectionError)
        assert k.split("/")[1] not in str(raised.value)
        assert "PermissionDenied" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://bucket/a/b/", "bucket", "a/b"),
        ("S3://bucket/seedbed", "bucket", "seedbed"),
    ],
)
def test_s3_urls(url: str, bucket: str, prefix: str) -> None:
    location = parse_s3_url(url)
    assert (location.bucket, location.prefix) == (bucket, prefix)


@pytest.mark.parametrize(
    "url",
    [
        "s3:///no-bucket",
        "https://bucket/x",
        "s3://key:secret@bucket/x",
        "s3://host:9000/bucket",
        "s3://bucket/x?region=eu",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
    ],
)
def test_s3_urls_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_url(url)
