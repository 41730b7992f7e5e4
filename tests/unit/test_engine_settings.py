"""Engine settings: the [engines.*] / [models.*] tables, render sizes, and a torch-free API side."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from seedbed.config import DiffusersEngineSettings, ModelRoute, Settings
from seedbed.engines import build_engines
from seedbed.engines.diffusers import DiffusersEngine, RenderSettings, render_size

T2I = "seedream/4.5-text-to-image"
EDIT = "seedream/4.5-edit"
LAYERS = "seedream/5-pro-layer-decomposition"


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **values)


ENGINES = {
    "zimage": {"pipeline": "Tongyi-MAI/Z-Image-Turbo", "steps": 8, "guidance_scale": 0.0},
    "qwen-edit": {"pipeline": "Qwen/Qwen-Image-Edit-2511", "max_input_images": 3},
}


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 1024), (1024, 1024)),
        ((2048, 2048), (1024, 1024)),
        ((2560, 1440), (1360, 768)),
        ((1440, 2560), (768, 1360)),
        ((3136, 1344), (1568, 672)),
    ],
)
def test_render_size_keeps_the_native_area_at_the_requested_aspect(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert render_size(*size, native_area=1024 * 1024, multiple=16) == expected


def test_render_size_picks_the_native_size_of_nearest_aspect() -> None:
    sizes = [(1328, 1328), (1664, 928), (928, 1664), (1472, 1140), (1140, 1472)]
    assert render_size(2560, 1440, native_area=1, multiple=16, native_sizes=sizes) == (1664, 928)
    assert render_size(1024, 1024, native_area=1, multiple=16, native_sizes=sizes) == (1328, 1328)
    assert render_size(864, 1152, native_area=1, multiple=16, native_sizes=sizes) == (1140, 1472)


def test_render_size_is_never_below_one_multiple() -> None:
    assert render_size(6000, 100, native_area=64 * 64, multiple=16) == (496, 16)


def test_a_model_overrides_its_engines_settings() -> None:
    engine = DiffusersEngineSettings(
        pipeline="x", steps=8, guidance_scale=4.0, call={"a": 1, "b": 2}
    )
    route = ModelRoute(engine="e", steps=30, call={"b": 3})
    merged = RenderSettings.merge(engine, route)
    assert (merged.steps, merged.guidance_scale) == (30, 4.0)
    assert merged.call == {"a": 1, "b": 3}
    assert RenderSettings.merge(DiffusersEngineSettings(pipeline="x"), None).steps == 8


def test_the_toml_file_maps_models_to_engines(tmp_path: Path) -> None:
    config = tmp_path / "seedbed.toml"
    config.write_text(
        textwrap.dedent(
            """
            [engines.zimage]
            pipeline = "Tongyi-MAI/Z-Image-Turbo"
            steps = 8
            guidance_scale = 0.0
            max_batch = 4

            [engines.qwen-edit]
            pipeline = "Qwen/Qwen-Image-Edit-2511"
            max_input_images = 3
            native_sizes = [[1024, 1024], [1184, 880]]

            [models."seedream/4.5-text-to-image"]
            engine = "zimage"
            steps = 9

            [models]
            "seedream/4.5-edit" = "qwen-edit"
            """
        )
    )
    settings = Settings(config=config, data_dir=tmp_path)
    assert settings.engines["zimage"].max_batch == 4
    assert settings.engines["qwen-edit"].native_sizes == [(1024, 1024), (1184, 880)]
    assert settings.models[T2I] == ModelRoute(engine="zimage", steps=9)
    assert settings.models[EDIT].engine == "qwen-edit"
    engines = build_engines(settings)
    zimage = engines.for_model(T2I)
    assert isinstance(zimage, DiffusersEngine) and zimage.name == "zimage"
    assert engines.for_model(EDIT) is not zimage
    assert engines.for_model("seedream/5-lite-text-to-image") is None
    assert engines.for_model(EDIT).limits.max_input_images == 3  # type: ignore[union-attr]


def test_an_unknown_key_in_an_engine_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stepz"):
        _settings(tmp_path, engines={"z": {"pipeline": "x", "stepz": 3}})


def test_without_models_the_sandbox_serves_everything(tmp_path: Path) -> None:
    engines = build_engines(_settings(tmp_path))
    assert [engine.name for engine in engines] == ["sandbox"]
    assert engines.serves(LAYERS)


@pytest.mark.parametrize(
    ("engines", "models", "message"),
    [
        (ENGINES, {}, "no \\[models\\] table"),
        (ENGINES, {"seedream/9": "zimage"}, 'models."seedream/9"\\]: unknown model id'),
        (ENGINES, {T2I: "flux"}, "engine 'flux' is not in \\[engines\\]"),
        (ENGINES, {EDIT: "zimage"}, "takes none \\(set max_input_images"),
        (ENGINES, {LAYERS: "zimage"}, "takes an input image but engine 'zimage' takes none"),
        (
            {"layered": {"pipeline": "Qwen/Qwen-Image-Layered", "max_input_images": 1}},
            {LAYERS: {"engine": "layered", "layers": 9}},
            "layers = 9 is over seedream/5-pro-layer-decomposition's limit of 8",
        ),
    ],
)
def test_a_mapping_that_cannot_work_is_refused_at_start(
    tmp_path: Path, engines: dict[str, Any], models: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_engines(_settings(tmp_path, engines=engines, models=models))


def test_a_layer_model_maps_to_an_engine_that_takes_its_image(tmp_path: Path) -> None:
    layered = {"pipeline": "Qwen/Qwen-Image-Layered", "max_input_images": 1, "layers": 6}
    engines = build_engines(
        _settings(tmp_path, engines={"layered": layered}, models={LAYERS: "layered"})
    )
    engine = engines.for_model(LAYERS)
    assert isinstance(engine, DiffusersEngine) and engine.name == "layered"
    assert engine._render[LAYERS].layers == 6


def test_models_mapped_to_the_sandbox_are_the_only_ones_it_serves(tmp_path: Path) -> None:
    engines = build_engines(
        _settings(tmp_path, engines=ENGINES, models={T2I: "sandbox", EDIT: "qwen-edit"})
    )
    assert engines.for_model(T2I) is not None and engines.for_model(T2I).name == "sandbox"  # type: ignore[union-attr]
    assert not engines.serves("seedream/5-lite-text-to-image")


def test_a_worker_can_keep_only_some_engines_on_its_device(tmp_path: Path) -> None:
    settings = _settings(tmp_path, engines=ENGINES, models={T2I: "zimage", EDIT: "qwen-edit"})
    engines = build_engines(settings, only=["qwen-edit"], device="cuda:1")
    [engine] = list(engines)
    assert isinstance(engine, DiffusersEngine) and engine.device == "cuda:1"
    assert engines.serves(EDIT) and not engines.serves(T2I)
    with pytest.raises(ValueError, match="no engine 'flux'"):
        build_engines(settings, only=["flux"])


def test_without_the_extra_the_models_are_not_served_and_the_log_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("seedbed.engines.diffusers.extra_installed", lambda: False)
    with caplog.at_level(logging.WARNING, logger="seedbed.engines"):
        engines = build_engines(
            _settings(tmp_path, engines=ENGINES, models={T2I: "zimage", EDIT: "sandbox"})
        )
    assert not engines.serves(T2I)
    assert engines.serves(EDIT)
    assert "pip install 'seedbed[diffusers]'" in caplog.text and T2I in caplog.text


def test_the_api_side_never_imports_torch(tmp_path: Path) -> None:
    # A fresh interpreter: this test session may have imported torch already.
    code = textwrap.dedent(
        f"""
        import sys
        from seedbed.app import create_app
        from seedbed.config import Settings
        settings = Settings(
            data_dir={str(tmp_path)!r},
            engines={{"z": {{"pipeline": "Tongyi-MAI/Z-Image-Turbo"}}}},
            models={{"{T2I}": "z"}},
            worker=False,
        )
        app = create_app(settings)
        engines = app.state.ctx.engines
        assert engines.serves("{T2I}"), "the extra is installed in the test environment"
        heavy = [name for name in ("torch", "diffusers", "transformers") if name in sys.modules]
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
