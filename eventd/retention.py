"""Retention: keeps the database from growing without bound.

Events every destination has passed are kept for ``storage.retention`` (for
replay) and then deleted; dead letters are kept for
``storage.dead_letter_retention``; dedup and replay bookkeeping go with them.
Deletes run in small batches, each its own short transaction through the
writer, so ingest is never blocked for long. The WAL is truncated after each
sweep so it does not keep its high-water size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from eventd.config import StorageConfig
from eventd.store import StorageUnavailable, Store, now_ms

log = structlog.get_logger("eventd.retention")

SWEEP_BATCH = 5000


class Retention:
    def __init__(
        self,
        config: StorageConfig,
        store: Store,
        passed_seq: Callable[[], Awaitable[int]],
        interval: float = 60.0,
        erase_pending: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # Erasures of suppressed users that could not finish yet (see suppressions.py).
        self.erase_pending = erase_pending
        # The highest seq every running destination and log-consuming service has passed.
        self.passed_seq = passed_seq
        self.interval = interval
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except StorageUnavailable as exc:
                log.warning("retention sweep failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)

    def stop(self) -> None:
        self._stop.set()

    async def sweep(self) -> dict[str, int]:
        """Delete what is past retention; returns counts (events, dead_letters)."""
        now = now_ms()
        # Never delete the newest event: without AUTOINCREMENT, SQLite would hand its
        # seq out again and cursors past it would skip the new event.
        limit_seq = min(await self.passed_seq(), self.store.last_seq - 1)
        events_before = now - int(self.config.retention * 1000)
        events = await self._delete_batches(
            lambda: self.store.delete_events(
                upto_seq=limit_seq, received_before=events_before, limit=SWEEP_BATCH
            )
        )
        dead_before = now - int(self.config.dead_letter_retention * 1000)
        dead = await self._delete_batches(
            lambda: self.store.delete_dead_letters(failed_before=dead_before, limit=SWEEP_BATCH)
        )
        erased = await self.erase_pending() if self.erase_pending is not None else 0
        await self.store.compact()
        if erased:
            log.info("pending erasures finished", users=erased)
        if events or dead:
            log.info("retention sweep", events_deleted=events, dead_letters_deleted=dead)
        return {"events": events, "dead_letters": dead}

    async def _delete_batches(self, delete: Callable[[], Awaitable[int]]) -> int:
        total = 0
        while not self._stop.is_set():
            n = await delete()
            total += n
            if n < SWEEP_BATCH:
                break
        return total
