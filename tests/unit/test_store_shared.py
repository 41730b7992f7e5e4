"""The store methods replicas share (issue 16): rate limits, the server secret, exclusive runs.

Part of the store contract: the single-store tests run on the memory store, SQLite and
PostgreSQL (the ``store`` fixture of ``test_store_contract``); the tests of two store objects
on one database (two replicas) run on SQLite and PostgreSQL, the databases processes share.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import test_store_contract as contract
from test_store_contract import Clock

from seedbed.store import Store
from seedbed.store.sql import SqlStore

# the contract suite's fixtures: a store of each kind (memory, SQLite, PostgreSQL), its clock
clock = contract.clock
store = contract.store


@pytest.fixture(params=["sqlite", "postgres"])
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[tuple[Store, Store]]:
    """Two store objects on one database, as two replicas have."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'seedbed.db'}"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    first, second = SqlStore(url, clock=clock), SqlStore(url, clock=clock)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_rate_limit_allows_a_burst_then_says_how_long_to_wait(
    store: Store, clock: Clock
) -> None:
    assert [await store.rate_limit_hit("create:k1", limit=3, window=10) for _ in range(3)] == [
        0.0
    ] * 3
    wait = await store.rate_limit_hit("create:k1", limit=3, window=10)
    # one call's interval (10 s / 3) must pass before the next is allowed
    assert wait == pytest.approx(10 / 3, abs=0.01)
    # another bucket is not affected
    assert await store.rate_limit_hit("create:k2", limit=3, window=10) == 0.0
    clock.advance(wait - 0.05)
    assert await store.rate_limit_hit("create:k1", limit=3, window=10) > 0
    clock.advance(0.06)
    assert await store.rate_limit_hit("create:k1", limit=3, window=10) == 0.0
    # a whole window later the full burst is back
    clock.advance(10)
    for _ in range(3):
        assert await store.rate_limit_hit("create:k1", limit=3, window=10) == 0.0
    assert await store.rate_limit_hit("create:k1", limit=0, window=10) == 10


async def test_two_replicas_share_one_rate_limit(
    two_stores: tuple[Store, Store], clock: Clock
) -> None:
    first, second = two_stores
    verdicts = await asyncio.gather(
        *(
            (first if i % 2 else second).rate_limit_hit("create:k", limit=20, window=10)
            for i in range(30)
        )
    )
    assert sum(1 for wait in verdicts if wait == 0) == 20
    clock.advance(0.5)  # one interval (10 s / 20): one more call, from either
    assert await second.rate_limit_hit("create:k", limit=20, window=10) == 0
    assert await first.rate_limit_hit("create:k", limit=20, window=10) > 0


async def test_the_server_secret_is_made_once(store: Store) -> None:
    secret = await store.server_secret()
    assert len(secret) == 32
    assert await store.server_secret() == secret


async def test_replicas_starting_at_once_agree_on_one_secret(
    two_stores: tuple[Store, Store],
) -> None:
    first, second = two_stores
    secrets = await asyncio.gather(*(s.server_secret() for s in (first, second) * 4))
    assert len(set(secrets)) == 1 and len(secrets[0]) == 32


async def test_exclusive_has_one_holder_at_a_time(store: Store) -> None:
    async with store.exclusive("retention") as mine:
        assert mine
        async with store.exclusive("retention") as again:
            assert not again
        async with store.exclusive("other") as other:
            assert other
    async with store.exclusive("retention") as mine:
        assert mine


async def test_exclusive_across_replicas(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    async with first.exclusive("retention") as mine:
        assert mine
        async with second.exclusive("retention") as theirs:
            assert not theirs
    async with second.exclusive("retention") as theirs:
        assert theirs
