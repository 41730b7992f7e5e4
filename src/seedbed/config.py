"""Settings: flags, ``SEEDBED_<NAME>`` environment variables and an optional TOML file.

Precedence, highest first: values passed in code (the CLI's flags), the environment, the
TOML file named by ``SEEDBED_CONFIG`` (or ``--config``), then the defaults below.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from seedbed.settings_check import check_environment, toml_source

__all__ = [
    "ArkEngineSettings",
    "DiffusersEngineSettings",
    "EngineSettings",
    "KieEngineSettings",
    "ModelRoute",
    "RelayEngineSettings",
    "Settings",
]


class _RenderSettings(BaseModel):
    """What an operator may set per engine and override per model: how one image is rendered."""

    model_config = ConfigDict(extra="forbid")

    steps: PositiveInt | None = Field(None, description="denoising steps (num_inference_steps)")
    guidance_scale: float | None = Field(
        None, description="CFG scale; the pipeline's default if unset"
    )
    true_cfg_scale: float | None = Field(None, description="Qwen-Image's true CFG scale")
    negative_prompt: str | None = None
    scheduler: str | None = Field(
        None, description="a diffusers scheduler class name, built from the pipeline's own config"
    )
    native_area: PositiveInt | None = Field(
        None, description="pixels the pipeline renders (width x height) before the exact resize"
    )
    native_sizes: list[tuple[PositiveInt, PositiveInt]] | None = Field(
        None, description="the sizes the model was trained at; the nearest aspect ratio wins"
    )
    call: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for every pipeline call"
    )
    layers: PositiveInt | None = Field(
        None, description="layer decomposition: RGBA layers per task (default 4, at most 8)"
    )
    default_prompt: str | None = Field(
        None,
        description="layer decomposition: the prompt of a task that has none; default: the "
        "pipeline captions the image with its vision-language processor",
    )


class DiffusersEngineSettings(_RenderSettings):
    """``[engines.NAME]``: one diffusers pipeline, loaded once per worker and kept warm."""

    kind: Literal["diffusers"] = "diffusers"
    pipeline: str = Field(description="a Hugging Face repo id or a local folder")
    pipeline_class: str | None = Field(
        None, description="a diffusers pipeline class; default: the one model_index.json names"
    )
    revision: str | None = None
    variant: str | None = Field(None, description='weights variant, e.g. "fp16"')
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU"
    )
    device: str = Field("auto", description='"auto" (CUDA if present), "cpu", "cuda", "cuda:1"')
    offload: Literal["none", "model", "sequential"] = Field(
        "none", description="CPU offload: model (whole components) or sequential (layers)"
    )
    size_multiple: PositiveInt = Field(16, description="render sizes are multiples of this")
    max_input_images: int = Field(
        0, ge=0, description="input images the pipeline takes; 0: text-to-image only"
    )
    max_outputs: PositiveInt | None = Field(None, description="images per task at most")
    max_batch: PositiveInt = Field(
        1, description="compatible text-to-image tasks rendered in one pipeline call at most"
    )
    batch_window_ms: float = Field(
        20.0, ge=0, description="how long the first task of a batch waits for companions"
    )
    upscale_pipeline: str | None = Field(
        None,
        description="a super-resolution pipeline (repo id or folder) run before the exact "
        "resize when the contract's size is larger than the render size; default: Lanczos only",
    )
    upscale_steps: PositiveInt = Field(20, description="denoising steps of the upscaler")
    skip_components: list[str] = Field(
        default_factory=list,
        description="pipeline components loaded as None (from_pretrained(..., NAME=None)), e.g. "
        '["processor"] for Qwen-Image-Layered where torchvision is missing',
    )
    spill_after_seconds: float | None = Field(
        None,
        gt=0,
        description="routes: a task moves to the next engine of its [models] route when this "
        "engine's estimated queue wait is longer; unset: it waits",
    )


class RelayEngineSettings(BaseModel):
    """What every relay engine (an upstream API in place of a local pipeline) shares.

    The upstream's key is never in this file: ``api_key_env`` names the environment variable
    that holds it, read once at start-up.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the upstream's API root, e.g. https://api.kie.ai")
    api_key_env: str = Field(
        min_length=1, description="the environment variable holding the upstream's API key"
    )
    max_concurrency: PositiveInt = Field(
        32, description="upstream requests in flight at once (tasks run on the event loop)"
    )
    spill_after_seconds: float | None = Field(
        None, gt=0, description="routes: move on when this engine's estimated wait is longer"
    )
    max_input_images: int = Field(14, ge=0, description="input images one task may send")
    max_outputs: PositiveInt | None = Field(None, description="images per task at most")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect to the upstream")
    request_timeout: float = Field(
        180.0, gt=0, description="seconds the upstream has to answer one generation request"
    )
    download_timeout: float = Field(60.0, gt=0, description="seconds to download one result")
    max_image_bytes: PositiveInt = Field(
        64 * 1024 * 1024, description="largest result image accepted from the upstream"
    )
    max_image_pixels: PositiveInt = Field(
        6240 * 6240, description="largest result pixel count decoded (a decompression-bomb cap)"
    )
    retry_budget_seconds: float = Field(
        60.0, ge=0, description="per task: time spent waiting between retries of 429/5xx/timeouts"
    )
    max_retries: int = Field(4, ge=0, description="per task: retries of 429/5xx/timeouts")
    retry_base_seconds: float = Field(
        0.5, ge=0, description="first backoff delay; doubles per retry, with full jitter"
    )
    circuit_failures: PositiveInt = Field(
        5, description="upstream failures in a row (5xx, timeouts, refused) that open the circuit"
    )
    circuit_open_seconds: float = Field(
        30.0, gt=0, description="how long an open circuit refuses before one trial request"
    )


class ArkEngineSettings(RelayEngineSettings):
    """``kind = "ark"``: ByteDance's images API (BytePlus ModelArk, Volcengine Ark)."""

    kind: Literal["ark"]
    model_ids: dict[str, str] = Field(
        default_factory=dict,
        description="Seedream model id -> Ark model or endpoint id, over the default map",
    )
    watermark: bool = Field(False, description='Ark\'s "AI生成" mark on results')
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="url: results downloaded from Ark's links; b64_json: inline"
    )


class KieEngineSettings(RelayEngineSettings):
    """``kind = "kie"``: a kie-compatible upstream (kie.ai itself, or another seedbed)."""

    kind: Literal["kie"]
    upload_base_url: str | None = Field(
        None, description="where /api/file-stream-upload lives; default: base_url"
    )
    events: Literal["auto", "on", "off"] = Field(
        "auto",
        description="follow upstream tasks by /api/v1/jobs/events (a seedbed upstream); auto: "
        "try it once, fall back to polling recordInfo",
    )
    poll_schedule: list[float] = Field(
        default_factory=lambda: [2.0, 2.0, 3.0, 3.0, 5.0],
        description="seconds between recordInfo polls (the last repeats); kie suggests 2-5 s",
    )
    task_timeout: float = Field(
        900.0, gt=0, description="seconds an upstream task may take before it is given up"
    )


#: ``[engines.NAME]``: a table without ``kind`` is a diffusers pipeline (as before relays)
EngineSettings = Annotated[
    DiffusersEngineSettings | ArkEngineSettings | KieEngineSettings, Field(discriminator="kind")
]


class ModelRoute(_RenderSettings):
    """``[models."<model id>"]``: which engine serves a Seedream model, and overrides for it."""

    engine: str = Field(description='an [engines.NAME] name, or "sandbox"')
    fallback: list[str] = Field(
        default_factory=list,
        description="the rest of the route: engines tried in order when the ones before are "
        'down or busy; the TOML form is a list, ["gpu", "ark"]',
    )

    @property
    def route(self) -> tuple[str, ...]:
        """Every engine of the route, in order."""
        return (self.engine, *self.fallback)


#: the levels both logging and uvicorn know
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Every setting of a seedbed deployment; each is also ``SEEDBED_<NAME>`` in the environment."""

    # "forbid": an unknown key in the TOML file (``prot = 9001``) is an error, not ignored;
    # unknown SEEDBED_ variables are refused by check_environment (settings_check.py)
    model_config = SettingsConfigDict(env_prefix="SEEDBED_", extra="forbid")

    config: Path | None = Field(
        None, description="TOML file with settings (lower precedence than the environment)"
    )

    # -- where things live -----------------------------------------------------------------
    data_dir: Path = Field(
        Path("seedbed-data"), description="database, result files and runtime sockets"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite at <data_dir>/seedbed.db"
    )
    storage_url: str | None = Field(
        None,
        description="where results and uploads are stored: s3://BUCKET[/PREFIX] for an "
        "S3-compatible object store shared by every process (the s3 extra; credentials and "
        "region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); default: local "
        "files in <data_dir>/files",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="the S3 API's URL for stores other than AWS (MinIO, R2, Garage, SeaweedFS), "
        "e.g. http://127.0.0.1:8333",
    )
    s3_serve: Literal["redirect", "stream"] = Field(
        "redirect",
        description="how GET /files/... answers for results in object storage: a redirect to a "
        "short-lived presigned URL of the store (clients must reach it), or the bytes streamed "
        "through this server",
    )
    s3_presign_seconds: int = Field(
        300, ge=1, le=604_800, description="lifetime of the presigned URLs redirects point to"
    )
    public_url: str | None = Field(
        None,
        description="base URL clients reach this server at, for result links; "
        "default: the URL each request came in on",
    )

    # -- serving ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(
        1_048_576, description="largest JSON request body accepted (413 above)"
    )
    max_header_bytes: int = Field(
        65_536, gt=0, description="request line and headers of one request, bytes (431 above)"
    )
    max_header_count: int = Field(100, gt=0, description="headers of one request (431 above)")
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a request's line and headers may take from its first byte, or "
        "from the connection's opening (408, connection closed)",
    )
    body_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds of grace for a request body; past them it must have averaged "
        "body_min_rate (408, connection closed)",
    )
    body_min_rate: float = Field(
        4096.0, gt=0, description="bytes per second a request body must average after its grace"
    )
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = Field(
        "info", description="critical, error, warning, info or debug"
    )
    log_json: bool | None = Field(
        None, description="JSON log lines; default: JSON unless stderr is a terminal"
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        description="on SIGTERM, how long generating tasks may run on before they are handed "
        "back to the queue",
    )
    events_heartbeat_seconds: float = Field(
        15.0, description="comment lines on idle live-event streams, so proxies keep them open"
    )
    events_poll_seconds: float = Field(
        0.25,
        description="how often the live-event feed reads tasks changed by other processes (a "
        "safety net: processes on this host, and PostgreSQL, tell it of changes at once)",
    )
    ready_queue_limit: int = Field(
        10_000, description="/readyz reports not ready while this many tasks wait or more"
    )
    startup_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="at start-up, how long seedbed serve and seedbed worker wait for a database "
        "that cannot be reached yet (starting, restarting) before they give up",
    )
    health_check_seconds: float = Field(
        1.0,
        gt=0,
        description="how often the store and storage are probed with a small write (readiness, "
        "createTask's storage check, recovery after a fault)",
    )
    storage_min_free_mb: float = Field(
        64.0,
        ge=0,
        description="local storage counts as full below this much free space: createTask is "
        "refused and /readyz says not ready until space comes back",
    )
    fault_retry_seconds: float = Field(
        600.0,
        gt=0,
        description="how long a task's step is retried through a disk, database or storage fault "
        "before that attempt gives up",
    )

    # -- limits (per key; each key may override) -------------------------------------------
    create_rate_limit: int = Field(20, description="createTask calls per window per key")
    create_rate_window: float = Field(10.0, description="createTask window, seconds")
    record_rate_limit: int = Field(10, description="recordInfo calls per second per key")
    open_task_cap: int = Field(100, description="open (unfinished) tasks per key")
    admin_refresh_seconds: float = Field(
        1.0,
        description="how often a running server re-reads maintenance, model switches and the "
        "keys in use; admin changes are also announced to it at once, so this bounds only a "
        "change whose message was lost",
    )
    admin_token: str | None = Field(
        None,
        description="the web console's admin token (Bearer on /api/v1/admin/...); unset: only "
        "the one `seedbed admin token` made, if any (docs/console.md)",
    )
    server_secret: str | None = Field(
        None,
        description="the secret that signs download links and names upload folders, the same "
        "on every replica: 64 hex characters (openssl rand -hex 32); unset: made once and kept "
        "in the database (PostgreSQL) or in <data_dir>/server-secret (SQLite)",
    )

    # -- the worker ------------------------------------------------------------------------
    worker: bool = Field(True, description="run a worker inside the server process")
    worker_concurrency: int = Field(2, description="tasks one worker runs at once")
    lease_seconds: float = Field(
        30.0, description="a claimed task is retaken after this long without a heartbeat"
    )
    max_attempts: int = Field(3, description="times a task is retried after its worker died")
    poll_seconds: float = Field(
        5.0, description="safety-net poll for expired leases; new tasks wake workers at once"
    )
    engine_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU nice increment for the threads that run engines (Linux), so that a "
        "busy in-process worker leaves the API its CPU; 0 keeps the process's priority. "
        "Post-processing threads run 5 lower still, so that the engines feed the device first",
    )
    postprocess_concurrency: int = Field(
        0,
        ge=0,
        description="tasks a worker resizes, encodes and stores at once after their engine is "
        "done with them (apart from worker_concurrency, the device slots), and its threads, "
        "which share one task's resize and PNG in strips while idle; 0: one per CPU core",
    )
    png_compress_level: int = Field(
        1,
        ge=0,
        le=9,
        description="compression of output PNGs: 1-3 fast (ISA-L), 4-9 smaller and several "
        "times slower (zlib), 0 none (docs/benchmarks.md has each level's time and size)",
    )

    # -- fetching user URLs ----------------------------------------------------------------
    allow_network: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs the server may fetch from despite the SSRF rules (tests: 127.0.0.0/8)",
    )
    fetch_timeout: float = Field(30.0, description="seconds to fetch one input image")

    # -- callbacks -------------------------------------------------------------------------
    callbacks: bool = Field(True, description="deliver callbacks from this server process")
    callback_timeout: float = Field(15.0, description="seconds a receiver has to answer 2xx")
    callback_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [45.0 * 2**i for i in range(9)],
        description="seconds before each retry (attempts = retries + 1); default 10 attempts "
        "over about 6 hours; each delay gets ±25% jitter",
    )
    callback_concurrency: int = Field(64, description="callbacks in flight at once")
    callback_poll_seconds: float = Field(
        1.0, description="safety-net poll for callbacks queued by other processes"
    )

    # -- files -----------------------------------------------------------------------------
    upload_max_bytes: int = Field(
        30 * 1024 * 1024, description="largest file accepted by the upload endpoints"
    )
    upload_fetch_timeout: float = Field(30.0, description="seconds to fetch a fileUrl upload")
    upload_retention_days: float = Field(3.0, description="uploads are deleted after this")
    result_retention_days: float = Field(14.0, description="results are deleted after this")
    retention_sweep_seconds: float = Field(
        600.0, description="how often the retention sweeper looks for old files"
    )
    download_link_seconds: int = Field(
        1200, description="lifetime of links from /api/v1/common/download-url"
    )

    # -- engines ---------------------------------------------------------------------------
    sandbox_steps: int = Field(4, description="progress steps the sandbox engine reports")
    sandbox_step_seconds: float = Field(0.0, description="delay per sandbox step (demos and tests)")
    engines: dict[str, EngineSettings] = Field(
        default_factory=dict,
        description="[engines.NAME] tables: pipelines and upstreams (docs/engines.md)",
    )
    models: dict[str, ModelRoute] = Field(
        default_factory=dict,
        description='[models."<id>"] tables: the engine of each model; with none, the sandbox '
        "serves every model, with some, unlisted models answer 505",
    )

    # -- prices ----------------------------------------------------------------------------
    prices: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict,
        description='overrides per model id: {"seedream/4.5-edit": {"basic": 6, "high": 8}}',
    )

    @field_validator("allow_network", "callback_retry_delays", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # A list's environment form: JSON, or comma-separated items (pydantic converts each).
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("server_secret")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is not None:
            from seedbed.links import parse_secret

            parse_secret(value)  # refused at start-up, not at the first signed link
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _engine_names(cls, value: Any) -> Any:
        # A bare engine name is short for a table with only ``engine``; a list is a route.
        if isinstance(value, dict):
            return {k: _route_table(v) for k, v in value.items()}
        return value

    @field_validator("engines", mode="before")
    @classmethod
    def _engine_kinds(cls, value: Any) -> Any:
        # ``kind`` defaults to "diffusers", the only kind before relay engines existed.
        if isinstance(value, dict):
            return {
                k: {"kind": "diffusers", **v} if isinstance(v, dict) and "kind" not in v else v
                for k, v in value.items()
            }
        return value

    @property
    def database(self) -> str:
        """The store URL, defaulting to SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'seedbed.db').resolve()}"

    @property
    def shared_store(self) -> bool:
        """The store is a database server shared by processes on many hosts (PostgreSQL): what
        replicas must agree on lives there, and wake-ups travel through it."""
        return self.database.lower().startswith("postgres")

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def run_dir(self) -> Path:
        """Runtime sockets that wake workers in other processes on this host."""
        return self.data_dir / "run"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file(init_settings, env_settings)
        check_environment(settings_cls.model_fields, config_file=config_file)
        if config_file is not None:
            sources.append(toml_source(settings_cls, config_file))
        return tuple(sources)


def _route_table(value: Any) -> Any:
    """``"gpu"``, ``["gpu", "ark"]`` or a table (whose ``engine`` may be such a list)."""
    if isinstance(value, str):
        return {"engine": value}
    if isinstance(value, list):
        value = {"engine": value}
    if isinstance(value, dict) and isinstance(value.get("engine"), list):
        names = value["engine"]
        if not names:
            raise ValueError("a route lists at least one engine")
        value = {**value, "engine": names[0], "fallback": list(names[1:])}
    return value


def _config_file(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config")
        if value:
            return Path(value)
    return None
