"""The initial schema: api_keys, credit_ledger, tasks, flags.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand to match ``seedbed.store.schema``; ``tests/unit/test_migrations.py`` checks that
the migrated schema and the metadata agree. Constraint names are spelled out (``op.f``) because
migrations must not depend on the metadata's naming convention staying the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _serial() -> sa.types.TypeEngine[int]:
    """INTEGER on SQLite (so the column is the rowid alias), BIGSERIAL elsewhere."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False),
        sa.Column("balance_milli", sa.BigInteger(), nullable=False),
        sa.Column("held_milli", sa.BigInteger(), nullable=False),
        sa.Column("open_tasks", sa.Integer(), nullable=False),
        sa.Column("limits", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.CheckConstraint("balance_milli >= 0", name=op.f("ck_api_keys_balance_nonneg")),
        sa.CheckConstraint("held_milli >= 0", name=op.f("ck_api_keys_held_nonneg")),
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.CHAR(32), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_milli", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_ledger")),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_credit_ledger_key_id_api_keys")
        ),
    )
    op.create_index(op.f("ix_credit_ledger_key_id"), "credit_ledger", ["key_id"])
    op.create_table(
        "tasks",
        sa.Column("seq", _serial(), autoincrement=True, nullable=False),
        sa.Column("id", sa.CHAR(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("param", sa.Text(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reserved_milli", sa.BigInteger(), nullable=False),
        sa.Column("consumed_milli", sa.BigInteger(), nullable=False),
        sa.Column("result_keys", sa.Text(), nullable=False),
        sa.Column("fail_code", sa.String(32), nullable=True),
        sa.Column("fail_msg", sa.Text(), nullable=True),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("complete_time", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_tasks")),
        sa.UniqueConstraint("id", name=op.f("uq_tasks_id")),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_tasks_key_id_api_keys")),
    )
    op.create_index(op.f("ix_tasks_state_seq"), "tasks", ["state", "seq"])
    op.create_index(op.f("ix_tasks_key_id_state"), "tasks", ["key_id", "state"])
    op.create_index(op.f("ix_tasks_lease_owner"), "tasks", ["lease_owner"])
    op.create_table(
        "flags",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_flags")),
    )


def downgrade() -> None:
    op.drop_table("flags")
    op.drop_index(op.f("ix_tasks_lease_owner"), table_name="tasks")
    op.drop_index(op.f("ix_tasks_key_id_state"), table_name="tasks")
    op.drop_index(op.f("ix_tasks_state_seq"), table_name="tasks")
    op.drop_table("tasks")
    op.drop_index(op.f("ix_credit_ledger_key_id"), table_name="credit_ledger")
    op.drop_table("credit_ledger")
    op.drop_table("api_keys")
