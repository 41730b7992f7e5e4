"""The web console in a real browser (Chromium via Playwright) against a real server on
loopback, with the sandbox engine: the playground, the gallery, the admin area, and every bad
input of issue 17 shown as a readable message. Each test also checks that the page asked no
other host for anything and logged no console error, uncaught exception or CSP violation.
"""

from __future__ import annotations

import concurrent.futures
import io
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import LiveServer, make_settings, serve_in_thread
from console_browser import Watch, browser, context, csp_violations
from images_util import png_bytes
from seedbed.console.api import thumb_key
from seedbed.engines import default_engines

ADMIN_TOKEN = "sba-console-test-token"
T2I = "seedream/4.5-text-to-image"
EDIT = "seedream/4.5-edit"
#: the browser tests share one server; each waits at most this long for a result
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("console"), admin_token=ADMIN_TOKEN)
    # slow enough steps that progress is seen moving, fast enough for the suite
    engines = default_engines(sandbox_steps=6, sandbox_step_seconds=0.25)
    with serve_in_thread(settings, engines=engines) as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium: Any) -> Iterator[tuple[Any, Watch]]:
    with context(chromium, viewport={"width": 1200, "height": 900}) as (ctx, watch):
        p = ctx.new_page()
        p.set_default_timeout(WAIT_MS)
        yield p, watch
        # nothing went to another host; no console error, exception or CSP violation
        assert watch.foreign_requests == []
        assert csp_violations(p) == []
        assert watch.page_errors == []
        assert watch.console_errors == [], watch.console_errors


def off_loop(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a helper that calls ``asyncio.run`` (the store) on a thread of its own: sync
    Playwright keeps an event loop running on this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def add_key(live: LiveServer, credits: int, **limits: Any) -> tuple[str, str]:
    return off_loop(live.add_key, credits, **limits)  # type: ignore[no-any-return]


def sign_in(p: Any, live: LiveServer, key: str) -> None:
    p.goto(live.url + "/")
    p.get_by_test_id("api-key").fill(key)
    p.get_by_role("button", name="Sign in").click()
    p.locator("#signed-in").wait_for(state="visible")


def choose(p: Any, model: str) -> None:
    p.get_by_test_id("model").select_option(model)


def error_text(p: Any) -> str:
    box = p.get_by_test_id("error")
    box.wait_for(state="visible")
    return str(box.inner_text())


def test_playground_makes_a_seedream_45_image_with_live_progress(
    live: LiveServer, page: tuple[Any, Watch]
) -> None:
    p, _ = page
    key, _ = add_key(live, 100)
    sign_in(p, live, key)
    choose(p, T2I)
    # the form follows the model's schema: enums as choices with defaults, the prompt counted
    assert p.locator("#field-aspect_ratio").input_value() == "1:1"
    assert p.locator("#field-quality").input_value() == "basic"
    p.get_by_test_id("prompt").fill("a lighthouse at dusk")
    assert p.locator("#field-prompt-count").inner_text() == "20 / 3000"
    code = p.locator("section.code")
    assert "a lighthouse at dusk" in code.inner_text() or code.locator("pre").count() == 2
    # every progress text the page shows, recorded as it changes (no reload in between)
    p.evaluate(
        """() => {
        window.__progress = [];
        new MutationObserver(() => {
          const el = document.querySelector('[data-testid=progress]');
          if (el && window.__progress.at(-1) !== el.textContent) window.__progress.push(el.textContent);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
        window.__sameDocument = true;
      }"""
    )
    p.get_by_test_id("generate").click()
    image = p.get_by_test_id("result-image")
    image.wait_for(state="visible")
    p.get_by_test_id("result-meta").wait_for()
    size = p.evaluate(
        "() => { const i = document.querySelector('[data-testid=result-image]');"
        " return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [2048, 2048]
    meta = p.get_by_test_id("result-meta").inner_text()
    assert "2048×2048 px" in meta and "credits" in meta
    assert p.get_by_role("link", name="Download").get_attribute("href").startswith(live.url)
    seen = [int(re.sub(r"\D", "", text)) for text in p.evaluate("window.__progress")]
    assert p.evaluate("window.__sameDocument") is True
    assert any(0 < value < 100 for value in seen), seen
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen


def test_edit_model_takes_a_dropped_image(
    live: LiveServer, page: tuple[Any, Watch], tmp_path: Path
) -> None:
    p, _ = page
    key, _ = add_key(live, 100)
    sign_in(p, live, key)
    choose(p, EDIT)
    p.get_by_test_id("prompt").fill("make it blue")
    drop(p, "ref.png", "image/png", png_bytes(320, 240))
    p.locator(".thumbs img").wait_for()
    p.get_by_test_id("generate").click()
    p.get_by_test_id("result-image").wait_for(state="visible")
    p.get_by_test_id("result-meta").wait_for()
    assert "2048×2048 px" in p.get_by_test_id("result-meta").inner_text()


def drop(p: Any, name: str, mime: str, data: bytes, pad_to: int = 0) -> None:
    """Drop a file on the reference-image zone, as a person dragging it from their desktop;
    ``pad_to`` makes it that many bytes long in the page (zeros after ``data``)."""
    transfer = p.evaluate_handle(
        """([name, mime, bytes, padTo]) => {
          const body = new Uint8Array(Math.max(bytes.length, padTo));
          body.set(bytes);
          const t = new DataTransfer();
          t.items.add(new File([body], name, {type: mime}));
          return t;
        }""",
        [name, mime, list(data), pad_to],
    )
    p.get_by_test_id("dropzone").dispatch_event("drop", {"dataTransfer": transfer})


def test_gallery_lists_tasks_with_thumbnails_and_runs_one_again(
    live: LiveServer, page: tuple[Any, Watch]
) -> None:
    p, _ = page
    key, _ = add_key(live, 100)
    first = live.create(key, {"model": T2I, "input": {"prompt": "first"}})["data"]["taskId"]
    live.wait(key, first)
    second = live.create(key, {"model": T2I, "input": {"prompt": "second"}})["data"]["taskId"]
    live.wait(key, second)
    sign_in(p, live, key)
    p.get_by_test_id("nav-gallery").click()
    items = p.get_by_test_id("gallery-item")
    items.first.wait_for()
    assert items.count() == 2
    assert items.first.get_attribute("data-task-id") == second  # newest first
    thumb = items.first.locator("img")
    thumb.wait_for()
    p.wait_for_function("() => document.querySelector('.gallery img').naturalWidth > 0")
    src = thumb.get_attribute("src")
    assert "/api/v1/console/thumbs/results/" in src
    natural = p.evaluate("() => document.querySelector('.gallery img').naturalWidth")
    assert natural <= 256  # a small rendition, not the 2048 px original
    # filters: nothing failed yet
    p.locator("#filter-state").select_option("fail")
    p.locator(".gallery .empty").wait_for()
    p.locator("#filter-state").select_option("")
    items.first.wait_for()
    items.first.get_by_role("button").click()
    p.get_by_test_id("run-again").click()
    p.wait_for_url(re.compile(r"/\?task=[0-9a-f]{32}$"))
    p.get_by_test_id("result-image").wait_for(state="visible")
    assert p.get_by_test_id("prompt").input_value() == "second"
    again = p.url.rsplit("=", 1)[1]
    assert live.record(key, again)["data"]["param"].count("second") == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong key", "not valid"),
        ("revoked key", "not valid"),
        ("no credits", "Not enough credits"),
        ("rate limited", "Too many requests"),
        ("maintenance", "maintenance"),
        ("upload too large", "too large"),
        ("upload not an image", "not an image"),
        ("task fails", "The task failed (400)"),
    ],
)
def test_bad_input_shows_a_readable_message(
    live: LiveServer, page: tuple[Any, Watch], case: str, expected: str
) -> None:
    p, watch = page
    credits = 0 if case == "no credits" else 100
    limits = (
        {"create_per_window": 1, "create_window_seconds": 60.0} if case == "rate limited" else {}
    )
    key, key_id = add_key(live, credits, **limits)
    if case == "wrong key":
        p.goto(live.url + "/")
        p.get_by_test_id("api-key").fill("sb-" + "0" * 48)
        p.get_by_role("button", name="Sign in").click()
        assert expected in error_text(p)
        return
    sign_in(p, live, key)
    if case in ("upload too large", "upload not an image", "task fails"):
        choose(p, EDIT)
        p.get_by_test_id("prompt").fill("edit")
        if case == "upload too large":
            drop(p, "huge.png", "image/png", png_bytes(8, 8), pad_to=10 * 2**20 + 1)
        elif case == "upload not an image":
            drop(p, "notes.txt", "text/plain", b"just words")
        else:
            # named and typed as a PNG, so it is uploaded; the worker cannot decode it
            drop(p, "fake.png", "image/png", b"this is not a png at all")
            p.locator(".thumbs li").wait_for()
            p.get_by_test_id("generate").click()
        text = error_text(p)
        assert expected in text, text
        if case == "task fails":
            assert "image" in text.lower()
            # the broken upload's preview cannot render: the browser says so in the console
            watch.console_errors.clear()
        return
    choose(p, T2I)
    p.get_by_test_id("prompt").fill("a cat")
    if case == "revoked key":
        off_loop(live.store_call, lambda store: store.revoke_key(key_id))
    if case == "maintenance":
        admin_call(live, "PUT", "/api/v1/admin/maintenance", {"on": True})
    try:
        p.get_by_test_id("generate").click()
        if case == "rate limited":
            p.get_by_test_id("state").wait_for()
            p.get_by_test_id("generate").click()
        text = error_text(p)
    finally:
        if case == "maintenance":
            admin_call(live, "PUT", "/api/v1/admin/maintenance", {"on": False})
    assert expected in text, text
    if case == "rate limited":
        # HTTP 429 is a real status: Chromium notes the failed fetch in the console itself
        assert all("429" in line for line in watch.console_errors)
        watch.console_errors.clear()
    # shown next to the Generate button that caused it
    assert p.evaluate(
        "() => document.querySelector('[data-testid=generate]')"
        ".nextElementSibling === document.querySelector('[data-testid=error]')"
    )


def admin_call(live: LiveServer, method: str, path: str, body: Any = None) -> Any:
    response = live.client.request(
        method, path, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    answer = response.json()
    assert answer["code"] == 200, answer
    return answer["data"]


def test_admin_disables_a_model_and_the_playground_shows_it_unavailable(
    live: LiveServer, page: tuple[Any, Watch]
) -> None:
    p, _ = page
    key, _ = add_key(live, 100)
    p.goto(live.url + "/admin")
    p.locator("#admin-token").fill("wrong")
    p.get_by_role("button", name="Open admin").click()
    assert "admin token" in error_text(p)
    p.locator("#admin-token").fill(ADMIN_TOKEN)
    p.get_by_role("button", name="Open admin").click()
    switch = p.locator(f"input[data-model='{EDIT}']")
    switch.wait_for()
    assert p.get_by_role("heading", name="Queue").is_visible()
    assert p.get_by_role("heading", name="Workers").is_visible()
    try:
        switch.uncheck()
        deadline = time.monotonic() + 5
        while EDIT not in disabled_models(live):
            assert time.monotonic() < deadline, "the switch did not reach the server"
            time.sleep(0.05)
        sign_in(p, live, key)
        option = p.locator(f"[data-testid=model] option[value='{EDIT}']")
        assert "unavailable" in option.inner_text()
        choose(p, EDIT)
        assert "disabled" in p.locator(".notice").inner_text()
        assert p.get_by_test_id("generate").is_disabled()
    finally:
        admin_call(live, "PUT", "/api/v1/admin/models", {"model": EDIT, "enabled": True})


def disabled_models(live: LiveServer) -> set[str]:
    models = admin_call(live, "GET", "/api/v1/admin/switches")["models"]
    return {m["id"] for m in models if not m["enabled"]}


def test_admin_api_wants_the_token_and_limits_wrong_guesses(live: LiveServer) -> None:
    key, key_id = add_key(live, 5)
    wrong = {"Authorization": f"Bearer {key}"}  # an API key is not the admin token
    assert live.client.get("/api/v1/admin/keys", headers=wrong).json()["code"] == 401
    created = admin_call(
        live,
        "POST",
        "/api/v1/admin/keys",
        {"name": "from console", "credits": 3, "limits": {"openTaskCap": 2}},
    )
    assert created["key"].startswith("sb-") and created["limits"] == {"open_task_cap": 2}
    assert live.balance(created["key"]) == Decimal(3)
    assert (
        admin_call(live, "POST", f"/api/v1/admin/keys/{key_id}/credits", {"amount": "2.5"})[
            "balance"
        ]
        == "7.5"
    )
    admin_call(live, "PUT", f"/api/v1/admin/keys/{key_id}/limits", {"recordPerSecond": 7})
    listed = {k["id"]: k for k in admin_call(live, "GET", "/api/v1/admin/keys")}
    assert listed[key_id]["limits"] == {"record_per_second": 7}
    admin_call(live, "POST", f"/api/v1/admin/keys/{created['id']}/revoke")
    assert (
        live.client.get(
            "/api/v1/chat/credit", headers={"Authorization": f"Bearer {created['key']}"}
        ).json()["code"]
        == 401
    )
    # ten wrong tokens from one address, then even the right one waits
    for _ in range(10):
        live.client.get("/api/v1/admin/keys", headers={"Authorization": "Bearer guess"})
    refused = live.client.get(
        "/api/v1/admin/keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    live.app.state.console.guard._failures.clear()  # the other tests use the same address


def test_a_key_changed_in_the_console_is_seen_by_its_next_request(tmp_path: Path) -> None:
    """This process's key cache forgets a key the console revoked or limited: with a cache
    kept for a minute, the next request is refused or limited all the same."""
    settings = make_settings(tmp_path, admin_token=ADMIN_TOKEN, admin_refresh_seconds=60.0)
    with serve_in_thread(settings) as server:
        key, key_id = add_key(server, 5)
        other, _ = add_key(server, 5)
        headers = {"Authorization": f"Bearer {key}"}
        params = {"taskId": "0" * 32}

        def record_code() -> int:
            answer = server.client.get("/api/v1/jobs/recordInfo", params=params, headers=headers)
            return int(answer.json()["code"])

        assert record_code() != 401  # the key is read, and cached
        admin_call(server, "PUT", f"/api/v1/admin/keys/{key_id}/limits", {"recordPerSecond": 1})
        assert {record_code(), record_code()} >= {429}  # the new limit, at once
        admin_call(server, "POST", f"/api/v1/admin/keys/{key_id}/revoke")
        assert record_code() == 401
        assert server.record(other, "0" * 32)["code"] != 401  # only that key was forgotten


def test_pages_carry_strict_security_headers_and_versioned_assets(live: LiveServer) -> None:
    page = live.client.get("/gallery")
    assert page.status_code == 200 and "set-cookie" not in page.headers
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assets = re.findall(r'(?:src|href)="(/console/static/[0-9a-f]{12}/[\w.]+)"', page.text)
    assert len(assets) == 2
    for url in assets:
        answer = live.client.get(url)
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "<script>" not in page.text and " style=" not in page.text


def test_seedbed_admin_token_is_accepted_by_a_running_server(tmp_path: Path) -> None:
    """The token `seedbed admin token` prints (only its hash stored) opens the admin API of a
    server on the same database at once; a newer one replaces it; --revoke removes it."""
    from typer.testing import CliRunner

    from seedbed.cli import app

    settings = make_settings(tmp_path)  # no admin_token setting: only the stored one
    data = ["--data-dir", str(settings.data_dir)]
    runner = CliRunner()
    assert off_loop(runner.invoke, app, ["init", *data]).exit_code == 0
    with serve_in_thread(settings) as live:

        def status(token: str) -> int:
            answer = live.client.get(
                "/api/v1/admin/switches", headers={"Authorization": f"Bearer {token}"}
            )
            return int(answer.json()["code"])

        first = off_loop(runner.invoke, app, ["admin", "token", *data])
        assert first.exit_code == 0
        token = first.stdout.strip()
        assert token.startswith("sba-") and status(token) == 200
        stored = off_loop(live.store_call, lambda store: store.admin_token_hash())
        assert token not in stored  # a hash, not the token
        second = off_loop(runner.invoke, app, ["admin", "token", *data]).stdout.strip()
        assert status(second) == 200 and status(token) == 401
        assert off_loop(runner.invoke, app, ["admin", "token", "--revoke", *data]).exit_code == 0
        assert status(second) == 401


def test_thumbnails_are_made_once_and_kept_under_thumbs(live: LiveServer) -> None:
    key, _ = add_key(live, 100)
    task = live.create(key, {"model": T2I, "input": {"prompt": "thumb"}})["data"]["taskId"]
    live.wait(key, task)
    listed = live.client.get(
        "/api/v1/console/tasks", params={"limit": 1}, headers={"Authorization": f"Bearer {key}"}
    ).json()["data"]
    url = listed["tasks"][0]["thumbnailUrls"][0]
    first = live.client.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(first.content)) as image:
        assert max(image.size) == 256
    stored = live.settings.files_dir / thumb_key(url.split("/thumbs/", 1)[1])
    made_at = stored.stat().st_mtime_ns
    assert live.client.get(url).content == first.content
    assert stored.stat().st_mtime_ns == made_at  # read back, not made again
    unknown = url.rsplit("_", 1)[0] + "_" + "0" * 32 + ".png"
    assert live.client.get(unknown).status_code == 404
    assert live.client.get(live.url + "/api/v1/console/thumbs/uploads/x.png").status_code == 404
