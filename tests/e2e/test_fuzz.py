"""schemathesis over ``/openapi.json`` against a real ``seedbed serve`` with a real key.

Every operation of the document gets valid (positive) and schema-breaking (negative) requests.
Whatever is sent, the server answers without a 5xx, never with ``code`` 500 in the body, and
always in JSON (``/metrics`` is Prometheus text; a live-event stream is ``text/event-stream``).

``make test`` runs a short pass (``FUZZ_EXAMPLES``, default 30 examples per operation
and mode); ``make fuzz`` runs the long one. The tally (requests sent, server errors) is printed
at the end: ``pytest -s`` shows it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from proc import create_key, server, server_log
from schemathesis import GenerationMode

from conftest import free_port

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
#: answers that are not JSON by design: operation path -> the media type they carry
NOT_JSON = {"/metrics": "text/plain", "/api/v1/jobs/events": "text/event-stream"}
#: where a fetched URL is sent instead of a generated host: loopback, a port nobody listens on
DEAD_END = "127.0.0.1:9"


#: the operator's token of the fuzzed server (the admin API's endpoints take it, not a key)
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"


@dataclass
class Live:
    url: str
    key: str
    process: subprocess.Popen[bytes]

    @property
    def errors(self) -> list[str]:
        """The server's log lines at level error or above, so far (its log is a file)."""
        return [
            line[:2000]
            for line in server_log(self.process).splitlines()
            if '"level":"error"' in line or '"level":"critical"' in line
        ]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    key = create_key(data_dir, credits=10_000_000)["key"]
    port = free_port()
    # Limits high enough that fuzzing reaches validation rather than 429s (which are also
    # checked: every answer is held to the same rules).
    with server(
        data_dir,
        port,
        create_rate_limit=1_000_000,
        record_rate_limit=1_000_000,
        open_task_cap=1_000_000,
        callbacks="false",
        admin_token=ADMIN_TOKEN,
    ) as process:
        yield Live(f"http://127.0.0.1:{port}", key, process)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _loopback_only(value: Any) -> Any:
    """``value`` with every URL's host that is a name pointed at ``DEAD_END``: the server must
    not resolve generated names (traffic stays on loopback). Literal addresses are kept: the
    SSRF rules refuse them without a lookup."""
    if isinstance(value, dict):
        return {k: _loopback_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_loopback_only(v) for v in value]
    if isinstance(value, str) and "://" in value:
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            return value
        if host and not _is_ip(host.strip("[]")):
            return urlunsplit(parts._replace(netloc=DEAD_END))
    return value


def _check(path: str, status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with one answer, or None."""
    if status >= 500:
        return f"HTTP {status}"
    media = content_type.split(";")[0].strip()
    if path in NOT_JSON and media == NOT_JSON[path]:
        return None
    if media != "application/json":
        return f"not JSON: {content_type!r}"
    try:
        payload = json.loads(body)
    except ValueError:
        return "a body that does not parse as JSON"
    if isinstance(payload, dict) and payload.get("code") == 500:
        return f"body code 500: {payload.get('msg')!r}"
    return None


def test_fuzz_every_operation(live: Live) -> None:
    url, key = live.url, live.key
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # the document lists the API, not nothing
    tally = Tally()
    with requests.Session() as session:
        session.trust_env = False  # loopback only, whatever proxy the environment names
        for operation in operations:
            # each operation with the credential it takes: the admin API the operator's token
            secret = ADMIN_TOKEN if operation.path.startswith("/api/v1/admin/") else key
            fuzzer = Fuzzer(url, {"Authorization": f"Bearer {secret}"}, session, tally)
            fuzzer.run(operation, GenerationMode.POSITIVE)
            fuzzer.run(operation, GenerationMode.NEGATIVE)
    total = sum(tally.sent.values())
    print(
        f"\nfuzz: {total} requests over {len(tally.sent)} operations, {len(tally.problems)} problems"
    )
    for name, count in sorted(tally.sent.items()):
        print(f"  {count:6d}  {name}")
    assert not tally.problems, "\n".join(tally.problems[:20])
    assert not live.errors, "".join(live.errors[:5])
    assert len(tally.sent) == len(operations)


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


@dataclass
class Fuzzer:
    url: str
    auth: dict[str, str]
    session: requests.Session
    tally: Tally

    def run(self, operation: Any, mode: GenerationMode) -> None:
        """``EXAMPLES`` generated requests to ``operation``, each answer judged by ``_check``."""
        name = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def one(case: Any) -> None:
            case.body = _loopback_only(case.body)
            case.query = _loopback_only(case.query)
            response = case.call(
                base_url=self.url, session=self.session, headers=self.auth, timeout=30
            )
            self.tally.sent[name] += 1
            problem = _check(
                operation.path,
                response.status_code,
                response.headers.get("content-type", [""])[0],
                response.content,
            )
            if problem:
                self.tally.problems.append(f"{name}: {problem} for {case!r}"[:2000])

        try:
            one()
        except Unsatisfiable:
            # nothing in this operation can break the schema (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, name
