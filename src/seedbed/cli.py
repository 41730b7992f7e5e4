"""The ``seedbed`` command: the server, a worker, and admin commands on the data directory.

Admin commands work on the database directly (not over HTTP), so they work whether or not a
server is running; a change to a key or a switch is then announced to the running servers,
which see it from their next request (``admin_changes``; one that misses the message within
``admin_refresh_seconds``). They never create a database: only ``serve`` and ``init`` do, so an
admin command run from the wrong folder says so instead of minting a key the server never sees.
Exit codes are in ``seedbed.exit_codes`` (docs/cli.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from seedbed.admin_views import callback_json, key_json
from seedbed.cli_client import register_client_commands
from seedbed.exit_codes import FAILED, REFUSED, USAGE

if TYPE_CHECKING:
    # Imported where used: ``seedbed generate`` (and each admin command) starts faster without
    # pydantic-settings, asyncio and rich's tables when it does not need them.
    from rich.table import Table

    from seedbed.config import Settings

__all__ = ["app", "main"]

T = TypeVar("T")


def _group(help_text: str, **options: Any) -> typer.Typer:
    # rich_markup_mode=None: help texts are printed as written. With rich markup, "[engines]"
    # in a help text is read as a style tag and silently dropped.
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None, **options)


app = _group(
    "A self-hosted, kie.ai-compatible task server for Seedream image models.",
    name="seedbed",
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = _group("API keys: create, list, revoke.")
credits_app = _group("Credit balances.")
models_app = _group("Per-model switches.")
callbacks_app = _group("The callback outbox: inspect, redeliver.")
tasks_app = _group("Tasks: list and inspect.")
config_app = _group("The settings in force and where each comes from.")
admin_app = _group("The web console's admin area.")
app.add_typer(keys_app, name="keys")
app.add_typer(tasks_app, name="tasks")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")
app.add_typer(callbacks_app, name="callbacks")
app.add_typer(config_app, name="config")
app.add_typer(admin_app, name="admin")

# soft_wrap: an error stays one line whatever the terminal's (or a pipe's 80-column) width
err = Console(stderr=True, soft_wrap=True, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("seedbed")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from seedbed import __version__ as number
        print(f"seedbed {number}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A self-hosted, kie.ai-compatible task server for Seedream image models."""


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (env SEEDBED_DATA_DIR).", show_default=False),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="Store URL (env SEEDBED_DATABASE_URL).", show_default=False
    ),
]
StorageUrl = Annotated[
    str | None,
    typer.Option(
        "--storage-url",
        help="Where files are stored: s3://BUCKET[/PREFIX] (env SEEDBED_STORAGE_URL); "
        "default: <data-dir>/files.",
        show_default=False,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (env SEEDBED_CONFIG).", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment and config file, with the flags that were given on top;
    a configuration mistake is one line and exit 2."""
    from seedbed.settings_check import SettingsError, load_settings

    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(str(exc), USAGE)


def _fail(message: str, code: int = FAILED) -> NoReturn:
    # Text, not markup: a message that quotes "[engines.x]" or a path must print as it is.
    err.print(Text.assemble(("error:", "red"), " ", message))
    raise typer.Exit(code)


def _missing_database(settings: Settings) -> str | None:
    """Why ``settings`` names no existing database, or None when it names one.

    Only SQLite is checked: its database is a file that opening would create. A PostgreSQL
    database is made by its operator; opening it only migrates the schema.
    """
    from seedbed.store.migrate import sqlite_path

    url = settings.database
    if not url.lower().startswith("sqlite"):
        return None
    from sqlalchemy import make_url

    path = sqlite_path(make_url(url))
    if path is None or (path.is_file() and path.stat().st_size > 0):
        return None
    where = f"the data directory {settings.data_dir}" if not settings.database_url else url
    return (
        f"no seedbed database in {where} ({path} does not exist): pass the server's --data-dir "
        "(or SEEDBED_DATA_DIR / --config), or create one with `seedbed init`"
    )


def _with_store(
    settings: Settings, action: Callable[[Any], Awaitable[T]], *, announce: str | None = None
) -> T:
    """Run ``action(store)`` on the existing database; a missing one is refused (exit 2).
    ``announce``: the change it made, told to the running servers (``admin_changes``)."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from seedbed import admin_changes
    from seedbed.store import open_store

    missing = _missing_database(settings)
    if missing is not None:
        _fail(missing, USAGE)

    async def run() -> T:
        store = open_store(settings.database)
        await store.open()
        try:
            done = await action(store)
            if announce is not None:
                servers = admin_changes.sender(settings)
                await admin_changes.announce(store, servers, announce)
                servers.close()
            return done
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"database {settings.database}: {_reason(exc)}", FAILED)


def _reason(exc: BaseException) -> str:
    """One line for a database error: the driver's own words, without SQLAlchemy's SQL and
    background link."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _stdout() -> Console:
    """Where tables go. Not a terminal (a pipe, a file): as wide as the rows, so that IDs and
    model names are never cut to a pretend 80 columns."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=100_000, soft_wrap=True)


def _print_table(table: Table) -> None:
    _stdout().print(table)


def _tune_gc() -> None:
    """Fewer, later collections: with the default thresholds a loaded server paused for
    tens of milliseconds every few hundred requests (createTask p99 78 ms against 18 ms)."""
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _private_files() -> None:
    """Everything a server or worker process creates is for its own user alone (the
    database's -wal and -shm files, results, sockets), whatever umask it was started with."""
    import os

    os.umask(0o077)


def _configure_logging(settings: Settings) -> None:
    from seedbed.logs import configure_logging

    configure_logging(settings.log_level, json=settings.log_json, stream=sys.stderr)


# -- serving ---------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
    allow_network: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-network",
            help="CIDR the server may fetch from despite the SSRF rules; repeatable.",
        ),
    ] = None,
    worker: Annotated[
        bool | None, typer.Option("--worker/--no-worker", help="Run a worker in this process.")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the API server (with a worker inside, unless --no-worker)."""
    from seedbed.app import create_app

    settings = _settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        storage_url=storage_url,
        config=config,
        allow_network=allow_network,
        worker=worker,
    )
    _configure_logging(settings)
    _tune_gc()
    _private_files()
    try:
        application = create_app(settings)
    except ValueError as exc:
        _fail(str(exc), USAGE)
    from seedbed.server import GracefulServer, uvicorn_config

    server = GracefulServer(
        uvicorn_config(application, settings, access_log=access_log),
        on_signal=application.state.ctx.begin_shutdown,
    )
    server.run()


@app.command("worker")
def worker_command(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    storage_url: StorageUrl = None,
    config: ConfigFile = None,
    concurrency: Annotated[int | None, typer.Option(help="Tasks run at once.")] = None,
    allow_network: Annotated[
        list[str] | None, typer.Option("--allow-network", help="CIDR allowed for fetches.")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once no task is left.")] = False,
    device: Annotated[
        str | None,
        typer.Option(help="Device for this worker's pipelines, e.g. cuda:1 (one worker per GPU)."),
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            "--engine", help="Load only this [engines] entry (repeatable); default: all of them."
        ),
    ] = None,
) -> None:
    """Run a worker process against the same database as the server.

    It claims only the tasks of models its engines serve, after loading them.
    """
    import asyncio
    import signal
    from functools import partial

    from seedbed.app import (
        build_context,
        build_monitor,
        build_worker,
        open_store_when_reachable,
    )
    from seedbed.engines import build_engines

    settings = _settings(
        data_dir=data_dir,
        database_url=database_url,
        storage_url=storage_url,
        config=config,
        worker_concurrency=concurrency,
        allow_network=allow_network,
    )
    missing = _missing_database(settings)
    if missing is not None:  # a worker serves a server's database; it never makes one
        _fail(missing, USAGE)
    _configure_logging(settings)
    _tune_gc()
    _private_files()
    try:
        engines = build_engines(settings, only=engine or (), device=device)
    except ValueError as exc:
        _fail(str(exc), USAGE)

    async def run() -> None:
        ctx = build_context(settings, engines=engines)
        # PostgreSQL: the secret and wake-ups by the database's notifications come with it
        await open_store_when_reachable(ctx)
        worker = build_worker(ctx)
        loop = asyncio.get_running_loop()
        draining: list[asyncio.Task[list[str]]] = []

        def on_signal() -> None:
            # Stop claiming; running tasks get the grace period, then go back to the queue.
            if not draining:
                draining.append(loop.create_task(worker.drain(settings.shutdown_grace_seconds)))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        # Supervised: a worker loop that dies is logged and restarted, never a silent exit;
        # the health monitor logs when a fault the worker met has cleared.
        monitor = build_monitor(ctx)
        ctx.supervisor.start("health", monitor.run)
        runner = ctx.supervisor.start(
            "worker", partial(worker.run, burst=burst), on_crash=worker.hand_back
        )
        try:
            await runner
        finally:
            monitor.stop()
            if ctx.notifier is not None:
                ctx.notifier.close()
            await ctx.supervisor.stop_all()
            worker.close()
            ctx.wakeup.close()
            ctx.callback_wakeup.close()
            ctx.task_changes.close()
            await ctx.store.close()

    asyncio.run(run())


@app.command()
def init(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create the data directory and its database (what `serve` does at its first start).

    Safe to run again: an existing database is brought to the newest schema, nothing else.
    """
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from seedbed.links import load_or_create_secret
    from seedbed.store import open_store

    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    existed = _missing_database(settings) is None

    async def create() -> None:
        store = open_store(settings.database)
        await store.open()  # creates the file and runs the migrations
        try:
            if settings.shared_store:
                await store.server_secret()  # made once, for every replica
        finally:
            await store.close()

    try:
        if not settings.shared_store:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(create())
        if not settings.shared_store:
            load_or_create_secret(settings.data_dir)
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"database {settings.database}: {_reason(exc)}", FAILED)
    state = "holds a database (schema up to date)" if existed else "created"
    if settings.shared_store:  # no data directory: say which database, password hidden
        from sqlalchemy import make_url

        shown = make_url(settings.database).render_as_string(hide_password=True)
        err.print(Text(f"database {shown}: schema up to date, server secret in the database"))
        return
    err.print(Text(f"{settings.data_dir.resolve()}: {state}; database {settings.database}"))


# -- config ----------------------------------------------------------------------------------
@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Print every setting in force (secrets masked) and where it came from: flag, env, file
    or default."""
    from seedbed.settings_check import mask, origins

    flags = {"data_dir": data_dir, "database_url": database_url, "config": config}
    settings = _settings(**flags)
    names = list(type(settings).model_fields)
    where = origins(names, {k: v for k, v in flags.items() if v is not None})
    values = settings.model_dump(mode="json")
    shown = {name: {"value": mask(name, values[name]), "source": where[name]} for name in names}
    # the store in force, which data_dir implies unless database_url is set
    derived = "database_url" if settings.database_url else "data_dir"
    shown["database"] = {
        "value": mask("database_url", settings.database),
        "source": f"{where[derived]} ({derived})",
    }
    if as_json:
        print(json.dumps(shown))
        return
    width = max(len(name) for name in shown)
    for name, entry in shown.items():
        value = json.dumps(entry["value"], ensure_ascii=False)
        print(f"{name:<{width}}  {value}  # {entry['source']}")


# -- keys ------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")],
    credits: Annotated[str, typer.Option(help="Starting credits.")] = "0",
    create_rate: Annotated[
        int | None, typer.Option(help="createTask calls per window (default: deployment's).")
    ] = None,
    create_window: Annotated[float | None, typer.Option(help="createTask window, seconds.")] = None,
    record_rate: Annotated[int | None, typer.Option(help="recordInfo calls per second.")] = None,
    open_task_cap: Annotated[int | None, typer.Option(help="Open tasks at most.")] = None,
    with_hmac: Annotated[
        bool,
        typer.Option("--hmac", help="Also make a webhook HMAC key: callbacks get signed."),
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create an API key; the key itself is printed once, alone on the last line.

    With --hmac the webhook HMAC key is printed once too, on the line before it (in --json,
    as "hmacKey").
    """
    from seedbed import keys
    from seedbed.tasks import KeyLimits, NewKey

    amount = _decimal(credits, "--credits")
    if amount < 0:
        _fail("--credits must not be negative", USAGE)
    limits = KeyLimits(
        create_per_window=_limit(create_rate, "--create-rate"),
        create_window_seconds=_limit(create_window, "--create-window"),
        record_per_second=_limit(record_rate, "--record-rate"),
        open_task_cap=_limit(open_task_cap, "--open-task-cap"),
    )
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    plain = keys.new_key()
    new = NewKey(
        id=keys.new_key_id(),
        name=name,
        key_hash=keys.hash_key(plain),
        credits=amount,
        limits=limits,
        hmac_key=keys.new_hmac_key() if with_hmac else None,
    )
    created = _with_store(settings, lambda store: store.create_key(new))
    if as_json:
        shown = {"key": plain, **key_json(created)}
        if new.hmac_key:
            shown["hmacKey"] = new.hmac_key
        print(json.dumps(shown))
        return
    err.print(f"Created key [bold]{created.id}[/bold] ({name}) with {created.balance} credits.")
    if new.hmac_key:
        err.print("Store the key and the webhook HMAC key now: they are shown only this once.")
        print(new.hmac_key)
    else:
        err.print("Store the key now: it is shown only this once.")
    print(plain)


@keys_app.command("rotate-hmac")
def keys_rotate_hmac(
    key_id: Annotated[str, typer.Argument(help="The key's id (from keys list).")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Give a key a new webhook HMAC key (printed once); callbacks are signed with it from now."""
    from seedbed import keys

    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    hmac_key = keys.new_hmac_key()
    if not _with_store(settings, lambda store: store.set_hmac_key(key_id, hmac_key)):
        _fail(f"no key {key_id}", REFUSED)
    if as_json:
        print(json.dumps({"id": key_id, "hmacKey": hmac_key}))
        return
    err.print(f"New webhook HMAC key for {key_id}; it is shown only this once.")
    print(hmac_key)


@keys_app.command("list")
def keys_list(
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List keys (never the keys themselves: only their ids)."""
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    found = _with_store(settings, lambda store: store.list_keys())
    if as_json:
        print(json.dumps([key_json(k) for k in found]))
        return
    from rich.table import Table

    table = Table("id", "name", "balance", "held", "open tasks", "created", "revoked")
    for k in found:
        table.add_row(
            k.id,
            k.name,
            str(k.balance),
            str(k.held),
            str(k.open_tasks),
            _when(k.created_at),
            _when(k.revoked_at) if k.revoked_at else "",
        )
    _print_table(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from keys list).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Revoke a key: it is refused (401) from the next request on."""
    from seedbed import admin_changes

    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    revoked = _with_store(
        settings, lambda store: store.revoke_key(key_id), announce=admin_changes.key_changed(key_id)
    )
    if not revoked:
        _fail(f"no key {key_id}", REFUSED)
    err.print(f"Revoked {key_id}.")


# -- credits ---------------------------------------------------------------------------------
# ignore_unknown_options: "-10" is an amount, not an unknown option, so no "--" is needed
@credits_app.command("add", context_settings={"ignore_unknown_options": True})
def credits_add(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    amount: Annotated[str, typer.Argument(help="Credits to add; negative (e.g. -10) to remove.")],
    note: Annotated[str, typer.Option(help="Why, for the ledger.")] = "",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Add credits to a key's balance."""
    from seedbed import admin_changes

    value = _decimal(amount, "AMOUNT")
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)

    async def add(store: Any) -> Decimal:
        try:
            balance: Decimal = await store.add_credits(key_id, value, note)
        except KeyError:
            _fail(f"no key {key_id}", REFUSED)
        except ValueError as exc:
            _fail(str(exc), REFUSED)
        return balance

    balance = _with_store(settings, add, announce=admin_changes.key_changed(key_id))
    print(balance)


# -- switches --------------------------------------------------------------------------------
@app.command()
def maintenance(
    state: Annotated[str, typer.Argument(help="on or off")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Turn maintenance mode on (createTask answers 455) or off."""
    from seedbed import admin_changes

    if state not in ("on", "off"):
        _fail("say 'on' or 'off'", USAGE)
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    _with_store(
        settings, lambda store: store.set_maintenance(state == "on"), announce=admin_changes.FLAGS
    )
    err.print(f"Maintenance {state}.")


def _switch_model(model: str, enabled: bool, settings: Settings) -> None:
    from seedbed import admin_changes, catalogue

    if model not in catalogue.CATALOGUE:
        _fail(f"unknown model {model!r}; see `seedbed models list`", USAGE)
    _with_store(
        settings,
        lambda store: store.set_model_enabled(model, enabled),
        announce=admin_changes.FLAGS,
    )
    err.print(f"{model} {'enabled' if enabled else 'disabled'}.")


@models_app.command("disable")
def models_disable(
    model: Annotated[str, typer.Argument(help="Model id, e.g. seedream/4.5-edit.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Disable a model: its createTask calls answer 505."""
    _switch_model(
        model, False, _settings(data_dir=data_dir, database_url=database_url, config=config)
    )


@models_app.command("enable")
def models_enable(
    model: Annotated[str, typer.Argument(help="Model id.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Enable a model again."""
    _switch_model(
        model, True, _settings(data_dir=data_dir, database_url=database_url, config=config)
    )


@models_app.command("list")
def models_list(
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List the model ids and whether each is enabled here."""
    from seedbed import catalogue

    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    flags = _with_store(settings, lambda store: store.flags())
    rows: list[dict[str, Any]] = [
        {"id": spec.id, "title": spec.title, "enabled": spec.id not in flags.disabled_models}
        for spec in catalogue.CATALOGUE.values()
    ]
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("id", "title", "enabled")
    for row in rows:
        table.add_row(row["id"], row["title"], "yes" if row["enabled"] else "no")
    _print_table(table)


# -- callbacks -------------------------------------------------------------------------------
@callbacks_app.command("list")
def callbacks_list(
    dead: Annotated[bool, typer.Option("--dead", help="Only dead letters.")] = False,
    limit: Annotated[int, typer.Option(help="Rows at most, newest first.")] = 100,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List callbacks, newest first: their state, attempts and last answer."""
    from seedbed.outbox import CallbackState

    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    state = CallbackState.DEAD if dead else None
    rows = _with_store(settings, lambda store: store.list_callbacks(state=state, limit=limit))
    if as_json:
        print(json.dumps([callback_json(row) for row in rows]))
        return
    from rich.table import Table

    table = Table("task", "state", "attempts", "next attempt", "last answer", "url")
    for row in rows:
        last = str(row.last_status) if row.last_status is not None else (row.last_error or "")
        table.add_row(
            row.task_id,
            row.state.value,
            str(row.attempts),
            _when(row.next_attempt_at),
            last,
            row.url,
        )
    _print_table(table)


@callbacks_app.command("redeliver")
def callbacks_redeliver(
    task_id: Annotated[str, typer.Argument(help="The task whose callback to send again.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Queue a task's callback again (dead or not), with a fresh count of attempts.

    A running server sends it within its callback poll interval.
    """
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    if not _with_store(settings, lambda store: store.redeliver_callback(task_id)):
        _fail(f"no callback for task {task_id}", REFUSED)
    err.print(f"Callback for {task_id} queued.")


# -- the console's admin token ---------------------------------------------------------------
@admin_app.command("token")
def admin_token(
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Remove the stored token; print nothing.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Make a new admin token for the web console (printed once, alone on stdout).

    Only its hash is stored; a new token replaces the previous one. SEEDBED_ADMIN_TOKEN, if
    set, works beside it. A running server accepts it at once.
    """
    from seedbed.console import tokens

    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    if revoke:
        _with_store(settings, lambda store: store.set_admin_token_hash(None))
        err.print("Admin token removed.")
        return
    plain = tokens.new_token()
    _with_store(settings, lambda store: store.set_admin_token_hash(tokens.hash_token(plain)))
    err.print("Store the admin token now: it is shown only this once.")
    print(plain)


# -- tasks and stats -------------------------------------------------------------------------
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since_ms(text: str) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``1h``, ``2d``) or an ISO time."""
    import time

    value = text.strip()
    unit = _DURATION_UNITS.get(value[-1:].lower())
    if unit is not None and value[:-1].replace(".", "", 1).isdecimal():
        return int((time.time() - float(value[:-1]) * unit) * 1000)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--since: {text!r} is neither a duration (30m, 1h, 2d) nor an ISO date-time", USAGE)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _task_json(task: Any) -> dict[str, Any]:
    return {
        "taskId": task.id,
        "keyId": task.key_id,
        "model": task.model,
        "state": task.state.value,
        "progress": task.progress,
        "attempts": task.attempts,
        "failCode": task.fail_code,
        "failMsg": task.fail_msg,
        "reserved": str(task.reserved),
        "creditsConsumed": str(task.credits_consumed),
        "resultKeys": list(task.result_keys),
        "createTime": task.create_time,
        "updateTime": task.update_time,
        "completeTime": task.complete_time,
        "costTime": task.cost_time,
        "leaseOwner": task.lease_owner,
        "param": task.param,
    }


@tasks_app.command("list")
def tasks_list(
    state: Annotated[
        str | None, typer.Option(help="waiting, queuing, generating, success or fail.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model id.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Key id (from keys list).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created since: 30m, 1h, 2d or an ISO date-time.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List tasks, newest first."""
    from seedbed.store.base import TaskFilter
    from seedbed.tasks import TaskState

    try:
        wanted = None if state is None else TaskState(state)
    except ValueError:
        _fail(f"--state must be one of {', '.join(s.value for s in TaskState)}", USAGE)
    where = TaskFilter(
        state=wanted,
        model=model,
        key_id=key,
        since=None if since is None else _since_ms(since),
        limit=limit,
    )
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    found = _with_store(settings, lambda store: store.list_tasks(where))
    if as_json:
        print(json.dumps([_task_json(t) for t in found]))
        return
    from rich.table import Column, Table

    # the id is what an operator copies next: never wrapped or cut, whatever the width
    task_id_column = Column("task id", no_wrap=True, min_width=32)
    table = Table(task_id_column, "model", "state", "progress", "key", "created", "fail")
    for t in found:
        fail = f"{t.fail_code}: {t.fail_msg}" if t.fail_code else ""
        table.add_row(
            t.id, t.model, t.state.value, f"{t.progress}%", t.key_id, _when(t.create_time), fail
        )
    _print_table(table)


@tasks_app.command("get")
def tasks_get(
    task_id: Annotated[str, typer.Argument(help="The taskId.")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Show one task in full."""
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)

    async def read(store: Any) -> Any:
        return await store.get_task(task_id), await store.task_engine(task_id)

    task, ran_on = _with_store(settings, read)
    if task is None:
        _fail(f"no task {task_id}", REFUSED)
    shown = _task_json(task)
    # the engine that ran it (a route may have moved it on) and a relay's upstream task id
    shown["engine"], shown["upstreamTaskId"] = ran_on or (None, None)
    if as_json:
        print(json.dumps(shown))
        return
    from rich.table import Table

    table = Table("field", "value", show_header=False)
    for name, value in shown.items():
        text = _when(value) if name.endswith("Time") and name != "costTime" else value
        table.add_row(name, "" if text is None else str(text))
    _print_table(table)


@app.command()
def stats(
    since: Annotated[str, typer.Option(help="Window for throughput and failures.")] = "1h",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Queue depth, throughput and failures by code over a window (default: the last hour)."""
    settings = _settings(data_dir=data_dir, database_url=database_url, config=config)
    start = _since_ms(since)

    async def read(store: Any) -> Any:
        return await store.task_stats(since=start), await store.queue_stats()

    figures, queue = _with_store(settings, read)
    finished = sum(figures.finished_by_state.values())
    hours = max(1e-9, (datetime.now(tz=UTC).timestamp() * 1000 - start) / 3_600_000)
    shown = {
        "since": start,
        "open": figures.open_by_state,
        "queueDepth": sum(q.depth for q in queue),
        "queueByModel": {q.model: q.depth for q in queue},
        "finished": figures.finished_by_state,
        "throughputPerHour": round(finished / hours, 2),
        "failuresByCode": figures.failures_by_code,
    }
    if as_json:
        print(json.dumps(shown))
        return
    console = Console()
    console.print(f"since {_when(start)} UTC")
    from rich.table import Table

    table = Table("figure", "value")
    for state_name in ("waiting", "queuing", "generating"):
        table.add_row(f"open: {state_name}", str(figures.open_by_state.get(state_name, 0)))
    table.add_row("queue depth (waiting + queuing)", str(shown["queueDepth"]))
    for state_name in ("success", "fail"):
        table.add_row(f"finished: {state_name}", str(figures.finished_by_state.get(state_name, 0)))
    table.add_row("throughput (tasks/hour)", str(shown["throughputPerHour"]))
    for code, count in sorted(figures.failures_by_code.items()):
        table.add_row(f"failures: code {code or '-'}", str(count))
    console.print(table)


# -- helpers ---------------------------------------------------------------------------------
def _decimal(text: str, name: str) -> Decimal:
    """A credit amount: a finite number of at most ``CREDITS_MAX`` either way."""
    from seedbed.tasks import CREDITS_MAX

    try:
        value = Decimal(text)
    except InvalidOperation:
        _fail(f"{name} must be a number, not {text!r}", USAGE)
    if not value.is_finite():
        _fail(f"{name} must be a finite number", USAGE)
    if abs(value) > CREDITS_MAX:
        _fail(f"{name} must be at most {CREDITS_MAX} credits", USAGE)
    return value


_Number = TypeVar("_Number", int, float)


def _limit(value: _Number | None, name: str) -> _Number | None:
    """A key's limit as the admin API takes it: positive, at most ``LIMIT_MAX``."""
    from seedbed.tasks import LIMIT_MAX

    if value is not None and not 0 < value <= LIMIT_MAX:
        _fail(f"{name} must be a positive number of at most {LIMIT_MAX}", USAGE)
    return value


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


# The key's side over HTTP (generate, get, balance) lives in cli_client.py.
register_client_commands(app)


def main() -> None:
    app()
