"""The key and flag caches (``api.context``) and their refresh ahead of expiry, on real stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from seedbed import admin_changes
from seedbed.api import context
from seedbed.api.context import FlagsCache, KeyCache, refresh_caches
from seedbed.config import Settings
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


async def test_a_key_forgotten_during_its_read_is_read_again(store: Store) -> None:
    """An announcement that arrives while a request reads the key: what that read found (the
    old record, perhaps) is not kept, so the next request reads the change."""
    keys = KeyCache(store, LONG)
    entered, go_on = asyncio.Event(), asyncio.Event()
    read = store.key_by_hash

    async def slow_read(key_hash: str) -> object:
        found = await read(key_hash)  # read before the revocation below
        entered.set()
        await go_on.wait()
        return found

    store.key_by_hash = slow_read  # type: ignore[method-assign,assignment]
    reading = asyncio.create_task(keys.get("h1"))
    await entered.wait()
    await store.revoke_key("k1")
    admin_changes.apply(admin_changes.key_changed("k1"), keys, FlagsCache(store, LONG))
    go_on.set()
    old = await reading
    assert old is not None and not old.revoked  # that request raced the change
    store.key_by_hash = read  # type: ignore[method-assign]
    again = await keys.get("h1")
    assert again is not None and again.revoked


async def test_an_announcement_drops_what_it_names(store: Store) -> None:
    keys, flags = KeyCache(store, LONG), FlagsCache(store, LONG)
    assert await keys.get("h1") is not None and await keys.get("h2") is not None
    await flags.get()
    await store.revoke_key("k1")
    await store.revoke_key("k2")
    await store.set_maintenance(True)
    admin_changes.apply(admin_changes.key_changed("k1"), keys, flags)
    one, two = await keys.get("h1"), await keys.get("h2")
    assert one is not None and one.revoked
    assert two is not None and not two.revoked  # not named: still cached
    assert not (await flags.get()).maintenance
    admin_changes.apply(admin_changes.FLAGS, keys, flags)
    assert (await flags.get()).maintenance
    await store.set_maintenance(False)
    admin_changes.apply("", keys, flags)  # a listener that reconnected: everything
    two = await keys.get("h2")
    assert two is not None and two.revoked and not (await flags.get()).maintenance


async def test_announcements_cross_processes_on_one_host_as_datagrams(
    store: Store, tmp_path: Path
) -> None:
    """A server's socket in run/admin/ hears the CLI's announcement; the announcer skips its
    own socket (a console change is applied in its process directly)."""
    settings = Settings(data_dir=tmp_path)
    heard: list[bytes] = []
    server = admin_changes.sender(settings)
    server.listen(on_message=heard.append)
    try:
        assert list((tmp_path / "run" / "admin").glob("*.sock"))
        await admin_changes.announce(store, server, "flags")  # its own: not sent to itself
        cli = admin_changes.sender(settings)
        await admin_changes.announce(store, cli, admin_changes.key_changed("k1"))
        cli.close()
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.01)
        assert heard == [b"key:k1"]
    finally:
        server.close()
