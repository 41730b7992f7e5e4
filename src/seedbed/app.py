"""``create_app``: the FastAPI application factory. Nothing global: build as many as you like."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from functools import partial

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from seedbed import __version__, admin_changes, console, errors, faults, netguard, startup
from seedbed import store as store_module
from seedbed.api import (
    account,
    common,
    docs,
    envelope,
    events,
    files,
    health,
    jobs,
    models,
    openapi,
    uploads,
)
from seedbed.api.context import Context, FlagsCache, KeyCache, refresh_caches
from seedbed.callbacks import Dispatcher, DispatcherConfig
from seedbed.config import Settings
from seedbed.engines import Engines, build_engines
from seedbed.engines.relay import RelayEngine
from seedbed.feed import TaskFeed
from seedbed.images import Encoding
from seedbed.links import Links, load_or_create_secret, parse_secret
from seedbed.metrics import HttpMetrics, Metrics
from seedbed.monitor import HealthMonitor
from seedbed.outbox import Delivery
from seedbed.pgnotify import (
    ADMIN_CHANGED,
    CALLBACKS,
    TASK_CHANGED,
    TASK_CREATED,
    PgNotifier,
    listen_dsn,
)
from seedbed.private import private_dir
from seedbed.ratelimit import SharedRateLimiter
from seedbed.retention import Sweeper
from seedbed.storage import LocalStorage, S3Storage, open_storage
from seedbed.store.base import Store
from seedbed.supervise import Supervisor
from seedbed.tasks import Task
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig

__all__ = [
    "build_context",
    "build_dispatcher",
    "build_monitor",
    "build_sweeper",
    "build_worker",
    "create_app",
    "start_shared",
]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    storage: LocalStorage | S3Storage | None = None,
    engines: Engines | None = None,
) -> FastAPI:
    """Build the API; the store opens, and the in-process worker starts, with the app's lifespan."""
    ctx = build_context(settings, store=store, storage=storage, engines=engines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await open_store_when_reachable(ctx)
        # Every background loop runs under the supervisor: one that dies is logged, counted
        # and started again, and readiness knows while the worker is down.
        supervisor = ctx.supervisor
        supervisor.start("feed", ctx.feed.run)
        ctx.shutdown_hooks.append(ctx.feed.close)
        # changes made by worker processes here (SQLite): read at once, not at the next poll
        ctx.task_changes.listen(on_message=lambda task_id: ctx.feed.poke(task_id.decode()))
        # keys and switches changed by an admin command here (SQLite): dropped at once
        ctx.admin_channel.listen(on_message=ctx.admin_changed_elsewhere)
        worker: Worker | None = None
        if settings.worker:
            worker = ctx.worker = build_worker(ctx)
            ctx.shutdown_hooks.append(worker.stop)
            supervisor.start("worker", worker.run, on_crash=worker.hand_back)
        monitor = build_monitor(ctx)
        supervisor.start("health", monitor.run)
        if settings.admin_refresh_seconds > 0:
            period = settings.admin_refresh_seconds / 2
            supervisor.start("caches", partial(refresh_caches, ctx.keys, ctx.flags, period))
        app.state.console.start(supervisor)  # the admin page's queue samples
        # Beside the worker, never in its way: callbacks and retention run as their own tasks.
        background: list[tuple[str, Dispatcher | Sweeper | HealthMonitor]] = [("health", monitor)]
        dispatcher: Dispatcher | None = None
        if settings.callbacks:
            dispatcher = build_dispatcher(ctx)
            # a finish here claims its callback for this dispatcher, which sends it at once
            ctx.store.lease_callbacks(dispatcher.lease_seconds)
            ctx.store.on_finish(dispatcher.finished)
            supervisor.start("callbacks", dispatcher.run)
            background.append(("callbacks", dispatcher))
        sweeper = build_sweeper(ctx)
        supervisor.start("retention", sweeper.run)
        background.append(("retention", sweeper))
        startup.log_serving(ctx)
        try:
            yield
        finally:
            ctx.begin_shutdown()
            if worker is not None:
                await _drain(worker, supervisor, settings.shutdown_grace_seconds)
            if dispatcher is not None:
                # Callbacks of the tasks that just ended go out before the process does; what
                # cannot be delivered in time stays in the outbox for the next start.
                await dispatcher.flush(
                    min(settings.callback_timeout, settings.shutdown_grace_seconds)
                )
            for _, service in background:
                service.stop()
            app.state.console.stop()
            for name, _ in background:
                await supervisor.stop(name, timeout=10.0)
            if ctx.notifier is not None:
                ctx.notifier.close()
            await supervisor.stop_all()  # the feed (its streams have ended), the notifier
            ctx.wakeup.close()
            ctx.callback_wakeup.close()
            ctx.task_changes.close()
            ctx.admin_channel.close()
            await ctx.store.close()

    app = FastAPI(
        title="seedbed",
        version=__version__,
        description="A self-hosted, kie.ai-compatible task server for Seedream image models.",
        lifespan=lifespan,
        # served from the package (api/docs.py): FastAPI's own pages load their assets from CDNs
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    for module in (jobs, events, account, common, uploads, models, files, health, docs):
        app.include_router(module.router)
    openapi.install(app)
    console.install(app, ctx)  # the web console at / and its API (issue 17)
    app.add_middleware(HttpMetrics, metrics=ctx.metrics)
    _install_error_handlers(app)
    return app


async def _drain(worker: Worker, supervisor: Supervisor, grace: float) -> None:
    """Let running tasks end within ``grace``, hand the rest back, then stop the worker."""
    try:
        await worker.drain(grace)
    except Exception:
        log.exception("draining the worker failed")
    # What was handed back stops at its engine's next step; give it a moment, then cancel.
    await supervisor.stop("worker", timeout=2.0)
    worker.close()


def build_context(
    settings: Settings,
    *,
    store: Store | None = None,
    storage: LocalStorage | S3Storage | None = None,
    engines: Engines | None = None,
) -> Context:
    """The collaborators one process shares between its API and its worker.

    On a shared store (PostgreSQL) nothing here depends on this host: wake-ups come from the
    database's notifications instead of sockets in ``<data_dir>/run``, the server secret from
    the database (read in ``start_shared``), createTask's rate limit is counted in the store;
    with object storage too, the data directory is not even created.
    """
    shared = settings.shared_store
    if not (shared and settings.storage_url):
        private_dir(settings.data_dir)
    store = store or store_module.open_store(settings.database)
    callback_wakeup = Wakeup(None if shared else settings.run_dir / "callbacks")
    # PostgreSQL's NOTIFY tells every host (TASK_CHANGED below); on SQLite, datagrams here
    task_changes = Wakeup(None if shared else settings.run_dir / "events")
    wakeup = Wakeup(None if shared else settings.run_dir)
    flags = FlagsCache(store, settings.admin_refresh_seconds)
    keys = KeyCache(store, settings.admin_refresh_seconds)

    def on_finish(task: Task, delivery: Delivery | None) -> None:
        if task.callback_url and delivery is None:
            callback_wakeup.notify()  # left due: the dispatchers here (this one too) claim it

    store.on_finish(on_finish)
    metrics = Metrics()
    feed = TaskFeed(store, interval=settings.events_poll_seconds)
    notifier: PgNotifier | None = None
    if shared:
        notifier = PgNotifier(listen_dsn(settings.database))
        # after a reconnection too: a notification sent meanwhile is lost, so look anyway
        notifier.subscribe(TASK_CREATED, lambda _: wakeup.work(), on_reconnect=True)
        notifier.subscribe(CALLBACKS, lambda _: callback_wakeup.work(), on_reconnect=True)
        notifier.subscribe(TASK_CHANGED, feed.poke)
        notifier.subscribe(
            ADMIN_CHANGED, partial(admin_changes.apply, keys=keys, flags=flags), on_reconnect=True
        )
    if settings.server_secret:
        links = Links(parse_secret(settings.server_secret))
    elif shared:
        links = Links()  # from the database, once it is open (start_shared)
    else:
        links = Links(load_or_create_secret(settings.data_dir))
    return Context(
        metrics=metrics,
        supervisor=Supervisor(on_restart=lambda loop: metrics.loop_restarts.labels(loop).inc()),
        settings=settings,
        store=store,
        # local files unless storage_url names an object store (s3://BUCKET[/PREFIX])
        storage=storage
        or open_storage(
            settings.storage_url,
            files_dir=settings.files_dir,
            s3_endpoint_url=settings.s3_endpoint_url,
        ),
        engines=engines if engines is not None else build_engines(settings),
        wakeup=wakeup,
        net_policy=netguard.NetPolicy.from_cidrs(settings.allow_network),
        flags=flags,
        keys=keys,
        admin_channel=admin_changes.sender(settings),
        links=links,
        callback_wakeup=callback_wakeup,
        task_changes=task_changes,
        feed=feed,
        shared_limiter=SharedRateLimiter(store) if shared else None,
        notifier=notifier,
    )


async def open_store_when_reachable(ctx: Context) -> None:
    """Open the store and take what is shared from it (``start_shared``), waiting up to
    ``startup_wait_seconds`` while the database cannot be reached: a process started beside
    its database, or while it restarts, waits for it rather than exiting."""
    deadline = time.monotonic() + ctx.settings.startup_wait_seconds
    delay = 0.25
    while True:
        try:
            await ctx.store.open()
            await start_shared(ctx)
            return
        except Exception as exc:
            if not faults.is_infrastructure_fault(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "the database cannot be reached yet (%s); trying again in %.1f s",
                faults.describe(exc),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)


async def start_shared(ctx: Context) -> None:
    """After ``store.open()``: what a process takes from a shared store before serving. The
    server secret from the database, and the notification listener under the supervisor."""
    if not ctx.links.ready:
        ctx.links.set_secret(await ctx.store.server_secret())
    if ctx.notifier is not None:
        ctx.supervisor.start("notifier", ctx.notifier.run)


def build_monitor(ctx: Context) -> HealthMonitor:
    """The probes behind readiness and createTask's storage check."""
    settings = ctx.settings
    return HealthMonitor(
        store=ctx.store,
        storage=ctx.storage,
        health=ctx.health,
        interval=settings.health_check_seconds,
        min_free_bytes=int(settings.storage_min_free_mb * 2**20),
    )


def build_worker(ctx: Context) -> Worker:
    settings = ctx.settings
    for engine in ctx.engines:
        if isinstance(engine, RelayEngine):
            engine.observer = ctx.metrics  # upstream requests, latency, images bought
    return Worker(
        store=ctx.store,
        storage=ctx.storage,
        engines=ctx.engines,
        wakeup=ctx.wakeup,
        config=WorkerConfig(
            concurrency=settings.worker_concurrency,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            poll_seconds=settings.poll_seconds,
            fetch_timeout=settings.fetch_timeout,
            net_policy=ctx.net_policy,
            engine_nice=settings.engine_nice,
            fault_retry_seconds=settings.fault_retry_seconds,
            postprocess_concurrency=settings.postprocess_concurrency,
            encoding=Encoding(png_compress_level=settings.png_compress_level),
        ),
        pricing=ctx.pricing,
        observer=_WorkerObserver(ctx),
        health=ctx.health,
    )


def build_dispatcher(ctx: Context) -> Dispatcher:
    """The callback dispatcher of a server process, configured from its settings."""
    settings = ctx.settings
    return Dispatcher(
        store=ctx.store,
        wakeup=ctx.callback_wakeup,
        # looked up per call, so a resolver set on the context later (tests' stubs) is used
        resolver=lambda host, port: ctx.resolver(host, port),
        on_outcome=lambda outcome: ctx.metrics.callback_deliveries.labels(outcome).inc(),
        config=DispatcherConfig(
            timeout=settings.callback_timeout,
            retry_delays=tuple(settings.callback_retry_delays),
            concurrency=settings.callback_concurrency,
            poll_seconds=settings.callback_poll_seconds,
            net_policy=ctx.net_policy,
            public_url=settings.public_url,
            fallback_base_url=f"http://{settings.host}:{settings.port}",
        ),
    )


def build_sweeper(ctx: Context) -> Sweeper:
    """The retention sweeper of a server process, configured from its settings."""
    settings = ctx.settings
    return Sweeper(
        store=ctx.store,
        storage=ctx.storage,
        result_retention=settings.result_retention_days * 86400,
        upload_retention=settings.upload_retention_days * 86400,
        interval=settings.retention_sweep_seconds,
    )


class _WorkerObserver:
    """The in-process worker's changes, passed on to live events and metrics."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def changed(self, task_id: str) -> None:
        self._ctx.task_changed(task_id)

    def generated(self, task: Task, seconds: float) -> None:
        self._ctx.metrics.generated(task, seconds)

    def finished(self, task: Task) -> None:
        self._ctx.task_ended(task)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_seedbed_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.SeedbedError)
        return envelope.error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error = errors.SeedbedError(str(exc.detail))
        error.code = exc.status_code
        # Starlette's 405 carries the route's ``Allow`` (RFC 9110); keep what it sets.
        return envelope.error_response(error, exc.headers)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client left mid-body (or httpguard cut off a too-slow one): nobody reads this
        # answer, and a stream of such clients must not fill the log with tracebacks.
        log.debug("client gone on %s %s", request.method, request.url.path)
        return envelope.error_response(errors.ValidationFailed("body: the client disconnected"))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        if faults.is_infrastructure_fault(exc):
            # A disk, database or storage fault: one line (no traceback per request) and an
            # answer that says what failed, without paths or internals.
            reason = faults.describe(exc)
            log.error("%s %s: %s", request.method, request.url.path, reason)
            return envelope.error_response(_fault_error(exc))
        # Logged with its traceback by the server; the client never sees internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return envelope.error_response(errors.SeedbedError())

    app.add_exception_handler(errors.SeedbedError, on_seedbed_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
    # Registered by class too, so that Starlette answers them in its exception middleware
    # (the catch-all above also re-raises to the server, which logs a traceback per request).
    from sqlalchemy.exc import SQLAlchemyError

    for fault_type in (OSError, SQLAlchemyError):
        app.add_exception_handler(fault_type, on_unexpected)


def _fault_error(exc: Exception) -> errors.SeedbedError:
    """What a client is told of an infrastructure fault: which part failed, to try later."""
    if faults.is_storage_full(exc):
        return errors.StorageFull()
    from sqlalchemy.exc import SQLAlchemyError

    if any(isinstance(one, SQLAlchemyError) for one in faults.causes(exc)):
        return errors.SeedbedError("The database is unavailable right now; try again later")
    return errors.SeedbedError("Storage is unavailable right now; try again later")
