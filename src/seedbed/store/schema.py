"""The tables behind ``SqlStore``, as SQLAlchemy Core metadata.

This module is the single source of truth for the schema: the hand-written migrations in
``migrations/versions`` must create exactly these tables, and ``tests/unit/test_migrations.py``
proves it with alembic's autogenerate comparison.

Money is stored as integer milli-credits (credits × 1000) so that holds, charges and releases
add up exactly; times are Unix milliseconds in BIGINT columns so that SQLite and PostgreSQL
agree without timezone handling.

``tasks.seq`` is the primary key and ``tasks.id`` a unique column, not the other way round:
SQLite autoincrements only an ``INTEGER PRIMARY KEY`` (which then *is* the rowid, so rows are
stored in creation order and inserts append to the b-tree instead of landing at random hex ids),
and PostgreSQL gets a BIGSERIAL. The same declaration is portable to both.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import CHAR

__all__ = [
    "NAMING_CONVENTION",
    "api_keys",
    "callback_attempts",
    "callbacks",
    "credit_ledger",
    "files",
    "flags",
    "from_milli",
    "metadata",
    "rate_limits",
    "task_engines",
    "tasks",
    "to_milli",
]

#: deterministic constraint names, so migrations can name (and later drop) what they created
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: an auto-numbered integer key: INTEGER on SQLite (the rowid alias), BIGSERIAL elsewhere
_SERIAL = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("balance_milli", BigInteger, nullable=False),
    Column("held_milli", BigInteger, nullable=False),
    Column("open_tasks", Integer, nullable=False),
    #: KeyLimits.as_dict() as JSON text
    Column("limits", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    #: the webhook HMAC key callbacks are signed with (kie's scheme); kept in the clear because
    #: signing needs it, like kie's own ``webhookHmacKey`` (added by migration 0002)
    Column("hmac_key", Text, nullable=True),
    CheckConstraint("balance_milli >= 0", name="balance_nonneg"),
    CheckConstraint("held_milli >= 0", name="held_nonneg"),
)

credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("key_id", String(64), ForeignKey("api_keys.id"), nullable=False),
    Column("task_id", CHAR(32), nullable=True),
    #: grant | reserve | charge | release | adjust
    Column("kind", String(16), nullable=False),
    #: signed for grant/adjust; the (positive) size of the movement for the task kinds
    Column("amount_milli", BigInteger, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_credit_ledger_key_id", "key_id"),
)


def _where(condition: str) -> dict[str, Any]:
    """A partial index's condition, for both dialects."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


tasks = Table(
    "tasks",
    metadata,
    Column("seq", _SERIAL, primary_key=True, autoincrement=True),
    Column("id", CHAR(32), nullable=False, unique=True),
    Column("key_id", String(64), ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(100), nullable=False),
    Column("state", String(16), nullable=False),
    Column("param", Text, nullable=False),
    #: the validated input as compact JSON
    Column("input", Text, nullable=False),
    Column("callback_url", Text, nullable=True),
    Column("progress", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("reserved_milli", BigInteger, nullable=False),
    Column("consumed_milli", BigInteger, nullable=False),
    #: JSON list of storage keys
    Column("result_keys", Text, nullable=False),
    Column("fail_code", String(32), nullable=True),
    Column("fail_msg", Text, nullable=True),
    Column("create_time", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False),
    Column("complete_time", BigInteger, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    #: Unix ms; 0 marks a lease released because its owner is known dead
    Column("lease_expires", BigInteger, nullable=True),
    #: the base URL the task was created through; result links in its callback use it when no
    #: ``public_url`` is set, as recordInfo's do (added by migration 0002)
    Column("origin", Text, nullable=True),
    #: the client's ``Idempotency-Key`` header and a SHA-256 of the request it came with
    #: (migration 0003); a key is honoured for ``IDEMPOTENCY_SECONDS`` after the task's creation
    Column("idempotency_key", String(200), nullable=True),
    Column("request_hash", CHAR(64), nullable=True),
    # claiming (oldest open task per state) and queue positions (count by state below seq)
    Index("ix_tasks_state_seq", "state", "seq"),
    Index("ix_tasks_key_id_state", "key_id", "state"),
    # Partial (migration 0004): a new task has neither column set, so it adds no entry to
    # these two; every query using them compares the column, which implies it is not null.
    Index("ix_tasks_lease_owner", "lease_owner", **_where("lease_owner IS NOT NULL")),
    # one task per (key, Idempotency-Key): concurrent repeats collide here
    Index(
        "uq_tasks_key_id_idempotency_key",
        "key_id",
        "idempotency_key",
        unique=True,
        **_where("idempotency_key IS NOT NULL"),
    ),
)

#: deployment switches: ``maintenance`` ("1"/"0") and one ``model_disabled:<model>`` row per
#: disabled model (a row per model keeps concurrent toggles free of read-modify-write races)
flags = Table(
    "flags",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

#: the callback outbox: one row per finished task that has a callBackUrl, written by
#: ``finish`` in the transaction that ends the task (migration 0002)
callbacks = Table(
    "callbacks",
    metadata,
    Column("task_id", CHAR(32), primary_key=True),
    Column("key_id", String(64), ForeignKey("api_keys.id"), nullable=False),
    Column("url", Text, nullable=False),
    #: pending | delivered | dead
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    #: Unix ms when the next attempt is due; a claimed row is pushed one lease ahead, so a
    #: dispatcher that dies mid-attempt only delays it; null once delivered or dead
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_callbacks_state_next_attempt_at", "state", "next_attempt_at"),
)

#: every attempt to deliver a callback, for inspection (migration 0002)
callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("task_id", CHAR(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("at", BigInteger, nullable=False),
    Index("ix_callback_attempts_task_id", "task_id"),
)

#: a record of every stored file (results and uploads); retention deletes the file and sets
#: ``deleted_at``, the record stays (migration 0002)
files = Table(
    "files",
    metadata,
    Column("key", String(400), primary_key=True),
    #: result | upload
    Column("kind", String(16), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("task_id", CHAR(32), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("content_type", String(100), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
    Index("ix_files_kind_deleted_at_created_at", "kind", "deleted_at", "created_at"),
)

#: which engine ran a task and, for a relay engine, the upstream's id of the task: written
#: by the worker when it starts the engine, read by ``seedbed tasks get`` (migration 0005); a
#: table of its own so the hot task rows and their statements stay as they are
task_engines = Table(
    "task_engines",
    metadata,
    Column("task_id", CHAR(32), primary_key=True),
    Column("engine", String(200), nullable=False),
    Column("upstream_task_id", String(200), nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

#: shared request rate limits (migration 0006): one row per limited bucket (``create:<key id>``),
#: a GCRA state like ``ratelimit.RateLimiter``'s, so every API replica counts against one
#: budget. On PostgreSQL the table is UNLOGGED: no WAL, no fsync per hit, emptied by a crash
#: (which at worst grants a key one fresh burst).
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("bucket", String(200), primary_key=True),
    #: the theoretical arrival time of the next call, Unix microseconds
    Column("tat", BigInteger, nullable=False),
    #: 1 when the last hit was allowed, 0 when refused: what the upsert's RETURNING reports
    Column("last_ok", Integer, nullable=False),
)


_MILLI = Decimal(1000)


def to_milli(amount: Decimal | int) -> int:
    """Credits → integer milli-credits, rounding half-up to three decimals."""
    return int((Decimal(amount) * _MILLI).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_milli(milli: int) -> Decimal:
    """Integer milli-credits → credits (exact)."""
    return Decimal(milli) / _MILLI
