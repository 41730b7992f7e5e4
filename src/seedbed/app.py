"""``create_app``: the FastAPI application factory. Nothing global: build as many as you like."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from seedbed import __version__, errors, netguard
from seedbed import store as store_module
from seedbed.api import account, envelope, files, health, jobs, models
from seedbed.api.context import Context, FlagsCache, KeyCache
from seedbed.config import Settings
from seedbed.engines import Engines, build_engines
from seedbed.storage.local import LocalStorage
from seedbed.store.base import Store
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig

__all__ = ["build_context", "build_worker", "create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    storage: LocalStorage | None = None,
    engines: Engines | None = None,
) -> FastAPI:
    """Build the API; the store opens, and the in-process worker starts, with the app's lifespan."""
    ctx = build_context(settings, store=store, storage=storage, engines=engines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.store.open()
        worker_task: asyncio.Task[None] | None = None
        worker: Worker | None = None
        if settings.worker:
            worker = build_worker(ctx)
            worker_task = asyncio.create_task(worker.run(), name="seedbed-worker")
        try:
            yield
        finally:
            if worker is not None and worker_task is not None:
                worker.stop()
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
            ctx.wakeup.close()
            await ctx.store.close()

    app = FastAPI(
        title="seedbed",
        version=__version__,
        description="A self-hosted, kie.ai-compatible task server for Seedream image models.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    for module in (jobs, account, models, files, health):
        app.include_router(module.router)
    _install_error_handlers(app)
    return app


def build_context(
    settings: Settings,
    *,
    store: Store | None = None,
    storage: LocalStorage | None = None,
    engines: Engines | None = None,
) -> Context:
    """The collaborators one process shares between its API and its worker."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = store or store_module.open_store(settings.database)
    return Context(
        settings=settings,
        store=store,
        storage=storage or LocalStorage(settings.files_dir),
        engines=engines if engines is not None else build_engines(settings),
        wakeup=Wakeup(settings.run_dir),
        net_policy=netguard.NetPolicy.from_cidrs(settings.allow_network),
        flags=FlagsCache(store, settings.admin_refresh_seconds),
        keys=KeyCache(store, settings.admin_refresh_seconds),
    )


def build_worker(ctx: Context) -> Worker:
    settings = ctx.settings
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
        ),
        pricing=ctx.pricing,
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def on_seedbed_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.SeedbedError)
        return envelope.error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error = errors.SeedbedError(str(exc.detail))
        error.code = exc.status_code
        return envelope.error_response(error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Logged with its traceback by the server; the client never sees internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return envelope.error_response(errors.SeedbedError())

    app.add_exception_handler(errors.SeedbedError, on_seedbed_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
