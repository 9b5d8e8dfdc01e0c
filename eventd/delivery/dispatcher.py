"""The dispatcher: one :class:`~eventd.delivery.worker.Worker` per enabled destination,
each with its own cursor into the log, so a destination that is down or slow
holds back only itself.

It is also the delivery side's one public face for the rest of eventd: the admin
API reads :meth:`Dispatcher.status` (where lag is computed, once) and asks for
redrives and replays through :meth:`Dispatcher.redrive` and
:meth:`Dispatcher.replay`; it never reads worker fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import aiohttp
import structlog

from eventd.config import Config
from eventd.delivery.transform import Transform
from eventd.delivery.worker import Worker
from eventd.destination import Destination
from eventd.metrics import Metrics
from eventd.store import SeqRange, Store, now_ms

log = structlog.get_logger("eventd.dispatcher")


class UnknownDestination(Exception):
    """A request names a destination that is not running."""


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """One destination as ``eventd status`` and ``/admin/destinations`` show it."""

    name: str
    type: str
    cursor: int  # the highest seq it has passed
    lag_events: int  # stored events after its cursor
    lag_seconds: float  # age of the oldest event it has not passed
    delivered: int
    skipped: int
    retrying: int  # events waiting for their next attempt now
    dead: int  # dead letters (not being redriven)
    last_error: str | None
    rate_limit: float | None
    max_in_flight: int


def lag(last_seq: int, cursor: int, oldest_received_at: int | None, now: int) -> tuple[int, float]:
    """A consumer's lag: (events after its cursor, seconds since the oldest of them
    was received); (0, 0.0) when it has passed everything."""
    events = max(0, last_seq - cursor)
    seconds = round(max(0, now - oldest_received_at) / 1000, 3) if oldest_received_at else 0.0
    return events, seconds


class Dispatcher:
    """Starts a worker per enabled destination and stops them on shutdown."""

    def __init__(
        self,
        config: Config,
        destination_types: dict[str, type[Destination]],
        store: Store,
        metrics: Metrics,
        transforms: Mapping[str, Transform] | None = None,
        suppressed: AbstractSet[str] = frozenset(),
    ) -> None:
        self.config = config
        self.types = destination_types
        self.transforms = transforms or {}
        self.suppressed = suppressed
        self.store = store
        self.metrics = metrics
        self.workers: dict[str, Worker] = {}
        self.session: aiohttp.ClientSession | None = None
        self._runs: list[asyncio.Task[None]] = []
        self.running = False

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            headers={"User-Agent": "eventd"},
        )
        for name, cfg in self.config.destinations.items():
            if not cfg.enabled:
                continue
            destination = self.types[cfg.type](name, cfg.settings, self.session)
            chain = [(t, self.transforms[t]) for t in cfg.transforms]
            worker = Worker(cfg, destination, self.store, self.metrics, chain, self.suppressed)
            await worker.start()
            self.workers[name] = worker
        for worker in self.workers.values():
            self._runs.append(asyncio.create_task(worker.run(), name=f"worker-{worker.name}"))
        self.running = True
        log.info("dispatcher started", destinations=sorted(self.workers))

    async def stop(self, grace: float) -> None:
        """Stop every worker, giving in-flight deliveries ``grace`` seconds."""
        deadline = time.monotonic() + grace
        self.running = False
        await asyncio.gather(*(w.stop(deadline) for w in self.workers.values()))
        for run in self._runs:
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    @property
    def names(self) -> list[str]:
        """The running destinations, sorted."""
        return sorted(self.workers)

    def passed_seq(self) -> int:
        """The highest seq every running destination has passed (retention keeps the rest)."""
        cursors = [w.cursor for w in self.workers.values()]
        return min(cursors) if cursors else self.store.last_seq

    async def drain(self) -> None:
        """Wait until every worker has passed every stored event (tests, benchmarks)."""
        while True:
            target = self.store.last_seq
            for w in self.workers.values():
                w.wake()
            await asyncio.gather(*(w.idle.wait() for w in self.workers.values()))
            if all(w.cursor >= target for w in self.workers.values()):
                return

    async def status(self) -> list[DestinationStatus]:
        """Every running destination's position and counts, by name; fills the lag gauges."""
        dead = await self.store.dead_letter_counts()
        now = now_ms()
        out = []
        for name, w in sorted(self.workers.items()):
            lag_events, lag_seconds = lag(
                self.store.last_seq, w.cursor, await self.store.received_at_after(w.cursor), now
            )
            self.metrics.lag_events.labels(name).set(lag_events)
            self.metrics.lag_seconds.labels(name).set(lag_seconds)
            out.append(
                DestinationStatus(
                    name=name,
                    type=w.config.type,
                    cursor=w.cursor,
                    lag_events=lag_events,
                    lag_seconds=lag_seconds,
                    delivered=w.delivered,
                    skipped=w.skipped,
                    retrying=w.retrying,
                    dead=dead.get(name, 0),
                    last_error=w.last_error,
                    rate_limit=w.config.rate_limit,
                    max_in_flight=w.config.max_in_flight,
                )
            )
        return out

    def _worker(self, destination: str) -> Worker:
        worker = self.workers.get(destination)
        if worker is None:
            raise UnknownDestination(destination)
        return worker

    async def redrive(self, destination: str | None, ids: list[int]) -> int:
        """Send dead letters again (one destination's, or only ``ids``); how many."""
        if destination is not None:
            self._worker(destination)
        n = await self.store.request_redrive(destination, ids)
        for w in self.workers.values():
            w.wake()
        log.info("dead letters redriven", destination=destination, count=n)
        return n

    async def replay(self, destination: str, since: int, until: int) -> SeqRange | None:
        """Resend the events received in [since, until] (ms) to ``destination``; the
        range queued, or None when no stored event is in it."""
        worker = self._worker(destination)
        found = await self.store.seq_range(since, until)
        if found is None:
            return None
        await self.store.request_replay(destination, found.first, found.last)
        worker.wake()
        log.info(
            "replay queued", destination=destination, from_seq=found.first, until_seq=found.last
        )
        return found
