"""Which engine ran a task, and the upstream's id of it for relay engines (issue 15).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Written by hand to match ``seedbed.store.schema``. A new table rather than task columns: the
task rows and the prepared statements of the hot paths (createTask, claim, recordInfo) stay
as they are, and tasks created before this migration simply have no row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_engines",
        sa.Column("task_id", sa.CHAR(32), nullable=False),
        sa.Column("engine", sa.String(200), nullable=False),
        sa.Column("upstream_task_id", sa.String(200), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_task_engines")),
    )


def downgrade() -> None:
    op.drop_table("task_engines")
