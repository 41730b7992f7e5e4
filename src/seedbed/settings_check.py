"""Configuration mistakes refused loudly, each as one line that names the setting.

``Settings`` calls ``check_environment`` and ``toml_source`` while it gathers its sources, so a
misspelt ``SEEDBED_`` variable or a ``--config`` file that is not there stops every entry point,
not only the CLI. ``load_settings`` turns pydantic's validation errors into one line that says
where the bad value came from; ``origins`` says the same for ``seedbed config show``.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from pydantic_settings import BaseSettings, TomlConfigSettingsSource

if TYPE_CHECKING:
    from seedbed.config import Settings

__all__ = [
    "NON_SETTING_PREFIXES",
    "NON_SETTING_VARIABLES",
    "SettingsError",
    "check_environment",
    "config_path",
    "load_settings",
    "mask",
    "origins",
    "toml_source",
]

ENV_PREFIX = "SEEDBED_"

#: ``SEEDBED_`` variables that other parts of seedbed read, or will: not server settings, yet
#: no mistake either. Anything else under the prefix that is not a setting is refused.
NON_SETTING_VARIABLES = frozenset(
    {
        # the key's side: seedbed.client and `seedbed generate` / `get` / `balance`
        "SEEDBED_URL",
        "SEEDBED_API_KEY",
        "SEEDBED_UPLOAD_URL",
        "SEEDBED_CLIENT_CONFIG",
        # planned settings and storage back-ends (kept so that a newer deployment's
        # environment does not stop an older binary)
        "SEEDBED_ADMIN_TOKEN",
        "SEEDBED_S3_ENDPOINT_URL",
        "SEEDBED_STORAGE_URL",
        "SEEDBED_DATABASE_URL",
    }
)
#: families of non-setting variables: the test suite's own switches (SEEDBED_TEST_POSTGRES_URL,
#: SEEDBED_FUZZ_EXAMPLES)
NON_SETTING_PREFIXES = ("SEEDBED_TEST_", "SEEDBED_FUZZ_")

#: settings whose values `config show` never prints whole
_SECRET_WORDS = ("token", "secret", "password")


class SettingsError(ValueError):
    """A configuration mistake, said in one line that names the setting and what is allowed."""


def check_environment(
    fields: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
) -> None:
    """Refuse ``SEEDBED_`` variables that are neither settings nor known non-settings.

    pydantic-settings reads only the variables it knows, so ``SEEDBED_PROT=9001`` would be
    ignored and the server would quietly listen on 8000. Variables that the config file names
    as an engine's ``api_key_env`` hold upstream keys, and are no mistake either.
    """
    known = {ENV_PREFIX + name.upper() for name in fields} | _named_in(config_file)
    env = os.environ if environ is None else environ
    unknown = sorted(
        name
        for name in env
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and name.upper() not in NON_SETTING_VARIABLES
        and not name.upper().startswith(NON_SETTING_PREFIXES)
    )
    if not unknown:
        return
    candidates = sorted(known | NON_SETTING_VARIABLES)
    described = [f"{name}{_did_you_mean(name.upper(), candidates)}" for name in unknown]
    plural = "s" if len(unknown) > 1 else ""
    raise SettingsError(
        f"unknown environment variable{plural} {', '.join(described)}: not a seedbed setting "
        "(the settings are listed by `seedbed config show`)"
    )


def _named_in(config_file: Path | None) -> set[str]:
    """The variables that the config file's ``[engines.NAME]`` tables name in ``api_key_env``."""
    if config_file is None or not config_file.is_file():
        return set()
    try:
        engines = tomllib.loads(config_file.read_text()).get("engines", {})
    except (OSError, tomllib.TOMLDecodeError):
        return set()  # toml_source reports it
    if not isinstance(engines, dict):
        return set()
    return {
        str(table["api_key_env"]).upper()
        for table in engines.values()
        if isinstance(table, dict) and isinstance(table.get("api_key_env"), str)
    }


def toml_source(settings_cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    """The ``--config`` file as a settings source; a missing or broken file is refused.

    pydantic-settings silently skips a TOML file that does not exist, which would serve the
    defaults to an operator who believes their file is in force.
    """
    if not path.is_file():
        raise SettingsError(f"setting config: no file at {path}")
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"setting config: cannot read {path}: {exc}") from None


def config_path(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file in force: the flag, else ``SEEDBED_CONFIG``."""
    if flags.get("config"):
        return Path(flags["config"])
    value = _env_value("config", os.environ if environ is None else environ)
    return Path(value) if value else None


def origins(
    fields: Iterable[str], flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Where each setting's value comes from: ``flag``, ``env SEEDBED_X``, ``file P``, ``default``.

    The same precedence as ``Settings``: flags, then the environment, then the file.
    """
    env = os.environ if environ is None else environ
    path = config_path(flags, env)
    in_file: set[str] = set()
    if path is not None and path.is_file():
        try:
            in_file = set(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError):
            in_file = set()
    found: dict[str, str] = {}
    for name in fields:
        if flags.get(name) is not None:
            found[name] = "flag"
        elif (variable := _env_name(name, env)) is not None:
            found[name] = f"env {variable}"
        elif name in in_file:
            found[name] = f"file {path}"
        else:
            found[name] = "default"
    return found


def load_settings(**flags: Any) -> Settings:
    """``Settings`` with the flags given (None: not given); mistakes raise ``SettingsError``."""
    from seedbed.config import Settings

    given = {k: v for k, v in flags.items() if v is not None and v != []}
    try:
        return Settings(**given)
    except ValidationError as exc:
        fields = list(Settings.model_fields)
        raise SettingsError(
            _describe(exc, fields, origins(fields, given), config_path(given))
        ) from None


def mask(name: str, value: Any) -> Any:
    """A setting's value as `config show` prints it: secrets never whole."""
    if value is None:
        return None
    if any(word in name for word in _SECRET_WORDS):
        return "****"
    if name.endswith("_url") and isinstance(value, str):
        return _mask_url_password(value)
    return value


def _mask_url_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:****@{netloc[1]}"))


def _describe(
    exc: ValidationError, fields: list[str], where: Mapping[str, str], path: Path | None
) -> str:
    """pydantic's errors as one line: each names the setting, where it came from, what is wrong."""
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = ".".join(loc)
        top = loc[0] if loc else ""
        if error["type"] == "extra_forbidden":
            # only a file (or a program's keyword) can name a setting that does not exist
            place = f" in {path}" if path is not None else ""
            hint = _did_you_mean(top, fields, quote=True) if len(loc) == 1 else ""
            parts.append(f"unknown setting {name!r}{place}{hint}")
            continue
        origin = where.get(top, "default")
        source = "" if origin == "default" else f" (from {origin})"
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f", got {got!r}"
        parts.append(f"setting {name}{source}: {error['msg']}{shown}")
    return "; ".join(parts)


def _did_you_mean(name: str, candidates: list[str], *, quote: bool = False) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)" if quote else f" (did you mean {close[0]}?)"


def _env_name(name: str, environ: Mapping[str, str]) -> str | None:
    """The variable that sets ``name``, as spelt in the environment (matching is case-blind)."""
    wanted = ENV_PREFIX + name.upper()
    for variable in environ:
        if variable.upper() == wanted:
            return variable
    return None


def _env_value(name: str, environ: Mapping[str, str]) -> str | None:
    variable = _env_name(name, environ)
    return None if variable is None else environ[variable]
