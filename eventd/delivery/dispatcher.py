"""The dispatcher: one :class:`~eventd.delivery.worker.Worker` per enabled destination,
each with its own cursor into the log, so a destination that is down or slow
holds back only itself.

It is also the delivery side's one public face for the rest of eventd: the admin
API reads :meth:`Dispatcher.status` (where lag is computed, once) and
:meth:`Dispatcher.outcomes_of` (the live debugger), asks for redrives and replays
through :meth:`Dispatcher.redrive` and :meth:`Dispatcher.replay`; a feature finds a
running destination through :meth:`Dispatcher.destination`, and the privacy feature
asks a destination to delete a person through :meth:`Dispatcher.delete_user`. None
of them reads worker fields.
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
from eventd.delivery import routing
from eventd.delivery.outcomes import Outcome as EventOutcome
from eventd.delivery.outcomes import RecentOutcomes
from eventd.delivery.transform import Transform
from eventd.delivery.worker import Stitch, Worker
from eventd.destination import DeletionOutcome, Destination, Erasure, Retry
from eventd.event import Event
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
    # lag_events is an estimate (a cluster's long backlog, read a part per reading)
    lag_estimated: bool
    delivered: int
    skipped: int
    retrying: int  # events waiting for their next attempt now
    dead: int  # dead letters (not being redriven)
    last_error: str | None
    rate_limit: float | None
    max_in_flight: int


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
        # Set by the identity feature before start(): given to the workers of
        # destinations with resolve_identity or enrich_traits.
        self.stitch: Stitch | None = None
        self.workers: dict[str, Worker] = {}
        self.outcomes = RecentOutcomes()  # what each worker did with recent events
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
            stitch = self.stitch if cfg.resolve_identity or cfg.enrich_traits else None
            worker = Worker(
                cfg,
                destination,
                self.store,
                self.metrics,
                chain,
                self.suppressed,
                self.outcomes,
                stitch,
            )
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

    def destination(self, name: str) -> Destination | None:
        """The running destination named ``name`` (None when none runs under it), for
        features that read a destination's own store (reports query a duckdb one)."""
        worker = self.workers.get(name)
        return worker.destination if worker is not None else None

    def destinations(self) -> dict[str, Destination]:
        """The running destinations' plugin instances by name (features that hand them
        more than events: identity's warehouse feeds call ``write_identities``)."""
        return {name: w.destination for name, w in self.workers.items()}

    def passed_seq(self) -> int:
        """The highest seq every running destination has passed (retention keeps the rest)."""
        cursors = [w.cursor for w in self.workers.values()]
        return min(cursors) if cursors else self.store.last_seq

    async def drain(self) -> None:
        """Wait until every worker has passed every stored event (tests, benchmarks);
        on a cluster, every event any node acknowledged (``Feed.passed``). A worker
        idle here may wait on another node's work: the round repeats after its
        fetch's long poll (1 s)."""
        while True:
            target = self.store.last_seq
            for w in self.workers.values():
                w.wake()
            await asyncio.gather(*(w.idle.wait() for w in self.workers.values()))
            if all([await w.feed.passed(target) for w in self.workers.values()]):
                return

    async def status(self) -> list[DestinationStatus]:
        """Every running destination's position and counts, by name; fills the lag gauges."""
        dead = await self.store.dead_letter_counts()
        now = now_ms()
        out = []
        for name, w in sorted(self.workers.items()):
            lag = await w.feed.lag(now)
            self.metrics.lag_events.labels(name).set(lag.events)
            self.metrics.lag_seconds.labels(name).set(lag.seconds)
            self.metrics.lag_estimated.labels(name).set(1 if lag.estimated else 0)
            out.append(
                DestinationStatus(
                    name=name,
                    type=w.config.type,
                    cursor=w.cursor,
                    lag_events=lag.events,
                    lag_seconds=lag.seconds,
                    lag_estimated=lag.estimated,
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

    def outcomes_of(self, event: Event | None) -> list[EventOutcome]:
        """What each running destination (by name) did with a stored ``event`` (None:
        not stored), as :meth:`RecentOutcomes.describe` tells it: routed there or not
        by the same :func:`routing.routes` the workers use, pending before its cursor."""
        seq = event.seq if event is not None else None
        return self.outcomes.describe(
            seq,
            [
                (name, w.cursor, event is not None and routing.routes(w.route, event))
                for name, w in sorted(self.workers.items())
            ],
        )

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

    async def delete_user(self, destination: str, erasure: Erasure) -> DeletionOutcome:
        """Ask ``destination``'s plugin once to delete the person ``erasure`` names, after
        its rate limit allows one request; a plugin that raises answers Retry (a plugin
        bug must not end the erasure). Raises UnknownDestination. The caller keeps the
        retry policy (``settle.backoff``, ``retry_max_age``) and the state."""
        worker = self._worker(destination)
        wait = worker.limiter.reserve(1)
        if wait:
            await asyncio.sleep(wait)
        try:
            return await worker.destination.delete_user(erasure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("delete_user raised", destination=destination)
            return Retry(f"delete_user raised {type(exc).__name__}: {exc}")
