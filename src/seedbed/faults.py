"""Infrastructure faults: telling a passing fault from a task's own failure, and remembering
which parts of the process are unhealthy right now.

A full disk, a locked or unreachable database, a storage mount gone read-only: none of these
says anything about the task being run, and each clears on its own or by an operator's hand.
The worker retries around them (a task is never failed for good by one); readiness and
createTask read ``Health`` to tell clients and load balancers the truth meanwhile.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

from seedbed import errors

__all__ = ["Health", "Problem", "causes", "describe", "is_infrastructure_fault", "is_storage_full"]

log = logging.getLogger(__name__)

#: OSError numbers that mean "the machine cannot write now", not "this request is wrong"
_PASSING_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ENOENT,  # a data directory removed under a running server
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PASSING_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during (SQLAlchemy wraps the driver's)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_storage_full(exc: BaseException) -> bool:
    for one in causes(exc):
        if isinstance(one, errors.StorageFull):
            return True
        if isinstance(one, OSError) and one.errno in _FULL_ERRNOS:
            return True
        if "database or disk is full" in str(one):  # SQLite's SQLITE_FULL
            return True
    return False


def is_infrastructure_fault(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the machine (disk, database, storage, network to them) rather
    than from the task: such a fault is retried, never recorded as the task's failure."""
    if isinstance(exc, errors.TaskFailure):
        return False
    from sqlalchemy import exc as sa_exc  # the store's dependency; imported once, cheaply

    for one in causes(exc):
        if isinstance(one, errors.StorageFull | TimeoutError | ConnectionError):
            return True
        if isinstance(one, OSError) and one.errno in _PASSING_ERRNOS:
            return True
        if isinstance(one, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        if isinstance(one, sa_exc.DBAPIError) and one.connection_invalidated:
            return True
        # PostgreSQL's own word (asyncpg's ``sqlstate``): connection exceptions (08),
        # insufficient resources (53), operator intervention such as a restart (57), system
        # errors (58)
        if str(getattr(one, "sqlstate", "") or "")[:2] in _PASSING_SQLSTATE_CLASSES:
            return True
    return False


def describe(exc: BaseException) -> str:
    """One line for logs and readiness: what failed, never a traceback."""
    for one in causes(exc):
        if isinstance(one, errors.StorageFull):
            return one.msg
    if is_storage_full(exc):
        return "storage is full: no space left on the device"
    for one in causes(exc):
        if isinstance(one, OSError) and one.errno is not None and one.strerror:
            # the system's words for it, without the path (readiness bodies are not private)
            return f"{one.strerror} ({errno.errorcode.get(one.errno, one.errno)})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


@dataclass(frozen=True)
class Problem:
    """Why a part of the process is unhealthy, and since when (Unix seconds)."""

    reason: str
    since: float


class Health:
    """What is wrong in this process right now, by part ("store", "storage", "worker", ...).

    Written by whoever meets a fault (``fault``) and by whoever next succeeds (``ok``);
    read by ``/readyz`` and createTask. Plain attribute reads: free on the hot path.
    """

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}

    def fault(self, part: str, reason: str) -> None:
        current = self._problems.get(part)
        if current is None or current.reason != reason:
            if current is None:
                log.error("%s is unhealthy: %s", part, reason)
            self._problems[part] = Problem(reason, current.since if current else time.time())

    def ok(self, part: str) -> None:
        gone = self._problems.pop(part, None)
        if gone is not None:
            log.warning(
                "%s is healthy again (after %.1f s: %s)",
                part,
                time.time() - gone.since,
                gone.reason,
            )

    def problem(self, part: str) -> Problem | None:
        return self._problems.get(part)

    def problems(self) -> dict[str, Problem]:
        return dict(self._problems)

    @property
    def storage_writable(self) -> bool:
        return "storage" not in self._problems
