"""The web console (issue 17): playground, gallery, account and admin pages served at ``/``.

``pages`` serves the HTML shell and its static assets (``static/``, shipped in the wheel);
``api`` the key's own endpoints the pages need beyond kie's (task list, thumbnails, usage);
``admin`` the operator's JSON API behind the admin page; ``stats`` samples the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from seedbed.api.context import Context
from seedbed.console.admin import ADMIN_SCHEME, AdminGuard
from seedbed.console.api import Thumbnails
from seedbed.console.stats import QueueSampler
from seedbed.supervise import Supervisor

__all__ = ["Console", "install"]


@dataclass
class Console:
    """The console's per-app state (``app.state.console``)."""

    sampler: QueueSampler
    guard: AdminGuard = field(default_factory=AdminGuard)
    thumbnails: Thumbnails = field(default_factory=Thumbnails)

    def start(self, supervisor: Supervisor) -> None:
        supervisor.start("console-stats", self.sampler.run)

    def stop(self) -> None:
        self.sampler.stop()


def install(app: FastAPI, ctx: Context) -> Console:
    """Add the console's routes to ``app`` and its admin scheme to the OpenAPI document."""
    from seedbed.console import admin, api, pages

    for module in (pages, api, admin):
        app.include_router(module.router)
    console = Console(sampler=QueueSampler(ctx.store, ctx.metrics))
    app.state.console = console
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes.setdefault(
            ADMIN_SCHEME,
            {
                "type": "http",
                "scheme": "bearer",
                "description": "The admin token: SEEDBED_ADMIN_TOKEN or `seedbed admin token`.",
            },
        )
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return console
