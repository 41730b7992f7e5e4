"""One contract for every ``Store``: the same tests against MemoryStore and SqlStore.

SqlStore runs on a SQLite file in ``tmp_path`` and on a real PostgreSQL (the session's
``postgres_server`` from ``tests/services.py``), each test in a database of its own. Time is a
fake clock that tests advance, so lease expiry needs no sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from seedbed.outbox import CallbackState, Delivery, FileKind, StoredFile
from seedbed.store import CreateRefused, Store, open_store
from seedbed.store.base import (
    IDEMPOTENCY_SECONDS,
    IdempotencyConflict,
    QueueStat,
    QueueSummary,
    TaskFilter,
    TaskStats,
)
from seedbed.store.memory import MemoryStore
from seedbed.store.sql import SqlStore
from seedbed.tasks import (
    BALANCE_MAX,
    ClaimedBy,
    Flags,
    KeyLimits,
    NewKey,
    NewTask,
    Outcome,
    TaskState,
    TaskView,
    new_task_id,
)

D = Decimal
T0 = 1_700_000_000.0
KINDS = ["memory", "sqlite", "postgres"]


class Clock:
    """A settable clock: ``clock()`` is the time, ``clock.advance(s)`` moves it on."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _make(kind: str, tmp_path: Path, clock: Callable[[], float], pg_url: str = "") -> Store:
    if kind == "memory":
        return MemoryStore(clock=clock)
    if kind == "sqlite":
        return SqlStore(f"sqlite:///{tmp_path / 'seedbed.db'}", clock=clock)
    return SqlStore(pg_url, clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Store]:
    pg_url = ""
    if request.param == "postgres":
        # asked for here, not as an argument, so memory and SQLite runs never start PostgreSQL
        pg_url = request.getfixturevalue("postgres_server").new_database()
    s = _make(request.param, tmp_path, clock, pg_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def add_key(store: Store, credits: str = "100", key_id: str = "k1", **limits: Any) -> str:
    await store.create_key(
        NewKey(
            id=key_id,
            name=f"name-{key_id}",
            key_hash=f"hash-{key_id}",
            credits=D(credits),
            limits=KeyLimits(**limits),
        )
    )
    return key_id


def new_task(key_id: str = "k1", reserve: str = "1", model: str = "m", **kw: Any) -> NewTask:
    return NewTask(
        id=kw.pop("id", new_task_id()),
        key_id=key_id,
        model=model,
        param=json.dumps({"model": model, "input": "{}"}),
        input=kw.pop("input", {"prompt": "a cat", "n": 1, "nested": {"a": [1, 2]}}),
        callback_url=kw.pop("callback_url", None),
        reserve=D(reserve),
        idempotency_key=kw.pop("idempotency_key", None),
        request_hash=kw.pop("request_hash", None),
    )


async def create(store: Store, key_id: str = "k1", reserve: str = "1", **kw: Any) -> Any:
    return await store.create_task(new_task(key_id, reserve, **kw), open_task_cap=100)


async def holdings(store: Store, key_id: str = "k1") -> tuple[Decimal, Decimal, int]:
    """(balance, held, open_tasks) of a key that must exist."""
    key = await store.get_key(key_id)
    assert key is not None
    return key.balance, key.held, key.open_tasks


def ms(seconds: float) -> int:
    return int(seconds * 1000)


# -- keys and credits ----------------------------------------------------------------------
async def test_create_and_look_up_keys(store: Store, clock: Clock) -> None:
    key = await store.create_key(
        NewKey(
            id="k1",
            name="alice",
            key_hash="h1",
            credits=D("12.5"),
            limits=KeyLimits(open_task_cap=3, record_per_second=5),
        )
    )
    assert (key.id, key.name, key.key_hash) == ("k1", "alice", "h1")
    assert (key.balance, key.held, key.open_tasks) == (D("12.5"), D(0), 0)
    assert key.limits == KeyLimits(open_task_cap=3, record_per_second=5)
    assert key.created_at == ms(T0) and not key.revoked
    assert await store.key_by_hash("h1") == key
    assert await store.get_key("k1") == key
    assert await store.key_by_hash("nope") is None and await store.get_key("nope") is None
    clock.advance(1)
    await add_key(store, "0", key_id="k0")
    assert [k.id for k in await store.list_keys()] == ["k1", "k0"]


async def test_keys_by_hash_reads_many_at_once(store: Store) -> None:
    for index in range(3):
        await store.create_key(NewKey(id=f"k{index}", name="n", key_hash=f"h{index}"))
    assert await store.revoke_key("k2") is True
    found = await store.keys_by_hash(["h2", "nope", "h0", "h0"])
    assert set(found) == {"h0", "h2"}  # a hash of no key is left out; repeats are one
    assert found["h0"] == await store.key_by_hash("h0")
    assert found["h2"].revoked
    assert await store.keys_by_hash([]) == {}
    # more hashes than one read takes (SqlStore reads them in chunks)
    many = [f"x{index}" for index in range(1200)] + ["h1"]
    assert list(await store.keys_by_hash(many)) == ["h1"]


async def test_duplicate_or_negative_keys_are_rejected(store: Store) -> None:
    await add_key(store)
    with pytest.raises(ValueError):
        await store.create_key(NewKey(id="k1", name="x", key_hash="other"))
    with pytest.raises(ValueError):
        await store.create_key(NewKey(id="k2", name="x", key_hash="hash-k1"))
    with pytest.raises(ValueError):
        await store.create_key(NewKey(id="k3", name="x", key_hash="h3", credits=D(-1)))
    assert [k.id for k in await store.list_keys()] == ["k1"]


async def test_revoke_key(store: Store, clock: Clock) -> None:
    await add_key(store)
    clock.advance(5)
    assert await store.revoke_key("k1") is True
    clock.advance(5)
    assert await store.revoke_key("k1") is True  # idempotent: the first time is kept
    key = await store.get_key("k1")
    assert key is not None and key.revoked and key.revoked_at == ms(T0 + 5)
    assert await store.revoke_key("nope") is False


async def test_a_balance_never_passes_its_maximum(store: Store) -> None:
    """Repeated grants stop at ``BALANCE_MAX`` (a 64-bit column of thousandths would overflow
    past about 9.2 * 10**15 credits; SQLite would silently turn it into a float)."""
    await add_key(store, str(BALANCE_MAX - 1))
    with pytest.raises(ValueError, match=f"cannot exceed {BALANCE_MAX} credits"):
        await store.add_credits("k1", D(2))
    assert await store.add_credits("k1", D(1)) == D(BALANCE_MAX)
    key = await store.get_key("k1")
    assert key is not None and key.balance == D(BALANCE_MAX)


async def test_add_credits(store: Store) -> None:
    await add_key(store, "10")
    assert await store.add_credits("k1", D("2.5"), "top-up") == D("12.5")
    assert await store.add_credits("k1", D("-2.0005"), "fix") == D("10.499")  # half-up to 0.001
    assert await store.add_credits("k1", D(0)) == D("10.499")  # nothing to record
    with pytest.raises(ValueError):
        await store.add_credits("k1", D("-10.5"))
    with pytest.raises(KeyError):
        await store.add_credits("nope", D(1))
    key = await store.get_key("k1")
    assert key is not None and key.balance == D("10.499")
    ledger = await store.ledger("k1")
    assert [(e["kind"], e["amount"], e["note"]) for e in ledger] == [
        ("grant", D(10), "key created"),
        ("grant", D("2.5"), "top-up"),
        ("adjust", D("-2.001"), "fix"),
    ]
    assert await store.ledger("nope") == []


# -- create_task ---------------------------------------------------------------------------
async def test_create_task_holds_credits(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    new = new_task(reserve="3.5", callback_url="https://example.com/cb")
    task = await store.create_task(new, open_task_cap=5)
    assert task.state is TaskState.WAITING and task.progress == 0 and task.attempts == 0
    assert task.input == {"prompt": "a cat", "n": 1, "nested": {"a": [1, 2]}}
    assert (task.id, task.key_id, task.model, task.param) == (new.id, "k1", "m", new.param)
    assert task.callback_url == "https://example.com/cb"
    assert task.reserved == D("3.5") and task.credits_consumed == 0 and task.result_keys == ()
    assert task.create_time == task.update_time == ms(T0) and task.complete_time is None
    assert task.lease_owner is None and task.lease_expires is None
    assert await store.get_task(task.id) == task
    assert await store.get_task("0" * 32) is None
    assert await holdings(store) == (D("6.5"), D("3.5"), 1)
    ledger = await store.ledger("k1")
    assert ledger[-1] == {
        "kind": "reserve",
        "amount": D("3.5"),
        "task_id": task.id,
        "note": "",
        "time": ms(T0),
    }
    second = await create(store)
    assert second.seq > task.seq


async def test_create_task_refusals(store: Store) -> None:
    await add_key(store, "2")
    with pytest.raises(CreateRefused) as err:
        await create(store, reserve="2.001")
    assert err.value.reason == "credits"
    await store.create_task(new_task(reserve="1"), open_task_cap=1)
    with pytest.raises(CreateRefused) as err:
        await store.create_task(new_task(reserve="0.5"), open_task_cap=1)
    assert err.value.reason == "open_tasks"
    with pytest.raises(CreateRefused) as err:  # the cap is checked before the credits
        await store.create_task(new_task(reserve="5"), open_task_cap=1)
    assert err.value.reason == "open_tasks"
    with pytest.raises(CreateRefused) as err:
        await create(store, key_id="nope")
    assert err.value.reason == "key"
    await store.revoke_key("k1")
    with pytest.raises(CreateRefused) as err:
        await create(store, reserve="0")
    assert err.value.reason == "key"
    assert await holdings(store) == (D(1), D(1), 1)
    assert [e["kind"] for e in await store.ledger("k1")] == ["grant", "reserve"]


async def test_duplicate_task_id_changes_nothing(store: Store) -> None:
    await add_key(store, "10")
    task = await create(store)
    with pytest.raises(ValueError):
        await create(store, id=task.id)
    assert await holdings(store) == (D(9), D(1), 1)


async def test_queue_position(store: Store) -> None:
    await add_key(store)
    a, b, c = [await create(store) for _ in range(3)]
    assert [await store.queue_position(t) for t in (a, b, c)] == [0, 1, 2]
    await store.claim(worker_id="w", models=None, lease_seconds=30)  # a: queuing, still ahead
    assert await store.queue_position(c) == 2
    await store.start_generating(a.id, worker_id="w")  # generating: no longer queued
    assert [await store.queue_position(t) for t in (b, c)] == [0, 1]


async def test_poll_task_reads_the_task_and_its_position_while_queued(store: Store) -> None:
    await add_key(store)
    a, b, c = [await create(store) for _ in range(3)]

    async def polled(task_id: str) -> tuple[TaskState, int | None]:
        view = await store.poll_task(task_id)
        assert view is not None
        task = await store.get_task(task_id)
        assert task is not None and view == TaskView.of(task, view.queue_position)
        assert view.cost_time == task.cost_time
        return view.state, view.queue_position

    assert await store.poll_task(new_task_id()) is None
    assert [await polled(t.id) for t in (a, b, c)] == [(TaskState.WAITING, n) for n in range(3)]
    await store.claim(worker_id="w", models=None, lease_seconds=30)
    assert await polled(a.id) == (TaskState.QUEUING, 0)
    await store.start_generating(a.id, worker_id="w")
    assert await polled(a.id) == (TaskState.GENERATING, None)
    assert await polled(c.id) == (TaskState.WAITING, 1)
    await store.finish(a.id, Outcome.failure("500", "boom"), worker_id="w")
    assert await polled(a.id) == (TaskState.FAIL, None)
    await store.finish(b.id, Outcome.success(("results/b_0.png",), D("1")), worker_id=None)
    assert await polled(b.id) == (TaskState.SUCCESS, None)
    assert (await polled(c.id))[1] == await store.queue_position(c) == 0


# -- claiming and leases -------------------------------------------------------------------
async def test_claim_takes_the_oldest_first(store: Store, clock: Clock) -> None:
    await add_key(store)
    assert await store.claim(worker_id="w", models=None, lease_seconds=30) is None
    first, second = await create(store), await create(store)
    clock.advance(1)
    got = await store.claim(worker_id="w", models=None, lease_seconds=30)
    assert got is not None and got.id == first.id
    assert got.state is TaskState.QUEUING and got.attempts == 1
    assert got.lease_owner == "w" and got.lease_expires == ms(T0 + 31)
    assert got.update_time == ms(T0 + 1)
    assert await store.get_task(first.id) == got
    again = await store.claim(worker_id="w2", models=None, lease_seconds=30)
    assert again is not None and again.id == second.id
    assert await store.claim(worker_id="w3", models=None, lease_seconds=30) is None


async def test_claim_and_start_in_one_round_trip(store: Store, clock: Clock) -> None:
    """A model in ``start``: its task is claimed straight into generating (one write instead
    of claim + start_generating); the others' still queue, and a reclaim never goes back."""
    await add_key(store)
    a = await create(store, model="a")
    b = await create(store, model="b")
    clock.advance(1)
    got = await store.claim(worker_id="w", models=None, lease_seconds=30, start=["a", "x"])
    assert got is not None and got.id == a.id
    assert got.state is TaskState.GENERATING and got.attempts == 1
    assert got.lease_owner == "w" and got.update_time == ms(T0 + 1)
    assert await store.get_task(a.id) == got
    assert await store.start_generating(a.id, worker_id="w")  # the lease is held
    other = await store.claim(worker_id="w", models=None, lease_seconds=30, start={"a"})
    assert other is not None and other.id == b.id and other.state is TaskState.QUEUING
    # b's lease lapses; a reclaim that starts it moves it on, one that does not leaves it
    clock.advance(31)
    again = await store.claim(worker_id="w2", models=["a"], lease_seconds=30)
    assert again is not None and again.id == a.id and again.state is TaskState.GENERATING
    moved = await store.claim(worker_id="w2", models=["b"], lease_seconds=30, start=("b",))
    assert moved is not None and moved.id == b.id
    assert moved.state is TaskState.GENERATING and moved.attempts == 2


async def test_a_task_created_claimed_is_its_workers_at_once(store: Store, clock: Clock) -> None:
    """``create_task(claimed=...)``: stored as that worker's claim would leave it (generating,
    leased, first attempt), held by it as any claim is, and claimed by nobody else while the
    lease holds; reclaimed as usual once it lapses. An engine record needs the task."""
    await add_key(store)
    new = new_task()
    task = await store.create_task(
        new, open_task_cap=10, claimed=ClaimedBy(worker_id="w", lease_seconds=30)
    )
    assert task.id == new.id and task.state is TaskState.GENERATING and task.attempts == 1
    assert task.lease_owner == "w" and task.lease_expires == ms(T0 + 30)
    assert await store.get_task(task.id) == task
    assert await store.claim(worker_id="w2", models=None, lease_seconds=30) is None
    assert await store.heartbeat([task.id], worker_id="w", lease_seconds=30) == {task.id}
    assert await store.set_progress(task.id, 50, worker_id="w")
    clock.advance(31)
    again = await store.claim(worker_id="w2", models=None, lease_seconds=30)
    assert again is not None and again.id == task.id and again.attempts == 2
    assert await store.finish(task.id, Outcome.success(("x",), D(1)), worker_id="w2")
    await store.set_task_engine("never-created", "sandbox")
    assert await store.task_engine("never-created") is None


async def test_claim_filters_by_model(store: Store) -> None:
    await add_key(store)
    a = await create(store, model="a")
    b = await create(store, model="b")
    assert await store.claim(worker_id="w", models=[], lease_seconds=30) is None
    assert await store.claim(worker_id="w", models=["c"], lease_seconds=30) is None
    got = await store.claim(worker_id="w", models={"b", "c"}, lease_seconds=30)
    assert got is not None and got.id == b.id
    got = await store.claim(worker_id="w", models=["a", "b"], lease_seconds=30)
    assert got is not None and got.id == a.id


async def test_expired_lease_is_reclaimed_keeping_its_state(store: Store, clock: Clock) -> None:
    await add_key(store)
    task = await create(store)
    await store.claim(worker_id="w1", models=None, lease_seconds=10)
    assert await store.start_generating(task.id, worker_id="w1")
    clock.advance(10)  # expires at exactly now: not yet claimable
    assert await store.claim(worker_id="w2", models=None, lease_seconds=10) is None
    clock.advance(0.001)
    got = await store.claim(worker_id="w2", models=["m"], lease_seconds=10)
    assert got is not None and got.id == task.id
    assert got.state is TaskState.GENERATING and got.attempts == 2 and got.lease_owner == "w2"
    # the first worker lost everything it held
    assert await store.heartbeat([task.id], worker_id="w1", lease_seconds=10) == set()
    assert await store.set_progress(task.id, 50, worker_id="w1") is False
    assert await store.start_generating(task.id, worker_id="w1") is False
    assert await store.finish(task.id, Outcome.success(("x",), D(1)), worker_id="w1") is None


async def test_lapsed_lease_still_serves_its_owner_until_reclaimed(
    store: Store, clock: Clock
) -> None:
    await add_key(store)
    task = await create(store)
    await store.claim(worker_id="w", models=None, lease_seconds=10)
    clock.advance(60)
    assert await store.heartbeat([task.id], worker_id="w", lease_seconds=10) == {task.id}
    assert await store.claim(worker_id="w2", models=None, lease_seconds=10) is None


async def test_start_generating_is_guarded(store: Store, clock: Clock) -> None:
    await add_key(store)
    task = await create(store)
    assert await store.start_generating(task.id, worker_id="w") is False  # not claimed
    await store.claim(worker_id="w", models=None, lease_seconds=30)
    assert await store.start_generating(task.id, worker_id="other") is False
    clock.advance(2)
    assert await store.start_generating(task.id, worker_id="w") is True
    clock.advance(2)
    assert await store.start_generating(task.id, worker_id="w") is True  # idempotent
    got = await store.get_task(task.id)
    assert got is not None and got.state is TaskState.GENERATING
    assert got.update_time == ms(T0 + 2)
    assert await store.start_generating("0" * 32, worker_id="w") is False


async def test_heartbeat_extends_only_held_leases(store: Store, clock: Clock) -> None:
    await add_key(store)
    mine, theirs, waiting = await create(store), await create(store), await create(store)
    await store.claim(worker_id="w", models=None, lease_seconds=30)
    await store.claim(worker_id="x", models=None, lease_seconds=30)
    clock.advance(20)
    ids = [mine.id, theirs.id, waiting.id, "0" * 32, mine.id]
    assert await store.heartbeat(ids, worker_id="w", lease_seconds=30) == {mine.id}
    got = await store.get_task(mine.id)
    assert got is not None and got.lease_expires == ms(T0 + 50)
    assert await store.heartbeat([], worker_id="w", lease_seconds=30) == set()


async def test_progress_never_decreases(store: Store, clock: Clock) -> None:
    await add_key(store)
    task = await create(store)
    await store.claim(worker_id="w", models=None, lease_seconds=30)
    clock.advance(1)
    assert await store.set_progress(task.id, 40, worker_id="w") is True
    clock.advance(1)
    assert await store.set_progress(task.id, 30, worker_id="w") is True  # held, not written
    got = await store.get_task(task.id)
    assert got is not None and got.progress == 40 and got.update_time == ms(T0 + 1)
    assert await store.set_progress(task.id, 250, worker_id="w") is True
    got = await store.get_task(task.id)
    assert got is not None and got.progress == 100
    assert await store.set_progress(task.id, 100, worker_id="other") is False


async def test_release_leases_and_lease_owners(store: Store) -> None:
    await add_key(store)
    a, b = await create(store), await create(store)
    assert await store.lease_owners() == set()
    await store.claim(worker_id="w1", models=None, lease_seconds=30)
    await store.claim(worker_id="w2", models=None, lease_seconds=30)
    assert await store.lease_owners() == {"w1", "w2"}
    assert await store.release_leases([]) == 0
    assert await store.release_leases(["w1", "ghost"]) == 1
    assert await store.release_leases(["w1"]) == 0
    assert await store.lease_owners() == {"w2"}
    # a released lease is dead at once: its owner is refused, anyone may take the task
    assert await store.heartbeat([a.id], worker_id="w1", lease_seconds=30) == set()
    got = await store.claim(worker_id="w3", models=None, lease_seconds=30)
    assert got is not None and got.id == a.id and got.attempts == 2
    assert got.state is TaskState.QUEUING
    assert await store.lease_owners() == {"w2", "w3"}
    await store.finish(b.id, Outcome.failure("500", "x"), worker_id="w2")
    assert await store.lease_owners() == {"w3"}


# -- finish and settlement -----------------------------------------------------------------
async def _claimed(store: Store, reserve: str) -> Any:
    task = await create(store, reserve=reserve)
    got = await store.claim(worker_id="w", models=None, lease_seconds=30)
    assert got is not None and got.id == task.id
    return got


async def test_finish_success_charges_and_releases_the_rest(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    task = await _claimed(store, "3.5")
    await store.set_progress(task.id, 60, worker_id="w")
    clock.advance(7.5)
    done = await store.finish(task.id, Outcome.success(("a.png", "b.png"), D(2)), worker_id="w")
    assert done is not None and done.state is TaskState.SUCCESS
    assert done.result_keys == ("a.png", "b.png") and done.credits_consumed == D(2)
    assert done.progress == 100 and done.fail_code is None and done.fail_msg is None
    assert done.complete_time == done.update_time == ms(T0 + 7.5) and done.cost_time == 7
    assert done.lease_owner is None and done.lease_expires is None
    assert await store.get_task(task.id) == done
    assert await holdings(store) == (D(8), D(0), 0)
    tail = [(e["kind"], e["amount"], e["task_id"]) for e in (await store.ledger("k1"))[1:]]
    assert tail == [
        ("reserve", D("3.5"), task.id),
        ("charge", D(2), task.id),
        ("release", D("1.5"), task.id),
    ]


async def test_finish_charges_at_most_what_was_held(store: Store) -> None:
    await add_key(store, "10")
    task = await _claimed(store, "3")
    done = await store.finish(task.id, Outcome.success(("a",), D(99)), worker_id="w")
    assert done is not None and done.credits_consumed == D(3)
    assert await holdings(store) == (D(7), D(0), 0)
    assert [e["kind"] for e in await store.ledger("k1")] == ["grant", "reserve", "charge"]


async def test_finish_failure_releases_everything(store: Store) -> None:
    await add_key(store, "10")
    task = await _claimed(store, "4")
    await store.set_progress(task.id, 30, worker_id="w")
    done = await store.finish(task.id, Outcome.failure("501", "engine said no"), worker_id="w")
    assert done is not None and done.state is TaskState.FAIL
    assert (done.fail_code, done.fail_msg) == ("501", "engine said no")
    assert done.credits_consumed == 0 and done.result_keys == () and done.progress == 30
    assert await holdings(store) == (D(10), D(0), 0)
    assert [(e["kind"], e["amount"]) for e in (await store.ledger("k1"))[2:]] == [("release", D(4))]


async def test_finish_settles_exactly_once(store: Store) -> None:
    await add_key(store, "10")
    task = await _claimed(store, "2")
    assert await store.finish(task.id, Outcome.success(("a",), D(1)), worker_id="other") is None
    assert await store.finish(task.id, Outcome.success(("a",), D(1)), worker_id="w") is not None
    before = (await store.get_key("k1"), await store.ledger("k1"))
    assert await store.finish(task.id, Outcome.success(("a",), D(1)), worker_id="w") is None
    assert await store.finish(task.id, Outcome.failure("500", "x"), worker_id=None) is None
    assert await store.finish("0" * 32, Outcome.failure("500", "x"), worker_id=None) is None
    assert (await store.get_key("k1"), await store.ledger("k1")) == before


async def test_finish_without_a_worker_ends_any_open_task(store: Store) -> None:
    await add_key(store, "10")
    waiting = await create(store, reserve="2")
    done = await store.finish(waiting.id, Outcome.failure("500", "cancelled"), worker_id=None)
    assert done is not None and done.state is TaskState.FAIL
    leased = await _claimed(store, "3")
    done = await store.finish(leased.id, Outcome.success(("a",), D(1)), worker_id=None)
    assert done is not None and done.state is TaskState.SUCCESS
    assert await holdings(store) == (D(9), D(0), 0)
    with pytest.raises(ValueError):
        await store.finish(leased.id, Outcome(state=TaskState.GENERATING), worker_id=None)


# -- idempotency (migration 0003) ----------------------------------------------------------
async def test_idempotency_key_answers_the_first_task_for_a_day(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    first = await create(store, reserve="2", idempotency_key="abc", request_hash="h1")
    again = await create(store, reserve="2", idempotency_key="abc", request_hash="h1")
    assert again.id == first.id and again.state is TaskState.WAITING
    assert await holdings(store) == (D(8), D(2), 1)  # held once
    with pytest.raises(IdempotencyConflict):
        await create(store, reserve="2", idempotency_key="abc", request_hash="h2")
    other = await create(store, reserve="2", idempotency_key="xyz", request_hash="h1")
    assert other.id != first.id
    await add_key(store, "10", key_id="k2")
    theirs = await create(store, "k2", reserve="2", idempotency_key="abc", request_hash="h1")
    assert theirs.id != first.id
    clock.advance(IDEMPOTENCY_SECONDS - 1)
    assert (
        await create(store, reserve="2", idempotency_key="abc", request_hash="h1")
    ).id == first.id
    clock.advance(2)  # a day later the key is free again, whatever the body
    fresh = await create(store, reserve="2", idempotency_key="abc", request_hash="h2")
    assert fresh.id != first.id
    assert (
        await create(store, reserve="2", idempotency_key="abc", request_hash="h2")
    ).id == fresh.id


async def test_concurrent_idempotent_creates_make_one_task(store: Store) -> None:
    await add_key(store, "100")
    made = await asyncio.gather(
        *(create(store, reserve="1", idempotency_key="same", request_hash="h") for _ in range(10))
    )
    assert len({t.id for t in made}) == 1
    assert await holdings(store) == (D(99), D(1), 1)


# -- reading for live events, metrics and the admin CLI ------------------------------------
async def test_changed_tasks_since_a_time(store: Store, clock: Clock) -> None:
    await add_key(store)
    a = await create(store)
    clock.advance(1)
    b = await create(store)
    since = ms(clock.now)
    assert {t.id for t in await store.changed_tasks([a.id, b.id, "0" * 32], since=0)} == {
        a.id,
        b.id,
    }
    assert [t.id for t in await store.changed_tasks([a.id, b.id], since=since)] == [b.id]
    assert await store.changed_tasks([], since=0) == []
    clock.advance(1)
    claimed = await store.claim(worker_id="w", models=None, lease_seconds=30)
    assert claimed is not None and claimed.id == a.id
    changed = await store.changed_tasks([a.id, b.id], since=ms(clock.now))
    assert [(t.id, t.state) for t in changed] == [(a.id, TaskState.QUEUING)]


async def test_list_tasks_filters_newest_first(store: Store, clock: Clock) -> None:
    await add_key(store)
    await add_key(store, key_id="k2")
    a = await create(store, model="m1")
    clock.advance(10)
    b = await create(store, "k2", model="m2")
    c = await create(store, model="m2")
    await store.finish(c.id, Outcome.failure("500", "x"), worker_id=None)
    assert [t.id for t in await store.list_tasks(TaskFilter())] == [c.id, b.id, a.id]
    assert [t.id for t in await store.list_tasks(TaskFilter(limit=2))] == [c.id, b.id]
    assert [t.id for t in await store.list_tasks(TaskFilter(model="m2"))] == [c.id, b.id]
    assert [t.id for t in await store.list_tasks(TaskFilter(key_id="k2"))] == [b.id]
    assert [t.id for t in await store.list_tasks(TaskFilter(state=TaskState.FAIL))] == [c.id]
    since = TaskFilter(since=ms(T0 + 5))
    assert [t.id for t in await store.list_tasks(since)] == [c.id, b.id]


async def test_list_tasks_pages_by_cursor(store: Store) -> None:
    """``before`` (the last row's ``seq``) walks a key's tasks page by page, newest first,
    with every other filter still applied and nothing repeated or skipped."""
    await add_key(store)
    await add_key(store, key_id="k2")
    made = [await create(store, model="m1" if i % 3 else "m2") for i in range(7)]
    await create(store, "k2")
    seen: list[str] = []
    before: int | None = None
    while True:
        page = await store.list_tasks(TaskFilter(key_id="k1", before=before, limit=3))
        if not page:
            break
        seen += [t.id for t in page]
        before = page[-1].seq
    assert seen == [t.id for t in reversed(made)]
    m2 = [t.id for t in reversed(made) if t.model == "m2"]
    first = await store.list_tasks(TaskFilter(key_id="k1", model="m2", limit=1))
    rest = await store.list_tasks(TaskFilter(key_id="k1", model="m2", before=first[0].seq))
    assert [t.id for t in first + rest] == m2


async def test_queue_and_task_stats(store: Store, clock: Clock) -> None:
    await add_key(store)
    a = await create(store, model="m1")
    clock.advance(5)
    await create(store, model="m1")
    await create(store, model="m2")
    done = await create(store, model="m2")
    failed = await create(store, model="m2")
    await store.finish(failed.id, Outcome.failure("501", "x"), worker_id=None)
    claimed = await store.claim(worker_id="w", models=["m2"], lease_seconds=30)
    assert claimed is not None
    await store.start_generating(claimed.id, worker_id="w")
    assert await store.queue_summary() == QueueSummary(depth=3, oldest_create_time=a.create_time)
    m2 = QueueSummary(depth=1, oldest_create_time=ms(T0 + 5))
    assert await store.queue_summary(["m2"]) == m2
    assert await store.queue_summary(["m2", "other"]) == m2
    assert await store.queue_stats() == [
        QueueStat(model="m1", depth=2, oldest_create_time=a.create_time),
        QueueStat(model="m2", depth=1, oldest_create_time=ms(T0 + 5)),
    ]
    await store.finish(done.id, Outcome.success(("r",), D(1)), worker_id=None)
    stats = await store.task_stats(since=ms(T0))
    assert stats == TaskStats(
        open_by_state={"waiting": 2, "generating": 1},
        finished_by_state={"success": 1, "fail": 1},
        failures_by_code={"501": 1},
    )
    assert await store.queue_summary() == QueueSummary(depth=2, oldest_create_time=a.create_time)
    assert await store.queue_summary(["m2", "m3"]) == QueueSummary(depth=0, oldest_create_time=None)
    clock.advance(60)
    later = await store.task_stats(since=ms(clock.now))
    assert later.finished_by_state == {} and later.open_by_state == {"waiting": 2, "generating": 1}


# -- flags and lifecycle -------------------------------------------------------------------
async def test_flags_round_trip(store: Store) -> None:
    assert await store.flags() == Flags()
    await store.set_maintenance(True)
    await store.set_model_enabled("a", False)
    await store.set_model_enabled("b", False)
    await store.set_model_enabled("b", False)
    await store.set_model_enabled("c", True)
    assert await store.flags() == Flags(maintenance=True, disabled_models=frozenset({"a", "b"}))
    await store.set_maintenance(False)
    await store.set_model_enabled("a", True)
    assert await store.flags() == Flags(disabled_models=frozenset({"b"}))


async def test_admin_token_hash_round_trips_apart_from_the_flags(store: Store) -> None:
    assert await store.admin_token_hash() is None
    await store.set_admin_token_hash("first")
    await store.set_admin_token_hash("second")
    assert await store.admin_token_hash() == "second"
    assert await store.flags() == Flags()  # not mistaken for a switch
    await store.set_admin_token_hash(None)
    assert await store.admin_token_hash() is None


async def test_ping(store: Store) -> None:
    await store.ping()


# -- concurrency ---------------------------------------------------------------------------
async def test_concurrent_creates_never_overspend(store: Store) -> None:
    await add_key(store, "15")  # covers exactly 10 tasks at 1.5

    async def attempt() -> str:
        try:
            await store.create_task(new_task(reserve="1.5"), open_task_cap=1000)
        except CreateRefused as exc:
            return exc.reason
        return "ok"

    results = await asyncio.gather(*(attempt() for _ in range(100)))
    assert results.count("ok") == 10 and results.count("credits") == 90
    assert await holdings(store) == (D(0), D(15), 10)


async def test_concurrent_claims_hand_out_each_task_once(store: Store) -> None:
    await add_key(store)
    created = {(await create(store)).id for _ in range(10)}
    got = await asyncio.gather(
        *(store.claim(worker_id=f"w{i}", models=None, lease_seconds=30) for i in range(25))
    )
    claimed = [t.id for t in got if t is not None]
    assert len(claimed) == len(set(claimed)) == 10 and set(claimed) == created


# -- SqlStore on SQLite: several connections and processes on one file --------------------
_CHILD = """
import asyncio, json, os, sys, time
from decimal import Decimal
from seedbed.store import CreateRefused
from seedbed.store.sql import SqlStore
from seedbed.tasks import NewTask, new_task_id

async def main(db, barrier, mode, n):
    store = SqlStore("sqlite:///" + db)
    await store.open()
    open(barrier + ".ready." + str(os.getpid()), "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(barrier + ".go") and time.monotonic() < deadline:
        time.sleep(0.001)
    out = []
    if mode == "create":
        async def one():
            task = NewTask(id=new_task_id(), key_id="k1", model="m", param="{}", input={},
                           callback_url=None, reserve=Decimal("1.5"))
            try:
                await store.create_task(task, open_task_cap=10_000)
                return "ok"
            except CreateRefused as exc:
                return exc.reason
        out = await asyncio.gather(*(one() for _ in range(n)))
    else:
        while (task := await store.claim(worker_id=str(os.getpid()), models=None,
                                         lease_seconds=60)) is not None:
            out.append(task.id)
    await store.close()
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4])))
"""


def _spawn(db: Path, barrier: Path, mode: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), str(barrier), mode, str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )


async def _race(db: Path, mode: str, n: int, local: Callable[[], Any]) -> list[Any]:
    """Start two child processes, release them together with ``local``; gather all results."""
    barrier = db.parent / "barrier"
    children = [_spawn(db, barrier, mode, n) for _ in range(2)]
    deadline = time.monotonic() + 30
    while len(list(db.parent.glob("barrier.ready.*"))) < 2:
        assert time.monotonic() < deadline, "child processes did not start"
        assert all(c.poll() is None for c in children), "a child process died"
        await asyncio.sleep(0.005)
    barrier.with_suffix(".go").touch()
    mine = await local()
    results = [mine]
    for child in children:
        stdout, _ = await asyncio.to_thread(child.communicate, timeout=60)
        assert child.returncode == 0
        results.append(json.loads(stdout))
    return results


async def test_creates_from_several_processes_never_overspend(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    store = SqlStore(f"sqlite:///{db}")
    await store.open()
    try:
        await add_key(store, "37.5")  # covers exactly 25 tasks at 1.5

        async def local() -> list[str]:
            async def one() -> str:
                try:
                    await store.create_task(new_task(reserve="1.5"), open_task_cap=10_000)
                except CreateRefused as exc:
                    return exc.reason
                return "ok"

            return list(await asyncio.gather(*(one() for _ in range(40))))

        batches = await _race(db, "create", 40, local)
        results = [r for batch in batches for r in batch]
        assert len(results) == 120
        assert results.count("ok") == 25 and results.count("credits") == 95
        assert await holdings(store) == (D(0), D("37.5"), 25)
    finally:
        await store.close()


async def test_claims_from_several_processes_and_stores_never_overlap(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    store = SqlStore(f"sqlite:///{db}")
    others = [SqlStore(f"sqlite:///{db}") for _ in range(2)]
    await store.open()
    for other in others:
        await other.open()
    try:
        await add_key(store, "1000")
        created = {(await create(store, reserve="1")).id for _ in range(60)}

        async def drain(s: SqlStore, worker: str) -> list[str]:
            got = []
            while task := await s.claim(worker_id=worker, models=None, lease_seconds=60):
                got.append(task.id)
            return got

        async def local() -> list[str]:
            batches = await asyncio.gather(
                *(drain(s, f"local{i}") for i, s in enumerate([store, *others]))
            )
            return [task_id for batch in batches for task_id in batch]

        batches = await _race(db, "claim", 0, local)
        claimed = [t for batch in batches for t in batch]
        assert len(claimed) == len(set(claimed)) == 60 and set(claimed) == created
    finally:
        for s in [store, *others]:
            await s.close()


async def test_sqlite_reads_see_other_processes_commits_from_the_next_loop_turn(
    tmp_path: Path,
) -> None:
    """The reads of one event-loop turn share one read snapshot; it ends with the turn, so a
    commit made elsewhere (here a plain sqlite3 connection, as another process would) is seen
    by every read of a later turn, and by none of the turn that read before it."""
    import sqlite3

    failures: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: failures.append(ctx))
    db = tmp_path / "seedbed.db"
    store = SqlStore(f"sqlite:///{db}")
    await store.open()
    try:
        await add_key(store, "10")
        task = await create(store)
        elsewhere = sqlite3.connect(db, isolation_level=None)
        try:
            assert (await store.get_task(task.id)).progress == 0  # type: ignore[union-attr]
            elsewhere.execute("UPDATE tasks SET progress = 40 WHERE id = ?", (task.id,))
            # the same turn: still the snapshot its first read took
            assert (await store.get_task(task.id)).progress == 0  # type: ignore[union-attr]
            await asyncio.sleep(0)
            assert (await store.get_task(task.id)).progress == 40  # type: ignore[union-attr]
            view = await store.poll_task(task.id)
            assert view is not None and view.progress == 40
        finally:
            elsewhere.close()
        # and this store's own commits are seen at once, by its very next read
        claimed = await store.claim(worker_id="w", models=None, lease_seconds=60)
        assert claimed is not None
        assert (await store.get_task(task.id)).state is TaskState.QUEUING  # type: ignore[union-attr]
    finally:
        await store.close()  # in the same turn as a read: the snapshot's end must not fail
    await asyncio.sleep(0)
    assert failures == []


async def test_sqlite_poll_answers_are_kept_only_while_the_database_is_unchanged(
    tmp_path: Path,
) -> None:
    """``poll_task`` hands out the same view while nothing changed, and a fresh one after any
    commit: another process's from the next loop turn, this store's own at once."""
    import sqlite3

    db = tmp_path / "seedbed.db"
    store = SqlStore(f"sqlite:///{db}")
    await store.open()
    try:
        await add_key(store, "10")
        first, second = await create(store), await create(store)
        kept = await store.poll_task(second.id)
        assert kept is not None and kept.queue_position == 1
        await asyncio.sleep(0)
        assert await store.poll_task(second.id) is kept  # a later turn, nothing changed
        assert await store.poll_task("0" * 32) is None

        elsewhere = sqlite3.connect(db, isolation_level=None)
        try:
            elsewhere.execute("UPDATE tasks SET progress = 40 WHERE id = ?", (second.id,))
        finally:
            elsewhere.close()
        assert await store.poll_task(second.id) is kept  # this turn's snapshot predates it
        await asyncio.sleep(0)
        seen = await store.poll_task(second.id)
        assert seen is not None and seen.progress == 40 and seen.queue_position == 1

        # this store's own commit: the first task leaves the queue, the second moves up
        assert await store.claim(worker_id="w", models=None, lease_seconds=60) is not None
        await store.start_generating(first.id, worker_id="w")
        moved = await store.poll_task(second.id)
        assert moved is not None and moved.queue_position == 0
        ahead = await store.poll_task(first.id)
        assert ahead is not None and ahead.state is TaskState.GENERATING
    finally:
        await store.close()


async def test_sql_store_keeps_its_data_across_reopening(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'deep' / 'dir' / 'seedbed.db'}"  # parents created
    store = SqlStore(url)
    await store.open()
    await store.open()  # idempotent
    await add_key(store, "5")
    task = await create(store)
    await store.close()
    await store.close()
    again = SqlStore(url)
    await again.open()
    try:
        assert await again.get_task(task.id) == task
    finally:
        await again.close()
    with pytest.raises(RuntimeError):
        await again.get_task(task.id)


def test_open_store_picks_the_implementation(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SqlStore)
    assert isinstance(open_store(f"sqlite+aiosqlite:///{tmp_path}/a.db"), SqlStore)
    assert isinstance(open_store("postgresql://u:p@localhost/db"), SqlStore)
    with pytest.raises(ValueError):
        open_store("redis://localhost")
    with pytest.raises(ValueError):
        open_store("sqlite://")  # in-memory SQLite would give each engine its own database


# -- the callback outbox (issue 3) ---------------------------------------------------------
async def _finished_with_callback(
    store: Store, *, success: bool = True, result_key: str | None = None
) -> Any:
    task = await create(store, reserve="2", callback_url="https://example.com/hook")
    await store.claim(worker_id="w", models=None, lease_seconds=30)
    result = "results/a.png" if result_key is None else result_key
    outcome = Outcome.success((result,), D(1)) if success else Outcome.failure("501", "x")
    done = await store.finish(task.id, outcome, worker_id="w")
    assert done is not None
    return done


async def test_finish_writes_the_callback_to_the_outbox(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    plain = await create(store, reserve="1")
    await store.finish(plain.id, Outcome.failure("500", "x"), worker_id=None)
    assert await store.get_callback(plain.id) is None  # no callBackUrl, no callback
    done = await _finished_with_callback(store, success=False)
    record = await store.get_callback(done.id)
    assert record is not None and record.state is CallbackState.PENDING
    assert (record.key_id, record.url, record.attempts) == ("k1", "https://example.com/hook", 0)
    assert record.next_attempt_at == record.created_at == ms(T0)
    assert (record.last_status, record.last_error) == (None, None)
    # a second finish settles nothing and queues nothing
    assert await store.finish(done.id, Outcome.failure("500", "y"), worker_id=None) is None
    assert [c.task_id for c in await store.list_callbacks()] == [done.id]


async def test_finish_listeners_see_every_committed_finish(store: Store) -> None:
    await add_key(store, "10")
    seen: list[str] = []
    store.on_finish(lambda task, delivery: seen.append(f"{task.id}:{task.state.value}:{delivery}"))
    task = await create(store, reserve="1")
    await store.finish(task.id, Outcome.failure("500", "x"), worker_id=None)
    await store.finish(task.id, Outcome.failure("500", "x"), worker_id=None)  # not committed
    assert seen == [f"{task.id}:fail:None"]


async def test_a_finish_can_claim_its_callback_for_this_process(store: Store, clock: Clock) -> None:
    """``lease_callbacks``: the finish writes the outbox row claimed for this process's
    dispatcher, whose listener gets the delivery; nobody else's claim takes it until that
    claim runs out. With no slot free (None), the row is left due, as without a lease."""
    await add_key(store, "10")
    await store.set_hmac_key("k1", "secret-1")
    leases: list[float | None] = [30.0, None]
    store.lease_callbacks(lambda: leases.pop(0))
    seen: list[tuple[str, Delivery | None]] = []
    store.on_finish(lambda task, delivery: seen.append((task.id, delivery)))
    plain = await create(store, reserve="1")
    await store.finish(plain.id, Outcome.failure("500", "x"), worker_id=None)
    assert leases == [30.0, None]  # no callback: nothing to claim, the lease is not asked
    claimed = await _finished_with_callback(store)
    left = await _finished_with_callback(store, result_key="results/b.png")
    expected = Delivery(
        task_id=claimed.id, url="https://example.com/hook", attempts=0, hmac_key="secret-1"
    )
    assert seen == [(plain.id, None), (claimed.id, expected), (left.id, None)]
    record = await store.get_callback(claimed.id)
    assert record is not None and record.state is CallbackState.PENDING
    assert record.next_attempt_at == ms(T0) + 30_000 and record.attempts == 0
    # another dispatcher's claim finds only the one left due
    assert [d.task_id for d in await store.claim_callbacks(limit=10, lease_seconds=30)] == [left.id]
    await store.record_callback_attempt(
        claimed.id, attempt=1, status=200, error=None, duration_ms=1, delivered=True, retry_in=None
    )
    delivered = await store.get_callback(claimed.id)
    assert delivered is not None and delivered.state is CallbackState.DELIVERED


async def test_a_callback_claimed_by_its_finish_is_due_again_when_the_claim_runs_out(
    store: Store, clock: Clock
) -> None:
    await add_key(store, "10")
    store.lease_callbacks(lambda: 30.0)
    done = await _finished_with_callback(store)
    assert await store.claim_callbacks(limit=10, lease_seconds=30) == []
    clock.advance(31)  # the process died before its dispatcher could send it
    assert [d.task_id for d in await store.claim_callbacks(limit=10, lease_seconds=30)] == [done.id]


async def test_claiming_callbacks_leases_them(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    await store.set_hmac_key("k1", "secret-1")
    first = await _finished_with_callback(store)
    clock.advance(1)
    second = await _finished_with_callback(store, result_key="results/b.png")
    claimed = await store.claim_callbacks(limit=1, lease_seconds=30)
    assert [(d.task_id, d.url, d.attempts, d.hmac_key) for d in claimed] == [
        (first.id, "https://example.com/hook", 0, "secret-1")
    ]
    assert [d.task_id for d in await store.claim_callbacks(limit=10, lease_seconds=30)] == [
        second.id
    ]
    assert await store.claim_callbacks(limit=10, lease_seconds=30) == []
    assert await store.claim_callbacks(limit=0, lease_seconds=30) == []
    clock.advance(31)  # a dispatcher died mid-attempt: its rows come due again
    assert len(await store.claim_callbacks(limit=10, lease_seconds=30)) == 2
    await store.release_callbacks([first.id])
    again = await store.claim_callbacks(limit=10, lease_seconds=30)
    assert [d.task_id for d in again] == [first.id]


async def test_callback_attempts_move_the_row_on(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    done = await _finished_with_callback(store)
    (delivery,) = await store.claim_callbacks(limit=5, lease_seconds=30)
    clock.advance(2)
    await store.record_callback_attempt(
        done.id,
        attempt=1,
        status=500,
        error="HTTP 500",
        duration_ms=12,
        delivered=False,
        retry_in=10,
    )
    record = await store.get_callback(done.id)
    assert record is not None and record.state is CallbackState.PENDING
    assert (record.attempts, record.last_status, record.last_error) == (1, 500, "HTTP 500")
    assert record.next_attempt_at == ms(T0 + 12)
    assert await store.claim_callbacks(limit=5, lease_seconds=30) == []
    clock.advance(10)
    (delivery,) = await store.claim_callbacks(limit=5, lease_seconds=30)
    assert delivery.attempts == 1 and delivery.hmac_key is None
    await store.record_callback_attempt(
        done.id, attempt=2, status=200, error=None, duration_ms=3, delivered=True, retry_in=None
    )
    record = await store.get_callback(done.id)
    assert record is not None and record.state is CallbackState.DELIVERED
    assert record.next_attempt_at is None and record.attempts == 2
    # a late duplicate attempt is logged but does not undo the delivery
    await store.record_callback_attempt(
        done.id,
        attempt=2,
        status=None,
        error="timed out",
        duration_ms=9,
        delivered=False,
        retry_in=None,
    )
    record = await store.get_callback(done.id)
    assert record is not None and record.state is CallbackState.DELIVERED
    attempts = await store.callback_attempts(done.id)
    assert [(a.attempt, a.status, a.error, a.duration_ms) for a in attempts] == [
        (1, 500, "HTTP 500", 12),
        (2, 200, None, 3),
        (2, None, "timed out", 9),
    ]
    assert attempts[0].at == ms(T0 + 2)


async def test_dead_callbacks_are_kept_and_can_be_redelivered(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    live = await _finished_with_callback(store)
    dead = await _finished_with_callback(store, result_key="results/b.png")
    await store.claim_callbacks(limit=5, lease_seconds=30)
    await store.record_callback_attempt(
        dead.id,
        attempt=3,
        status=None,
        error="timed out",
        duration_ms=1,
        delivered=False,
        retry_in=None,
    )
    assert [c.task_id for c in await store.list_callbacks(state=CallbackState.DEAD)] == [dead.id]
    assert {c.task_id for c in await store.list_callbacks()} == {live.id, dead.id}
    assert await store.claim_callbacks(limit=5, lease_seconds=30) == []
    clock.advance(1)
    assert await store.redeliver_callback(dead.id) is True
    assert await store.redeliver_callback("0" * 32) is False
    record = await store.get_callback(dead.id)
    assert record is not None and record.state is CallbackState.PENDING and record.attempts == 0
    assert [d.task_id for d in await store.claim_callbacks(limit=5, lease_seconds=30)] == [dead.id]


async def test_hmac_keys(store: Store) -> None:
    await store.create_key(NewKey(id="k1", name="n", key_hash="h1", hmac_key="first"))
    key = await store.get_key("k1")
    assert key is not None and key.hmac_key == "first"
    assert await store.set_hmac_key("k1", "second") is True
    key = await store.key_by_hash("h1")
    assert key is not None and key.hmac_key == "second"
    assert await store.set_hmac_key("nope", "x") is False
    assert await store.set_hmac_key("k1", None) is True
    key = await store.get_key("k1")
    assert key is not None and key.hmac_key is None


async def test_key_limits_are_replaced(store: Store) -> None:
    await add_key(store, open_task_cap=5)
    limits = KeyLimits(create_per_window=3, create_window_seconds=60.0)
    assert await store.set_key_limits("k1", limits) is True
    key = await store.key_by_hash("hash-k1")
    assert key is not None and key.limits == limits  # open_task_cap back to the default
    assert await store.set_key_limits("nope", limits) is False
    assert await store.set_key_limits("k1", KeyLimits()) is True
    key = await store.get_key("k1")
    assert key is not None and key.limits == KeyLimits()


async def test_task_origin_round_trips(store: Store) -> None:
    await add_key(store, "10")
    new = dataclasses.replace(new_task(reserve="1"), origin="http://127.0.0.1:8000")
    task = await store.create_task(new, open_task_cap=5)
    assert task.origin == "http://127.0.0.1:8000"
    assert (await store.get_task(task.id)) == task


# -- file records (issue 3) ----------------------------------------------------------------
async def test_results_and_uploads_are_recorded_and_expire(store: Store, clock: Clock) -> None:
    await add_key(store, "10")
    done = await _finished_with_callback(store)
    result = await store.get_file("results/a.png")
    assert result == StoredFile(
        key="results/a.png", kind=FileKind.RESULT, key_id="k1", task_id=done.id, created_at=ms(T0)
    )
    clock.advance(10)
    upload = StoredFile(
        key="uploads/s/x/a.png",
        kind=FileKind.UPLOAD,
        key_id="k1",
        size=70,
        content_type="image/png",
    )
    stored = await store.record_file(upload)
    assert stored.created_at == ms(T0 + 10) and await store.get_file(upload.key) == stored
    assert await store.expired_files(FileKind.RESULT, before=ms(T0), limit=10) == []
    assert await store.expired_files(FileKind.RESULT, before=ms(T0 + 1), limit=10) == [result]
    assert await store.expired_files(FileKind.UPLOAD, before=ms(T0 + 11), limit=10) == [stored]
    clock.advance(5)
    assert await store.known_files(["results/a.png", upload.key, "results/nope.png"]) == {
        "results/a.png",
        upload.key,
    }
    assert await store.known_files([]) == set()
    assert await store.mark_files_deleted([upload.key], before=ms(T0 + 10)) == []  # too new
    assert await store.mark_files_deleted(["results/a.png", "nope"]) == ["results/a.png"]
    assert await store.mark_files_deleted(["results/a.png"]) == []
    assert await store.known_files(["results/a.png"]) == set()  # its file is gone
    gone = await store.get_file("results/a.png")
    assert gone is not None and gone.deleted_at == ms(T0 + 15)
    assert await store.expired_files(FileKind.RESULT, before=ms(T0 + 99), limit=10) == []
    # the same key uploaded again replaces the record and is alive again
    clock.advance(5)
    again = await store.record_file(dataclasses.replace(upload, size=80))
    assert again.size == 80 and again.created_at == ms(T0 + 20) and again.deleted_at is None
    assert await store.get_file(upload.key) == again


async def test_the_wal_starts_over_under_a_steady_stream_of_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that never pause keep a passive checkpoint from ever reaching the WAL's end, so
    SQLite would never start the log over and the file would grow for ever; past the limit the
    checkpointer restarts the log. Each restart bumps the checkpoint sequence number in the
    WAL header (bytes 12-15), which is what this test counts."""
    from seedbed.store import migrate
    from seedbed.store import sqlite as sqlite_runner

    monkeypatch.setattr(sqlite_runner._Checkpointer, "INTERVAL", 0.02)
    monkeypatch.setattr(sqlite_runner._Checkpointer, "WAL_LIMIT", 128 * 1024)
    # and the size a restarted log is trimmed back to, so the file's size shows the restarts
    monkeypatch.setattr(migrate, "WAL_LIMIT_BYTES", 128 * 1024)
    db = tmp_path / "seedbed.db"
    wal = tmp_path / "seedbed.db-wal"

    def checkpoint_sequence() -> int:
        with wal.open("rb") as f:
            return int.from_bytes(f.read(16)[12:16], "big")

    store = SqlStore(f"sqlite:///{db}")
    await store.open()
    try:
        await add_key(store, "1000000")
        created: list[str] = []
        first = checkpoint_sequence()
        largest = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            tasks = [new_task(reserve="1") for _ in range(8)]
            await asyncio.gather(*(store.create_task(t, open_task_cap=10**9) for t in tasks))
            created += [t.id for t in tasks]
            largest = max(largest, wal.stat().st_size)
        restarts = checkpoint_sequence() - first
        assert restarts >= 3, f"the WAL was started over {restarts} times"
        # Without the restarts this loop grows the file past 100 MB on a 2-core machine. With
        # them it holds what is written between two rounds: about 3 MB here. (Before writers
        # held off for a pending restart, it waited up to 360 ms for the lock: 36 to 58 MB.)
        assert largest < 16 * 1024 * 1024, f"WAL grew to {largest} bytes"
        for task_id in created[:: max(1, len(created) // 50)]:
            assert (await store.get_task(task_id)) is not None
        assert (await holdings(store))[2] == len(created)
    finally:
        await store.close()


async def test_task_engine_is_recorded_and_replaced(store: Store) -> None:
    await add_key(store)
    task = await create(store)
    assert await store.task_engine(task.id) is None
    await store.set_task_engine(task.id, "gpu")
    assert await store.task_engine(task.id) == ("gpu", None)
    # a fallback moves the task on, and a relay learns the upstream's id of it
    await store.set_task_engine(task.id, "upstream", "f400b7ea65483c2f983d61fdaeeceea8")
    assert await store.task_engine(task.id) == ("upstream", "f400b7ea65483c2f983d61fdaeeceea8")


async def test_a_claim_started_before_a_creates_commit_shares_it_and_is_answered_first(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """SQLite's group commit (``Store.group_commit``): a claim started after a create but
    before the create's commit runs in the same transaction, sees the new task and takes it;
    its caller (``write_first``: a device waits on it) is woken before the create's. This is
    how createTask lets an idle in-process worker claim in the create's own commit."""
    kind = request.node.callspec.params["store"]
    assert store.group_commit is (kind == "sqlite")
    await add_key(store)
    woken: list[str] = []
    new = new_task()
    creating = asyncio.ensure_future(store.create_task(new, open_task_cap=10))
    claiming = asyncio.ensure_future(store.claim(worker_id="w", models=None, lease_seconds=30))
    creating.add_done_callback(lambda _: woken.append("create"))
    claiming.add_done_callback(lambda _: woken.append("claim"))
    created, claimed = await asyncio.gather(creating, claiming)
    if store.group_commit:
        assert claimed is not None and claimed.id == created.id == new.id
        assert woken == ["claim", "create"]
    else:  # each committed on its own: the claim may or may not have found it
        assert claimed is None or claimed.id == new.id
