"""The callback dispatcher: delivers the outbox's callbacks, signed, retried, never lost.

``Store.finish`` writes a finished task's callback to the outbox in the transaction that ends
the task; this module only reads and updates those rows (CONTRACT §5):

* A 2xx answer within ``timeout`` (15 s) is a delivery; anything else (another status, a
  timeout, a refused or unreachable address) is retried after the next delay of
  ``retry_delays`` with ±``jitter`` (default: 10 attempts over about six hours), then the row
  is marked dead and kept for ``seedbed callbacks redeliver``.
* Every attempt sends the same body (rendered from the finished task, which never changes)
  and, when the task's key has a webhook HMAC key, kie's signature headers; its
  ``User-Agent`` is ``seedbed/<version>``.
* Deliveries run concurrently, at most ``concurrency`` at once: a slow or dead receiver holds
  one slot for at most ``timeout``, never the others, and never the worker (the dispatcher
  runs beside it, woken by ``Store.on_finish``).
* Each claim leases its rows for ``timeout`` plus a margin, so a dispatcher that dies
  mid-attempt delays a callback, never loses it; on a clean stop the rows are released.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seedbed import __version__, netguard
from seedbed.api.views import callback_body
from seedbed.callback_http import CallbackPoster
from seedbed.outbox import Delivery
from seedbed.store.base import Store
from seedbed.tasks import Task
from seedbed.wakeup import Wakeup

__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "USER_AGENT",
    "Dispatcher",
    "DispatcherConfig",
    "signature",
    "signature_headers",
]

log = logging.getLogger(__name__)

#: seconds before attempts 2..10: doubling from 45 s, 6.4 hours in all (before jitter)
DEFAULT_RETRY_DELAYS: tuple[float, ...] = tuple(45.0 * 2**i for i in range(9))
#: how long a claimed row stays claimed beyond the attempt's own timeout
LEASE_MARGIN = 15.0
#: pause after the store failed a claim (it is down or busy)
STORE_RETRY = 1.0
#: every callback says who sends it (receivers log it, firewalls filter on it), not httpx's
USER_AGENT = f"seedbed/{__version__}"
#: final records kept for deliveries that have not claimed them yet (another process's
#: dispatcher may deliver a callback, and this one never sees it)
ENDED_KEPT = 1024


def signature(hmac_key: str, task_id: str, timestamp: str) -> str:
    """kie's webhook signature: base64(HMAC-SHA256(key, ``taskId + "." + timestamp``))."""
    message = f"{task_id}.{timestamp}".encode()
    digest = hmac.new(hmac_key.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signature_headers(hmac_key: str, task_id: str, now: float) -> dict[str, str]:
    """``X-Webhook-Timestamp`` (Unix seconds) and ``X-Webhook-Signature`` for one attempt."""
    timestamp = str(int(now))
    return {
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": signature(hmac_key, task_id, timestamp),
    }


@dataclass(frozen=True, kw_only=True)
class DispatcherConfig:
    """How callbacks are delivered (the ``callback_*`` settings)."""

    #: seconds one attempt may take, connection to answer
    timeout: float = 15.0
    #: seconds to wait before each retry; attempts in all = len(retry_delays) + 1
    retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS
    #: each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]
    jitter: float = 0.25
    #: deliveries in flight at once
    concurrency: int = 64
    #: safety-net poll: finishes in other processes and redeliveries from the CLI
    poll_seconds: float = 1.0
    net_policy: netguard.NetPolicy = field(default_factory=netguard.NetPolicy)
    #: the base URL of result links: ``public_url`` if set, else the task's own origin, else this
    public_url: str | None = None
    fallback_base_url: str = "http://127.0.0.1:8000"

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1


class Dispatcher:
    """Delivers due callbacks until ``stop()``; one per server process (more are safe)."""

    def __init__(
        self,
        *,
        store: Store,
        config: DispatcherConfig,
        wakeup: Wakeup | None = None,
        resolver: netguard.Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_outcome: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        """``tls``: the context that verifies HTTPS receivers (netguard's by default).
        ``on_outcome`` hears each attempt's outcome: "delivered", "retry" or "dead" (the
        server's metrics)."""
        self.store = store
        self.config = config
        self.wakeup = wakeup or Wakeup()
        self._poster = CallbackPoster(policy=config.net_policy, resolver=resolver, tls=tls)
        self._clock = clock
        self._rng = rng
        self._on_outcome = on_outcome
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._stopping = asyncio.Event()
        #: final records of tasks with a callback that this process just ended, by id: their
        #: first delivery builds its body from them instead of reading the task back
        self._ended: OrderedDict[str, Task] = OrderedDict()
        #: claims handed back as the dispatcher stops (kept referenced until done)
        self._releasing: set[asyncio.Task[None]] = set()

    def lease_seconds(self) -> float | None:
        """How long a finish in this process claims its task's callback for this dispatcher
        (``Store.lease_callbacks``); None when no slot is free or it is stopping: the
        callback is then left due, for whichever dispatcher claims it first. Asked inside
        the finish's transaction, before its delivery starts: the finishes of one SQLite
        group commit may each get a claim for the last free slot, so ``concurrency`` can be
        passed by the size of one commit."""
        if self._stopping.is_set() or len(self._inflight) >= self.config.concurrency:
            return None
        return self.config.timeout + LEASE_MARGIN

    def finished(self, task: Task, delivery: Delivery | None) -> None:
        """A finish of this process's store committed (``Store.on_finish``): a callback that
        it claimed for this dispatcher is delivered at once, with no claim of its own. The
        final record (a terminal record does not change) makes the body of the callback's
        first attempt, with no read of the task, whoever claims it later."""
        if not task.callback_url or not task.state.is_terminal:
            return
        if delivery is not None:
            if not self._stopping.is_set():
                self._start(delivery, task)
                return
            # Claimed for this dispatcher (its lease asked for) just before it began to stop:
            # handed back, due at once for the next dispatcher, not after its lease runs out.
            self._release_later(task.id)
        # Not claimed here (no free slot) or stopping: any dispatcher's claim takes it.
        self._ended[task.id] = task
        if len(self._ended) > ENDED_KEPT:  # delivered by another process: not popped
            self._ended.popitem(last=False)

    def _release_later(self, task_id: str) -> None:
        async def release() -> None:
            try:
                await self.store.release_callbacks([task_id])
            except Exception as exc:  # the store is gone: the lease runs out instead
                log.warning(
                    "callback for task %s left claimed until its lease ends (%r)", task_id, exc
                )

        releasing = asyncio.get_running_loop().create_task(release())
        self._releasing.add(releasing)
        releasing.add_done_callback(self._releasing.discard)

    def stop(self) -> None:
        """Finish ``run()``: in-flight attempts are cut off and their rows made due again."""
        self._stopping.set()
        self.wakeup.kick()

    async def flush(self, timeout: float) -> None:
        """At shutdown, before ``stop()``: deliver what is due now (the callbacks of tasks that
        just ended) for up to ``timeout`` seconds. Retries scheduled for later, and what is not
        delivered in time, stay in the outbox for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            free = self.config.concurrency - len(self._inflight)
            if free > 0:
                await self._claim_some(free)
            if not self._inflight:
                return
            await asyncio.wait(
                list(self._inflight.values()), timeout=left, return_when=asyncio.FIRST_COMPLETED
            )

    def retry_delay(self, attempt: int) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (1-based); None: it was the last."""
        delays = self.config.retry_delays
        if attempt > len(delays):
            return None
        spread = self.config.jitter * (2 * self._rng() - 1)
        return max(0.0, delays[attempt - 1] * (1 + spread))

    async def run(self) -> None:
        """Claim due callbacks whenever woken (a finish, a free slot, a retry coming due)."""
        self.wakeup.listen()
        # The work signals when a claim last found fewer due than it asked for: until a new
        # one (a task finished, a retry came due, a redelivery) or the poll, a claim would find
        # nothing, so a delivery that ends and frees its slot makes none (a write on the loop).
        drained: int | None = None
        try:
            while not self._stopping.is_set():
                self.wakeup.clear()
                free = self.config.concurrency - len(self._inflight)
                signals = self.wakeup.work_signals
                if free > 0 and drained != signals:
                    if await self._claim_some(free):
                        drained = None
                        continue  # as many as asked for: more may be due
                    drained = signals
                if not await self.wakeup.wait(self.config.poll_seconds):
                    drained = None  # the poll: look whatever the signals say
        finally:
            await self._shutdown()

    async def _claim_some(self, free: int) -> bool:
        """Start up to ``free`` deliveries; True when exactly ``free`` were due."""
        try:
            due = await self.store.claim_callbacks(
                limit=free, lease_seconds=self.config.timeout + LEASE_MARGIN
            )
        except Exception:
            log.exception("claiming callbacks failed; retrying in %s s", STORE_RETRY)
            await asyncio.sleep(STORE_RETRY)
            return False
        for delivery in due:
            self._start(delivery, self._ended.pop(delivery.task_id, None))
        return len(due) == free

    def _start(self, delivery: Delivery, task: Task | None) -> None:
        """Deliver ``delivery`` (claimed for this dispatcher) now; ``task``: its final record,
        when this process has it."""
        name = f"callback-{delivery.task_id}"
        self._inflight[delivery.task_id] = asyncio.create_task(
            self._deliver(delivery, task), name=name
        )

    async def _shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        running = dict(self._inflight)
        for task in running.values():
            task.cancel()
        for task in running.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if running:
            # not attempted (or cut off): due again at once, for whoever runs next
            with contextlib.suppress(Exception):
                await self.store.release_callbacks(list(running))
        if self._releasing:  # before the store closes
            await asyncio.wait(list(self._releasing), timeout=5)
        await self._poster.close()
        self.wakeup.close()

    # -- one attempt ---------------------------------------------------------------------------
    async def _deliver(self, delivery: Delivery, task: Task | None) -> None:
        try:
            await self._attempt(delivery, task)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the row stays claimed and comes due again when its lease runs out
            log.exception("callback for task %s: attempt could not be recorded", delivery.task_id)
        finally:
            self._inflight.pop(delivery.task_id, None)
            self.wakeup.kick()

    async def _attempt(self, delivery: Delivery, task: Task | None) -> None:
        attempt = delivery.attempts + 1
        if task is None:
            task = await self.store.get_task(delivery.task_id)
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        if task is None or not task.state.is_terminal:
            error = "the task is missing or not finished"
        else:
            status, error = await self._send(delivery, task)
        duration_ms = round((time.monotonic() - started) * 1000)
        delivered = status is not None and 200 <= status < 300
        retry_in = None if delivered or task is None else self.retry_delay(attempt)
        await self.store.record_callback_attempt(
            delivery.task_id,
            attempt=attempt,
            status=status,
            error=error,
            duration_ms=duration_ms,
            delivered=delivered,
            retry_in=retry_in,
        )
        self._on_outcome("delivered" if delivered else "dead" if retry_in is None else "retry")
        if delivered:
            log.info("callback for task %s delivered (attempt %d)", delivery.task_id, attempt)
        elif retry_in is None:
            log.warning(
                "callback for task %s is dead after %d attempts: %s",
                delivery.task_id,
                attempt,
                error,
            )
        else:
            log.info(
                "callback for task %s: attempt %d failed (%s); retrying in %.0f s",
                delivery.task_id,
                attempt,
                error,
                retry_in,
            )
            self._wake_in(retry_in)

    async def _send(self, delivery: Delivery, task: Task) -> tuple[int | None, str | None]:
        base_url = self.config.public_url or task.origin or self.config.fallback_base_url
        body = callback_body(task, base_url=base_url.rstrip("/"))
        headers = {"User-Agent": USER_AGENT}
        if delivery.hmac_key:
            headers.update(signature_headers(delivery.hmac_key, task.id, self._clock()))
        try:
            status = await self._poster.post(
                delivery.url, body, headers=headers, timeout=self.config.timeout
            )
        except netguard.NetguardError as exc:
            return None, exc.reason
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    def _wake_in(self, seconds: float) -> None:
        """Wake the loop when a retry comes due (the poll would find it too, only later)."""
        if seconds > 3600:
            return  # the poll finds it; no need to hold a timer for hours
        loop = asyncio.get_running_loop()
        handles: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._timers.difference_update(handles)
            self.wakeup.work()  # a retry is due: work a claim would now find

        handles.append(loop.call_later(seconds, fire))
        self._timers.update(handles)
