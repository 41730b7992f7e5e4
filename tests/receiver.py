"""A real webhook receiver on loopback for callback tests: records every POST, answers from a
script, and checks kie's signature with its own implementation of the scheme."""

from __future__ import annotations

import base64
import contextlib
import hmac
import http.server
import json
import threading
import time
from dataclasses import dataclass
from typing import Any


def kie_signature(hmac_key: str, task_id: str, timestamp: str) -> str:
    """kie's documented scheme, written out independently of seedbed's code."""
    mac = hmac.new(hmac_key.encode("utf-8"), (task_id + "." + timestamp).encode("utf-8"), "sha256")
    return base64.b64encode(mac.digest()).decode("ascii")


@dataclass
class Hit:
    at: float  # time.time() when the request was read
    headers: dict[str, str]
    body: bytes
    answered: int | None  # None: the receiver never answered
    signature_ok: bool | None  # None: no HMAC key configured

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """``answers`` are the statuses of successive POSTs (the last one repeats); an answer of
    ``None`` means never answering (the connection is held until ``close``). Each answer is
    sent ``delay`` seconds after the request was read (a slow receiver)."""

    def __init__(
        self,
        answers: list[int | None] | None = None,
        hmac_key: str | None = None,
        delay: float = 0.0,
        port: int = 0,
    ):
        self.answers = list(answers or [200])
        self.hmac_key = hmac_key
        self.delay = delay
        self.hits: list[Hit] = []
        self._lock = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver._record(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _check(self, headers: dict[str, str], body: bytes) -> bool | None:
        if self.hmac_key is None:
            return None
        timestamp = headers.get("x-webhook-timestamp", "")
        given = headers.get("x-webhook-signature", "")
        try:
            task_id = json.loads(body)["data"]["taskId"]
        except (ValueError, KeyError, TypeError):
            return False
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
        expected = kie_signature(self.hmac_key, task_id, timestamp)
        return fresh and hmac.compare_digest(expected, given)

    def _record(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            index = len(self.hits)
            answer = self.answers[min(index, len(self.answers) - 1)]
            hit = Hit(time.time(), headers, body, answer, self._check(headers, body))
            self.hits.append(hit)
            self._lock.notify_all()
        if answer is None:
            self._release.wait(60)
            return
        if self.delay:
            self._release.wait(self.delay)
        reply = b'{"code":200,"msg":"success"}'
        with contextlib.suppress(OSError):
            handler.send_response(answer)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Hit]:
        """Block until ``count`` POSTs arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.hits) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.hits)} callbacks arrived, wanted {count}")
                self._lock.wait(left)
            return list(self.hits)

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
