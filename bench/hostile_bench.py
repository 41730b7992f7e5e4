"""Hostile load (issue 13): recordInfo latency for ordinary clients while one client sends
100 MB headers, and while 500 connections trickle, against the same server left alone.

Starts ``seedbed serve`` on loopback (SQLite, worker off) and polls recordInfo with wrk at a
moderate, steady rate (``--conns`` connections, each waiting ``--delay-ms`` between requests:
the figure is the service's latency, not a saturated queue's). Three phases on one server:

1. alone: the ordinary clients only;
2. big headers: one more client sends requests with a 100 MB header, again and again, as fast
   as the server lets it (each attempt on a new connection);
3. slow connections: 500 more connections trickle, one byte per second: half never finish
   their headers, half send headers announcing a 1 MB body and trickle the body.

For each phase: p50 and p99 of recordInfo, requests answered, errors, the server's peak RSS;
the p99 ratio to phase 1; for the attackers, what they got and how long the server held them.

The phases run ``--hostile-rounds`` times (default 2) and the medians are reported too, since
the machine is shared and noisy. ``--protocol`` picks the server's HTTP protocol: ``guarded``
(default: seedbed serve as shipped, ``seedbed.httpguard``), ``stock`` (the same server on
uvicorn's plain httptools protocol, as before issue 13), or ``both``. ``--throughput`` adds
the cost of the guard on an unhostile server: wrk at 32 connections on recordInfo and
/healthz, stock and guarded interleaved. Only 127.0.0.1 is contacted.

Usage: ``python bench/hostile_bench.py [--protocol guarded|stock|both] [--throughput]``; the
default run takes about 90 s.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api_bench import BODY, create_key, env, free_port, rss_mb, stop

#: runs ``seedbed serve`` as shipped, or (``stock``) with uvicorn's plain httptools protocol
LAUNCHER = """
import sys
import seedbed.server as server

if sys.argv[1] == "stock":
    shipped = server.uvicorn_config

    def stock(app, settings, *, access_log):
        config = shipped(app, settings, access_log=access_log)
        config.http = "httptools"
        return config

    server.uvicorn_config = stock
sys.argv = ["seedbed", "serve", *sys.argv[2:]]
from seedbed.cli import main

main()
"""

DELAY_LUA = """
wrk.headers["Authorization"] = "Bearer {key}"
function init(args) bad = 0 end
function delay() return {delay} end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"code":200', 1, true) then bad = bad + 1 end
end
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write("BAD " .. total .. "\\n")
end
"""

BIG_HEADER = 100 * 1024 * 1024
SLOW_CONNECTIONS = 500


def start(data_dir: Path, port: int, protocol: str, **settings: Any) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", LAUNCHER, protocol, "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--data-dir", str(data_dir), "--no-worker"],
        env=env(**settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5, trust_env=False).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during start-up")
        time.sleep(0.05)
    raise SystemExit("server did not start")


def poll_load(url: str, key: str, *, seconds: int, conns: int, delay_ms: int) -> dict[str, float]:
    """wrk polling recordInfo at a steady pace; latency percentiles in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(DELAY_LUA.format(key=key, delay=delay_ms))
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    requests = _number(r"(\d+) requests in", out)
    return {
        # with (almost) nothing answered, wrk's percentiles say nothing
        "p50": _latency(out, "50%") if requests >= 100 else float("nan"),
        "p99": _latency(out, "99%") if requests >= 100 else float("nan"),
        "requests": float(requests),
        "errors": float(_number(r"BAD (\d+)", out) + _socket_errors(out)),
    }


def _number(pattern: str, out: str) -> int:
    match = re.search(pattern, out)
    assert match, out
    return int(match.group(1))


def _socket_errors(out: str) -> int:
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return sum(int(n) for n in match.groups()) if match else 0


def _latency(out: str, pct: str) -> float:
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)\b", out)
    assert match, out
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


@dataclass
class Attack:
    """What the attacking clients saw."""

    attempts: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    #: seconds from connecting to the server closing, per connection the server closed
    held: list[float] = field(default_factory=list)
    #: connections still open when the attack stopped, and the longest any was open
    open_at_end: int = 0
    longest_open: float = 0.0
    #: bytes the attackers got into the server's socket before it answered or closed
    sent: int = 0

    def saw(self, what: str) -> None:
        self.answers[what] = self.answers.get(what, 0) + 1

    def summary(self) -> str:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
        held = f"; closed by the server after {max(self.held):.1f} s at most" if self.held else ""
        still = (
            f"; {self.open_at_end} still open at the end, for {self.longest_open:.0f} s"
            if self.open_at_end
            else ""
        )
        return f"{self.attempts} connections ({answers or 'no answer'}){held}{still}"


def _status(answer: bytes) -> str:
    if answer.startswith(b"HTTP/1.1 "):
        return answer[9:12].decode()
    return "closed without an answer" if not answer else "other"


def big_headers(port: int, stop_at: float, attack: Attack) -> None:
    """Requests with a 100 MB header, one after another, each on a new connection."""
    chunk = b"a" * (1024 * 1024)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    while time.monotonic() < stop_at:
        attack.attempts += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(head)
                for _ in range(BIG_HEADER // len(chunk)):
                    if time.monotonic() > stop_at:
                        break
                    sock.sendall(chunk)
                    attack.sent += len(chunk)
                else:
                    sock.sendall(b"\r\n\r\n")
                answer = sock.recv(4096)
            attack.saw(_status(answer))
        except OSError:
            attack.saw("reset")


def slow_connections(port: int, stop_at: float, attack: Attack) -> None:
    """``SLOW_CONNECTIONS`` connections trickling a byte a second, replaced when closed."""
    header_only = (
        b"GET /api/v1/jobs/recordInfo?taskId=x HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096
    )
    with_body = (
        b"POST /api/v1/jobs/createTask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1048576\r\n\r\n" + b" " * 1048576
    )
    Conn = tuple[socket.socket, bytes, int, float]  # socket, payload, bytes sent, opened at

    def connect(payload: bytes) -> Conn:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        attack.attempts += 1
        # the body's headers go at once; everything else one byte at a time
        sent = payload.index(b"\r\n\r\n") + 4 if payload is with_body else 0
        if sent:
            sock.send(payload[:sent])
        return sock, payload, sent, time.monotonic()

    live = [connect(header_only if i % 2 else with_body) for i in range(SLOW_CONNECTIONS)]
    while time.monotonic() < stop_at:
        tick = time.monotonic()
        still: list[Conn] = []
        for sock, payload, sent, opened in live:
            try:
                answer = sock.recv(4096)
                closed = True  # an answer (or EOF): the server is done with this connection
            except BlockingIOError:
                answer, closed = b"", False
            except OSError:
                answer, closed = b"", True
            if not closed:
                try:
                    sent += sock.send(payload[sent : sent + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
            if not closed:
                still.append((sock, payload, sent, opened))
                continue
            attack.held.append(time.monotonic() - opened)
            attack.saw(_status(answer))
            sock.close()
            still.append(connect(payload))  # the attacker keeps its 500 connections
        live = still
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    attack.open_at_end = len(live)
    attack.longest_open = max((time.monotonic() - opened for *_, opened in live), default=0.0)
    for sock, *_ in live:
        sock.close()


def rss_watch(pid: int, stop_at: float, peak: list[float]) -> None:
    while time.monotonic() < stop_at:
        peak[0] = max(peak[0], rss_mb(pid))
        time.sleep(0.05)


@dataclass
class Phase:
    name: str
    attacker: Any
    #: seconds the attack runs before the measurement starts, and after it ends
    lead: float
    #: seconds measured
    seconds: int


def phases(args: argparse.Namespace) -> list[Phase]:
    # The slow connections are measured over a header timeout and more, so that the wave of
    # cut-off connections and their replacements falls inside the measurement.
    slow = max(args.phase_seconds, int(args.header_timeout) + 4)
    return [
        Phase("alone", None, 0.5, args.phase_seconds),
        Phase("100 MB headers", big_headers, 1.0, args.phase_seconds),
        Phase("500 slow", slow_connections, 2.0, slow),
    ]


def hostile(protocol: str, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """``args.hostile_rounds`` rounds of the phases on one server; a row per phase and round."""
    data = root / protocol
    key = create_key(data)
    port = free_port()
    proc = start(data, port, protocol, header_timeout=args.header_timeout)
    rows: list[dict[str, Any]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, trust_env=False, headers=headers) as client:
            task = client.post("/api/v1/jobs/createTask", json=BODY).json()["data"]["taskId"]
        url = f"{base}/api/v1/jobs/recordInfo?taskId={task}"
        for round_ in range(args.hostile_rounds):
            for phase in phases(args):
                stop_at = time.monotonic() + phase.lead + phase.seconds + 0.5
                attack = Attack()
                threads = []
                if phase.attacker is not None:
                    threads.append(
                        threading.Thread(target=phase.attacker, args=(port, stop_at, attack))
                    )
                peak = [rss_mb(proc.pid)]
                threads.append(threading.Thread(target=rss_watch, args=(proc.pid, stop_at, peak)))
                for thread in threads:
                    thread.start()
                time.sleep(phase.lead)  # the attack under way before the measurement starts
                load = poll_load(
                    url, key, seconds=phase.seconds, conns=args.conns, delay_ms=args.delay_ms
                )
                for thread in threads:
                    thread.join()
                alive = proc.poll() is None
                rows.append(
                    {
                        "protocol": protocol,
                        "round": round_,
                        "phase": phase.name,
                        **load,
                        "rss": peak[0],
                        "attack": attack.summary() if phase.attacker else "",
                        "alive": alive,
                    }
                )
                if not alive:
                    return rows
                time.sleep(0.5)
    finally:
        stop(proc)
    return rows


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base: str
    key: str
    task: str


def throughput(args: argparse.Namespace, root: Path) -> None:
    """The guard's cost on an unhostile server: stock and guarded, interleaved."""
    from api_bench import wrk

    servers: dict[str, Served] = {}
    try:
        for protocol in ("stock", "guarded"):
            data = root / f"throughput-{protocol}"
            key = create_key(data)
            port = free_port()
            proc = start(data, port, protocol)
            base = f"http://127.0.0.1:{port}"
            servers[protocol] = Served(proc, base, key, "")
            with httpx.Client(base_url=base, trust_env=False) as client:
                created = client.post(
                    "/api/v1/jobs/createTask", json=BODY, headers={"Authorization": f"Bearer {key}"}
                ).json()
            servers[protocol].task = created["data"]["taskId"]
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for protocol, served in servers.items():
                for endpoint, path, expect in (
                    ("recordInfo", f"/api/v1/jobs/recordInfo?taskId={served.task}", '"code":200'),
                    ("healthz", "/healthz", '"status":"ok"'),
                ):
                    run = wrk(
                        served.base + path,
                        key=served.key,
                        expect=expect,
                        duration=args.duration,
                        pid=served.proc.pid,
                    )
                    results.setdefault((protocol, endpoint), []).append(run)
        print(
            f"\nthroughput, wrk -t1 -c32 -d{args.duration}s x {args.rounds} rounds, interleaved "
            "(medians)"
        )
        print(f"{'endpoint':<12}{'protocol':<10}{'req/s':>9}{'p99 ms':>9}{'CPU us/req':>12}")
        for endpoint in ("recordInfo", "healthz"):
            stock_rps = statistics.median(r["rps"] for r in results[("stock", endpoint)])
            for protocol in ("stock", "guarded"):
                runs = results[(protocol, endpoint)]
                rps = statistics.median(r["rps"] for r in runs)
                p99 = statistics.median(r["p99_ms"] for r in runs)
                cpu = statistics.median(r["cpu_us"] for r in runs)
                print(
                    f"{endpoint:<12}{protocol:<10}{rps:>9.0f}{p99:>9.2f}{cpu:>12.0f}"
                    + (f"   {rps / stock_rps:.2f}x stock" if protocol == "guarded" else "")
                )
    finally:
        for served in servers.values():
            stop(served.proc)


def report(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'protocol':<9}{'round':>6}  {'phase':<16}{'p50 ms':>8}{'p99 ms':>8}{'p99 x':>7}"
        f"{'answered':>10}{'errors':>8}{'RSS MB':>8}  attackers"
    )
    alone: dict[tuple[str, int], float] = {
        (r["protocol"], r["round"]): r["p99"] for r in rows if r["phase"] == "alone"
    }
    for row in rows:
        ratio = row["p99"] / alone[(row["protocol"], row["round"])]
        print(
            f"{row['protocol']:<9}{row['round'] + 1:>6}  {row['phase']:<16}{row['p50']:>8.2f}"
            f"{row['p99']:>8.2f}{ratio:>7.2f}{row['requests']:>10.0f}{row['errors']:>8.0f}"
            f"{row['rss']:>8.0f}  {row['attack']}" + ("" if row["alive"] else "  SERVER DIED")
        )
    print("\nmedians over the rounds: p99 ms (ratio to alone)")
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        mine = [r for r in rows if r["protocol"] == protocol]
        base = statistics.median(r["p99"] for r in mine if r["phase"] == "alone")
        cells = []
        for phase in dict.fromkeys(r["phase"] for r in mine):
            p99 = statistics.median(r["p99"] for r in mine if r["phase"] == phase)
            cells.append(f"{phase} {p99:.2f} ({p99 / base:.2f}x)")
        print(f"  {protocol}: " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("guarded", "stock", "both"), default="guarded")
    parser.add_argument("--hostile-rounds", type=int, default=2, help="rounds of the 3 phases")
    parser.add_argument("--phase-seconds", type=int, default=8, help="wrk run per phase")
    parser.add_argument(
        "--header-timeout", type=float, default=10.0, help="the server's header_timeout"
    )
    parser.add_argument("--conns", type=int, default=8, help="ordinary clients' connections")
    parser.add_argument("--delay-ms", type=int, default=5, help="each connection's pause")
    parser.add_argument("--throughput", action="store_true", help="also the guard's cost")
    parser.add_argument("--duration", type=int, default=5, help="throughput: seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    protocols = ["guarded", "stock"] if args.protocol == "both" else [args.protocol]
    root = Path(tempfile.mkdtemp(prefix="seedbed-hostile-"))
    started = time.monotonic()
    try:
        print(
            f"machine: {os.cpu_count()} cores; ordinary clients: wrk -t1 -c{args.conns} on "
            f"recordInfo, {args.delay_ms} ms between requests; {args.hostile_rounds} rounds"
        )
        if args.hostile_rounds:  # 0: the throughput comparison alone
            report([row for protocol in protocols for row in hostile(protocol, args, root)])
        if args.throughput:
            throughput(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
