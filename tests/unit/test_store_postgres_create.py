"""PostgreSQL's createTask path and connection pool (issue 16, createTask throughput).

A create without an idempotency key is one statement outside a transaction block, so the
key's row is locked only while PostgreSQL runs it; the pool does no ping round trips and
replaces a connection the server closed before using it. These run on a real PostgreSQL
(``postgres_server`` from ``tests/services.py``); the contract suite covers the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event
from test_store_contract import add_key, new_task

from seedbed.store import CreateRefused
from seedbed.store.sql import SqlStore


@pytest.fixture
async def pg(postgres_server: Any) -> AsyncIterator[tuple[SqlStore, str]]:
    url = postgres_server.new_database()
    store = SqlStore(url)
    await store.open()
    try:
        yield store, url
    finally:
        await store.close()


def _statements(store: SqlStore) -> list[tuple[str, str | None]]:
    """The statements the store sends from now on, each with its connection's isolation
    level (``AUTOCOMMIT``: no BEGIN and no COMMIT are sent around it)."""
    engine = store._db._engine.sync_engine  # type: ignore[attr-defined]
    sent: list[tuple[str, str | None]] = []

    def note(conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sent.append((statement, conn.get_execution_options().get("isolation_level")))

    event.listen(engine, "before_cursor_execute", note)
    return sent


async def test_a_create_is_one_statement_outside_a_transaction(
    pg: tuple[SqlStore, str],
) -> None:
    store, _ = pg
    await add_key(store, credits="10")
    sent = _statements(store)
    task = await store.create_task(new_task(reserve="4"), open_task_cap=10)
    assert len(sent) == 1, sent
    statement, isolation = sent[0]
    assert statement.lstrip().startswith("WITH hold AS")
    assert isolation == "AUTOCOMMIT"  # the statement is its own transaction
    key = await store.get_key("k1")
    assert key is not None and key.balance == Decimal(6) and key.held == Decimal(4)
    ledger = await store.ledger("k1")
    assert [(r["kind"], r["task_id"]) for r in ledger][-1] == ("reserve", task.id)
    # a refusal inserts nothing and names its reason, as the contract orders them
    with pytest.raises(CreateRefused) as refused:
        await store.create_task(new_task(reserve="7"), open_task_cap=10)
    assert refused.value.reason == "credits"
    with pytest.raises(CreateRefused) as capped:
        await store.create_task(new_task(reserve="1"), open_task_cap=1)
    assert capped.value.reason == "open_tasks"
    assert len(await store.ledger("k1")) == len(ledger)


async def test_concurrent_creates_of_one_key_never_overspend(pg: tuple[SqlStore, str]) -> None:
    store, _ = pg
    await add_key(store, credits="50")

    async def one() -> str:
        try:
            await store.create_task(new_task(reserve="1"), open_task_cap=1_000)
            return "ok"
        except CreateRefused as exc:
            return exc.reason

    outcomes = await asyncio.gather(*(one() for _ in range(120)))
    assert outcomes.count("ok") == 50 and outcomes.count("credits") == 70
    key = await store.get_key("k1")
    assert key is not None and key.balance == 0 and key.held == Decimal(50)
    assert key.open_tasks == 50


async def test_connections_the_server_closed_are_replaced_before_use(
    pg: tuple[SqlStore, str], postgres_server: Any
) -> None:
    """Without a ping per checkout: a PostgreSQL restart ends every pooled connection, and
    the next operations must not fail on one of them."""
    store, url = pg
    await add_key(store, credits="10")
    # fill the pool with several connections
    await asyncio.gather(*(store.get_key("k1") for _ in range(6)))
    database = url.rsplit("/", 1)[1]
    postgres_server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    await asyncio.sleep(0.2)  # the termination messages reach this loop
    for _ in range(6):  # each of the pooled connections in turn
        await store.create_task(new_task(reserve="1"), open_task_cap=100)
        assert await store.rate_limit_hit("create:k1", limit=1000, window=10) == 0.0
