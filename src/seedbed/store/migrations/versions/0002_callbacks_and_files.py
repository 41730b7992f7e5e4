"""Callbacks and files: the callback outbox and its attempts, file records, webhook HMAC keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Written by hand to match ``seedbed.store.schema``; ``tests/unit/test_migrations.py`` checks that
the migrated schema and the metadata agree. Results stored before this revision get their file
records here (from ``tasks.result_keys``), so retention and download links cover them too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _serial() -> sa.types.TypeEngine[int]:
    """INTEGER on SQLite (so the column is the rowid alias), BIGSERIAL elsewhere."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # plain ADD COLUMN of nullable columns: no table rebuild on SQLite
    op.add_column("api_keys", sa.Column("hmac_key", sa.Text(), nullable=True))
    op.add_column("tasks", sa.Column("origin", sa.Text(), nullable=True))
    op.create_table(
        "callbacks",
        sa.Column("task_id", sa.CHAR(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_callbacks")),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_callbacks_key_id_api_keys")
        ),
    )
    op.create_index(
        op.f("ix_callbacks_state_next_attempt_at"), "callbacks", ["state", "next_attempt_at"]
    )
    op.create_table(
        "callback_attempts",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.CHAR(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_attempts")),
    )
    op.create_index(op.f("ix_callback_attempts_task_id"), "callback_attempts", ["task_id"])
    op.create_table(
        "files",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.CHAR(32), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_files")),
    )
    op.create_index(
        op.f("ix_files_kind_deleted_at_created_at"), "files", ["kind", "deleted_at", "created_at"]
    )
    _record_existing_results()


def _record_existing_results() -> None:
    """A ``files`` row per result of every successful task, dated when the task completed."""
    if op.get_context().as_sql:
        return  # an offline SQL script cannot read rows; run the upgrade online for this step
    conn = op.get_bind()
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.CHAR(32)),
        sa.column("key_id", sa.String(64)),
        sa.column("state", sa.String(16)),
        sa.column("result_keys", sa.Text()),
        sa.column("complete_time", sa.BigInteger()),
    )
    files = sa.table(
        "files",
        sa.column("key", sa.String(400)),
        sa.column("kind", sa.String(16)),
        sa.column("key_id", sa.String(64)),
        sa.column("task_id", sa.CHAR(32)),
        sa.column("created_at", sa.BigInteger()),
    )
    query = sa.select(tasks.c.id, tasks.c.key_id, tasks.c.result_keys, tasks.c.complete_time)
    rows = []
    for task in conn.execute(query.where(tasks.c.state == "success")):
        for key in json.loads(task.result_keys or "[]"):
            rows.append(
                {
                    "key": key,
                    "kind": "result",
                    "key_id": task.key_id,
                    "task_id": task.id,
                    "created_at": task.complete_time or 0,
                }
            )
    if rows:
        op.bulk_insert(files, rows)


def downgrade() -> None:
    op.drop_index(op.f("ix_files_kind_deleted_at_created_at"), table_name="files")
    op.drop_table("files")
    op.drop_index(op.f("ix_callback_attempts_task_id"), table_name="callback_attempts")
    op.drop_table("callback_attempts")
    op.drop_index(op.f("ix_callbacks_state_next_attempt_at"), table_name="callbacks")
    op.drop_table("callbacks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("hmac_key")
