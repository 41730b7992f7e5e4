"""The ``seedbed`` command's exit codes, one per kind of outcome (documented in docs/cli.md).

Scripts tell "I called it wrong" from "it said no" from "something is broken" by the code alone.
"""

from __future__ import annotations

__all__ = ["FAILED", "OK", "REFUSED", "TASK_FAILED", "USAGE"]

#: done
OK = 0
#: the server or the database failed or could not be reached (5xx, connection refused, a
#: database error, a timeout): trying again later may work
FAILED = 1
#: the command cannot run as given: an unknown flag or a bad value (click's own code), a
#: configuration mistake, or an admin command pointed at a data directory with no database
USAGE = 2
#: the command was understood and refused: no such key, task or callback, or the server's
#: answer was a 4xx code (401 key, 402 credits, 422 validation, 429 limits, 455, 505)
REFUSED = 3
#: the task ran and ended ``fail`` (``seedbed generate``, ``seedbed get --wait``)
TASK_FAILED = 4
