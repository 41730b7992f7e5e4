"""``GET /api/v1/chat/credit`` shows the balance as it is now, with the key cache on."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import LiveServer, auth, make_settings, serve_in_thread

T2I = {"model": "seedream/4.5-text-to-image", "input": {"prompt": "a fox"}}  # 6.5 credits


@pytest.fixture
def cached_server(tmp_path: Path) -> Iterator[LiveServer]:
    """Keys cached for a minute (tests elsewhere turn the cache off); tasks take ~1 s."""
    settings = make_settings(
        tmp_path, admin_refresh_seconds=60.0, sandbox_step_seconds=0.25, sandbox_steps=4
    )
    with serve_in_thread(settings) as live:
        yield live


def test_the_balance_shows_the_hold_the_release_and_the_charge_at_once(
    cached_server: LiveServer,
) -> None:
    server = cached_server
    key, key_id = server.add_key(credits=20)
    assert server.balance(key) == 20  # the key is in the cache from here on
    first = server.create(key, T2I)["data"]["taskId"]
    assert server.balance(key) == Decimal("13.5")  # held at create
    assert server.cancel(key, first)["code"] == 200
    assert server.balance(key) == 20  # released at the cancel
    second = server.create(key, T2I)["data"]["taskId"]
    assert server.balance(key) == Decimal("13.5")
    assert server.wait(key, second)["state"] == "success"
    assert server.balance(key) == Decimal("13.5")  # charged what was held
    # written by another process (the admin CLI on the same database)
    server.store_call(lambda store: store.add_credits(key_id, Decimal(5), "top-up"))
    assert server.balance(key) == Decimal("18.5")
    server.store_call(lambda store: store.revoke_key(key_id))
    refused = server.client.get("/api/v1/chat/credit", headers=auth(key)).json()
    assert refused["code"] == 401
