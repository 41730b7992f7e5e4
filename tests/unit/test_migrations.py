"""The packaged alembic migrations build exactly ``schema.metadata``, once, safely."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from seedbed.store.migrate import alembic_config, upgrade
from seedbed.store.schema import metadata


def _schema(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    return [(name, sql or "") for name, sql in rows]


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def _version(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def test_the_packaged_scripts_have_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == ["0006"]


def test_upgrade_builds_exactly_the_metadata(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    upgrade(f"sqlite:///{db}")
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()
    assert _version(db) == ["0006"]


def test_upgrading_again_is_a_no_op(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    upgrade(f"sqlite:///{db}")
    before = _schema(db)
    upgrade(f"sqlite:///{db}")
    assert _schema(db) == before and _version(db) == ["0006"]


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    upgrade(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_upgrades_of_a_fresh_file_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        try:
            upgrade(f"sqlite:///{db}")
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and _version(db) == ["0006"]


def test_command_line_env_downgrades_and_upgrades(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    upgrade(f"sqlite:///{db}")
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{db}")
    command.downgrade(config, "base")
    assert _tables(db) == {"alembic_version"}
    command.upgrade(config, "head")
    assert _tables(db) == {
        "alembic_version",
        "api_keys",
        "callback_attempts",
        "callbacks",
        "credit_ledger",
        "files",
        "flags",
        "rate_limits",
        "task_engines",
        "tasks",
    }


def test_offline_mode_emits_sql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'unused.db'}")
    command.upgrade(config, "head", sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE tasks" in out and "CREATE INDEX ix_tasks_state_seq" in out


def test_0002_records_the_results_of_tasks_finished_before_it(tmp_path: Path) -> None:
    db = tmp_path / "seedbed.db"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{db}")
    command.upgrade(config, "0001")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO api_keys VALUES ('k', 'n', 'h', 0, 0, 0, '{}', 1, NULL)")
        values = (
            "(?, 'k', 'm', ?, '{}', '{}', NULL, 100, 1, 0, 0, ?, NULL, NULL, 1, 2, ?, NULL, NULL)"
        )
        conn.execute(
            f"INSERT INTO tasks (id, key_id, model, state, param, input, callback_url, progress,"
            f" attempts, reserved_milli, consumed_milli, result_keys, fail_code, fail_msg,"
            f" create_time, update_time, complete_time, lease_owner, lease_expires) VALUES {values}",
            ("a" * 32, "success", '["results/a_0_x.png", "results/a_1_y.png"]', 5000),
        )
        conn.execute(
            f"INSERT INTO tasks (id, key_id, model, state, param, input, callback_url, progress,"
            f" attempts, reserved_milli, consumed_milli, result_keys, fail_code, fail_msg,"
            f" create_time, update_time, complete_time, lease_owner, lease_expires) VALUES {values}",
            ("b" * 32, "fail", "[]", 6000),
        )
    command.upgrade(config, "head")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT key, kind, key_id, task_id, created_at, deleted_at FROM files ORDER BY key"
        ).fetchall()
    assert rows == [
        ("results/a_0_x.png", "result", "k", "a" * 32, 5000, None),
        ("results/a_1_y.png", "result", "k", "a" * 32, 5000, None),
    ]


def test_0004_indexes_only_tasks_with_a_lease_or_an_idempotency_key(tmp_path: Path) -> None:
    """The two sparse task indexes are partial, and the queries that need them still use them
    (each compares the column, which implies the index's ``IS NOT NULL``)."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from seedbed.store import queries as q

    dialect = sqlite_dialect.dialect()

    db = tmp_path / "seedbed.db"
    upgrade(f"sqlite:///{db}")

    def plan(conn: sqlite3.Connection, stmt: Any) -> str:
        """The query plan of one of the store's statements, with placeholder values."""
        sql = re.sub(r"__\[POSTCOMPILE_\w+\]", "?, ?", str(stmt.compile(dialect=dialect)))
        args = ["x"] * sql.count("?")
        return str(conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall())

    with sqlite3.connect(db) as conn:
        indexes = dict(
            conn.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'tasks'").fetchall()
        )
        assert indexes["ix_tasks_lease_owner"].endswith("WHERE lease_owner IS NOT NULL")
        assert indexes["uq_tasks_key_id_idempotency_key"].endswith(
            "WHERE idempotency_key IS NOT NULL"
        )
        assert "ix_tasks_lease_owner" in plan(conn, q.RELEASE_LEASES)
        assert "uq_tasks_key_id_idempotency_key" in plan(conn, q.IDEMPOTENT_TASK)
