"""Durable state: keys, credits, tasks and flags behind the ``Store`` protocol.

``open_store(url)`` picks the implementation from the URL's scheme, so configuration is one
string: ``memory://`` for tests, ``sqlite:///path/seedbed.db`` (the default deployment) or
``postgresql://...``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from seedbed.store.base import CreateRefused, Store

__all__ = ["CreateRefused", "Store", "open_store"]


def open_store(url: str, *, clock: Callable[[], float] = time.time) -> Store:
    """Build (not yet open) the store for ``url``; call ``await store.open()`` before use.

    ``sqlite:///path`` runs on the standard library's driver in threads (see ``sql``);
    ``postgresql://`` becomes ``postgresql+asyncpg://`` (the ``postgres`` extra).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from seedbed.store.memory import MemoryStore

        return MemoryStore(clock=clock)
    if scheme.startswith(("sqlite", "postgresql", "postgres")):
        # imported here so that memory-only users never import SQLAlchemy's async machinery
        from seedbed.store.sql import SqlStore

        return SqlStore(url, clock=clock)
    raise ValueError(
        f"unsupported store URL scheme {scheme!r}: use memory://, sqlite:/// or postgresql://"
    )
