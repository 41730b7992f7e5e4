"""Idempotency-Key: the key and the request's hash are stored with the task.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Written by hand to match ``seedbed.store.schema``. Both columns are nullable (tasks created
without the header, and every task created before this migration, have none), so adding them is
a plain ``ADD COLUMN`` on SQLite and PostgreSQL alike, with no table rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("idempotency_key", sa.String(200), nullable=True))
    op.add_column("tasks", sa.Column("request_hash", sa.CHAR(64), nullable=True))
    op.create_index(
        op.f("uq_tasks_key_id_idempotency_key"),
        "tasks",
        ["key_id", "idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_tasks_key_id_idempotency_key"), table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
