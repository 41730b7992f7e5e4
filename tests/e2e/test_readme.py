"""The README's walk-through, run as a newcomer pastes it, so that it cannot rot.

Every ```sh block runs, in order, in one bash (variables carry over as in one terminal), and
every ```python block runs where it stands, with the venv's python. A block right after
``<!-- readme-test: skip (why) -->`` is not run; the one after ``<!-- readme-test: server -->``
is ``make serve ARGS="..."``, which this test replaces with ``seedbed serve`` and the same
arguments on a free port, as `make serve` would run it once installed.

It all happens in a scratch folder that looks like the repository root to the walk-through
(``.venv``, ``examples`` and ``README.md`` linked there), so that its ``./seedbed-data``,
downloads and ``task.json`` never land in the working tree.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from proc import wait_ready

from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: the whole walk-through, generous for a loaded 2-core machine (it takes 20 to 35 s here)
WALK_TIMEOUT = 240

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
_MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<what>server|skip)\b.*-->")


@dataclass
class Block:
    lang: str
    text: str
    marker: str | None  # "server", "skip" or None (run it)
    line: int


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, each with the marker just above it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening or not opening["lang"]:
            i += 1
            continue
        marker = None
        for above in reversed(lines[max(0, i - 2) : i]):
            if (found := _MARKER.search(above)) is not None:
                marker = found["what"]
                break
        indent = len(opening["indent"])
        body: list[str] = []
        j = i + 1
        while not lines[j].strip().startswith("```"):
            body.append(lines[j][indent:])
            j += 1
        blocks.append(Block(opening["lang"], "\n".join(body) + "\n", marker, i + 1))
        i = j + 1
    return blocks


def walk_through_script(blocks: list[Block]) -> str:
    """One bash script of the blocks to run; python blocks become heredocs for ``python -``."""
    parts = ["set -e"]
    for block in blocks:
        if block.marker is not None:
            continue
        if block.lang == "sh":
            parts.append(f"# README.md line {block.line}\n{block.text}")
        elif block.lang == "python":
            parts.append(
                f"# README.md line {block.line}\npython - <<'README_PYTHON'\n{block.text}README_PYTHON"
            )
    return "\n".join(parts) + "\n"


def server_args(blocks: list[Block]) -> list[str]:
    (block,) = [b for b in blocks if b.marker == "server"]
    (line,) = [ln for ln in block.text.splitlines() if ln.startswith("make serve")]
    words = shlex.split(line)
    args = [w.removeprefix("ARGS=") for w in words[2:] if w.startswith("ARGS=")]
    return shlex.split(" ".join(args))


def test_the_readme_marks_only_what_cannot_run_here() -> None:
    """Blocks are skipped only with a reason, and none from the walk-through to the task
    control section: those are the ones a newcomer pastes."""
    text = README.read_text()
    blocks = readme_blocks(text)
    markers = [m for m in _MARKER.finditer(text) if m["what"] == "skip"]
    assert len(markers) == len([b for b in blocks if b.marker == "skip"])
    for marker in markers:
        assert re.search(r"skip \(.+\)", marker[0]), marker[0]  # says why
    start, end = text.index("\n## Walk-through"), text.index("\n## Generate real images")
    assert all(not start < m.start() < end for m in markers)
    first_line = text[:start].count("\n") + 1
    install = [b.text for b in blocks if b.marker == "skip" and b.line < first_line]
    assert len(install) == 2
    for block in install:  # before the walk-through: only the install commands
        assert all(
            line.startswith(("make ", ".venv/bin/pip ", "python3 -m venv "))
            for line in block.splitlines()
            if line.strip()
        ), block
    ran = [b for b in blocks if b.marker is None and b.lang in ("sh", "python")]
    assert len(ran) >= 8
    assert server_args(blocks) == ["--allow-network", "127.0.0.1/32"]
    # one way to call the CLI, one base address: no hard-coded port, no .venv/bin/seedbed
    for block in ran:
        code = [
            line.split(" #")[0]  # comments may show what an answer looks like
            for line in block.text.splitlines()
            if not line.lstrip().startswith("#")
        ]
        for line in code:
            assert ".venv/bin/seedbed" not in line
            assert ":8000" not in line.replace('"http://127.0.0.1:8000"', ""), line


def test_the_readme_links_only_files_in_the_repository() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    local = [t for t in targets if "://" not in t]
    assert "docs/contract.md" in local and "LICENSE" in local
    for target in local:
        assert (ROOT / target).resolve().is_relative_to(ROOT), target
        assert (ROOT / target).exists(), target


@pytest.mark.slow
@pytest.mark.timeout(WALK_TIMEOUT + 60)  # over the suite's 120 s: the walk's own limit is below
def test_the_walk_through_runs_end_to_end(tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    repo = tmp_path / "repo"
    repo.mkdir()
    # the venv this test runs in is the one `make` made: link it where the README expects it
    (repo / ".venv").symlink_to(Path(sys.prefix))
    for name in ("examples", "README.md"):
        (repo / name).symlink_to(ROOT / name)
    port, hook_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SEEDBED_")}
    env.update(PORT=str(port), HOOK_PORT=str(hook_port), COLUMNS="120")
    env.pop("VIRTUAL_ENV", None)

    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "seedbed", "serve", *server_args(blocks), "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        script = walk_through_script(blocks)
        (tmp_path / "walk-through.sh").write_text(script)
        walk = subprocess.Popen(
            ["bash", str(tmp_path / "walk-through.sh")],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # the receiver it starts goes with it on a timeout
        )
        try:
            output, _ = walk.communicate(timeout=WALK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(walk.pid, signal.SIGKILL)
            output, _ = walk.communicate()
            raise AssertionError(f"the walk-through hung:\n{output}") from None
        assert walk.returncode == 0, output
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr:
            server.stderr.close()
        log.close()

    # what the walk-through says it does, it did
    with Image.open(repo / "lighthouse.jpg") as image:
        assert image.size == (2848, 1600)
    assert len(list((repo / "images").iterdir())) >= 3  # Python's fox, the CLI's fox and edit
    assert '"state":"success"' in output
    # the receiver checked the signature and printed the callback (after curl's answer, which
    # ends without a newline)
    received = re.findall(r"([0-9a-f]{32}) success http://127\.0\.0\.1:\d+/files/results/", output)
    assert len(received) == 1, output
    first, second = re.findall(r'"taskId":"([0-9a-f]{32})","recordId"', output)[-2:]
    assert first == second  # the Idempotency-Key answered the first task again
    assert (repo / "seedbed-data" / "seedbed.db").is_file()
