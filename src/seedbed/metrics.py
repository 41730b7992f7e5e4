"""Prometheus metrics: counters kept in process, the queue read from the store per scrape.

Each app owns its ``CollectorRegistry`` (no module globals: tests build many apps). Counters
count what *this process* did (the API's creates and cancels, the in-process worker's runs),
as Prometheus expects of a scraped process; the queue gauges are read from the store at scrape
time with one indexed query, so they are right whichever process queued or took the tasks.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seedbed.api.envelope import KIE_CODE
from seedbed.store.base import QueueSummary
from seedbed.tasks import Task

__all__ = ["CONTENT_TYPE_LATEST", "HttpMetrics", "Metrics", "RouteDurations"]

#: generation times run from a sandbox's milliseconds to a large model's minutes
_GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)
#: API answers take from a fraction of a millisecond (recordInfo from memory) to seconds (an
#: upload fetched from a URL)
_HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The metrics of one seedbed process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks_created = Counter(
            "seedbed_tasks_created", "Tasks accepted by createTask.", ["model"], registry=r
        )
        self._created: dict[str, Any] = {}
        self.tasks_finished = Counter(
            "seedbed_tasks_finished",
            "Tasks ended by this process, by final state.",
            ["model", "state"],
            registry=r,
        )
        self.generation_seconds = Histogram(
            "seedbed_generation_seconds",
            "Time an engine took to generate a task's images.",
            ["model"],
            buckets=_GENERATION_BUCKETS,
            registry=r,
        )
        self.callback_deliveries = Counter(
            "seedbed_callback_deliveries",
            "Callback delivery attempts, by outcome (delivered, retry, dead).",
            ["outcome"],
            registry=r,
        )
        self.loop_restarts = Counter(
            "seedbed_loop_restarts",
            "Background loops (worker, callbacks, retention, feed, health) that died and were "
            "restarted by the supervisor.",
            ["loop"],
            registry=r,
        )
        self.credits_charged = Counter(
            "seedbed_credits_charged",
            "Credits charged for successful tasks.",
            ["model"],
            registry=r,
        )
        self.http_requests = Counter(
            "seedbed_http_requests",
            "HTTP requests answered, by route template and the answer's kie code (the envelope's "
            "code: 401, 422, 455, ... come with HTTP 200; the HTTP status where there is no "
            "envelope).",
            ["route", "code"],
            registry=r,
        )
        self.http_duration = RouteDurations(_HTTP_BUCKETS)
        r.register(self.http_duration)
        self.rate_limited = Counter(
            "seedbed_rate_limited",
            "Requests refused with 429, by limit (create_rate, open_tasks, record_rate).",
            ["limit"],
            registry=r,
        )
        self._rate_limited: dict[str, Any] = {}
        self.queue_depth = Gauge(
            "seedbed_queue_depth",
            "Tasks waiting or queuing (not yet generating), by engine.",
            ["engine"],
            registry=r,
        )
        self.queue_oldest_seconds = Gauge(
            "seedbed_queue_oldest_age_seconds",
            "Age of the oldest waiting or queuing task, by engine (0 when none).",
            ["engine"],
            registry=r,
        )
        self.event_streams = Gauge(
            "seedbed_event_streams", "Open live-event (SSE) streams.", registry=r
        )
        # relay engines (issue 15): what each upstream was asked and answered
        self.upstream_requests = Counter(
            "seedbed_upstream_requests",
            "Requests to relay engines' upstreams, by engine and outcome "
            "(ok, refused, retry, key, down, download).",
            ["engine", "outcome"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "seedbed_upstream_seconds",
            "Time an upstream took to answer one request, by engine.",
            ["engine"],
            buckets=_GENERATION_BUCKETS,
            registry=r,
        )
        self.upstream_images = Counter(
            "seedbed_upstream_images",
            "Images bought from upstreams (returned by them), by engine.",
            ["engine"],
            registry=r,
        )

    # -- recording -------------------------------------------------------------------------
    def created(self, model: str) -> None:
        # the labelled child, looked up once per model: ``labels()`` costs more than ``inc()``
        # on createTask's path
        child = self._created.get(model)
        if child is None:
            child = self._created[model] = self.tasks_created.labels(model)
        child.inc()

    def refused(self, limit: str) -> None:
        """A request refused by a rate limit or the open-task cap (``limit`` names which)."""
        child = self._rate_limited.get(limit)
        if child is None:
            child = self._rate_limited[limit] = self.rate_limited.labels(limit)
        child.inc()

    def finished(self, task: Task) -> None:
        self.tasks_finished.labels(task.model, task.state.value).inc()
        if task.credits_consumed:
            self.credits_charged.labels(task.model).inc(float(task.credits_consumed))

    def generated(self, task: Task, seconds: float) -> None:
        self.generation_seconds.labels(task.model).observe(seconds)

    def upstream_request(self, engine: str, outcome: str, seconds: float) -> None:
        """One exchange of a relay engine with its upstream (a ``RelayObserver`` call)."""
        self.upstream_requests.labels(engine, outcome).inc()
        if outcome != "down":  # nothing answered: no latency to record
            self.upstream_seconds.labels(engine).observe(seconds)

    def upstream_bought(self, engine: str, images: int) -> None:
        self.upstream_images.labels(engine).inc(images)

    # -- scraping --------------------------------------------------------------------------
    def set_queue(self, engine: str, queue: QueueSummary) -> None:
        """The queue gauges of one engine, from the store's summary of its models."""
        self.queue_depth.labels(engine).set(queue.depth)
        age = 0.0
        if queue.oldest_create_time is not None:
            age = max(0.0, time.time() - queue.oldest_create_time / 1000)
        self.queue_oldest_seconds.labels(engine).set(age)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RouteDurations(Collector):
    """``seedbed_http_request_duration_seconds{route}``: a histogram kept as plain numbers.

    prometheus_client's ``Histogram`` takes a lock for its sum and for the bucket on every
    observation; measured in the middleware, that doubled its cost per request (about 1.7 µs
    more). Observations come only from the event loop's thread (the middleware), as does the
    scrape, so plain lists suffice: one ``bisect`` and two additions per request, and the
    cumulative counts Prometheus wants are summed at scrape time.
    """

    name = "seedbed_http_request_duration_seconds"
    help = (
        "Time from a request's arrival to the end of its answer, by route template (an event "
        "stream's is its whole life)."
    )

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        # the ``le`` labels as prometheus_client writes them ("0.005", "1.0", "+Inf")
        self._le = [repr(b) for b in self._bounds] + ["+Inf"]
        #: per route: the count of each bucket (the last one +Inf), then the sum of seconds
        self._routes: dict[str, list[float]] = {}

    def observe(self, route: str, seconds: float) -> None:
        counts = self._routes.get(route)
        if counts is None:
            counts = self._routes[route] = [0.0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, seconds)] += 1  # the first bound >= seconds
        counts[-1] += seconds

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.help, labels=["route"])]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.help, labels=["route"])
        for route, counts in list(self._routes.items()):
            cumulative = list(accumulate(counts[:-1]))
            family.add_metric([route], list(zip(self._le, cumulative, strict=True)), counts[-1])
        return [family]


class HttpMetrics:
    """ASGI middleware counting answers by route template and kie code, and timing them.

    The label is the matched route's path template (``/files/{key:path}``), never the raw
    path, so unknown URLs and file names cannot blow up the number of series; unmatched
    requests count as ``"unmatched"``. The code is the one a kie client reads: a refusal leaves
    its envelope's ``code`` in the scope (``envelope.KIE_CODE``); any other answer's is its
    HTTP status (a success envelope's code is 200, like its status). Children are cached: the
    hot path is two dict look-ups, an increment and a bucket count.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._counter = metrics.http_requests
        self._durations = metrics.http_duration
        self._children: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            key = (template, scope.get(KIE_CODE, status[0]))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._counter.labels(template, str(key[1]))
            child.inc()
            self._durations.observe(template, time.perf_counter() - started)
