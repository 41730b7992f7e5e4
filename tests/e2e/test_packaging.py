"""The licence travels with the code: LICENSE in the repository and in the wheel pip builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_repository_has_the_apache_2_licence() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole text, not a pointer to it


def test_the_wheel_carries_the_licence_and_says_which_it_is(tmp_path: Path) -> None:
    # a copy of what a wheel is built from, so the build leaves nothing in the working tree
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",  # hatchling is in the dev extra: no index needed
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("seedbed-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers


#: what the core install (``make serve``) must do without: numpy and ISA-L are the ``fast``
#: extra, torch the ``diffusers`` one
_WITHOUT_EXTRAS = r"""
import sys
for name in ("numpy", "isal", "torch", "diffusers", "asyncpg", "obstore"):
    sys.modules[name] = None  # an import of it now fails, as where it is not installed
import tempfile, threading
from pathlib import Path
from seedbed import catalogue, images
from seedbed.app import create_app
from seedbed.config import Settings
from seedbed.engines import default_engines
from seedbed.engines.base import EngineJob, Pictures

create_app(Settings(data_dir=Path(tempfile.mkdtemp())))
spec = catalogue.get("seedream/5-lite-text-to-image")  # a PNG model
inp = catalogue.validate_input(spec, {"prompt": "core", "aspect_ratio": "1:1"})
plan = spec.plan(inp, [])
job = EngineJob(task_id="t", model=spec.id, input=inp.model_dump(), seed=1, plan=plan)
out = next(iter(default_engines())).run(job, lambda p: None, threading.Event())
assert isinstance(out, Pictures), out
(made,) = out.outputs[0](images.DEFAULT_ENCODING)
assert made.data.startswith(b"\x89PNG"), made.data[:8]
assert (made.width, made.height) == (plan.width, plan.height)
print("ok", len(made.data))
"""


def test_the_core_install_serves_and_encodes_without_the_extras() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
