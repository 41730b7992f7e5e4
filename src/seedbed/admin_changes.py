"""Telling running servers, at once, that an admin changed a key or a switch.

Servers hold keys and the deployment's switches in memory (``api.context.KeyCache`` and
``FlagsCache``) so that requests do not read them each time. An admin command (the CLI, the
console) announces its change once it is committed, and every server drops what it holds of
it: a key revoked is refused, maintenance or a model switch is seen, from the next request on.

* On SQLite every process of a deployment runs on one host: a datagram to each server's
  socket in ``<data_dir>/run/admin/`` (``wakeup.Wakeup``).
* On PostgreSQL, ``NOTIFY seedbed_admin_changed`` (``pgnotify``), which reaches every replica.

A message names what changed: ``flags``, ``key:<id>``, or nothing (a listener that reconnected
may have missed some: everything). Neither way is durable, so each server still re-reads what
it holds every ``admin_refresh_seconds``: a message lost delays a change that long, no more.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from seedbed.wakeup import Wakeup

if TYPE_CHECKING:
    from seedbed.api.context import FlagsCache, KeyCache
    from seedbed.config import Settings
    from seedbed.store.base import Store

__all__ = ["FLAGS", "announce", "apply", "key_changed", "sender"]

log = logging.getLogger(__name__)

#: maintenance, a model switch
FLAGS = "flags"
_KEY = "key:"


def key_changed(key_id: str) -> str:
    """The message for a change to one key (revoked, limits, credits)."""
    return _KEY + key_id


def sender(settings: Settings) -> Wakeup:
    """The datagram side: the servers' sockets on this host (none on a shared store, whose
    servers are told by its ``NOTIFY``)."""
    return Wakeup(None if settings.shared_store else settings.run_dir / "admin")


async def announce(store: Store, servers: Wakeup, change: str) -> None:
    """Tell the servers of this deployment; never fails the change itself, which is already
    committed: a server not told sees it within ``admin_refresh_seconds``."""
    try:
        servers.notify(change.encode())
        await store.announce_admin_change(change)
    except Exception as exc:
        log.warning(
            "could not announce an admin change to the servers (%r): they see it "
            "within admin_refresh_seconds",
            exc,
        )


def apply(change: str, keys: KeyCache, flags: FlagsCache) -> None:
    """Drop what a server holds of ``change``."""
    if change.startswith(_KEY):
        keys.forget(change[len(_KEY) :])
    elif change == FLAGS:
        flags.invalidate()
    else:
        keys.clear()
        flags.invalidate()
