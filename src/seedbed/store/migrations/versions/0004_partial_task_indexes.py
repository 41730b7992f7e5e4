"""Partial indexes for the task columns most tasks leave empty.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

Written by hand to match ``seedbed.store.schema``. ``tasks.lease_owner`` is empty until a
worker claims the task and ``tasks.idempotency_key`` unless the client sent the header, yet
every createTask added an entry to both indexes: two b-tree inserts and about four of the 36
pages each group commit wrote to the WAL (measured). Only rows with a value are indexed now.
Nothing changes for the queries (each compares the column, which implies it is not null) nor
for uniqueness (rows without an idempotency key never collided). Rebuilding an index reads the
table once; on a million tasks that is about a second at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEASE = ("ix_tasks_lease_owner", ["lease_owner"], False, "lease_owner IS NOT NULL")
_IDEMPOTENCY = (
    "uq_tasks_key_id_idempotency_key",
    ["key_id", "idempotency_key"],
    True,
    "idempotency_key IS NOT NULL",
)


def upgrade() -> None:
    for name, columns, unique, condition in (_LEASE, _IDEMPOTENCY):
        op.drop_index(op.f(name), table_name="tasks")
        op.create_index(
            op.f(name),
            "tasks",
            columns,
            unique=unique,
            sqlite_where=sa.text(condition),
            postgresql_where=sa.text(condition),
        )


def downgrade() -> None:
    for name, columns, unique, _condition in (_LEASE, _IDEMPOTENCY):
        op.drop_index(op.f(name), table_name="tasks")
        op.create_index(op.f(name), "tasks", columns, unique=unique)
