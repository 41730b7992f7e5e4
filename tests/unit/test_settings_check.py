"""seedbed.settings_check: which SEEDBED_ variables are refused, how secrets are masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from seedbed.config import Settings
from seedbed.settings_check import SettingsError, check_environment, mask

FIELDS = list(Settings.model_fields)


def test_settings_and_known_non_settings_pass_in_any_case() -> None:
    check_environment(
        FIELDS,
        {
            "SEEDBED_PORT": "1",
            "seedbed_data_dir": "x",  # pydantic-settings reads names case-blind, and so do we
            "SEEDBED_URL": "http://127.0.0.1:1",
            "SEEDBED_API_KEY": "sb-x",
            "SEEDBED_TEST_POSTGRES_URL": "postgresql://x",
            "SEEDBED_FUZZ_EXAMPLES": "5",
            "PATH": "/bin",
        },
    )


def test_every_unknown_variable_is_named_with_a_hint_where_one_is_close() -> None:
    with pytest.raises(SettingsError) as raised:
        check_environment(FIELDS, {"SEEDBED_PROT": "1", "SEEDBED_WHATEVER": "2"})
    assert str(raised.value) == (
        "unknown environment variables SEEDBED_PROT (did you mean SEEDBED_PORT?), "
        "SEEDBED_WHATEVER: not a seedbed setting (the settings are listed by "
        "`seedbed config show`)"
    )


def test_a_variable_the_config_file_names_as_an_upstream_key_is_no_mistake(
    tmp_path: Path,
) -> None:
    config = tmp_path / "seedbed.toml"
    config.write_text('[engines.up]\nkind = "kie"\napi_key_env = "SEEDBED_UPSTREAM_KEY"\n')
    environ = {"SEEDBED_UPSTREAM_KEY": "secret"}
    check_environment(FIELDS, environ, config_file=config)
    with pytest.raises(SettingsError):
        check_environment(FIELDS, environ)


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        (
            "database_url",
            "postgresql://ops:hunter2@db:5432/seedbed",
            "postgresql://ops:****@db:5432/seedbed",
        ),
        (
            "database_url",
            "sqlite:////var/lib/seedbed/seedbed.db",
            "sqlite:////var/lib/seedbed/seedbed.db",
        ),
        ("admin_token", "t0k3n", "****"),
        ("port", 8000, 8000),
        ("public_url", None, None),
    ],
)
def test_config_show_masks_secrets(name: str, value: object, shown: object) -> None:
    assert mask(name, value) == shown
