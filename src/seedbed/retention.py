"""The retention sweeper: deletes results and uploads past their age, keeps their records.

CONTRACT §7: results are kept 14 days and uploads 3 days by default (``result_retention_days``,
``upload_retention_days``). Every stored file has a record (``Store.record_file``, and
``Store.finish`` for results); the sweeper deletes the files whose records are older than their
kind's retention and marks the records deleted. Task records stay: recordInfo still answers,
and the result URLs answer 404. The clock is injectable so tests move time instead of waiting.

A result file is recorded by the finish of its task, so one stored by a worker that died before
that finish (a crash between the two, or in a task with several outputs between them) has no
record: nothing names it and no retention finds it. The same goes for an upload stored by a
process that died before recording it, and for any file whose delete failed after its record
was marked deleted. Once a day (``ORPHAN_INTERVAL``) the sweeper lists the stored results and
uploads and deletes the files no live record names that are older than ``ORPHAN_GRACE``
(younger ones may be a running task's, not finished yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from seedbed.links import RESULTS, UPLOADS
from seedbed.outbox import FileKind
from seedbed.storage.base import Storage
from seedbed.store.base import Store

__all__ = ["Sweeper"]

log = logging.getLogger(__name__)

#: records handled per store round trip
BATCH = 500

#: how often stored results are listed for files that no record names (seconds)
ORPHAN_INTERVAL = 86400.0
#: a file no record names is deleted once it is this old (seconds): a task's files are
#: recorded when it finishes, and no task runs for a day
ORPHAN_GRACE = 86400.0
#: the spaces whose files have records
_SPACES = (RESULTS.rstrip("/"), UPLOADS.rstrip("/"))


class Sweeper:
    """Deletes files past their kind's retention, periodically; their records stay."""

    def __init__(
        self,
        *,
        store: Store,
        storage: Storage,
        result_retention: float,
        upload_retention: float,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Retentions and ``interval`` in seconds; ``clock`` gives Unix seconds."""
        self.store = store
        self.storage = storage
        self.retention = {FileKind.RESULT: result_retention, FileKind.UPLOAD: upload_retention}
        self.interval = interval
        self._clock = clock
        self._stopping = asyncio.Event()
        #: when the stored results were last listed for orphans (clock seconds)
        self._orphans_swept: float | None = None

    def stop(self) -> None:
        """Finish ``run()`` (a sweep under way completes first)."""
        self._stopping.set()

    async def run(self) -> None:
        """Sweep at once, then every ``interval`` seconds until ``stop()``."""
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again in %s s", self.interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()

    async def sweep(self) -> int:
        """Delete every file past its retention now; return how many were deleted.

        One sweeper at a time across the deployment (``Store.exclusive``: an advisory lock on
        PostgreSQL): the others skip this round rather than list and delete the same files.
        """
        async with self.store.exclusive("retention") as mine:
            if not mine:
                log.debug("retention: another process is sweeping; skipped")
                return 0
            deleted = await self._sweep()
            now = self._clock()
            if self._orphans_swept is None or now - self._orphans_swept >= ORPHAN_INTERVAL:
                deleted += await self.sweep_orphans()
                self._orphans_swept = now
            return deleted

    async def sweep_orphans(self) -> int:
        """Delete the stored results and uploads that no live record names, older than
        ``ORPHAN_GRACE``; return how many were deleted."""
        cutoff = self._clock() - ORPHAN_GRACE
        deleted = 0
        for space in _SPACES:
            async for batch in self.storage.list_files(space):
                old = [key for key, written in batch if written < cutoff]
                if not old:
                    continue
                known = await self.store.known_files(old)
                for key in old:
                    if key not in known:
                        await self.storage.delete(key)
                        deleted += 1
        if deleted:
            log.info("retention: deleted %d file(s) that no record names", deleted)
        return deleted

    async def _sweep(self) -> int:
        now_ms = int(self._clock() * 1000)
        deleted = 0
        for kind, retention in self.retention.items():
            before = now_ms - int(retention * 1000)
            while True:
                expired = await self.store.expired_files(kind, before=before, limit=BATCH)
                if not expired:
                    break
                # Records first, then files: a file stored again under the same key since it
                # was listed (an upload overwritten by name) is not marked, so not deleted.
                marked = await self.store.mark_files_deleted(
                    [r.key for r in expired], before=before
                )
                for key in marked:
                    await self.storage.delete(key)  # already gone is fine
                deleted += len(marked)
                if len(expired) < BATCH:
                    break
        if deleted:
            log.info("retention: deleted %d file(s)", deleted)
        return deleted
