"""The SQL behind the callback outbox and the file records, as SQLAlchemy Core constructs.

Kept apart from ``queries`` (the task hot path) because these statements run through
SQLAlchemy's ordinary execution, and so that the outbox is one module to read.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer, Row, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from seedbed.outbox import (
    CallbackAttempt,
    CallbackRecord,
    CallbackState,
    FileKind,
    StoredFile,
)
from seedbed.store.schema import api_keys, callback_attempts, callbacks, files

__all__ = [
    "ATTEMPTS",
    "CALLBACK",
    "CLAIM_CALLBACKS",
    "DELIVERIES",
    "DUE_CALLBACKS",
    "EXPIRED_FILES",
    "GET_FILE",
    "INSERT_ATTEMPT",
    "INSERT_CALLBACK",
    "KNOWN_FILES",
    "LIST_CALLBACKS",
    "MARK_FILES_DELETED",
    "PG_UPSERT_FILE",
    "RECORD_ATTEMPT",
    "REDELIVER",
    "RELEASE_CALLBACKS",
    "SET_HMAC_KEY",
    "SQLITE_CLAIM_CALLBACKS",
    "SQLITE_UPSERT_FILE",
    "attempt_from_row",
    "callback_from_row",
    "callback_row",
    "file_from_row",
    "file_row",
]

_C, _A, _F, _K = callbacks.c, callback_attempts.c, files.c, api_keys.c
_PENDING = CallbackState.PENDING.value


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(f"p_{name}", type_=type_)


SET_HMAC_KEY = update(api_keys).where(_K.id == _p("key_id")).values(hmac_key=_p("hmac_key"))

INSERT_CALLBACK = insert(callbacks)
CALLBACK = select(callbacks).where(_C.task_id == _p("task_id"))
#: the due rows, oldest due first (the ``(state, next_attempt_at)`` index serves it)
DUE_CALLBACKS = (
    select(_C.task_id)
    .where(_C.state == _PENDING, _C.next_attempt_at <= _p("now", BigInteger()))
    .order_by(_C.next_attempt_at)
    .limit(_p("limit", Integer()))
    # PostgreSQL: concurrent dispatchers take different rows; SQLite's write lock does that
    .with_for_update(skip_locked=True)
)
#: a claim pushes the row one lease ahead: nobody else takes it meanwhile, and if this
#: dispatcher dies mid-attempt the row is simply due again when the lease runs out
CLAIM_CALLBACKS = (
    update(callbacks)
    .where(_C.task_id.in_(bindparam("p_ids", expanding=True)), _C.state == _PENDING)
    .values(next_attempt_at=_p("lease_until", BigInteger()), updated_at=_p("now", BigInteger()))
)
#: SQLite: the claim in one statement, what ``DUE_CALLBACKS``, ``CLAIM_CALLBACKS`` and
#: ``DELIVERIES`` do in three (its write lock keeps dispatchers apart), compiled once
SQLITE_CLAIM_CALLBACKS = (
    update(callbacks)
    .where(
        _C.task_id.in_(
            select(_C.task_id)
            .where(_C.state == _PENDING, _C.next_attempt_at <= _p("now", BigInteger()))
            .order_by(_C.next_attempt_at)
            .limit(_p("limit", Integer()))
            .scalar_subquery()
        )
    )
    .values(next_attempt_at=_p("lease_until", BigInteger()), updated_at=_p("now", BigInteger()))
    .returning(
        _C.task_id,
        _C.url,
        _C.attempts,
        select(_K.hmac_key).where(_K.id == _C.key_id).scalar_subquery().label("hmac_key"),
    )
)
DELIVERIES = (
    select(_C.task_id, _C.url, _C.attempts, _K.hmac_key)
    .select_from(callbacks.join(api_keys, _K.id == _C.key_id))
    .where(_C.task_id.in_(bindparam("p_ids", expanding=True)))
    .order_by(_C.next_attempt_at)
)
#: the outcome of one attempt; a row already delivered (a duplicate attempt) is left alone
RECORD_ATTEMPT = (
    update(callbacks)
    .where(_C.task_id == _p("task_id"), _C.state == _PENDING)
    .values(
        state=_p("state"),
        attempts=_p("attempt", Integer()),
        next_attempt_at=_p("next", BigInteger()),
        last_status=_p("status", Integer()),
        last_error=_p("error"),
        updated_at=_p("now", BigInteger()),
    )
)
INSERT_ATTEMPT = insert(callback_attempts)
RELEASE_CALLBACKS = (
    update(callbacks)
    .where(_C.task_id.in_(bindparam("p_ids", expanding=True)), _C.state == _PENDING)
    .values(next_attempt_at=_p("now", BigInteger()))
)
REDELIVER = (
    update(callbacks)
    .where(_C.task_id == _p("task_id"))
    .values(
        state=_PENDING,
        attempts=0,
        next_attempt_at=_p("now", BigInteger()),
        updated_at=_p("now", BigInteger()),
    )
)
LIST_CALLBACKS = select(callbacks).order_by(_C.created_at.desc(), _C.task_id)
ATTEMPTS = select(callback_attempts).where(_A.task_id == _p("task_id")).order_by(_A.id)

GET_FILE = select(files).where(_F.key == _p("key"))
_UPSERT_SET = ("kind", "key_id", "task_id", "size", "content_type", "created_at", "deleted_at")
SQLITE_UPSERT_FILE = sqlite.insert(files).on_conflict_do_update(
    index_elements=[_F.key],
    set_={name: getattr(sqlite.insert(files).excluded, name) for name in _UPSERT_SET},
)
PG_UPSERT_FILE = postgresql.insert(files).on_conflict_do_update(
    index_elements=[_F.key],
    set_={name: getattr(postgresql.insert(files).excluded, name) for name in _UPSERT_SET},
)
EXPIRED_FILES = (
    select(files)
    .where(
        _F.kind == _p("kind"),
        _F.deleted_at.is_(None),
        _F.created_at < _p("before", BigInteger()),
    )
    .order_by(_F.created_at)
    .limit(_p("limit", Integer()))
)
#: which of these keys name a file on record (not deleted by retention)
KNOWN_FILES = select(_F.key).where(
    _F.key.in_(bindparam("p_keys", expanding=True)), _F.deleted_at.is_(None)
)
MARK_FILES_DELETED = (
    update(files)
    .where(
        _F.key.in_(bindparam("p_keys", expanding=True)),
        _F.deleted_at.is_(None),
        _F.created_at < _p("before", BigInteger()),
    )
    .values(deleted_at=_p("now", BigInteger()))
    .returning(_F.key)
)


def callback_row(task_id: str, key_id: str, url: str, now: int, due: int) -> dict[str, Any]:
    """The outbox row ``finish`` writes: pending, due at ``due`` (now, or when the claim that
    the finish made for its own process runs out)."""
    return {
        "task_id": task_id,
        "key_id": key_id,
        "url": url,
        "state": _PENDING,
        "attempts": 0,
        "next_attempt_at": due,
        "last_status": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }


def file_row(file: StoredFile, now: int) -> dict[str, Any]:
    return {
        "key": file.key,
        "kind": file.kind.value,
        "key_id": file.key_id,
        "task_id": file.task_id,
        "size": file.size,
        "content_type": file.content_type,
        "created_at": now,
        "deleted_at": None,
    }


def callback_from_row(row: Row[Any]) -> CallbackRecord:
    return CallbackRecord(
        task_id=row.task_id,
        key_id=row.key_id,
        url=row.url,
        state=CallbackState(row.state),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def attempt_from_row(row: Row[Any]) -> CallbackAttempt:
    return CallbackAttempt(
        task_id=row.task_id,
        attempt=row.attempt,
        status=row.status,
        error=row.error,
        duration_ms=row.duration_ms,
        at=row.at,
    )


def file_from_row(row: Row[Any]) -> StoredFile:
    return StoredFile(
        key=row.key,
        kind=FileKind(row.kind),
        key_id=row.key_id,
        task_id=row.task_id,
        size=row.size,
        content_type=row.content_type,
        created_at=row.created_at,
        deleted_at=row.deleted_at,
    )
