"""The start-up line's parts that depend on the deployment: the docs URL, the database URL."""

from __future__ import annotations

import pytest

from seedbed.startup import docs_url, safe_database_url


@pytest.mark.parametrize(
    ("public_url", "host", "port", "expected"),
    [
        (None, "127.0.0.1", 8000, "http://127.0.0.1:8000/docs"),
        (None, "0.0.0.0", 8000, "http://127.0.0.1:8000/docs"),
        (None, "::", 9000, "http://[::1]:9000/docs"),
        (None, "::1", 9000, "http://[::1]:9000/docs"),
        (None, "seedbed.lan", 80, "http://seedbed.lan:80/docs"),
        ("https://img.example/", "0.0.0.0", 8000, "https://img.example/docs"),
        ("https://example.org/seedbed", "0.0.0.0", 8000, "https://example.org/seedbed/docs"),
    ],
)
def test_docs_url(public_url: str | None, host: str, port: int, expected: str) -> None:
    assert docs_url(public_url, host, port) == expected


def test_a_database_password_is_masked() -> None:
    shown = safe_database_url("postgresql+asyncpg://seed:hunter2@db.internal:5432/seedbed")
    assert shown == "postgresql+asyncpg://seed:***@db.internal:5432/seedbed"
    assert safe_database_url("sqlite:////var/lib/seedbed/seedbed.db") == (
        "sqlite:////var/lib/seedbed/seedbed.db"
    )
    assert safe_database_url("not a url") == "(unparsable database URL)"
