"""What fuzzing found answering 500, each over a real server (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_settings, serve_in_thread

ADMIN_TOKEN = "findings-admin-token-0123456789"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("openTaskCap", 10**30),  # past 64 bits: the stored JSON could not hold it
        ("recordPerSecond", 1e300),  # a whole number as a float, as large
        ("createPerWindow", 2**63),
        ("createWindowSeconds", 1.6e308),
    ],
)
def test_a_key_limit_past_the_maximum_is_422(tmp_path: Path, field: str, value: float) -> None:
    with serve_in_thread(make_settings(tmp_path, admin_token=ADMIN_TOKEN)) as live:
        _, key_id = live.add_key(credits=10)
        answer = live.client.put(
            f"/api/v1/admin/keys/{key_id}/limits",
            json={field: value},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert answer.status_code == 200
        assert answer.json() == {
            "code": 422,
            "msg": f"limits.{field} must be at most 1000000000",
            "data": None,
        }
        # the maximum itself is a limit like any other
        answer = live.client.put(
            f"/api/v1/admin/keys/{key_id}/limits",
            json={field: 1_000_000_000},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert answer.json()["code"] == 200, answer.json()


@pytest.mark.parametrize("amount", ["1e400", 1e300, "-1e400", 10**13])
def test_credits_past_the_maximum_are_422(tmp_path: Path, amount: float | str) -> None:
    with serve_in_thread(make_settings(tmp_path, admin_token=ADMIN_TOKEN)) as live:
        key, key_id = live.add_key(credits=10)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        created = live.client.post(
            "/api/v1/admin/keys", json={"name": "big", "credits": amount}, headers=admin
        )
        assert created.json() == {
            "code": 422,
            "msg": "credits must be at most 1000000000000 credits",
            "data": None,
        }
        added = live.client.post(
            f"/api/v1/admin/keys/{key_id}/credits", json={"amount": amount}, headers=admin
        )
        assert added.json() == {
            "code": 422,
            "msg": "amount must be at most 1000000000000 credits",
            "data": None,
        }
        assert live.balance(key) == 10
        # the maximum itself is accepted
        added = live.client.post(
            f"/api/v1/admin/keys/{key_id}/credits",
            json={"amount": 1_000_000_000_000},
            headers=admin,
        )
        assert added.json()["code"] == 200, added.json()


def test_unicode_digits_are_not_numbers(tmp_path: Path) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` raises: numbers read from a query, a header or
    a signed link are checked with ``isdecimal``, so such text is refused, never a 500."""
    with serve_in_thread(make_settings(tmp_path)) as live:
        key, _ = live.add_key(credits=10)
        headers = {"Authorization": f"Bearer {key}"}
        answer = live.client.get("/api/v1/console/tasks", params={"cursor": "²"}, headers=headers)
        assert answer.json()["code"] == 422, answer.text
        signed = live.client.get(
            "/files/results/x_0_ab.png", params={"expires": "²", "signature": "a"}
        )
        assert signed.status_code in (403, 404) and signed.json()["code"] != 500, signed.text
        # a latin-1 "²" as the resume point of an events stream
        events = live.client.get(
            "/api/v1/jobs/events",
            params={"taskId": "0" * 32},
            headers={**headers, "Last-Event-ID": b"\xb2"},
        )
        assert events.status_code != 500 and events.json()["code"] != 500, events.text
