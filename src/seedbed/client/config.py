"""Where a client's server and key come from when the program does not say.

``Client``, ``AsyncClient`` and the ``seedbed generate``/``get``/``balance`` commands resolve
them the same way, each value on its own, highest first:

1. what the program passes (``Client(api_key, base_url=, upload_url=)``; the CLI's flags);
2. the environment: ``SEEDBED_URL``, ``SEEDBED_API_KEY``, ``SEEDBED_UPLOAD_URL``; and, when
   the server is kie.ai (``api.kie.ai``), kie's usual ``KIE_API_KEY`` before
   ``SEEDBED_API_KEY`` (kie's key is never sent anywhere else);
3. a TOML file with ``url``, ``api_key``, ``upload_url``: the CLI's ``--client-config``, else
   ``SEEDBED_CLIENT_CONFIG``, else ``$XDG_CONFIG_HOME/seedbed/client.toml``
   (``~/.config/seedbed/client.toml``); read only when a value is still missing. A key it does
   not know is an error (``api-key = ...`` would otherwise go unnoticed until a 401);
4. ``http://127.0.0.1:8000``, no key, and uploads to the same server (to
   ``kieai.redpandaai.co`` when the server is kie.ai), as Replicate's and fal's clients read
   ``REPLICATE_API_TOKEN`` and ``FAL_KEY``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from seedbed.client.errors import ConfigError
from seedbed.client.protocol import DEFAULT_BASE_URL, KIE_BASE_URL, KIE_UPLOAD_URL

__all__ = [
    "ENV_API_KEY",
    "ENV_CONFIG",
    "ENV_KIE_API_KEY",
    "ENV_UPLOAD_URL",
    "ENV_URL",
    "FILE_KEYS",
    "ClientConfig",
    "config_path",
    "is_kie",
    "read_config_file",
    "resolve",
    "upload_url_for",
]

ENV_URL = "SEEDBED_URL"
ENV_API_KEY = "SEEDBED_API_KEY"
ENV_UPLOAD_URL = "SEEDBED_UPLOAD_URL"
ENV_CONFIG = "SEEDBED_CLIENT_CONFIG"
#: kie's own variable, used only when the server is kie.ai
ENV_KIE_API_KEY = "KIE_API_KEY"
#: what a config file may hold
FILE_KEYS = ("url", "api_key", "upload_url")

_KIE_API_HOST = urlsplit(KIE_BASE_URL).hostname


@dataclass(frozen=True)
class ClientConfig:
    """A resolved configuration; ``upload_url`` ``None`` means :func:`upload_url_for` ``url``."""

    url: str
    api_key: str | None
    upload_url: str | None


def is_kie(url: str) -> bool:
    """Whether ``url`` is kie.ai's API."""
    try:
        return urlsplit(url).hostname == _KIE_API_HOST
    except ValueError:
        return False


def upload_url_for(url: str) -> str:
    """Where uploads go when nothing says: kie.ai's upload host for kie.ai, else ``url``."""
    return KIE_UPLOAD_URL if is_kie(url) else url


def config_path(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file: ``explicit``, ``SEEDBED_CLIENT_CONFIG``, or the XDG location."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "seedbed" / "client.toml"


def read_config_file(path: Path, *, required: bool = False) -> dict[str, str]:
    """A config file's values; ``{}`` when there is none (``ConfigError`` if ``required``).

    ``ConfigError`` for a file that cannot be read or parsed, a key not in :data:`FILE_KEYS`
    and a value that is not a string.
    """
    import tomllib  # only when a file is read: the CLI's start-up is most of its time

    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"no client config at {path}") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the client config {path}: {exc}") from exc
    try:
        stored: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read the client config {path}: {exc}") from exc
    values: dict[str, str] = {}
    for name, value in stored.items():
        if name not in FILE_KEYS:
            raise ConfigError(f"client config {path}: unknown key {name!r}{_hint(name)}")
        if not isinstance(value, str):
            raise ConfigError(f"client config {path}: {name} must be a string")
        values[name] = value
    return values


def _hint(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower().replace("-", "_"), FILE_KEYS, n=1)
    known = ", ".join(FILE_KEYS)
    return f" (did you mean {close[0]!r}?)" if close else f" (it may hold {known})"


def resolve(
    url: str | None = None,
    api_key: str | None = None,
    upload_url: str | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """The configuration from what was given, the environment, the file and the defaults.

    Empty strings count as not given. ``config_file`` is always read (and must exist); the
    default file is read only when a value is still missing after the environment.
    """
    env = os.environ if environ is None else environ
    stored: dict[str, str] | None = None
    if config_file is not None:
        stored = read_config_file(config_file, required=True)

    def from_file(name: str) -> str | None:
        nonlocal stored
        if stored is None:
            stored = read_config_file(config_path(None, env))
        return stored.get(name) or None

    resolved_url = url or env.get(ENV_URL) or from_file("url") or DEFAULT_BASE_URL
    key = api_key or None
    if key is None and is_kie(resolved_url):
        key = env.get(ENV_KIE_API_KEY) or None
    key = key or env.get(ENV_API_KEY) or from_file("api_key")
    uploads = upload_url or env.get(ENV_UPLOAD_URL) or from_file("upload_url")
    return ClientConfig(url=resolved_url, api_key=key, upload_url=uploads)
