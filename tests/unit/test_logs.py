"""Structured logs: JSON lines with task ids, secrets masked whoever logged them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from seedbed import keys
from seedbed.logs import configure_logging, redact, task_extra


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("info", stream=stream)  # a StringIO is no terminal: JSON
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_task_and_key_ids(captured: io.StringIO) -> None:
    task = SimpleNamespace(id="t" * 32, key_id="key_abc")
    logging.getLogger("seedbed.worker").info("task finished: %s", "success", extra=task_extra(task))
    (line,) = lines(captured)
    assert line["msg"] == "task finished: success" and line["level"] == "info"
    assert line["taskId"] == "t" * 32 and line["keyId"] == "key_abc"
    assert line["logger"] == "seedbed.worker" and "time" in line


def test_secrets_never_reach_the_output(captured: io.StringIO) -> None:
    plain = keys.new_key()
    log = logging.getLogger("anything")
    log.warning("request with Authorization: Bearer %s", plain)
    log.warning("key %s leaked", plain)
    log.info('config {"hmac_key": "s3cr3t-value", "webhook_secret": "abc123"}')
    log.info("GET /files/x.png?expires=1700000000&sig=deadbeefcafe HTTP/1.1")
    log.info("access", extra={"color_message": f"Bearer {plain}", "path": f"/x?token={plain}"})
    try:
        raise ValueError(f"bad key {plain}")
    except ValueError:
        log.exception("failed")
    out = captured.getvalue()
    for secret in (plain, plain[3:], "s3cr3t-value", "abc123", "deadbeefcafe", "1700000000"):
        assert secret not in out
    assert "Bearer ***" in out and "sig=***" in out
    assert len(lines(captured)) == 6
    assert all("color_message" not in line for line in lines(captured))


def test_text_form_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = Tty()
    try:
        configure_logging("info", stream=stream)
        logging.getLogger("x").info("hello", extra={"taskId": "t1", "keyId": "k1"})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "hello [taskId=t1 keyId=k1]" in stream.getvalue()
    assert not stream.getvalue().startswith("{")


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "task 0123abcd finished in 2 s; see /files/results/a.png"
    assert redact(text) == text
