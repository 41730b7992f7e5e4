"""``seedbed worker --engine NAME --device DEV``: one worker per pipeline (per GPU), routed by model.

The server and two workers share one TOML config; each worker loads only its engine and claims
only the tasks of the models that engine serves.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from proc import SEEDBED, env

from conftest import make_settings, serve_in_thread

SD_MODEL = "bytedance/seedream"
KLEIN_MODEL = "bytedance/seedream-v4-text-to-image"


def _config(path: Path, models: dict[str, Path]) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            [engines.sd]
            pipeline = "{models["sd"]}"
            steps = 2
            native_area = 4096
            size_multiple = 8

            [engines.klein]
            pipeline = "{models["klein"]}"
            steps = 2
            native_area = 4096
            guidance_scale = 1.0
            call = {{ text_encoder_out_layers = [1], max_sequence_length = 32 }}

            [models]
            "{SD_MODEL}" = "sd"
            "{KLEIN_MODEL}" = "klein"
            """
        )
    )
    return path


def _burst_worker(config: Path, data_dir: Path, engine: str) -> None:
    done = subprocess.run(
        [
            *SEEDBED,
            "worker",
            "--burst",
            "--engine",
            engine,
            "--device",
            "cpu",
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_each_worker_claims_only_the_models_of_the_engine_it_loaded(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    config = _config(tmp_path / "seedbed.toml", tiny_models)
    settings = make_settings(tmp_path, config=config, worker=False)
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(credits=100)
        sd_task = live.create(key, {"model": SD_MODEL, "input": {"prompt": "a red fox"}})
        klein_task = live.create(key, {"model": KLEIN_MODEL, "input": {"prompt": "a red fox"}})
        sd_id, klein_id = sd_task["data"]["taskId"], klein_task["data"]["taskId"]

        _burst_worker(config, settings.data_dir, "klein")
        assert live.record(key, klein_id)["data"]["state"] == "success"
        assert live.record(key, sd_id)["data"]["state"] == "waiting"

        _burst_worker(config, settings.data_dir, "sd")
        assert live.record(key, sd_id)["data"]["state"] == "success"
