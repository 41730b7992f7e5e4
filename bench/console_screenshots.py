"""Screenshots of each console page for docs/console/ (issue 17): a real server on loopback
with the sandbox engine, a few tasks made through the playground's own API, Chromium via
Playwright. Run: ``.venv/bin/python bench/console_screenshots.py`` (about 30 s)."""

from __future__ import annotations

import concurrent.futures
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from conftest import make_settings, serve_in_thread
from console_browser import browser, context

OUT = Path(__file__).parent.parent / "docs" / "console"
TOKEN = "sba-screenshots"


def save(page: Any, name: str) -> None:
    """A full-page capture, kept small: 256 colours."""
    raw = page.screenshot(full_page=True)
    with Image.open(io.BytesIO(raw)) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        small.save(OUT / f"{name}.png", optimize=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with serve_in_thread(make_settings(Path(tempfile.mkdtemp()), admin_token=TOKEN)) as live:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            key, _ = pool.submit(live.add_key, 250).result()
        for prompt, model in [
            ("a red fox in snow", "seedream/4.5-text-to-image"),
            ("a harbour at night", "seedream/5-lite-text-to-image"),
            ("a glass teapot", "bytedance/seedream"),
        ]:
            body = {"model": model, "input": {"prompt": prompt}}
            live.wait(key, live.create(key, body)["data"]["taskId"])
        with (
            browser() as chromium,
            context(chromium, viewport={"width": 1100, "height": 760}, color_scheme="light") as (
                ctx,
                watch,
            ),
        ):
            page = ctx.new_page()
            page.goto(live.url + "/")
            page.get_by_test_id("api-key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            page.locator("#signed-in").wait_for(state="visible")
            page.get_by_test_id("model").select_option("seedream/4.5-text-to-image")
            page.get_by_test_id("prompt").fill("a lighthouse on a cliff at dusk, oil painting")
            page.get_by_test_id("generate").click()
            page.get_by_test_id("result-meta").wait_for()
            page.locator("details.snippet").first.evaluate("(d) => { d.open = true; }")
            save(page, "playground")
            page.get_by_test_id("nav-gallery").click()
            page.get_by_test_id("gallery-item").first.wait_for()
            page.wait_for_function(
                "() => [...document.querySelectorAll('.gallery img')].every((i) => i.complete)"
            )
            save(page, "gallery")
            page.get_by_role("link", name="Account").click()
            page.get_by_test_id("balance").wait_for()
            save(page, "account")
            page.get_by_role("link", name="Admin").click()
            page.locator("#admin-token").fill(TOKEN)
            page.get_by_role("button", name="Open admin").click()
            page.get_by_role("heading", name="Keys").wait_for()
            save(page, "admin")
            page.emulate_media(color_scheme="dark")
            page.set_viewport_size({"width": 390, "height": 800})
            page.get_by_role("link", name="Playground").click()
            page.get_by_test_id("generate").wait_for()
            save(page, "playground-phone-dark")
            assert not watch.foreign_requests and not watch.console_errors, watch
    print("\n".join(f"{p.name}: {p.stat().st_size // 1024} KB" for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
