"""Receiving kie's (and seedbed's) task callbacks: check the signature, read the body.

The scheme is kie's (CONTRACT §5, reference §4.3): a sender with a webhook HMAC key adds

- ``X-Webhook-Timestamp``: Unix seconds when sent, and
- ``X-Webhook-Signature``: ``base64(HMAC-SHA256(hmac_key, taskId + "." + timestamp))``.

Only the task id and the timestamp are signed, not the body; so a receiver checks the
signature against the ``taskId`` *in the body it got*, refuses a timestamp too far from its
clock (replays), and then trusts the body only as far as the task id goes: fetch the task
with ``recordInfo`` if what it says matters. A small receiver::

    from seedbed.webhooks import InvalidSignature, verify_callback

    @app.post("/kie-callback")
    async def kie_callback(request: Request) -> dict[str, object]:
        try:
            callback = verify_callback(await request.body(), request.headers, HMAC_KEY)
        except InvalidSignature:
            raise HTTPException(401)
        if not already_seen(callback.task.task_id):  # delivery is at least once
            handle(callback.task)
        return {"code": 200, "msg": "success"}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seedbed.client.errors import ResponseError
from seedbed.client.records import Task, parse_task

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Callback",
    "InvalidSignature",
    "parse_callback",
    "sign",
    "verify_callback",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Webhook-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
#: seconds a callback's timestamp may differ from the receiver's clock (kie documents none)
DEFAULT_TOLERANCE = 300.0


class InvalidSignature(Exception):
    """The callback is unsigned, wrongly signed, too old, or not a callback body."""


@dataclass(frozen=True, kw_only=True)
class Callback:
    """A parsed callback: ``code`` 200 (success) or 501 (failure), ``msg``, and the task."""

    code: int
    msg: str
    task: Task

    @property
    def succeeded(self) -> bool:
        return self.code == 200 and self.task.state.value == "success"


def _key_bytes(hmac_key: str | bytes) -> bytes:
    return hmac_key.encode() if isinstance(hmac_key, str) else hmac_key


def sign(hmac_key: str | bytes, task_id: str, timestamp: int | str) -> str:
    """The ``X-Webhook-Signature`` value for ``task_id`` sent at ``timestamp`` (Unix seconds)."""
    message = f"{task_id}.{timestamp}".encode()
    digest = hmac.new(_key_bytes(hmac_key), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    hmac_key: str | bytes,
    task_id: str,
    timestamp: str | int | None,
    signature: str | None,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` signs ``task_id.timestamp`` with the key
    and ``timestamp`` is within ``tolerance`` seconds of ``now`` (``None``: no age check)."""
    if not signature or timestamp is None or str(timestamp).strip() == "":
        raise InvalidSignature("missing X-Webhook-Signature or X-Webhook-Timestamp")
    stamp = str(timestamp).strip()
    try:
        sent_at = int(stamp)
    except ValueError:
        raise InvalidSignature("X-Webhook-Timestamp is not Unix seconds") from None
    if tolerance is not None:
        clock = time.time() if now is None else now
        if abs(clock - sent_at) > tolerance:
            raise InvalidSignature(
                f"X-Webhook-Timestamp is {clock - sent_at:+.0f} s from now "
                f"(tolerance {tolerance:g} s)"
            )
    expected = sign(hmac_key, task_id, stamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise InvalidSignature("X-Webhook-Signature does not match")


def _decode(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return dict(body)
    try:
        decoded = json.loads(body)
    except ValueError:
        raise InvalidSignature("the callback body is not JSON") from None
    if not isinstance(decoded, dict):
        raise InvalidSignature("the callback body is not a JSON object")
    return decoded


def _task_id(body: Mapping[str, Any]) -> str | None:
    """The signed task id: ``data.taskId`` on Market callbacks; kie's docs also show a
    top-level ``taskId`` and ``data.task_id`` (reference §4.3), so those are read too."""
    data = body.get("data")
    if isinstance(data, dict):
        for name in ("taskId", "task_id"):
            if isinstance(data.get(name), str):
                return str(data[name])
    value = body.get("taskId")
    return value if isinstance(value, str) else None


def parse_callback(body: bytes | str | Mapping[str, Any]) -> Callback:
    """A callback body as a ``Callback`` (no signature check: see ``verify_callback``)."""
    decoded = _decode(body)
    data = decoded.get("data")
    if isinstance(data, dict) and "taskId" not in data and isinstance(data.get("task_id"), str):
        data = {**data, "taskId": data["task_id"]}
    try:
        task = parse_task(data)
    except ResponseError as exc:
        raise InvalidSignature(f"not a task callback: {exc}") from None
    code = decoded.get("code")
    message = decoded.get("msg", decoded.get("message"))
    return Callback(
        code=code if isinstance(code, int) else 0,
        msg=message if isinstance(message, str) else "",
        task=task,
    )


def verify_callback(
    body: bytes | str | Mapping[str, Any],
    headers: Mapping[str, str],
    hmac_key: str | bytes,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Callback:
    """Check a received callback's signature headers and return its parsed body.

    ``headers`` may be any mapping (names are matched case-insensitively). Raises
    ``InvalidSignature`` for a missing, wrong or stale signature and for a body that is not a
    task callback.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    decoded = _decode(body)
    task_id = _task_id(decoded)
    if task_id is None:
        raise InvalidSignature("the callback body has no taskId")
    verify_signature(
        hmac_key,
        task_id,
        lowered.get(TIMESTAMP_HEADER.lower()),
        lowered.get(SIGNATURE_HEADER.lower()),
        tolerance=tolerance,
        now=now,
    )
    return parse_callback(decoded)
