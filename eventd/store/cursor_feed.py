"""A destination's feed on a single-machine store: ``read`` after a saved cursor.

The :class:`~eventd.store.base.Feed` of the SQLite and memory stores. The worker
reads pages after its read position and cuts each into spans (one per batch,
plus the tail routing kept out); the cursor moves only over spans settled
without a gap, so a crash or a SIGTERM resends at most the spans in flight
(delivery is at least once). Cursor writes go one at a time: those asked for
while one is in flight are folded into the next (the store's group commit).
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog

from eventd.event import Event
from eventd.store.base import Lag, Span, StorageUnavailable, Store

log = structlog.get_logger("eventd.delivery")


def lag(last_seq: int, cursor: int, oldest_received_at: int | None, now: int) -> tuple[int, float]:
    """A consumer's lag: (events after its cursor, seconds since the oldest of them
    was received); (0, 0.0) when it has passed everything."""
    events = max(0, last_seq - cursor)
    seconds = round(max(0, now - oldest_received_at) / 1000, 3) if oldest_received_at else 0.0
    return events, seconds


class _Range(Span):
    """Log seqs (lo, hi] of one span, lo being the previous span's hi."""

    __slots__ = ("done", "hi")

    def __init__(self, hi: int) -> None:
        self.hi = hi
        self.done = False


class CursorFeed:
    """``store.read`` after the cursor saved under the destination's name. One fetcher
    per destination: ``partition`` must be None (ValueError otherwise)."""

    def __init__(self, store: Store, name: str, partition: int | None = None) -> None:
        if partition is not None:
            raise ValueError("a single-machine store has no partitions")
        self.store = store
        self.name = name
        self.cursor = 0
        self.read_pos = 0
        self._ranges: deque[_Range] = deque()
        self._wake = store.subscribe()
        self._dirty = False
        self._saver: asyncio.Task[None] | None = None

    @property
    def position(self) -> int:
        return self.cursor

    @property
    def unsettled(self) -> bool:
        return bool(self._ranges)

    @property
    def wakeup(self) -> asyncio.Event:
        return self._wake

    async def open(self) -> None:
        saved = await self.store.cursor(self.name)
        if saved is not None:
            self.cursor = saved
        else:
            # A new destination starts at the end of the log: it gets new events;
            # `eventd replay` sends it older ones.
            self.cursor = self.store.last_seq
            await self.store.save_cursor(self.name, self.cursor)
        self.read_pos = self.cursor

    async def fetch(self, limit: int) -> list[Event]:
        if self.read_pos >= self.store.last_seq:
            return []
        events = await self.store.read(self.read_pos, limit)
        if events:
            self.read_pos = events[-1].seq
        return events

    def cut(self, upto: int) -> Span:
        rng = _Range(upto)
        self._ranges.append(rng)
        return rng

    async def settle(self, span: Span) -> None:
        assert isinstance(span, _Range)
        span.done = True
        moved = False
        while self._ranges and self._ranges[0].done:
            self.cursor = self._ranges.popleft().hi
            moved = True
        if moved:
            self._dirty = True
            if self._saver is None or self._saver.done():
                self._saver = asyncio.create_task(self._save_loop())
        if not self._ranges:
            self._wake.set()  # let the worker look again, and say it is idle if it is

    async def lag(self, now: int) -> Lag:
        oldest = await self.store.received_at_after(self.cursor)
        return Lag(*lag(self.store.last_seq, self.cursor, oldest, now))

    async def passed(self, target: int) -> bool:
        return self.cursor >= target

    async def close(self) -> None:
        if self._saver is not None:
            await asyncio.gather(self._saver, return_exceptions=True)
        await self._save_now()

    async def _save_loop(self) -> None:
        # At most one cursor write in flight per feed; group commit batches them.
        while self._dirty:
            await self._save_now()

    async def _save_now(self) -> None:
        self._dirty = False
        try:
            await self.store.save_cursor(self.name, self.cursor)
        except StorageUnavailable as exc:
            # The cursor stays behind: at worst a restart resends what it covered.
            log.warning("cursor not saved", destination=self.name, error=str(exc))
