"""Redrive and replay: events taken out of the log's order, delivered by their own loop.

Redrive puts dead letters marked by ``eventd dead-letters redrive`` back in front
of their destination; replay resends a stored range (``eventd replay``), routed
and filtered like the log. Both are requests kept in the store, so they survive
a restart; both go through the worker's :meth:`~eventd.delivery.worker.Worker.settle`
(transforms, rate limit, retry policy) and share its ``max_in_flight`` slots.
Their retry clock starts when this loop takes them, not when they first arrived.
Idle, the loop looks again every :data:`RELOOK` seconds: on a cluster a request
can be asked on another node, or left half done by a node that died.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from eventd.delivery import routing
from eventd.delivery.deadletters import until_stored
from eventd.event import Event
from eventd.store import now_ms

if TYPE_CHECKING:
    from eventd.delivery.worker import Settled, Worker

log = structlog.get_logger("eventd.delivery")

RELOOK = 10.0  # seconds between looks for requests while idle


class Aside:
    """The redrive/replay loop of one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._wake = asyncio.Event()
        self._wake.set()  # look once at start: requests may be waiting from before
        self.is_idle = False

    def wake(self) -> None:
        self.is_idle = False
        self._wake.set()

    async def run(self) -> None:
        w = self.worker
        while not w.stopping.is_set():
            self._wake.clear()
            try:
                worked = await self._redrive_some()
                worked = await self._replay_some() or worked
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store that cannot answer now: the next look
                log.warning("redrive/replay look failed", destination=w.name, error=repr(exc))
                worked = False
            if worked:
                if self.is_idle:  # found on a look of its own, not woken
                    self.is_idle = False
                    w.update_idle()
                continue
            self.is_idle = True
            w.update_idle()
            await w.wait(self._wake, RELOOK)

    async def _settle_aside(self, events: list[Event]) -> Settled | None:
        """Deliver events in batches within the plugin's limits, one after another;
        None when shutdown cut it short."""
        from eventd.delivery.worker import Settled

        w = self.worker
        started = now_ms()  # their retry clock starts now, not when they first arrived
        total = Settled()
        for batch in routing.batches(events, w.max_events, w.max_bytes):
            await w.slots.acquire()
            try:
                settled = await w.settle(batch, lambda e: started)
            finally:
                w.slots.release()
            if not settled.finished:
                return None
            total.ok += settled.ok
            total.dead += settled.dead
            total.skipped += settled.skipped
            total.attempts = max(total.attempts, settled.attempts)
        w.outcomes.delivered_aside(w.name, [e.seq for e in total.ok], started)
        return total

    async def _write(self, write: Callable[[], Awaitable[object]]) -> None:
        c = self.worker.config
        await until_stored(write, self.worker.name, c.retry_backoff, c.retry_backoff_max)

    async def _redrive_some(self) -> bool:
        """Put dead letters marked for redrive back in front of the destination."""
        w = self.worker
        letters = await w.store.redrive_batch(w.name, w.max_events)
        if not letters:
            return False
        ids = {d.seq: d.id for d in letters}
        batch = []
        for d in letters:
            event = Event(d.seq, d.source, d.received_at, body=d.body)
            if w.suppressed:  # a dead letter keeps no user_id column: rare, so parsed
                user_id = event.message.get("userId")
                event.user_id = user_id if isinstance(user_id, str) else None
            batch.append(event)
        settled = await self._settle_aside(batch)
        if settled is None:
            return False
        delivered = [ids[e.seq] for e in settled.ok]
        failed = [(ids[e.seq], settled.attempts, why) for e, why in settled.dead]
        await self._write(lambda: w.store.settle_redrive(delivered, failed))
        if settled.dead:
            w.metrics.dead_lettered.labels(w.name).inc(len(settled.dead))
        return True

    async def _replay_some(self) -> bool:
        """Resend one page of a stored range (``eventd replay``); others are untouched."""
        w = self.worker
        replay = await w.store.next_replay(w.name)
        if replay is None:
            return False
        events = await w.store.read_range(replay.next_seq, replay.until_seq, w.max_events)
        if not events:
            await self._write(lambda: w.store.finish_replay(replay.id))
            log.info("replay finished", destination=w.name)
            return True
        batch = w.routed(events)
        if batch:
            settled = await self._settle_aside(batch)
            if settled is None:
                return False
            await w.bury(settled)
        next_seq = events[-1].seq + 1
        await self._write(lambda: w.store.advance_replay(replay.id, next_seq))
        return True
