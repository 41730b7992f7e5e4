"""The one line a server logs when it starts: what it serves and where.

An operator reading the log of a fresh ``seedbed serve`` learns, from one line, the version,
the database (password hidden), where files go, which engine runs which models, whether a
worker runs in the process, and the URL of the API docs. The same facts ride along as fields
of the JSON log line, for log search.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from seedbed import __version__, catalogue
from seedbed.api.context import Context

__all__ = ["docs_url", "log_serving", "safe_database_url", "serving"]

log = logging.getLogger(__name__)


def log_serving(ctx: Context) -> None:
    message, fields = serving(ctx)
    log.info("%s", message, extra=fields)


def serving(ctx: Context) -> tuple[str, dict[str, Any]]:
    """The start-up line and its fields."""
    settings = ctx.settings
    database = safe_database_url(settings.database)
    storage = str(getattr(ctx.storage, "root", type(ctx.storage).__name__))
    served: dict[str, list[str]] = {engine.name: [] for engine in ctx.engines}
    unserved: list[str] = []
    for model in catalogue.CATALOGUE:
        engine = ctx.engines.for_model(model)
        if engine is None:
            unserved.append(model)
        else:
            served.setdefault(engine.name, []).append(model)
    engines = "; ".join(f"{name} runs {_models(models)}" for name, models in served.items())
    worker = (
        f"in this process (concurrency {settings.worker_concurrency})"
        if settings.worker
        else "none in this process"
    )
    docs = docs_url(settings.public_url, settings.host, settings.port)
    message = (
        f"seedbed {__version__} serving: database {database}; files in {storage}; "
        f"engines: {engines or 'none'}; worker {worker}; API docs at {docs}"
    )
    if unserved:
        message += f"; no engine serves {', '.join(unserved)}"
    fields = {
        "version": __version__,
        "dataDir": str(settings.data_dir),
        "database": database,
        "storage": storage,
        "engines": served,
        "worker": settings.worker,
        "docs": docs,
    }
    return message, fields


def docs_url(public_url: str | None, host: str, port: int) -> str:
    """Where a browser finds ``/docs``: under ``public_url`` if set, else at the address
    listened on (a wildcard address is reached on this machine as loopback)."""
    if public_url:
        return public_url.rstrip("/") + "/docs"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"http://{host}:{port}/docs"  # a host name
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}/docs"


def _models(models: list[str]) -> str:
    if len(models) == len(catalogue.CATALOGUE):
        return f"all {len(models)} models"
    return ", ".join(models) if models else "no model"


def safe_database_url(url: str) -> str:
    """``url`` with its password masked, as SQLAlchemy renders it (``***``)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable database URL)"
