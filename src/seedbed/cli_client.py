"""The key's side of the ``seedbed`` command, over HTTP: ``generate``, ``get``, ``balance``.

They talk to a server (seedbed or kie.ai) with ``seedbed.client``, unlike the admin commands,
which work on the data directory. Where the server and key come from, highest first (the
Python client's own rules, ``seedbed.client.config``):

1. the flags ``--url``, ``--key``, ``--upload-url``;
2. the environment: ``SEEDBED_URL``, ``SEEDBED_API_KEY`` (``KIE_API_KEY`` first when the URL
   is kie.ai's), ``SEEDBED_UPLOAD_URL``;
3. a TOML file with ``url``, ``api_key``, ``upload_url`` (any other key is an error):
   ``--client-config PATH``, else ``SEEDBED_CLIENT_CONFIG``, else
   ``$XDG_CONFIG_HOME/seedbed/client.toml`` (``~/.config/seedbed/client.toml``);
4. ``http://127.0.0.1:8000`` and no key.

Failures print one line on stderr; ``--debug`` adds the traceback. The exit code says which
kind (``seedbed.exit_codes``, docs/cli.md): 2 a usage mistake (typer's usage message for a bad
flag), 3 the server refused (a 4xx code), 1 the server failed or could not be reached, 4 the
task ended ``fail``.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from seedbed.exit_codes import FAILED, REFUSED, TASK_FAILED, USAGE

if TYPE_CHECKING:
    from seedbed.client import Client, Task
    from seedbed.client.config import ClientConfig

__all__ = ["config_path", "register_client_commands", "resolve_config"]

DEFAULT_MODEL = "seedream/4.5-text-to-image"
#: where the CLI's uploads of local reference images go on the server
UPLOAD_PATH = "seedbed-cli"

err = Console(stderr=True)


class CliFailure(Exception):
    """A mistake in the command line or the client config, reported as one line (exit 2)."""


def config_path(explicit: Path | None = None) -> Path:
    """The client config file: the flag, ``SEEDBED_CLIENT_CONFIG``, or the XDG location."""
    from seedbed.client import config

    return config.config_path(explicit)


def resolve_config(
    url: str | None, key: str | None, upload_url: str | None, config_file: Path | None
) -> ClientConfig:
    """Flags, then the environment, then the config file, then the defaults."""
    from seedbed.client import ConfigError, config

    try:
        return config.resolve(url, key, upload_url, config_file=config_file)
    except ConfigError as exc:
        raise CliFailure(str(exc)) from exc


# -- options every command shares ----------------------------------------------------------
Url = Annotated[
    str | None,
    typer.Option("--url", help="Server base URL (env SEEDBED_URL).", show_default=False),
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="API key (env SEEDBED_API_KEY; KIE_API_KEY first for kie.ai).",
        show_default=False,
    ),
]
UploadUrl = Annotated[
    str | None,
    typer.Option(
        "--upload-url",
        help="Upload base URL if not the server's (kie.ai: https://kieai.redpandaai.co).",
        show_default=False,
    ),
]
ClientConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--client-config",
        help="TOML file with url, api_key, upload_url (default ~/.config/seedbed/client.toml).",
        show_default=False,
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(message: str, code: int = FAILED) -> NoReturn:
    # Text, not markup: a server's msg may hold square brackets
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _exit_code(exc: BaseException) -> int:
    """The exit code for a failure: who said no, or what broke (``seedbed.exit_codes``)."""
    from seedbed.client import ApiError, TaskFailed

    if isinstance(exc, CliFailure | ValueError):
        return USAGE
    if isinstance(exc, TaskFailed):
        return TASK_FAILED
    if isinstance(exc, ApiError) and exc.code < 500:
        return REFUSED
    return FAILED  # 5xx, unreachable, not kie's envelope, a wait that timed out, local I/O


def _describe(exc: BaseException) -> str:
    from seedbed.client import ApiError

    if isinstance(exc, ApiError):
        return f"{exc.msg or 'error'} (code {exc.code})"
    return str(exc) or type(exc).__name__


@contextmanager
def _reported(debug: bool) -> Iterator[None]:
    """Turn failures into one line and their exit code (the traceback under ``--debug``)."""
    from seedbed.client import ClientError

    try:
        yield
    except (ClientError, CliFailure, OSError, ValueError) as exc:
        if debug:
            traceback.print_exc()
        _fail(_describe(exc), _exit_code(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


@contextmanager
def _client(
    url: str | None, key: str | None, upload_url: str | None, config_file: Path | None
) -> Iterator[Client]:
    from seedbed.client import Client

    config = resolve_config(url, key, upload_url, config_file)
    with Client(config.api_key, base_url=config.url, upload_url=config.upload_url) as client:
        yield client


# -- generate --------------------------------------------------------------------------------
#: flag name -> input field, for the fields the Seedream models have
_FIELD_FLAGS = {
    "aspect_ratio": "--aspect-ratio",
    "quality": "--quality",
    "size": "--size",
    "image_size": "--image-size",
    "image_resolution": "--image-resolution",
    "max_images": "--max-images",
    "seed": "--seed",
    "guidance_scale": "--guidance-scale",
    "output_format": "--output-format",
    "nsfw_checker": "--nsfw-checker",
}


def _parse_set(values: list[str]) -> dict[str, Any]:
    """``--set name=value`` pairs; a value is read as JSON when it is JSON (numbers, true)."""
    fields: dict[str, Any] = {}
    for item in values:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise CliFailure(f"--set {item!r}: expected name=value")
        try:
            fields[name.strip()] = json.loads(text)
        except ValueError:
            fields[name.strip()] = text
    return fields


def build_input(
    model: str, prompt: str | None, flags: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """createTask's ``input`` from the command line; a flag the model has no field for fails."""
    from seedbed.client import INPUT_MODELS

    fields = INPUT_MODELS.get(model)
    body: dict[str, Any] = {}
    if prompt is not None:
        body["prompt"] = prompt
    for name, value in flags.items():
        if value is None:
            continue
        if fields is not None and name not in fields.model_fields:
            raise CliFailure(f"{_FIELD_FLAGS[name]}: {model} has no {name} field")
        body[name] = value
    body.update(extra)
    return body


def _attach_images(client: Client, model: str, images: list[str], body: dict[str, Any]) -> None:
    """Upload local images and put every image's URL in the model's image field."""
    from seedbed.client.inputs import image_field

    if not images:
        return
    field = image_field(model)
    if field is None:
        raise CliFailure(f"--image: {model} takes no input images")
    urls: list[str] = []
    for image in images:
        if image.startswith(("http://", "https://")):
            urls.append(image)
            continue
        path = Path(image)
        if not path.is_file():
            raise CliFailure(f"--image {image}: no such file")
        urls.append(client.upload_file(path, upload_path=UPLOAD_PATH).download_url)
    if field == "image_url":
        if len(urls) > 1:
            raise CliFailure(f"--image: {model} takes exactly one image")
        body[field] = urls[0]
    else:
        body[field] = urls


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[Task], None]]:
    """A live bar of the task's state and progress on stderr (off for --json or a pipe)."""
    if not enabled or not err.is_terminal:
        yield lambda _task: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        bar = progress.add_task("submitting", total=100)

        def update(task: Task) -> None:
            where = f" (#{task.queue_position + 1})" if task.queue_position is not None else ""
            progress.update(
                bar,
                description=f"{task.state.value}{where}",
                completed=task.progress or 0,
                refresh=True,
            )

        yield update


def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt (optional for layer decomposition).")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model id.")] = DEFAULT_MODEL,
    aspect_ratio: Annotated[str | None, typer.Option(help="e.g. 16:9 (4.5 and 5.x).")] = None,
    quality: Annotated[str | None, typer.Option(help="basic, high (5 Lite: ultra).")] = None,
    size: Annotated[str | None, typer.Option(help="5 Flash and layers: 1K, 1.5K, 2K.")] = None,
    image_size: Annotated[str | None, typer.Option(help="3.0 and 4.0, e.g. square_hd.")] = None,
    image_resolution: Annotated[str | None, typer.Option(help="4.0: 1K, 2K, 4K.")] = None,
    max_images: Annotated[int | None, typer.Option(help="4.0: 1 to 6.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="3.0: 1 to 10.")] = None,
    output_format: Annotated[str | None, typer.Option(help="png or jpeg.")] = None,
    nsfw_checker: Annotated[
        bool | None, typer.Option("--nsfw-checker/--no-nsfw-checker", show_default=False)
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", help="Reference image: a local file (uploaded) or a URL."),
    ] = None,
    set_field: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other input field as name=value (JSON values)."),
    ] = None,
    callback_url: Annotated[str | None, typer.Option(help="callBackUrl for the task.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the images.")] = Path("."),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the task.")] = 900.0,
    as_json: AsJson = False,
    url: Url = None,
    key: Key = None,
    upload_url: UploadUrl = None,
    client_config: ClientConfigFile = None,
    debug: Debug = False,
) -> None:
    """Generate images: upload references, submit, follow progress, download, print paths."""
    flags = {
        "aspect_ratio": aspect_ratio,
        "quality": quality,
        "size": size,
        "image_size": image_size,
        "image_resolution": image_resolution,
        "max_images": max_images,
        "seed": seed,
        "guidance_scale": guidance_scale,
        "output_format": output_format,
        "nsfw_checker": nsfw_checker,
    }
    with _reported(debug), _client(url, key, upload_url, client_config) as client:
        from seedbed.client import TaskFailed, prepare_input

        body = build_input(model, prompt, flags, _parse_set(set_field or []))
        # Check the fields before uploading anything, with a stand-in for the images.
        _check_without_images(model, body, bool(image), prepare_input)
        _attach_images(client, model, image or [], body)
        with _progress_bar(not as_json) as on_progress:
            try:
                done = client.generate(
                    model,
                    body,
                    out=out,
                    callback_url=callback_url,
                    timeout=timeout,
                    on_progress=on_progress,
                )
            except TaskFailed as exc:
                if as_json:
                    print(json.dumps(_task_json(exc.task)))
                raise
    if as_json:
        print(json.dumps({**_task_json(done.task), "files": [str(p) for p in done.files]}))
        return
    for path in done.files:
        print(path)


def _check_without_images(
    model: str, body: dict[str, Any], has_images: bool, prepare: Callable[..., Any]
) -> None:
    from seedbed.client.inputs import image_field

    field = image_field(model)
    probe = dict(body)
    if has_images and field is not None and field not in probe:
        stand_in = "https://example.invalid/stand-in.png"
        probe[field] = stand_in if field == "image_url" else [stand_in]
    prepare(model, probe)


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "taskId": task.task_id,
        "model": task.model,
        "state": task.state.value,
        "progress": task.progress,
        "resultUrls": task.result_urls,
        "failCode": task.fail_code,
        "failMsg": task.fail_msg,
        "costTime": task.cost_time,
        "creditsConsumed": (
            None if task.credits_consumed is None else float(task.credits_consumed)
        ),
    }


# -- get, balance ----------------------------------------------------------------------------
def get(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the task ends.")] = False,
    as_json: AsJson = False,
    url: Url = None,
    key: Key = None,
    upload_url: UploadUrl = None,
    client_config: ClientConfigFile = None,
    debug: Debug = False,
) -> None:
    """Show a task (recordInfo); --json prints the record as the server sent it."""
    with _reported(debug), _client(url, key, upload_url, client_config) as client:
        if wait:
            with _progress_bar(not as_json) as on_progress:
                task = client.wait(task_id, on_progress=on_progress)
        else:
            task = client.get_task(task_id)
    if as_json:
        print(json.dumps(dict(task.raw)))
        return
    rows = [
        ("task", task.task_id),
        ("model", task.model),
        ("state", task.state.value),
        ("progress", "" if task.progress is None else f"{task.progress}%"),
        ("cost time", "" if task.cost_time is None else f"{task.cost_time} s"),
        ("credits", "" if task.credits_consumed is None else str(task.credits_consumed)),
    ]
    if task.fail_code or task.fail_msg:
        rows.append(("failure", f"{task.fail_code}: {task.fail_msg}"))
    rows.extend(("result", result) for result in task.result_urls)
    for name, value in rows:
        print(f"{name:<10} {value}")


def balance(
    url: Url = None,
    key: Key = None,
    upload_url: UploadUrl = None,
    client_config: ClientConfigFile = None,
    debug: Debug = False,
) -> None:
    """Print the key's credit balance (GET /api/v1/chat/credit)."""
    with _reported(debug), _client(url, key, upload_url, client_config) as client:
        amount = client.credits()
    print(amount)


def register_client_commands(app: typer.Typer) -> None:
    """Add ``generate``, ``get`` and ``balance`` to the ``seedbed`` command."""
    app.command("generate")(generate)
    app.command("get")(get)
    app.command("balance")(balance)
