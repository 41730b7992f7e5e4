"""``create_app``: the FastAPI application factory. Nothing global: build as many as you like."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from seedbed import __version__, errors, netguard, startup
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
from seedbed.api.context import Context, FlagsCache, KeyCache
from seedbed.callbacks import Dispatcher, DispatcherConfig
from seedbed.config import Settings
from seedbed.engines import Engines, build_engines
from seedbed.engines.relay import RelayEngine
from seedbed.feed import TaskFeed
from seedbed.links import Links, load_or_create_secret
from seedbed.metrics import HttpMetrics
from seedbed.retention import Sweeper
from seedbed.storage import LocalStorage, S3Storage, open_storage
from seedbed.store.base import Store
from seedbed.tasks import Task
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig

__all__ = ["build_context", "build_dispatcher", "build_sweeper", "build_worker", "create_app"]

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
        await ctx.store.open()
        feed_task = asyncio.create_task(ctx.feed.run(), name="seedbed-feed")
        ctx.shutdown_hooks.append(ctx.feed.close)
        worker_task: asyncio.Task[None] | None = None
        worker: Worker | None = None
        if settings.worker:
            worker = ctx.worker = build_worker(ctx)
            ctx.shutdown_hooks.append(worker.stop)
            worker_task = asyncio.create_task(worker.run(), name="seedbed-worker")
        # Beside the worker, never in its way: callbacks and retention run as their own tasks.
        background: list[tuple[Dispatcher | Sweeper, asyncio.Task[None]]] = []
        dispatcher: Dispatcher | None = None
        if settings.callbacks:
            dispatcher = build_dispatcher(ctx)
            background.append((dispatcher, asyncio.create_task(dispatcher.run(), name="callbacks")))
        sweeper = build_sweeper(ctx)
        background.append((sweeper, asyncio.create_task(sweeper.run(), name="retention")))
        startup.log_serving(ctx)
        try:
            yield
        finally:
            ctx.begin_shutdown()
            if worker is not None and worker_task is not None:
                await _drain(worker, worker_task, settings.shutdown_grace_seconds)
            if dispatcher is not None:
                # Callbacks of the tasks that just ended go out before the process does; what
                # cannot be delivered in time stays in the outbox for the next start.
                await dispatcher.flush(
                    min(settings.callback_timeout, settings.shutdown_grace_seconds)
                )
            for service, _ in background:
                service.stop()
            for _, task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed_task
            ctx.wakeup.close()
            ctx.callback_wakeup.close()
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
    app.add_middleware(HttpMetrics, metrics=ctx.metrics)
    _install_error_handlers(app)
    return app


async def _drain(worker: Worker, worker_task: asyncio.Task[None], grace: float) -> None:
    """Let running tasks end within ``grace``, hand the rest back, then stop the worker."""
    try:
        await worker.drain(grace)
    except Exception:
        log.exception("draining the worker failed")
    # What was handed back stops at its engine's next step; give it a moment, then cancel.
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(worker_task), timeout=2.0)
    worker_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker_task


def build_context(
    settings: Settings,
    *,
    store: Store | None = None,
    storage: LocalStorage | S3Storage | None = None,
    engines: Engines | None = None,
) -> Context:
    """The collaborators one process shares between its API and its worker."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = store or store_module.open_store(settings.database)
    callback_wakeup = Wakeup(settings.run_dir / "callbacks")

    def on_finish(task: Task) -> None:
        if task.callback_url:
            callback_wakeup.notify()

    store.on_finish(on_finish)
    return Context(
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
        wakeup=Wakeup(settings.run_dir),
        net_policy=netguard.NetPolicy.from_cidrs(settings.allow_network),
        flags=FlagsCache(store, settings.admin_refresh_seconds),
        keys=KeyCache(store, settings.admin_refresh_seconds),
        links=Links(load_or_create_secret(settings.data_dir)),
        callback_wakeup=callback_wakeup,
        feed=TaskFeed(store, interval=settings.events_poll_seconds),
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
        ),
        pricing=ctx.pricing,
        observer=_WorkerObserver(ctx),
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
        self._ctx.feed.poke(task_id)

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
        # Logged with its traceback by the server; the client never sees internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return envelope.error_response(errors.SeedbedError())

    app.add_exception_handler(errors.SeedbedError, on_seedbed_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
