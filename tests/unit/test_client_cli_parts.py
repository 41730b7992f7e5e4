"""The client CLI's pieces that a subprocess test cannot see: config precedence, the live bar."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from seedbed import cli_client
from seedbed.cli_client import CliFailure, build_input, resolve_config
from seedbed.client import (
    KIE_BASE_URL,
    KIE_UPLOAD_URL,
    AsyncClient,
    Client,
    ConfigError,
    Task,
    TaskState,
)
from seedbed.client.config import ClientConfig


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in (
        "SEEDBED_URL",
        "SEEDBED_API_KEY",
        "SEEDBED_UPLOAD_URL",
        "SEEDBED_CLIENT_CONFIG",
        "KIE_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_flags_beat_the_environment_which_beats_the_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_config(None, None, None, None) == ClientConfig(
        url="http://127.0.0.1:8000", api_key=None, upload_url=None
    )
    file = clean_env / "xdg" / "seedbed" / "client.toml"
    file.parent.mkdir(parents=True)
    file.write_text('url = "http://file"\napi_key = "file-key"\nupload_url = "http://up"\n')
    assert resolve_config(None, None, None, None).api_key == "file-key"
    monkeypatch.setenv("SEEDBED_API_KEY", "env-key")
    monkeypatch.setenv("SEEDBED_URL", "http://env")
    config = resolve_config(None, None, None, None)
    assert (config.url, config.api_key, config.upload_url) == ("http://env", "env-key", "http://up")
    assert resolve_config("http://flag", "flag-key", None, None).api_key == "flag-key"
    other = clean_env / "other.toml"
    other.write_text('api_key = "other"\n')
    monkeypatch.setenv("SEEDBED_CLIENT_CONFIG", str(other))
    monkeypatch.delenv("SEEDBED_API_KEY")
    assert resolve_config(None, None, None, None).api_key == "other"


def test_a_missing_or_broken_config_file_is_reported(clean_env: Path) -> None:
    with pytest.raises(CliFailure, match="no client config at"):
        resolve_config(None, None, None, clean_env / "nope.toml")
    broken = clean_env / "broken.toml"
    broken.write_text("url = \n")
    with pytest.raises(CliFailure, match="cannot read the client config"):
        resolve_config(None, None, None, broken)


def _config_file(clean_env: Path, text: str) -> Path:
    file = clean_env / "xdg" / "seedbed" / "client.toml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    return file


def test_an_unknown_key_in_the_config_file_is_an_error_not_a_silent_401(clean_env: Path) -> None:
    file = _config_file(clean_env, 'url = "http://file"\napikey = "typo"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'apikey' \(did you mean 'api_key'\?\)"):
        Client()
    with pytest.raises(ConfigError, match="unknown key 'apikey'"):
        AsyncClient()
    with pytest.raises(CliFailure, match=f"client config {file}: unknown key 'apikey'"):
        resolve_config(None, None, None, None)
    file.write_text('colour = "blue"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'colour' \(it may hold url, api_key"):
        Client()
    file.write_text("api_key = 12345\n")
    with pytest.raises(ConfigError, match="api_key must be a string"):
        Client()
    # a program that says everything itself does not need the file
    assert Client("k", base_url="http://x", upload_url="http://y").api_key == "k"


def test_the_client_reads_the_environment_and_the_file_like_the_command(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = Client()
    assert (bare.base_url, bare.api_key, bare.upload_url) == (
        "http://127.0.0.1:8000",
        None,
        "http://127.0.0.1:8000",
    )
    _config_file(clean_env, 'url = "http://file:1"\napi_key = "file-key"\n')
    from_file = Client()
    assert (from_file.base_url, from_file.api_key, from_file.upload_url) == (
        "http://file:1",
        "file-key",
        "http://file:1",
    )
    monkeypatch.setenv("SEEDBED_URL", "http://env:2/")
    monkeypatch.setenv("SEEDBED_API_KEY", "env-key")
    monkeypatch.setenv("SEEDBED_UPLOAD_URL", "http://uploads:3")
    for client in (Client(), AsyncClient()):
        assert (client.base_url, client.api_key, client.upload_url) == (
            "http://env:2",
            "env-key",
            "http://uploads:3",
        )
    given = Client("arg-key", base_url="http://arg:4", upload_url="http://arg:5")
    assert (given.base_url, given.api_key, given.upload_url) == (
        "http://arg:4",
        "arg-key",
        "http://arg:5",
    )


def test_kies_own_key_variable_is_read_for_kie_only(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIE_API_KEY", "kie-key")
    assert Client().api_key is None  # never sent to another server
    assert Client(base_url="http://127.0.0.1:8000").api_key is None
    for kie in (Client.for_kie(), AsyncClient.for_kie(), Client(base_url=KIE_BASE_URL)):
        assert (kie.api_key, kie.upload_url) == ("kie-key", KIE_UPLOAD_URL)
    monkeypatch.setenv("SEEDBED_API_KEY", "seedbed-key")
    assert Client.for_kie().api_key == "kie-key"  # kie's own variable first, for kie
    assert Client().api_key == "seedbed-key"
    assert Client.for_kie("given").api_key == "given"
    monkeypatch.delenv("KIE_API_KEY")
    monkeypatch.setenv("SEEDBED_URL", KIE_BASE_URL)  # kie configured the seedbed way
    kie = Client()
    assert (kie.base_url, kie.api_key, kie.upload_url) == (
        KIE_BASE_URL,
        "seedbed-key",
        KIE_UPLOAD_URL,
    )
    assert resolve_config(None, None, None, None).api_key == "seedbed-key"
    monkeypatch.setenv("KIE_API_KEY", "kie-key")
    assert resolve_config(None, None, None, None).api_key == "kie-key"  # the CLI alike


def test_build_input_keeps_given_fields_and_refuses_foreign_ones() -> None:
    body = build_input(
        "seedream/5-flash-text-to-image",
        "a fox",
        {"size": "1.5K", "quality": None, "seed": None},
        {"nsfw_checker": True},
    )
    assert body == {"prompt": "a fox", "size": "1.5K", "nsfw_checker": True}
    with pytest.raises(CliFailure, match="--quality: seedream/5-flash-text-to-image has no"):
        build_input("seedream/5-flash-text-to-image", "x", {"quality": "high"}, {})
    assert cli_client._parse_set(["max_images=3", "name=fox"]) == {"max_images": 3, "name": "fox"}
    with pytest.raises(CliFailure, match="expected name=value"):
        cli_client._parse_set(["oops"])


def test_the_progress_bar_shows_state_and_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(cli_client, "err", console)
    task = Task(
        task_id="t", model="m", state=TaskState.GENERATING, progress=50, queue_position=None
    )
    with cli_client._progress_bar(True) as update:
        update(task)
        update(Task(task_id="t", model="m", state=TaskState.WAITING, queue_position=2))
        console.file.flush()
    drawn = screen.getvalue()
    assert "generating" in drawn and "50%" in drawn
    assert "waiting (#3)" in drawn
    quiet = io.StringIO()
    monkeypatch.setattr(cli_client, "err", Console(file=quiet, force_terminal=False))
    with cli_client._progress_bar(True) as update:
        update(task)
    assert quiet.getvalue() == ""


def test_the_command_and_the_client_import_only_what_generate_needs() -> None:
    """Start-up is most of ``seedbed generate``'s time (docs/benchmarks.md): the command's
    module and the client import neither the server's settings, asyncio nor Pillow."""
    code = (
        "import sys, seedbed.cli, seedbed.client; "
        "print(sorted(m for m in ('asyncio', 'pydantic_settings', 'seedbed.config', 'PIL', "
        "'fastapi', 'sqlalchemy', 'uvicorn') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
