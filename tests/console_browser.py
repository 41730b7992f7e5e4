"""A Chromium driven by Playwright for the console's tests and screenshots.

Debian's ``chromium`` (``/usr/bin/chromium``; ``make test-services`` installs it), since
Playwright's own browser download cannot be reached. Every page is watched: a request to any
host but loopback is refused and recorded, and console errors, uncaught exceptions and CSP
violations are recorded, so a test can assert there were none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("SEEDBED_CHROMIUM", "/usr/bin/chromium")
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}

#: recorded in the page before any of its scripts run (CDP, so the CSP does not apply)
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@dataclass
class Watch:
    """What a browser context saw that it should not have."""

    foreign_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def context(chromium: Any, **options: Any) -> Iterator[tuple[Any, Watch]]:
    """A fresh context (its own sessionStorage) that refuses every non-loopback request."""
    watch = Watch()
    ctx = chromium.new_context(**options)

    def guard(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        scheme = urlsplit(route.request.url).scheme
        if scheme in ("data", "blob") or host in LOOPBACK:
            route.continue_()
        else:
            watch.foreign_requests.append(route.request.url)
            route.abort()

    ctx.route("**/*", guard)
    ctx.add_init_script(_WATCH_CSP)
    ctx.on("page", watch.attach)
    try:
        yield ctx, watch
    finally:
        ctx.close()


def csp_violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__cspViolations || []"))
