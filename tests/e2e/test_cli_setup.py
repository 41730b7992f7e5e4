"""Setting up and operating with the ``seedbed`` command as a newcomer does: configuration
mistakes refused in one line, admin commands that never create a database, ``--version``,
negative amounts, tables that keep IDs whole in a pipe, help texts as written, and the exit
codes of docs/cli.md."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
from proc import SEEDBED, create_key, run_cli, server

from conftest import free_port
from seedbed import catalogue
from seedbed.exit_codes import FAILED, REFUSED, TASK_FAILED, USAGE


def seedbed(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``seedbed ARGS`` in ``cwd``, stdout and stderr pipes (never a terminal), no SEEDBED_
    variables but those given."""
    values = {k: v for k, v in os.environ.items() if not k.upper().startswith("SEEDBED_")}
    values.pop("COLUMNS", None)
    values.update(env or {})
    return subprocess.run(
        [*SEEDBED, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=values
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The error, which must be one line on stderr and no traceback."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# -- configuration mistakes (issue 14, point 5) ----------------------------------------------
def test_a_config_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "seedbed.toml"
    for args in (["serve", "--config", str(missing)], ["config", "show", "--config", str(missing)]):
        done = seedbed(*args, cwd=tmp_path)
        assert done.returncode == USAGE
        assert one_line(done) == f"error: setting config: no file at {missing}"
    by_env = seedbed("serve", cwd=tmp_path, env={"SEEDBED_CONFIG": str(missing)})
    assert by_env.returncode == USAGE and str(missing) in one_line(by_env)
    assert not (tmp_path / "seedbed-data").exists()


def test_an_unknown_key_in_the_config_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = tmp_path / "seedbed.toml"
    config.write_text("prot = 9001\n")
    done = seedbed("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == USAGE
    assert one_line(done) == f"error: unknown setting 'prot' in {config} (did you mean 'port'?)"


def test_an_unknown_seedbed_variable_is_refused_and_known_non_settings_are_not(
    tmp_path: Path,
) -> None:
    done = seedbed("serve", cwd=tmp_path, env={"SEEDBED_PROT": "9001"})
    assert done.returncode == USAGE
    line = one_line(done)
    assert line.startswith("error: unknown environment variable SEEDBED_PROT (did you mean")
    assert "SEEDBED_PORT" in line

    # the client's variables and the test suite's switches are not settings, and no mistake
    fine = seedbed(
        "config",
        "show",
        cwd=tmp_path,
        env={
            "SEEDBED_URL": "http://127.0.0.1:1",
            "SEEDBED_API_KEY": "sb-x",
            "SEEDBED_TEST_POSTGRES_URL": "postgresql://x",
        },
    )
    assert fine.returncode == 0, fine.stderr


def test_an_invalid_log_level_is_one_line_naming_what_is_allowed(tmp_path: Path) -> None:
    done = seedbed("serve", cwd=tmp_path, env={"SEEDBED_LOG_LEVEL": "loud"})
    assert done.returncode == USAGE
    assert one_line(done) == (
        "error: setting log_level (from env SEEDBED_LOG_LEVEL): Input should be 'critical', "
        "'error', 'warning', 'info' or 'debug', got 'loud'"
    )
    # the level's case is not a mistake
    upper = seedbed("config", "show", "--json", cwd=tmp_path, env={"SEEDBED_LOG_LEVEL": "DEBUG"})
    assert json.loads(upper.stdout)["log_level"] == {
        "value": "debug",
        "source": "env SEEDBED_LOG_LEVEL",
    }


def test_config_show_prints_every_setting_with_its_source_and_masks_secrets(
    tmp_path: Path,
) -> None:
    config = tmp_path / "seedbed.toml"
    config.write_text(
        'worker_concurrency = 3\nport = 7000\ndatabase_url = "postgresql://ops:hunter2@db/seedbed"\n'
    )
    env = {"SEEDBED_PORT": "9001", "SEEDBED_CONFIG": str(config)}
    done = seedbed("config", "show", "--json", "--data-dir", "elsewhere", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["port"] == {"value": 9001, "source": "env SEEDBED_PORT"}  # env beats the file
    assert shown["worker_concurrency"] == {"value": 3, "source": f"file {config}"}
    assert shown["data_dir"] == {"value": "elsewhere", "source": "flag"}
    assert shown["host"] == {"value": "127.0.0.1", "source": "default"}
    assert shown["database_url"]["value"] == "postgresql://ops:****@db/seedbed"
    assert shown["database"]["value"] == "postgresql://ops:****@db/seedbed"
    assert "hunter2" not in done.stdout

    text = seedbed("config", "show", cwd=tmp_path, env=env)
    assert text.returncode == 0, text.stderr
    assert "hunter2" not in text.stdout
    lines = {line.split()[0]: line for line in text.stdout.splitlines()}
    assert lines["port"].split() == ["port", "9001", "#", "env", "SEEDBED_PORT"]
    assert len(lines) == len(shown)


# -- admin commands never create a database (point 6) ----------------------------------------
ADMIN_COMMANDS = [
    ["keys", "create", "--name", "me", "--credits", "100"],
    ["keys", "list"],
    ["keys", "revoke", "key_x"],
    ["keys", "rotate-hmac", "key_x"],
    ["credits", "add", "key_x", "5"],
    ["maintenance", "on"],
    ["models", "disable", "seedream/4.5-edit"],
    ["models", "list"],
    ["callbacks", "list"],
    ["callbacks", "redeliver", "0" * 32],
    ["tasks", "list"],
    ["tasks", "get", "0" * 32],
    ["stats"],
    ["worker", "--burst"],
]


def test_admin_commands_on_a_folder_without_a_database_refuse_and_create_nothing(
    tmp_path: Path,
) -> None:
    for args in ADMIN_COMMANDS:
        done = seedbed(*args, cwd=tmp_path)
        assert done.returncode == USAGE, (args, done.stderr)
        line = one_line(done)
        assert line.startswith("error: no seedbed database in the data directory seedbed-data")
        assert "seedbed init" in line and "--data-dir" in line
        assert done.stdout == "", args  # no key printed
        assert list(tmp_path.iterdir()) == [], args


def test_a_key_made_from_the_wrong_folder_is_refused_not_minted(tmp_path: Path) -> None:
    """The server runs on its data directory; an operator in another folder forgets
    --data-dir. Today's answer: an error, not a key that the server would reject with 401."""
    data = tmp_path / "server-data"
    port = free_port()
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    with server(data, port):
        wrong = seedbed("keys", "create", "--name", "me", "--credits", "5", cwd=elsewhere)
        assert wrong.returncode == USAGE and wrong.stdout == ""
        assert not (elsewhere / "seedbed-data").exists()
        right = seedbed(
            "keys",
            "create",
            "--name",
            "me",
            "--credits",
            "5",
            "--data-dir",
            str(data),
            cwd=elsewhere,
        )
        assert right.returncode == 0, right.stderr
        key = right.stdout.strip().splitlines()[-1]
        answer = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/chat/credit",
            headers={"Authorization": f"Bearer {key}"},
            trust_env=False,
        ).json()
        assert answer["code"] == 200 and answer["data"] == 5


def test_init_creates_the_database_once_and_is_safe_to_repeat(tmp_path: Path) -> None:
    first = seedbed("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "seedbed-data" / "seedbed.db").is_file()
    assert (tmp_path / "seedbed-data" / "server-secret").is_file()  # as serve would make it
    assert "created" in first.stderr
    made = seedbed("keys", "create", "--name", "me", "--json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    again = seedbed("init", cwd=tmp_path)
    assert again.returncode == 0 and "holds a database" in again.stderr
    listed = json.loads(seedbed("keys", "list", "--json", cwd=tmp_path).stdout)
    assert [k["name"] for k in listed] == ["me"]  # nothing was reset


# -- the command line itself (point 7) -------------------------------------------------------
def test_version(tmp_path: Path) -> None:
    done = seedbed("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "seedbed 0.1.0"


def test_a_negative_amount_needs_no_double_dash(tmp_path: Path) -> None:
    key = create_key(tmp_path, credits=25)
    done = run_cli(["credits", "add", key["id"], "-10", "--note", "refund"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "15"
    too_much = run_cli(["credits", "add", key["id"], "-100"], tmp_path)
    assert too_much.returncode == REFUSED, too_much.stderr
    typo = run_cli(["credits", "add", key["id"], "--nte", "x"], tmp_path)
    assert typo.returncode == USAGE


def test_numbers_past_what_a_key_can_hold_are_usage_errors_not_tracebacks(
    tmp_path: Path,
) -> None:
    """The admin API's bounds, on the command line too (a limit over 10**9, credits over
    10**12 in one change)."""
    key = create_key(tmp_path, credits=5)
    for args in (
        ["keys", "create", "--name", "x", "--open-task-cap", "99999999999999999999999"],
        ["keys", "create", "--name", "x", "--record-rate", "0"],
        ["keys", "create", "--name", "x", "--create-window", "1e12"],
        ["keys", "create", "--name", "x", "--credits", "1e20"],
        ["credits", "add", key["id"], "1000000000001"],
        ["credits", "add", key["id"], "-1e13"],
    ):
        done = run_cli(args, tmp_path)
        assert done.returncode == USAGE, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", args
        assert one_line(done).startswith("error: "), args
    listed = json.loads(run_cli(["keys", "list", "--json"], tmp_path).stdout)
    assert [k["name"] for k in listed] == ["e2e"]  # nothing was made


def test_tables_in_a_pipe_keep_ids_and_model_names_whole(tmp_path: Path) -> None:
    long_name = "a key whose name is longer than any terminal would show in one column"
    assert run_cli(["init"], tmp_path).returncode == 0
    made = run_cli(["keys", "create", "--name", long_name, "--credits", "100", "--json"], tmp_path)
    key = json.loads(made.stdout)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key['key']}"}
    model = "seedream/5-lite-text-to-image"
    with server(tmp_path, port, "--no-worker"):
        body = {"model": model, "input": {"prompt": "a fox"}}
        created = httpx.post(
            f"{url}/api/v1/jobs/createTask", json=body, headers=headers, trust_env=False
        ).json()
    assert created["code"] == 200, created
    task_id = created["data"]["taskId"]

    for args, wanted in (
        (["keys", "list"], [key["id"], long_name]),
        (["tasks", "list"], [task_id, model, key["id"]]),
        (["tasks", "get", task_id], [task_id, model, key["id"]]),
        (["models", "list"], list(catalogue.CATALOGUE)),
    ):
        done = run_cli(args, tmp_path)
        assert done.returncode == 0, done.stderr
        for text in wanted:
            assert text in done.stdout, (args, text, done.stdout)


def test_help_texts_are_printed_as_written(tmp_path: Path) -> None:
    done = seedbed("worker", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Load only this [engines] entry" in " ".join(done.stdout.split())


def test_exit_codes_tell_usage_from_refusal_from_failure(tmp_path: Path) -> None:
    """docs/cli.md: 2 usage, 3 refused, 1 failed; 4 a task that ended fail."""
    assert seedbed("keys", "create", "--nmae", "x", cwd=tmp_path).returncode == USAGE
    assert seedbed("maintenance", "sideways", cwd=tmp_path).returncode == USAGE
    key = create_key(tmp_path / "data", credits=100)
    data = ["--data-dir", str(tmp_path / "data")]
    assert seedbed("keys", "revoke", "key_nope", *data, cwd=tmp_path).returncode == REFUSED
    # a database that is broken, not missing: the database failed
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "seedbed.db").write_bytes(b"this is not a database file" * 100)
    done = seedbed("keys", "list", "--data-dir", str(broken), cwd=tmp_path)
    assert done.returncode == FAILED
    assert one_line(done).startswith("error: database sqlite:///")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = ["--url", url, "--key", key["key"]]
    with server(tmp_path / "data", port):
        refused = seedbed("balance", "--url", url, "--key", "sb-wrong", cwd=tmp_path)
        assert refused.returncode == REFUSED
        # an input image the server cannot fetch: the task runs and ends "fail"
        failed = seedbed(
            "generate",
            "x",
            "-m",
            "seedream/4.5-edit",
            "--image",
            f"http://127.0.0.1:{free_port()}/gone.png",
            "-o",
            str(tmp_path / "out"),
            *client,
            cwd=tmp_path,
        )
        assert failed.returncode == TASK_FAILED, failed.stderr
    down = seedbed("balance", *client, cwd=tmp_path)
    assert down.returncode == FAILED
