"""A server configured for diffusers on a machine without the extra: it starts and answers 505."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_settings, serve_in_thread


def test_models_of_a_missing_extra_answer_505_and_the_others_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("seedbed.engines.diffusers.extra_installed", lambda: False)
    settings = make_settings(
        tmp_path,
        engines={"zimage": {"pipeline": "Tongyi-MAI/Z-Image-Turbo"}},
        models={"seedream/4.5-text-to-image": "zimage", "bytedance/seedream": "sandbox"},
    )
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(credits=100)
        refused = live.create(
            key, {"model": "seedream/4.5-text-to-image", "input": {"prompt": "a fox"}}
        )
        assert refused["code"] == 505
        assert "seedream/4.5-text-to-image" in refused["msg"]
        served = live.create(key, {"model": "bytedance/seedream", "input": {"prompt": "a fox"}})
        assert served["code"] == 200
        assert live.wait(key, served["data"]["taskId"])["state"] == "success"
