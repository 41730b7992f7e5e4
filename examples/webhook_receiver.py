"""A webhook receiver for seedbed's (and kie.ai's) callbacks, on the standard library only.

It checks each callback's signature with ``seedbed.webhooks``, prints one line per callback
(``taskId state resultUrls-or-failMsg``) and answers 200; a callback with a wrong or missing
signature gets 401. The README's callback example runs it:

    python examples/webhook_receiver.py --port 8001 --hmac-key="$HMAC" --count 1

A real receiver also dedupes on taskId (delivery is at least once): see docs/client.md.
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from seedbed.webhooks import InvalidSignature, verify_callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--hmac-key", required=True, help="the key's webhook HMAC key")
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many good callbacks (0: never)"
    )
    args = parser.parse_args()
    received = 0

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal received
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                callback = verify_callback(body, dict(self.headers.items()), args.hmac_key)
            except InvalidSignature as exc:
                self.send_response(401)
                self.end_headers()
                print(f"refused: {exc}", file=sys.stderr, flush=True)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"code":200,"msg":"success"}')
            task = callback.task
            outcome = " ".join(task.result_urls) or task.fail_msg or ""
            print(f"{task.task_id} {task.state.value} {outcome}", flush=True)
            received += 1

        def log_message(self, format: str, *values: object) -> None:
            pass  # one line per callback, printed above, is the whole output

    with HTTPServer((args.host, args.port), Handler) as server:
        while not args.count or received < args.count:
            server.handle_request()


if __name__ == "__main__":
    main()
