"""The Makefile's install steps, run by GNU make against a stand-in Python.

The stand-in's ``-m venv DIR`` makes a venv whose ``python``, ``pip`` and ``seedbed`` only
write what they were asked to a log, so each case checks which install the Makefile runs, and
what it does after a failure, in milliseconds and without a package index.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# $FAKE is the folder with the switches (files named venv-fails, pip-fails) and the log.
STAND_IN = r"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    dir="$3"
    mkdir -p "$dir/bin"
    echo "venv $dir" >> "$FAKE/log"
    if [ -e "$FAKE/venv-fails" ]; then exit 1; fi  # half made: a bin/ and no python
    cat > "$dir/bin/python" <<'EOF'
#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; exec "$(dirname "$0")/pip" "$@"; fi
exit 0
EOF
    cat > "$dir/bin/pip" <<'EOF'
#!/bin/sh
if [ "$1" = "--version" ]; then exit 0; fi
echo "pip $*" >> "$FAKE/log"
case "$*" in *" -e "*) if [ -e "$FAKE/pip-fails" ]; then echo "no network" >&2; exit 1; fi;; esac
exit 0
EOF
    cat > "$dir/bin/seedbed" <<'EOF'
#!/bin/sh
echo "seedbed $*" >> "$FAKE/log"
EOF
    chmod +x "$dir/bin/python" "$dir/bin/pip" "$dir/bin/seedbed"
    exit 0
fi
exit 2
"""


class Project:
    """A copy of the Makefile and pyproject.toml in a folder of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fake = root / "fake"
        self.fake.mkdir()
        shutil.copy(ROOT / "Makefile", root / "Makefile")
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
        self.python = root / "python3"
        self.python.write_text(STAND_IN)
        self.python.chmod(0o755)

    def make(self, *targets: str) -> subprocess.CompletedProcess[str]:
        (self.fake / "log").write_text("")
        return subprocess.run(
            ["make", "--no-print-directory", f"PYTHON={self.python}", *targets],
            cwd=self.root,
            env={"PATH": "/usr/bin:/bin", "FAKE": str(self.fake)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log(self) -> list[str]:
        return (self.fake / "log").read_text().splitlines()

    def switch(self, name: str, on: bool) -> None:
        path = self.fake / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_make_serve_installs_the_package_alone_and_make_test_adds_the_dev_extra(
    project: Project,
) -> None:
    done = project.make("serve", "ARGS=--port 9")
    assert done.returncode == 0, done.stderr
    log = project.log()
    assert log[0] == "venv .venv"
    installs = [line for line in log if line.startswith("pip install") and " -e " in line]
    assert installs == ["pip install --quiet -e ."]  # no [dev]: no torch, no pytest
    assert log[-1] == "seedbed serve --port 9"

    # the dev install comes with the test targets (their stamp), on the same venv
    done = project.make(".venv/.installed-stamp")
    assert done.returncode == 0, done.stderr
    assert project.log() == ["pip install --quiet -e .[dev]"]
    # and satisfies `make serve` too
    assert project.make("serve").returncode == 0
    assert project.log() == ["seedbed serve"]


def test_a_failed_install_leaves_no_stamp_and_the_next_run_installs_again(
    project: Project,
) -> None:
    project.switch("pip-fails", True)
    failed = project.make("serve")
    assert failed.returncode != 0
    assert "no network" in failed.stderr
    assert "seedbed serve" not in project.log()
    assert not (project.root / ".venv" / ".serve-stamp").exists()

    project.switch("pip-fails", False)  # the cause is fixed
    done = project.make("serve")
    assert done.returncode == 0, done.stderr
    assert project.log() == ["pip install --quiet -e .", "seedbed serve"]


def test_a_half_made_venv_is_made_again(project: Project) -> None:
    project.switch("venv-fails", True)  # e.g. python3-venv missing: a venv folder, no python
    failed = project.make("serve")
    assert failed.returncode != 0
    assert "If the install fails" in failed.stderr
    assert not (project.root / ".venv").exists()  # nothing half made is left to trust

    project.switch("venv-fails", False)
    done = project.make("serve")
    assert done.returncode == 0, done.stderr
    assert project.log()[0] == "venv .venv" and project.log()[-1] == "seedbed serve"


def test_a_venv_whose_python_broke_is_not_trusted_even_with_its_stamp(project: Project) -> None:
    assert project.make("serve").returncode == 0
    # the Python it was made from is gone (an upgrade): the venv's python no longer runs
    (project.root / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 127\n")
    done = project.make("serve")
    assert done.returncode == 0, done.stderr
    assert project.log() == [
        "venv .venv",
        "pip install --quiet --upgrade pip",
        "pip install --quiet -e .",
        "seedbed serve",
    ]
