"""The callback dispatcher with a memory store: schedule, signing, refusals at delivery time."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
from decimal import Decimal
from typing import Any

import pytest

from hook_receiver import Seen, serve_hooks
from seedbed import netguard
from seedbed.callbacks import (
    DEFAULT_RETRY_DELAYS,
    ENDED_KEPT,
    LEASE_MARGIN,
    USER_AGENT,
    Dispatcher,
    DispatcherConfig,
    signature,
)
from seedbed.outbox import CallbackState
from seedbed.store.memory import MemoryStore
from seedbed.tasks import NewKey, NewTask, Outcome, new_task_id


def test_the_default_schedule_is_ten_attempts_over_about_six_hours() -> None:
    config = DispatcherConfig()
    assert config.max_attempts == 10
    assert 5.5 * 3600 <= sum(DEFAULT_RETRY_DELAYS) <= 6.5 * 3600
    assert list(DEFAULT_RETRY_DELAYS) == sorted(DEFAULT_RETRY_DELAYS)  # backing off


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.75), (0.5, 1.0), (1.0, 1.25)])
def test_retry_delays_get_jitter_and_end(draw: float, factor: float) -> None:
    dispatcher = Dispatcher(
        store=MemoryStore(), config=DispatcherConfig(retry_delays=(10, 20)), rng=lambda: draw
    )
    assert dispatcher.retry_delay(1) == pytest.approx(10 * factor)
    assert dispatcher.retry_delay(2) == pytest.approx(20 * factor)
    assert dispatcher.retry_delay(3) is None


def test_signature_is_kies_scheme() -> None:
    expected = base64.b64encode(
        hmac.new(b"k3y", b"0123abcd.1700000000", hashlib.sha256).digest()
    ).decode()
    assert signature("k3y", "0123abcd", "1700000000") == expected


async def _finished(store: MemoryStore, url: str, *, new_key: bool = True) -> str:
    if new_key:
        await store.create_key(
            NewKey(id="k", name="k", key_hash="h", credits=Decimal(5), hmac_key="s")
        )
    task_id = new_task_id()
    new = NewTask(
        id=task_id,
        key_id="k",
        model="bytedance/seedream",
        param="{}",
        input={},
        callback_url=url,
        reserve=Decimal(1),
        origin="http://seedbed.test",
    )
    await store.create_task(new, open_task_cap=5)
    await store.finish(task_id, Outcome.success(("results/a.png",), Decimal(1)), worker_id=None)
    return task_id


async def _run_until(
    dispatcher: Dispatcher, store: MemoryStore, task_id: str, state: CallbackState
) -> None:
    runner = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(10):
            while True:
                record = await store.get_callback(task_id)
                if record is not None and record.state is state:
                    return
                await asyncio.sleep(0.01)
    finally:
        dispatcher.stop()
        await runner


async def _to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]  # every receiver name is the loopback receiver, allowed below


LOOPBACK = netguard.NetPolicy.from_cidrs(["127.0.0.0/8"])


async def test_a_name_that_rebinds_to_a_private_address_is_refused_at_delivery() -> None:
    """Accepted at create (it resolved publicly then), refused when called: no request is sent."""
    store = MemoryStore()

    async def resolve(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    async with serve_hooks() as hooks:
        task_id = await _finished(store, hooks.url("/cb", host="hooks.example"))
        dispatcher = Dispatcher(
            store=store,
            config=DispatcherConfig(retry_delays=(0.01,), poll_seconds=0.05),
            resolver=resolve,
        )
        await _run_until(dispatcher, store, task_id, CallbackState.DEAD)
    assert hooks.connections == []
    attempts = await store.callback_attempts(task_id)
    assert [a.status for a in attempts] == [None, None]
    assert all("resolves to a refused address" in (a.error or "") for a in attempts)


async def test_each_attempt_is_signed_and_links_use_the_tasks_origin() -> None:
    store = MemoryStore()

    async def answer(seen: Seen) -> int:
        return 503 if len(hooks.seen) == 1 else 204

    async with serve_hooks(answer) as hooks:
        task_id = await _finished(store, hooks.url("/cb", host="hooks.example"))
        dispatcher = Dispatcher(
            store=store,
            config=DispatcherConfig(
                retry_delays=(0.01, 0.01), poll_seconds=0.05, net_policy=LOOPBACK
            ),
            resolver=_to_loopback,
            clock=lambda: 1_700_000_000.5,
        )
        await _run_until(dispatcher, store, task_id, CallbackState.DELIVERED)
    assert len(hooks.seen) == 2
    for request in hooks.seen:
        assert request.path == "/cb"
        assert request.headers["x-webhook-timestamp"] == "1700000000"
        assert request.headers["x-webhook-signature"] == signature("s", task_id, "1700000000")
        assert request.headers["host"] == f"hooks.example:{hooks.port}"
        assert request.headers["user-agent"] == USER_AGENT
        assert (
            b'"resultJson":"{\\"resultUrls\\":[\\"http://seedbed.test/files/results/a.png\\"]}"'
            in request.body
        )
    assert hooks.seen[0].body == hooks.seen[1].body


def _local_dispatcher(store: MemoryStore) -> tuple[Dispatcher, list[str]]:
    """A dispatcher whose receivers are all on loopback, and whose outcomes are kept."""
    outcomes: list[str] = []
    dispatcher = Dispatcher(
        store=store,
        config=DispatcherConfig(retry_delays=(3600.0,), timeout=5.0, net_policy=LOOPBACK),
        resolver=_to_loopback,
        on_outcome=outcomes.append,
    )
    return dispatcher, outcomes


async def test_flush_delivers_what_is_due_and_leaves_later_retries() -> None:
    store = MemoryStore()

    async def answer(seen: Seen) -> int:
        await asyncio.sleep(0.05)  # still in flight when flush first looks
        return 200

    async with serve_hooks(answer) as hooks:
        due = await _finished(store, hooks.url("/due", host="hooks.example"))
        later = await _finished(store, hooks.url("/later", host="hooks.example"), new_key=False)
        # ``later`` already failed once: its retry is an hour away
        await store.claim_callbacks(limit=2, lease_seconds=60)
        await store.release_callbacks([due])
        await store.record_callback_attempt(
            later,
            attempt=1,
            status=500,
            error="HTTP 500",
            duration_ms=1,
            delivered=False,
            retry_in=3600,
        )
        dispatcher, outcomes = _local_dispatcher(store)
        await dispatcher.flush(5.0)  # no run(): flush claims on its own
        dispatcher.stop()
        await dispatcher.run()  # already stopping: closes the kept connection
    assert [s.path for s in hooks.seen] == ["/due"] and outcomes == ["delivered"]
    delivered = await store.get_callback(due)
    assert delivered is not None and delivered.state is CallbackState.DELIVERED
    pending = await store.get_callback(later)
    assert pending is not None and pending.state is CallbackState.PENDING
    assert pending.attempts == 1


async def test_flush_gives_up_at_its_timeout_and_stop_makes_the_callback_due_again() -> None:
    store = MemoryStore()
    never = asyncio.Event()

    async def hang(seen: Seen) -> int:
        await never.wait()
        return 200

    async with serve_hooks(hang) as hooks:
        task_id = await _finished(store, hooks.url("/slow", host="hooks.example"))
        dispatcher, outcomes = _local_dispatcher(store)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await dispatcher.flush(0.2)
        assert 0.2 <= loop.time() - started < 2
        dispatcher.stop()
        await dispatcher.run()  # already stopping: only cuts off the attempt in flight
        never.set()
    assert outcomes == []
    record = await store.get_callback(task_id)
    assert record is not None and record.state is CallbackState.PENDING and record.attempts == 0
    assert [d.task_id for d in await store.claim_callbacks(limit=5, lease_seconds=60)] == [task_id]


class ClaimCountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.claims: list[int] = []  # how many each claim took

    async def claim_callbacks(self, *, limit: int, lease_seconds: float) -> Any:
        due = await super().claim_callbacks(limit=limit, lease_seconds=lease_seconds)
        self.claims.append(len(due))
        return due


async def test_a_delivery_that_ends_makes_no_claim_until_new_work_is_signalled() -> None:
    """Once a claim found fewer due than it asked for, a slot that frees up makes no claim
    (it would find nothing); a finish signalled to the dispatcher does."""
    store = ClaimCountingStore()

    async def answer(seen: Seen) -> int:
        return 204

    async with serve_hooks(answer) as hooks:
        first = await _finished(store, hooks.url())
        dispatcher, outcomes = _local_dispatcher(store)
        runner = asyncio.create_task(dispatcher.run())
        try:
            async with asyncio.timeout(10):
                while outcomes != ["delivered"]:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                assert store.claims == [1]  # not one more when the delivery ended
                second = await _finished(store, hooks.url(), new_key=False)
                dispatcher.wakeup.notify()  # as the server's finish listener does
                while outcomes != ["delivered", "delivered"]:
                    await asyncio.sleep(0.01)
            assert store.claims == [1, 1]
            for task_id in (first, second):
                record = await store.get_callback(task_id)
                assert record is not None and record.state is CallbackState.DELIVERED
        finally:
            dispatcher.stop()
            await runner


class _CountingStore(MemoryStore):
    """A memory store that counts reads of tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_task(self, task_id: str) -> Any:
        self.reads += 1
        return await super().get_task(task_id)


async def test_a_task_this_process_ended_is_delivered_without_reading_it_back() -> None:
    """The store hands its final record over (``finished``, its callback left for a claim):
    the first attempt's body is made from it, with no read of the task; a retry reads it from
    the store, and both bodies are the same."""
    store = _CountingStore()

    async def answer(seen: Seen) -> int:
        return 503 if len(hooks.seen) == 1 else 204

    async with serve_hooks(answer) as hooks:
        task_id = await _finished(store, hooks.url("/cb", host="hooks.example"))
        dispatcher, outcomes = _local_dispatcher(store)
        dispatcher.config = DispatcherConfig(
            retry_delays=(0.01,), poll_seconds=0.05, net_policy=LOOPBACK
        )
        final = await store.get_task(task_id)
        assert final is not None
        store.reads = 0
        dispatcher.finished(final, None)
        await _run_until(dispatcher, store, task_id, CallbackState.DELIVERED)
    assert outcomes == ["retry", "delivered"]
    assert store.reads == 1  # the retry's only
    assert len(hooks.seen) == 2 and hooks.seen[0].body == hooks.seen[1].body


async def test_final_records_kept_are_of_tasks_with_a_callback_and_bounded() -> None:
    store = MemoryStore()
    dispatcher = Dispatcher(store=store, config=DispatcherConfig())
    with_url = await store.get_task(await _finished(store, "https://hooks.example/cb"))
    without = await store.get_task(await _finished(store, "", new_key=False))
    assert with_url is not None and without is not None
    dispatcher.finished(without, None)
    assert dispatcher._ended == {}
    for index in range(ENDED_KEPT + 5):
        dispatcher.finished(dataclasses.replace(with_url, id=f"{index:032d}"), None)
    assert len(dispatcher._ended) == ENDED_KEPT
    assert f"{ENDED_KEPT + 4:032d}" in dispatcher._ended and f"{0:032d}" not in dispatcher._ended


class _ClaimsAndReads(ClaimCountingStore, _CountingStore):
    """Counts both claims and reads of tasks."""


async def test_a_callback_its_finish_claimed_is_sent_at_once_with_no_claim_or_read() -> None:
    """Wired as the server wires it: a finish claims its callback for this dispatcher
    (``lease_seconds``), which sends it from the final record it is handed, with no claim
    and no read of the task. A finish while no slot is free leaves its callback due, and
    the dispatcher's claim takes it when the slot frees."""
    store = _ClaimsAndReads()
    release = asyncio.Event()

    async def answer(seen: Seen) -> int:
        if len(hooks.seen) == 1:
            await release.wait()  # the first holds the only slot
        return 204

    async with serve_hooks(answer) as hooks:
        dispatcher, outcomes = _local_dispatcher(store)
        dispatcher.config = DispatcherConfig(concurrency=1, net_policy=LOOPBACK)
        store.lease_callbacks(dispatcher.lease_seconds)
        store.on_finish(dispatcher.finished)
        first = await _finished(store, hooks.url("/first"))
        assert dispatcher.lease_seconds() is None  # its one slot is taken
        second = await _finished(store, hooks.url("/second"), new_key=False)
        record = await store.get_callback(second)
        assert record is not None and record.next_attempt_at is not None
        assert store.claims == [] and store.reads == 0
        async with asyncio.timeout(10):
            while not hooks.seen:
                await asyncio.sleep(0.01)
            assert [s.path for s in hooks.seen] == ["/first"]  # sent with no claim
            runner = asyncio.create_task(dispatcher.run())
            release.set()
            while outcomes != ["delivered", "delivered"]:
                await asyncio.sleep(0.01)
        dispatcher.stop()
        await runner
    assert [s.path for s in hooks.seen] == ["/first", "/second"]
    assert sum(store.claims) == 1  # the second's: the first was never claimed but by its finish
    assert store.reads == 0  # both bodies from the final records handed over
    for task_id in (first, second):
        done = await store.get_callback(task_id)
        assert done is not None and done.state is CallbackState.DELIVERED


async def test_no_callback_is_claimed_for_a_stopping_dispatcher() -> None:
    dispatcher = Dispatcher(store=MemoryStore(), config=DispatcherConfig())
    assert dispatcher.lease_seconds() == DispatcherConfig().timeout + LEASE_MARGIN
    dispatcher.stop()
    assert dispatcher.lease_seconds() is None


async def test_a_callback_claimed_as_the_dispatcher_stops_is_handed_back_at_once() -> None:
    """A finish asks for the lease before the dispatcher stops and commits after: the claim
    it made is released, due at once for the next dispatcher, not after its lease."""
    store = MemoryStore()
    dispatcher = Dispatcher(store=store, config=DispatcherConfig())
    store.lease_callbacks(lambda: 60.0)  # asked for before the stop below
    store.on_finish(dispatcher.finished)
    runner = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(0)
    dispatcher.stop()
    task_id = await _finished(store, "http://hooks.test/late")
    await runner
    async with asyncio.timeout(5):  # the lease is a minute
        while not (due := await store.claim_callbacks(limit=5, lease_seconds=60)):
            await asyncio.sleep(0.01)
    assert [d.task_id for d in due] == [task_id]
