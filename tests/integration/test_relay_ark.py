"""The ``ark`` relay engine through a real seedbed server and a stand-in Ark API (issue 15).

Everything runs on loopback: the server (``serve_in_thread``), the stand-in
(``tests/ark_standin.py``, written from reference §1.11) and, for the route tests, a port where
nothing listens. Result images are fetched back from the server and checked pixel by pixel
size; credits are read through the API.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ark_standin import KEY, ArkStandIn, Canned, closed_port_url, error, image_png, serve_ark
from conftest import LiveServer, auth, make_settings, serve_in_thread
from seedbed import catalogue
from seedbed.engines.ark import DEFAULT_MODEL_IDS

KEY_ENV = "SEEDBED_TEST_ARK_KEY"
PROMPT = "a lighthouse on a cliff at dusk"


@pytest.fixture
def ark() -> Iterator[ArkStandIn]:
    with serve_ark() as standin:
        yield standin


def ark_engine(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "ark",
        "base_url": url,
        "api_key_env": KEY_ENV,
        "retry_base_seconds": 0.01,
        **extra,
    }


@pytest.fixture
def relay(tmp_path: Path, ark: ArkStandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = make_settings(
        tmp_path,
        engines={"ark": ark_engine(ark.url)},
        models={model: "ark" for model in DEFAULT_MODEL_IDS},
    )
    with serve_in_thread(settings) as live:
        yield live


def upload(live: LiveServer, key: str, colour: tuple[int, int, int] = (10, 200, 90)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(buf, "PNG")
    body = live.client.post(
        "/api/file-stream-upload",
        files={"file": ("in.png", buf.getvalue(), "image/png")},
        data={"uploadPath": "relay"},
        headers=auth(key),
    ).json()
    assert body["code"] == 200, body
    return str(body["data"]["downloadUrl"])


def results(live: LiveServer, data: dict[str, Any]) -> list[Image.Image]:
    urls = json.loads(data["resultJson"])["resultUrls"]
    images = []
    for url in urls:
        response = live.client.get(url)
        assert response.status_code == 200
        images.append(Image.open(io.BytesIO(response.content)))
    return images


def run(live: LiveServer, key: str, model: str, inp: dict[str, Any]) -> dict[str, Any]:
    created = live.create(key, {"model": model, "input": inp})
    assert created["code"] == 200, created
    return live.wait(key, created["data"]["taskId"])


def _input_for(model: str, image_url: str) -> dict[str, Any]:
    spec = catalogue.CATALOGUE[model]
    inp: dict[str, Any] = {"prompt": PROMPT}
    if spec.image_input is not None:
        inp[spec.image_input.field] = [image_url]
    return inp


def test_every_ark_model_gets_its_contract_size_and_ark_model_id(
    relay: LiveServer, ark: ArkStandIn
) -> None:
    key, _ = relay.add_key(1000)
    own = upload(relay, key)
    for model, ark_id in DEFAULT_MODEL_IDS.items():
        spec = catalogue.CATALOGUE[model]
        inp = _input_for(model, own)
        data = run(relay, key, model, inp)
        assert data["state"] == "success", (model, data)
        plan = spec.plan(spec.input_model.model_validate(inp), [(640, 480)])
        [image] = results(relay, data)
        assert image.size == (plan.width, plan.height), model
        assert image.format == plan.format.upper(), model
        sent = ark.generations()[-1]
        assert sent.body["model"] == ark_id
        assert sent.body["size"] == f"{plan.width}x{plan.height}"
        assert sent.body["watermark"] is False
        assert sent.body["response_format"] == "url"
        assert sent.authorization == f"Bearer {KEY}"
        if model == "bytedance/seedream":
            assert sent.body["guidance_scale"] == 2.5
        else:
            assert "guidance_scale" not in sent.body


def test_larger_contract_sizes_reach_ark_exactly(relay: LiveServer, ark: ArkStandIn) -> None:
    key, _ = relay.add_key(1000)
    cases = [
        ("seedream/4.5-text-to-image", {"aspect_ratio": "21:9", "quality": "high"}),
        (
            "bytedance/seedream-v4-text-to-image",
            {"image_size": "portrait_16_9", "image_resolution": "2K"},
        ),
        ("seedream/5-lite-text-to-image", {"aspect_ratio": "3:2", "quality": "high"}),
        ("bytedance/seedream", {"image_size": "landscape_16_9"}),
    ]
    for model, extra in cases:
        spec = catalogue.CATALOGUE[model]
        inp = {"prompt": PROMPT, **extra}
        data = run(relay, key, model, inp)
        assert data["state"] == "success", (model, data)
        plan = spec.plan(spec.input_model.model_validate(inp), [])
        assert ark.generations()[-1].body["size"] == f"{plan.width}x{plan.height}"
        assert results(relay, data)[0].size == (plan.width, plan.height)


def test_seed_is_sent(relay: LiveServer, ark: ArkStandIn) -> None:
    key, _ = relay.add_key()
    data = run(relay, key, "bytedance/seedream-v4-text-to-image", {"prompt": PROMPT, "seed": 4242})
    assert data["state"] == "success"
    assert ark.generations()[-1].body["seed"] == 4242


def test_an_edit_sends_this_servers_upload_as_a_data_url(
    relay: LiveServer, ark: ArkStandIn
) -> None:
    key, _ = relay.add_key()
    first = upload(relay, key, (250, 0, 0))
    second = upload(relay, key, (0, 0, 250))
    data = run(relay, key, "seedream/4.5-edit", {"prompt": PROMPT, "image_urls": [first, second]})
    assert data["state"] == "success", data
    sent = ark.generations()[-1].body["image"]
    assert isinstance(sent, list) and len(sent) == 2
    colours = []
    for url in sent:
        assert url.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.size == (640, 480)
        colours.append(image.convert("RGB").getpixel((320, 240)))
    assert colours[0][0] > 200 and colours[1][2] > 200  # in the order of image_urls
    one = run(relay, key, "seedream/4.5-edit", {"prompt": PROMPT, "image_urls": [first]})
    assert one["state"] == "success"
    assert isinstance(ark.generations()[-1].body["image"], str)  # one image: a string


def test_max_images_with_fewer_returned_charges_what_came_back(
    relay: LiveServer, ark: ArkStandIn
) -> None:
    key, _ = relay.add_key(100)
    ark.script.group_images = 2
    data = run(
        relay, key, "bytedance/seedream-v4-text-to-image", {"prompt": PROMPT, "max_images": 4}
    )
    assert data["state"] == "success", data
    body = ark.generations()[-1].body
    assert body["sequential_image_generation"] == "auto"
    assert body["sequential_image_generation_options"] == {"max_images": 4}
    assert len(results(relay, data)) == 2
    price = catalogue.CATALOGUE["bytedance/seedream-v4-text-to-image"].pricing.per_output["default"]
    assert relay.balance(key) == Decimal(100) - 2 * price


def test_a_content_refusal_fails_400_and_charges_nothing(
    relay: LiveServer, ark: ArkStandIn
) -> None:
    key, _ = relay.add_key(100)
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": "FORBIDDEN-TEXT please"})
    assert data["state"] == "fail"
    assert data["failCode"] == "400"
    assert "InputTextSensitiveContentDetected" in data["failMsg"]
    assert relay.balance(key) == Decimal(100)
    assert len(ark.generations()) == 1  # no retry


def test_429_twice_then_success(relay: LiveServer, ark: ArkStandIn) -> None:
    key, _ = relay.add_key()
    ark.script.queue = [
        error(429, "RateLimitExceeded", "slow down", {"Retry-After": "0"}),
        error(429, "RateLimitExceeded", "slow down", {"Retry-After": "0"}),
    ]
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "success", data
    assert len(ark.generations()) == 3


def test_5xx_past_the_retry_budget_fails_500_naming_the_answer(
    tmp_path: Path, ark: ArkStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = make_settings(
        tmp_path,
        engines={"ark": ark_engine(ark.url, max_retries=2)},
        models={"seedream/4.5-text-to-image": "ark"},
    )
    ark.script.queue = [error(503, "ServiceUnavailable", "overloaded")] * 3
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(100)
        data = run(live, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "fail" and data["failCode"] == "500"
    assert "HTTP 503" in data["failMsg"] and "overloaded" in data["failMsg"]
    assert len(ark.generations()) == 3


def test_upstream_down_falls_back_to_the_next_engine_of_the_route(
    tmp_path: Path, ark: ArkStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = make_settings(
        tmp_path,
        engines={"dead": ark_engine(closed_port_url()), "ark": ark_engine(ark.url)},
        models={"seedream/4.5-text-to-image": ["dead", "ark"]},
    )
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(100)
        created = live.create(
            key, {"model": "seedream/4.5-text-to-image", "input": {"prompt": PROMPT}}
        )
        task_id = created["data"]["taskId"]
        data = live.wait(key, task_id)
        assert data["state"] == "success", data
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "seedbed",
                "tasks",
                "get",
                task_id,
                "--json",
                "--data-dir",
                str(settings.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(shown.stdout)["engine"] == "ark"
        metrics = live.client.get("/metrics").text
        assert 'seedbed_upstream_requests_total{engine="dead",outcome="down"}' in metrics
        assert 'seedbed_upstream_images_total{engine="ark"} 1.0' in metrics
    assert len(ark.generations()) == 1


def test_a_rejected_key_fails_500_and_readyz_says_so(
    tmp_path: Path,
    ark: ArkStandIn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, "not-the-key-" + "z" * 20)
    settings = make_settings(
        tmp_path,
        engines={"ark": ark_engine(ark.url)},
        models={"seedream/4.5-text-to-image": "ark"},
    )
    with caplog.at_level(logging.INFO), serve_in_thread(settings) as live:
        key, _ = live.add_key(100)
        data = run(live, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
        ready = live.client.get("/readyz")
        assert live.balance(key) == Decimal(100)
    assert data["state"] == "fail" and data["failCode"] == "500"
    assert "rejected this server's API key" in data["failMsg"]
    assert ready.status_code == 503
    assert "rejects this server's key" in ready.json()["checks"]["upstream:ark"]
    assert any("rejected this server's API key" in r.getMessage() for r in caplog.records)


def test_the_key_never_reaches_logs_or_the_database(
    tmp_path: Path,
    ark: ArkStandIn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = make_settings(
        tmp_path,
        engines={"ark": ark_engine(ark.url, max_retries=1)},
        models={"seedream/4.5-text-to-image": "ark"},
    )
    ark.script.queue = [error(500, "InternalError", "boom"), error(500, "InternalError", "boom")]
    with caplog.at_level(logging.DEBUG), serve_in_thread(settings) as live:
        key, _ = live.add_key(100)
        failed = run(live, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
        done = run(live, key, "seedream/4.5-text-to-image", {"prompt": "FORBIDDEN-TEXT"})
    assert failed["failCode"] == "500" and done["failCode"] == "400"
    assert caplog.records, "the run logged nothing: the check below would prove nothing"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in repr(record.__dict__)
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_server_without_the_keys_variable_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "seedbed.toml"
    config.write_text(
        '[engines.ark]\nkind = "ark"\nbase_url = "http://127.0.0.1:9"\n'
        'api_key_env = "SEEDBED_TEST_UNSET_ARK_KEY"\n\n'
        '[models]\n"seedream/4.5-text-to-image" = "ark"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "SEEDBED_TEST_UNSET_ARK_KEY"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "seedbed",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "SEEDBED_TEST_UNSET_ARK_KEY" in line]
    assert len(lines) == 1, done.stderr
    assert "not set" in lines[0]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda a: a.script.queue.append(_raw(200, b"<html>oops</html>")), "not JSON"),
        (
            lambda a: a.script.queue.append(_raw(200, b'{"model": "x", "created": 1}')),
            "without data",
        ),
        (
            lambda a: setattr(a.script, "image_bytes", b"this is not an image at all"),
            "not an image",
        ),
        (lambda a: setattr(a.script, "image_bytes", _bomb()), "more than the"),
        (lambda a: setattr(a.script, "size", (1000, 2000)), "not the 2048x2048 asked for"),
    ],
    ids=["not-json", "no-data", "not-an-image", "decompression-bomb", "other-aspect"],
)
def test_bad_upstream_answers_end_the_task_clearly(
    relay: LiveServer, ark: ArkStandIn, setup: Any, expected: str
) -> None:
    key, _ = relay.add_key(100)
    setup(ark)
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "fail", data
    assert data["failCode"] == "500"
    assert expected in data["failMsg"]
    assert relay.balance(key) == Decimal(100)  # nothing charged, nothing stored half


def test_an_image_over_the_size_cap_ends_the_task(
    tmp_path: Path, ark: ArkStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = make_settings(
        tmp_path,
        engines={"ark": ark_engine(ark.url, max_image_bytes=10_000)},
        models={"seedream/4.5-text-to-image": "ark"},
    )
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(100)
        data = run(live, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "fail" and data["failCode"] == "500"
    assert "upstream ark" in data["failMsg"] and "10,000" in data["failMsg"]


def test_a_different_scale_is_resized_and_too_many_images_are_cut(
    relay: LiveServer, ark: ArkStandIn
) -> None:
    key, _ = relay.add_key(100)
    ark.script.size = (1024, 1024)  # half the 2K contract size, same aspect
    ark.script.force_images = 3  # one was asked for
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "success", data
    images = results(relay, data)
    assert [i.size for i in images] == [(2048, 2048)]
    price = catalogue.CATALOGUE["seedream/4.5-text-to-image"].pricing.per_output
    assert relay.balance(key) == Decimal(100) - next(iter(price.values()))


def test_b64_json_answers(tmp_path: Path, ark: ArkStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = make_settings(
        tmp_path,
        engines={"ark": ark_engine(ark.url, response_format="b64_json", watermark=True)},
        models={"seedream/5-lite-text-to-image": "ark"},
    )
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(100)
        data = run(live, key, "seedream/5-lite-text-to-image", {"prompt": PROMPT})
        assert data["state"] == "success", data
        assert results(live, data)[0].format == "PNG"  # 5 Lite's default output_format
    sent = ark.generations()[-1].body
    assert sent["response_format"] == "b64_json" and sent["watermark"] is True
    assert sent["output_format"] == "png"


def _raw(status: int, body: bytes) -> Canned:
    return Canned(status, body)


def _bomb() -> bytes:
    """A small PNG whose header claims 20000x20000 pixels (400 MP): refused before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 20000 * 3
    compressed = zlib.compress(row * 16, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", compressed)
        + chunk(b"IEND", b"")
    )


def _jpeg_rotated(width: int, height: int) -> bytes:
    """A JPEG whose EXIF says to show it turned a quarter (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 30, 200)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_an_upstream_jpeg_at_the_contract_size_is_stored_as_it_came(
    relay: LiveServer, ark: ArkStandIn
) -> None:
    """No decode-and-encode round (CPU, a generation of quality) for what is already right;
    anything else is still re-encoded: another format, or an EXIF rotation."""
    key, _ = relay.add_key(100)
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "success", data
    url = json.loads(data["resultJson"])["resultUrls"][0]
    stored = relay.client.get(url).content
    assert stored in ark.results.values()  # the upstream's bytes, unchanged

    ark.script.image_bytes = image_png(2048, 2048)  # right size, not the contract's JPEG
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "success", data
    assert results(relay, data)[0].format == "JPEG"

    ark.script.image_bytes = _jpeg_rotated(2048, 2048)
    data = run(relay, key, "seedream/4.5-text-to-image", {"prompt": PROMPT})
    assert data["state"] == "success", data
    url = json.loads(data["resultJson"])["resultUrls"][0]
    assert relay.client.get(url).content != ark.script.image_bytes  # turned upright, re-encoded
