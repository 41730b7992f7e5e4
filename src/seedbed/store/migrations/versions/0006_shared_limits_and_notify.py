"""Shared rate limits, and task notifications on PostgreSQL (issue 16).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Written by hand to match ``seedbed.store.schema``.

* ``rate_limits``: the createTask rate limit's state per key, shared by every API replica
  (``Store.rate_limit_hit``). UNLOGGED on PostgreSQL: a hit writes no WAL and its commit waits
  for no fsync; a crash empties the table, which only forgets recent bursts.
* PostgreSQL only: a trigger on ``tasks`` that sends ``NOTIFY`` (``seedbed.pgnotify``) when a
  task is created (``seedbed_task_created``: idle workers on every host wake at once), when a
  client-visible field changes (``seedbed_task_changed``, the task id as payload: live-event
  streams on every replica), and when a task with a callback ends (``seedbed_callbacks``: the
  dispatchers). Notifications are delivered at commit, never for a rolled-back write; a
  heartbeat (only the lease moves) sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["downgrade", "upgrade"]

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION seedbed_notify_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('seedbed_task_created', '');
    ELSIF NEW.state IS DISTINCT FROM OLD.state OR NEW.progress IS DISTINCT FROM OLD.progress THEN
        PERFORM pg_notify('seedbed_task_changed', NEW.id);
        IF NEW.state IN ('success', 'fail') AND NEW.callback_url IS NOT NULL THEN
            PERFORM pg_notify('seedbed_callbacks', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""
_TRIGGER = """
CREATE TRIGGER seedbed_notify_task AFTER INSERT OR UPDATE ON tasks
FOR EACH ROW EXECUTE FUNCTION seedbed_notify_task()
"""


def upgrade() -> None:
    postgres = op.get_context().dialect.name == "postgresql"
    op.create_table(
        "rate_limits",
        sa.Column("bucket", sa.String(200), nullable=False),
        sa.Column("tat", sa.BigInteger(), nullable=False),
        sa.Column("last_ok", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_rate_limits")),
        prefixes=["UNLOGGED"] if postgres else [],
    )
    if postgres:
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_TRIGGER)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS seedbed_notify_task ON tasks")
        op.execute("DROP FUNCTION IF EXISTS seedbed_notify_task()")
    op.drop_table("rate_limits")
