"""Domain values of the callback outbox and of stored files, free of any storage detail.

A task that ends with a ``callBackUrl`` gets one outbox row, written by ``Store.finish`` in the
transaction that makes the task terminal; the dispatcher (``callbacks``) only reads and updates
those rows. Every file seedbed stores (results, uploads) has a ``StoredFile`` record, so the
retention sweeper can delete files by age and leave the records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CallbackAttempt",
    "CallbackRecord",
    "CallbackState",
    "Delivery",
    "FileKind",
    "StoredFile",
    "after_attempt",
]


class CallbackState(enum.StrEnum):
    """Where a callback stands: waiting for (another) attempt, delivered, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """A due callback, claimed by one dispatcher for one attempt."""

    task_id: str
    url: str
    #: attempts made before this one
    attempts: int
    #: the task's key's webhook HMAC key, when it has one (then the callback is signed)
    hmac_key: str | None


@dataclass(frozen=True, kw_only=True)
class CallbackRecord:
    """An outbox row as operators see it (``seedbed callbacks list``)."""

    task_id: str
    key_id: str
    url: str
    state: CallbackState
    attempts: int
    next_attempt_at: int | None  # Unix ms; None once delivered or dead
    last_status: int | None
    last_error: str | None
    created_at: int  # Unix ms
    updated_at: int  # Unix ms


@dataclass(frozen=True, kw_only=True)
class CallbackAttempt:
    """One POST to a receiver: its HTTP status, or why there was none."""

    task_id: str
    attempt: int  # 1-based
    status: int | None
    error: str | None
    duration_ms: int
    at: int  # Unix ms


class FileKind(enum.StrEnum):
    RESULT = "result"
    UPLOAD = "upload"


@dataclass(frozen=True, kw_only=True)
class StoredFile:
    """The record of a stored file; it outlives the file (``deleted_at`` set by retention)."""

    key: str
    kind: FileKind
    key_id: str
    task_id: str | None = None
    size: int | None = None
    content_type: str | None = None
    created_at: int = 0  # Unix ms
    deleted_at: int | None = None  # Unix ms


def after_attempt(
    now: int, delivered: bool, retry_in: float | None
) -> tuple[CallbackState, int | None]:
    """An outbox row's state and next due time (Unix ms) after an attempt: delivered, due
    again in ``retry_in`` seconds, or (``retry_in`` None) dead."""
    if delivered:
        return CallbackState.DELIVERED, None
    if retry_in is None:
        return CallbackState.DEAD, None
    return CallbackState.PENDING, now + round(retry_in * 1000)
