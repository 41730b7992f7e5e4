"""``seedbed generate``, ``get`` and ``balance`` run as a user runs them: subprocesses, loopback."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image
from proc import SEEDBED, create_key, server

from conftest import FileServer, free_port
from images_util import png_bytes
from kie_standin import I2I_ID, KEY, KieStandIn, serve


@dataclass
class Running:
    url: str
    key: str
    home: Path


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    data = tmp_path / "data"
    key = create_key(data, credits=100)["key"]
    port = free_port()
    with server(data, port):
        yield Running(url=f"http://127.0.0.1:{port}", key=key, home=tmp_path / "home")


def seedbed(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``seedbed ARGS`` with a clean client environment (no inherited URL, key or config)."""
    values = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SEEDBED_URL", "SEEDBED_API_KEY", "SEEDBED_UPLOAD_URL")
    }
    values.pop("SEEDBED_CLIENT_CONFIG", None)
    values["XDG_CONFIG_HOME"] = str(home / ".config")
    values["COLUMNS"] = "200"  # one error line, however long, is not wrapped
    values.update(env or {})
    return subprocess.run(
        [*SEEDBED, *args], capture_output=True, text=True, timeout=60, env=values, check=False
    )


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_generate_prints_the_paths_of_the_downloaded_images(
    running: Running, tmp_path: Path
) -> None:
    out = tmp_path / "images"
    done = seedbed(
        "generate",
        "a red fox in the snow",
        "--model",
        "seedream/4.5-text-to-image",
        "--aspect-ratio",
        "16:9",
        "--quality",
        "basic",
        "--out",
        str(out),
        "--url",
        running.url,
        "--key",
        running.key,
        home=running.home,
    )
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert len(paths) == 1 and paths[0].parent == out
    assert size_of(paths[0]) == (2848, 1600)


def test_generate_json_with_the_environment_and_a_reference_url(
    running: Running, files: FileServer, tmp_path: Path
) -> None:
    ref = files.add("/ref.png", png_bytes(300, 200))
    env = {"SEEDBED_URL": running.url, "SEEDBED_API_KEY": running.key}
    done = seedbed(
        "generate",
        "make it blue",
        "-m",
        "seedream/5-pro-image-to-image",
        "--quality",
        "high",
        "--aspect-ratio",
        "1:1",
        "--image",
        ref,
        "--json",
        "-o",
        str(tmp_path / "o"),
        home=running.home,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["state"] == "success" and answer["model"] == "seedream/5-pro-image-to-image"
    assert answer["creditsConsumed"] == 14
    assert size_of(Path(answer["files"][0])) == (2048, 2048)

    shown = seedbed("get", answer["taskId"], "--json", home=running.home, env=env)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["taskId"] == answer["taskId"] and record["state"] == "success"
    assert json.loads(json.loads(record["param"])["input"])["image_urls"] == [ref]
    table = seedbed("get", answer["taskId"], home=running.home, env=env)
    assert "state      success" in table.stdout


def test_balance_reads_the_config_file(running: Running) -> None:
    config = running.home / ".config" / "seedbed" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{running.url}"\napi_key = "{running.key}"\n')
    done = seedbed("balance", home=running.home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "100"
    # a flag beats the file
    wrong = seedbed("balance", "--key", "sb-wrong", home=running.home)
    assert wrong.returncode == 3  # refused
    assert wrong.stderr.strip() == "error: You do not have access permissions (code 401)"
    explicit = running.home / "other.toml"
    explicit.write_text(f'url = "{running.url}"\napi_key = "{running.key}"\n')
    by_flag = seedbed("balance", "--client-config", str(explicit), home=running.home / "none")
    assert by_flag.stdout.strip() == "100", by_flag.stderr


def test_bad_flags_and_bad_values_are_one_line_without_traceback(running: Running) -> None:
    common = ("--url", running.url, "--key", running.key)
    unknown = seedbed("generate", "x", "--nope", *common, home=running.home)
    assert unknown.returncode == 2
    assert "No such option" in unknown.stderr and "Traceback" not in unknown.stderr

    bad_ratio = seedbed("generate", "x", "--aspect-ratio", "7:3", *common, home=running.home)
    assert bad_ratio.returncode == 3  # refused: the 422 the server would answer
    assert bad_ratio.stderr.strip() == (
        "error: input.aspect_ratio: must be one of 1:1, 4:3, 3:4, 16:9, 9:16, 2:3, 3:2, 21:9 "
        "(code 422)"
    )
    wrong_field = seedbed(
        "generate", "x", "-m", "bytedance/seedream", "--quality", "high", *common, home=running.home
    )
    assert wrong_field.returncode == 2  # usage
    assert wrong_field.stderr.strip() == "error: --quality: bytedance/seedream has no quality field"
    no_file = seedbed(
        "generate",
        "x",
        "-m",
        "seedream/4.5-edit",
        "--image",
        "./missing.png",
        *common,
        home=running.home,
    )
    assert no_file.returncode == 2
    assert no_file.stderr.strip() == "error: --image ./missing.png: no such file"
    unknown_task = seedbed("get", "0" * 32, *common, home=running.home)
    assert unknown_task.returncode == 3
    assert unknown_task.stderr.strip() == "error: recordInfo is null (code 422)"


def test_a_server_that_is_down_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for command in (("balance",), ("generate", "a fox"), ("get", "0" * 32)):
        done = seedbed(*command, "--url", url, "--key", "sb-x", home=tmp_path)
        assert done.returncode == 1, command
        assert done.stderr.strip() == f"error: cannot reach {url}: connection refused", command
        assert done.stdout == ""
    debug = seedbed("balance", "--url", url, "--debug", home=tmp_path)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ConnectError" in debug.stderr
    assert debug.stderr.strip().endswith(f"error: cannot reach {url}: connection refused")


def test_generate_against_kie_stand_ins_uploads_the_local_image_to_the_upload_host(
    tmp_path: Path,
) -> None:
    """kie's shape end to end: the local reference goes to the separate upload host, its
    ``downloadUrl`` into ``image_urls``, the result is downloaded and its path printed."""
    api, uploads = KieStandIn(local_results=True), KieStandIn()
    ref = tmp_path / "ref.png"
    ref.write_bytes(png_bytes(64, 48))
    with serve(api.app()) as api_url, serve(uploads.app()) as upload_url:
        done = seedbed(
            "generate",
            "Transform the scene",
            "-m",
            "seedream/5-lite-image-to-image",
            "--image",
            str(ref),
            "-o",
            str(tmp_path / "out"),
            "--url",
            api_url,
            "--upload-url",
            upload_url,
            "--key",
            KEY,
            home=tmp_path,
        )
        waited = seedbed(
            "get", I2I_ID, "--wait", "--json", "--url", api_url, "--key", KEY, home=tmp_path
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "out" / f"{I2I_ID}_0.png")]
    sent = uploads.seen("/api/file-stream-upload")
    assert len(sent) == 1 and b'filename="ref.png"' in sent[0].body
    assert b'name="uploadPath"\r\n\r\nseedbed-cli' in sent[0].body
    created = json.loads(api.seen("/api/v1/jobs/createTask")[0].body)
    assert created["input"]["image_urls"] == [
        "https://tempfile.redpandaai.co/kieai/136592/images/test-uploads/1776323952044-dtzo7rcrpdj.png"
    ]
    assert api.seen("/api/file-stream-upload") == []
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["costTime"] == 112


def test_generate_uploads_a_local_image_to_the_real_server(
    running: Running, tmp_path: Path
) -> None:
    """``--image ./file`` against seedbed itself: the CLI uploads it to the server's own
    file-stream-upload, the task reads it back from the server's storage, and succeeds."""
    ref = tmp_path / "ref.png"
    ref.write_bytes(png_bytes(120, 80))
    common = ("--url", running.url, "--key", running.key)
    done = seedbed(
        "generate",
        "Turn it blue",
        "-m",
        "seedream/4.5-edit",
        "--image",
        str(ref),
        "--json",
        "-o",
        str(tmp_path / "out"),
        *common,
        home=running.home,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["state"] == "success" and len(answer["files"]) == 1
    shown = seedbed("get", answer["taskId"], "--json", *common, home=running.home)
    record = json.loads(shown.stdout)
    (uploaded,) = json.loads(json.loads(record["param"])["input"])["image_urls"]
    assert uploaded.startswith(f"{running.url}/files/uploads/") and "/seedbed-cli/" in uploaded
    assert httpx.get(uploaded, trust_env=False).content == ref.read_bytes()


def test_a_config_file_with_an_unknown_key_is_one_line_not_a_401(tmp_path: Path) -> None:
    config = tmp_path / ".config" / "seedbed" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text('url = "http://127.0.0.1:9"\napikey = "sb-typo"\n')
    done = seedbed("balance", home=tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip() == (
        f"error: client config {config}: unknown key 'apikey' (did you mean 'api_key'?)"
    )
