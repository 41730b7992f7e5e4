"""The key and flag caches (``api.context``) and their refresh ahead of expiry, on real stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from seedbed.api import context
from seedbed.api.context import FlagsCache, KeyCache, refresh_caches
from seedbed.store import Store, open_store
from seedbed.store.memory import MemoryStore
from seedbed.tasks import Flags, NewKey

#: a cache that would not expire during a test: only a refresh can change what it holds
LONG = 3600.0


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store
    if request.param == "memory":
        opened = MemoryStore()
    else:
        opened = open_store(f"sqlite:///{tmp_path / 'seedbed.db'}")
    await opened.open()
    await opened.create_key(NewKey(id="k1", name="alice", key_hash="h1"))
    await opened.create_key(NewKey(id="k2", name="bob", key_hash="h2"))
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_key_in_use_is_refreshed_ahead_of_its_expiry(store: Store) -> None:
    keys = KeyCache(store, LONG)
    first = await keys.get("h1")
    assert first is not None and not first.revoked
    await store.revoke_key("k1")  # as another process (the CLI) would
    again = await keys.get("h1")
    assert again is not None and not again.revoked  # young in the cache: not read again
    await keys.refresh()
    refreshed = await keys.get("h1")
    assert refreshed is not None and refreshed.revoked


async def test_only_keys_asked_for_lately_are_refreshed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyCache(store, LONG)
    assert await keys.get("h1") is not None
    assert await keys.get("no such hash") is None
    await store.revoke_key("k1")
    await store.create_key(NewKey(id="k3", name="carol", key_hash="no such hash"))
    monkeypatch.setattr(context, "REFRESH_WHILE_USED_S", 0.0)  # nothing counts as in use
    await keys.refresh()
    stale = await keys.get("h1")
    assert stale is not None and not stale.revoked
    monkeypatch.setattr(context, "REFRESH_WHILE_USED_S", 60.0)
    await keys.refresh()
    # the key in use is read again; a hash that named no key is not (a stranger's guesses
    # are not re-read every period): it is read when it expires, or asked for fresh
    refreshed = await keys.get("h1")
    assert refreshed is not None and refreshed.revoked
    assert await keys.get("no such hash") is None
    assert await keys.get("no such hash", fresh=True) is not None


async def test_a_refresh_keeps_a_newer_read(store: Store) -> None:
    """A read made (``fresh``) while a refresh was under way is not replaced by the
    refresh's older one."""
    keys = KeyCache(store, LONG)
    assert await keys.get("h1") is not None
    entered, go_on = asyncio.Event(), asyncio.Event()
    read_many = store.keys_by_hash

    async def slow_read(hashes: list[str]) -> object:
        found = await read_many(hashes)  # read before the revocation below
        entered.set()
        await go_on.wait()
        return found

    store.keys_by_hash = slow_read  # type: ignore[method-assign,assignment]
    refreshing = asyncio.create_task(keys.refresh())
    await entered.wait()
    await store.revoke_key("k1")
    fresh = await keys.get("h1", fresh=True)
    assert fresh is not None and fresh.revoked
    go_on.set()
    await refreshing
    kept = await keys.get("h1")
    assert kept is not None and kept.revoked


async def test_flags_in_use_are_refreshed_and_an_invalidation_wins(store: Store) -> None:
    flags = FlagsCache(store, LONG)
    assert (await flags.get()) == Flags()
    await store.set_maintenance(True)
    assert not (await flags.get()).maintenance  # young: not read again
    await flags.refresh()
    assert (await flags.get()).maintenance
    # an invalidation (this process changed them) during a refresh: the refresh's value,
    # read before the change, is not kept over the read the invalidation asks for
    entered, go_on = asyncio.Event(), asyncio.Event()
    read = store.flags

    async def slow_flags() -> Flags:
        value = await read()
        entered.set()
        await go_on.wait()
        return value

    store.flags = slow_flags  # type: ignore[method-assign]
    refreshing = asyncio.create_task(flags.refresh())
    await entered.wait()
    await store.set_maintenance(False)
    flags.invalidate()
    go_on.set()
    await refreshing
    store.flags = read  # type: ignore[method-assign]
    assert not (await flags.get()).maintenance


async def test_the_refresh_loop_keeps_caches_in_use_current(store: Store) -> None:
    keys, flags = KeyCache(store, LONG), FlagsCache(store, LONG)
    assert await keys.get("h2") is not None
    await flags.get()
    loop = asyncio.create_task(refresh_caches(keys, flags, 0.01))
    try:
        await store.revoke_key("k2")
        await store.set_model_enabled("bytedance/seedream", False)
        async with asyncio.timeout(5):
            while True:
                key = await keys.get("h2")
                assert key is not None
                switched = (await flags.get()).disabled_models
                if key.revoked and "bytedance/seedream" in switched:
                    break
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
