"""What operators see of keys and callbacks, as JSON: one shape for ``seedbed keys list --json``,
``seedbed callbacks list --json`` and the admin API behind the console."""

from __future__ import annotations

from typing import Any

from seedbed.outbox import CallbackRecord
from seedbed.tasks import ApiKey

__all__ = ["callback_json", "key_json"]


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key without its secrets: the hash and the HMAC key are never shown."""
    return {
        "id": key.id,
        "name": key.name,
        "balance": str(key.balance),
        "held": str(key.held),
        "openTasks": key.open_tasks,
        "limits": key.limits.as_dict(),
        "createdAt": key.created_at,
        "revokedAt": key.revoked_at,
        "hasHmacKey": key.hmac_key is not None,
    }


def callback_json(row: CallbackRecord) -> dict[str, Any]:
    """An outbox row: where it goes, its state and its last answer."""
    return {
        "taskId": row.task_id,
        "keyId": row.key_id,
        "url": row.url,
        "state": row.state.value,
        "attempts": row.attempts,
        "nextAttemptAt": row.next_attempt_at,
        "lastStatus": row.last_status,
        "lastError": row.last_error,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }
