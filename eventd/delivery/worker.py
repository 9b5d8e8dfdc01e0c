"""One destination's delivery: reads the log after its cursor and orchestrates the rest.

A :class:`Worker` reads pages after its read position, has them routed
(``routing.py``), cut into batches within the plugin's limits and delivered up
to ``max_in_flight`` at once (``share.py``: this node's part on a cluster), each
after the rate limiter allows it (``ratelimit.py``) and through the destination's
transforms (``transform.py``).
What each outcome means, and how long to wait, is decided in ``settle.py``;
dead letters are written by ``deadletters.py``; redrive and replay run as their
own loop (``aside.py``) through the same :meth:`Worker.settle`.

The log comes through the store's feed for this destination (``Store.feed``):
the worker cuts what it fetched into one span per batch and settles each span
once every event in it is done, so a crash or a SIGTERM resends at most the
batches in flight (delivery is at least once). On SQLite the feed is the saved
cursor; on a cluster, the destination's durable consumer shared by the nodes.

An ordered destination (``ordered = true``) keeps each user's events in the order
they were acknowledged: one batch in flight at a time, the next started only once
this one is delivered, skipped or dead-lettered, so a failing batch holds back the
later ones (its retries stay here, with eventd's backoff). On SQLite that is one
batch at a time for the destination. On a cluster (a :class:`Partitioned` store) it
is one fetcher per partition, on whichever node holds that partition's lease, each
with one batch in flight; the partitions held on a node share its part of
``max_in_flight`` and ``rate_limit`` (``share.py``) like any batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from eventd.config import DestinationConfig
from eventd.delivery import routing, settle
from eventd.delivery.deadletters import bury
from eventd.delivery.outcomes import RecentOutcomes
from eventd.delivery.ratelimit import RateLimiter
from eventd.delivery.share import Slots
from eventd.delivery.transform import Transform, TransformError, transform
from eventd.destination import Destination, Outcome, Retry
from eventd.event import Event
from eventd.metrics import Metrics
from eventd.store import Store, now_ms
from eventd.store.base import Feed, Partitioned, Span

log = structlog.get_logger("eventd.delivery")

PAGE_EVENTS = 1000
T = TypeVar("T")
# A batch as a destination should get it (identity/stitch.py: resolved userIds, profile
# traits); None when it cannot say yet (the identity graph stopped first).
Stitch = Callable[[DestinationConfig, list[Event]], Awaitable[list[Event] | None]]


@dataclass
class Settled:
    """How a batch ended: what got through and what went to dead letters (with why)."""

    ok: list[Event] = field(default_factory=list)  # delivered or skipped: done with
    dead: list[tuple[Event, str]] = field(default_factory=list)
    skipped: int = 0  # of ok: events the destination does not take
    attempts: int = 0
    finished: bool = True  # false when shutdown interrupted it


class Worker:
    """Delivers the log to one destination."""

    def __init__(
        self,
        config: DestinationConfig,
        destination: Destination,
        store: Store,
        metrics: Metrics,
        transforms: Sequence[tuple[str, Transform]] = (),
        suppressed: AbstractSet[str] = frozenset(),
        outcomes: RecentOutcomes | None = None,
        stitch: Stitch | None = None,
    ) -> None:
        from eventd.delivery.aside import Aside  # its own loop, through this worker

        self.config = config
        self.name = config.name
        # what this worker did with recent events (the live debugger); the dispatcher's
        self.outcomes = RecentOutcomes() if outcomes is None else outcomes
        self.stitch = stitch
        self.transforms = transforms
        # userIds not to deliver: their events still in the log stay there (suppressions.py)
        self.suppressed = suppressed
        self.destination = destination
        self.store = store
        self.metrics = metrics
        destination.on_adjusted = metrics.adjusted_counter(config.name)
        self.route = routing.Route(config.name, destination.integration_name, config)

        # This node's part of the destination's limits (all of them on one machine, and
        # for a node-local destination: each node delivers every event to its own data).
        def share() -> tuple[int, int]:
            return (0, 1) if destination.node_local else store.limit_share

        self.limiter = RateLimiter(config.rate_limit, share=share)
        self.max_events = max(1, min(config.batch_size, destination.max_batch_events))
        self.max_bytes = destination.max_batch_bytes
        self.feed = store.feed(config.name)
        # One fetcher per partition on the nodes holding their leases (see the module
        # docstring); self.feed then only answers lag and drain for the destination.
        # A node-local destination has one consumer per node and no partitions: its
        # one fetcher per node keeps order as on one machine, a batch at a time.
        self.partitioned = (
            config.ordered and not destination.node_local and isinstance(store, Partitioned)
        )
        self._busy: set[int] = set()  # partitions with events fetched and not settled
        self.delivered = 0
        self.skipped = 0
        self.retrying = 0
        self.last_error: str | None = None
        self.slots = Slots(config.max_in_flight, share)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = self.feed.wakeup
        self.stopping = asyncio.Event()
        self._log_idle = False
        self.aside = Aside(self)
        self.idle = asyncio.Event()  # set while caught up with nothing in flight

    # -- life cycle -------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The highest seq below which this worker has settled everything (the feed's)."""
        return self.feed.position

    async def start(self) -> None:
        if not self.partitioned:
            await self.feed.open()

    def wake(self) -> None:
        """Look for work now (redrive/replay asked, drain)."""
        self._log_idle = False
        self.idle.clear()
        self._wake.set()
        self.aside.wake()

    def update_idle(self) -> None:
        """Idle only when the log loop and the redrive/replay loop both are."""
        if self._log_idle and self.aside.is_idle:
            self.idle.set()
        else:
            self.idle.clear()

    async def run(self) -> None:
        """The log loop and the redrive/replay loop, until :meth:`stop`."""
        log_loop = self._run_partitions() if self.partitioned else self._run_log()
        await asyncio.gather(log_loop, self.aside.run())

    async def _run_log(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()
            if await self._read_page(self.feed):
                continue
            self._log_idle = not self.feed.unsettled
            self.update_idle()
            await self.wait(self._wake)
            self._log_idle = False

    async def _run_partitions(self) -> None:
        """Fetchers for the partitions this node holds (:meth:`_partition`); here,
        only the idle flag, read again each second (the fetchers long-poll)."""
        store = self.store
        assert isinstance(store, Partitioned)
        store.hold_partitions(self.name, self._partition)
        while not self.stopping.is_set():
            self._wake.clear()
            self._log_idle = not self._busy
            self.update_idle()
            await self.wait(self._wake, within=1.0)

    async def _partition(self, p: int, holds: Callable[[], bool]) -> None:
        """Partition p's one fetcher, while this node holds its lease (``holds``)."""
        feed = self.store.feed(self.name, p)
        try:
            await feed.open()
        except Exception as exc:  # a stalled cluster: the next lease round starts it again
            log.info("ordered partition not opened", destination=self.name, error=repr(exc))
            return
        log.info("ordered partition taken", destination=self.name, partition=p)
        try:
            while not self.stopping.is_set() and holds():
                if not await self._read_page(feed, holds, p) and not feed.unsettled:
                    self._busy.discard(p)  # fetched nothing: the long poll was the wait
        finally:
            self._busy.discard(p)
            await feed.close()  # what is not settled goes back to the next holder
            log.info("ordered partition let go", destination=self.name, partition=p)

    async def wait(self, wake: asyncio.Event, within: float | None = None) -> None:
        """Until ``wake`` is set or the worker stops (or ``within`` seconds passed)."""
        stop = asyncio.create_task(self.stopping.wait())
        woken = asyncio.create_task(wake.wait())
        await asyncio.wait({stop, woken}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        woken.cancel()

    async def stop(self, deadline: float) -> None:
        """Stop reading; let in-flight deliveries finish until ``deadline``; close the feed
        (the cursor saved; on a cluster, what is not settled goes back to the others)."""
        self.stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(
                set(self._tasks), timeout=max(0.0, deadline - time.monotonic())
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                log.warning(
                    "deliveries cut off at shutdown", destination=self.name, batches=len(pending)
                )
        if isinstance(self.store, Partitioned) and self.partitioned:
            await self.store.release_partitions(self.name)
        await self.feed.close()
        await self.destination.close()

    # -- the log ----------------------------------------------------------------

    async def _read_page(
        self, feed: Feed, holds: Callable[[], bool] = lambda: True, partition: int | None = None
    ) -> bool:
        """Fetch a page from ``feed`` (of ``partition``, on a cluster's ordered
        destination) and start its batches; False when it fetched none or stopped
        early. An ordered destination's batches go one at a time."""
        # A page holds at least one full batch of the largest size the plugin takes.
        events = await feed.fetch(max(PAGE_EVENTS, self.max_events))
        if not events:
            return False
        self.idle.clear()
        if partition is not None:
            self._busy.add(partition)  # not idle until a fetch finds nothing
        for batch in routing.batches(self.routed(events), self.max_events, self.max_bytes):
            await self.slots.acquire()
            if self.stopping.is_set() or not holds():
                self.slots.release()
                return False
            task = self._spawn(self._deliver_span(feed, batch, feed.cut(batch[-1].seq), holds))
            # Ordered: no later batch starts before this one ended, whatever it took.
            if self.config.ordered and not await self._ended(task):
                return False
        # Filtered events past the last batch are passed as soon as the batches before are.
        await feed.settle(feed.cut(events[-1].seq))
        return True

    def routed(self, events: Sequence[Event]) -> list[Event]:
        """The events for this destination; those its ``integrations`` or filters keep
        out are counted as skipped (with the reason), so `eventd status` shows them."""
        kept, filtered = routing.route(self.route, events)
        for event, reason in filtered:
            self.metrics.skipped.labels(self.name, reason).inc()
            self.outcomes.record(event.seq, self.name, "skipped", reason)
        self.skipped += len(filtered)
        return kept

    async def _deliver_span(
        self, feed: Feed, batch: list[Event], span: Span, holds: Callable[[], bool]
    ) -> bool:
        """Deliver ``batch`` and settle its span; False when it was left unfinished."""
        try:
            settled = await self.settle(batch, lambda e: e.received_at, holds)
            if not settled.finished:
                return False
            await self.bury(settled)
            # one span per batch, not a write per event: delivery is the hot path
            self.outcomes.delivered(self.name, batch[0].seq, batch[-1].seq)
            await feed.settle(span)
            return True
        finally:
            self.slots.release()

    async def _ended(self, task: asyncio.Task[bool]) -> bool:
        """Whether an ordered batch ended settled. One that raised (a bug, logged)
        is left unsettled, as an unordered one is: the page stops there, and its
        events come again at the next start (on a cluster, to the next holder),
        so the order across that bug is not kept."""
        try:
            return await task
        except Exception:
            log.exception("ordered batch failed", destination=self.name)
            return False

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- delivery ---------------------------------------------------------------

    def _skip(self, settled: Settled, event: Event, reason: str) -> None:
        """``event`` is done with, not delivered: counted as skipped, by reason."""
        self.metrics.skipped.labels(self.name, reason).inc()
        self.outcomes.record(event.seq, self.name, "skipped", reason)
        settled.ok.append(event)
        settled.skipped += 1

    def _not_suppressed(self, events: list[Event], settled: Settled) -> list[Event]:
        """``events`` without a suppressed user's: those are done with, counted as skipped."""
        kept: list[Event] = []
        for event in events:
            if event.user_id in self.suppressed:
                self._skip(settled, event, "suppressed user")
            else:
                kept.append(event)
        return kept

    async def settle(
        self,
        batch: list[Event],
        born: Callable[[Event], int],
        holds: Callable[[], bool] = lambda: True,
    ) -> Settled:
        """Deliver until every event is ok, skipped or dead; ``born`` starts its retry
        clock. Left unfinished at shutdown, or once ``holds()`` is false (an ordered
        partition's lease may have lapsed: another node may start delivering it)."""
        settled = Settled()
        if self.stitch is not None:
            stitched = await self.stitch(self.config, batch)
            if stitched is None:  # left for the next start, with the cursor before it
                settled.finished = False
                return settled
        else:
            stitched = batch
        pending = self._not_suppressed(stitched, settled) if self.suppressed else stitched
        if self.transforms:
            pending = await self._transform(pending, settled)
        c = self.config
        while pending:
            if self.suppressed and settled.attempts:
                # A user suppressed while their events are retried gets none delivered.
                pending = self._not_suppressed(pending, settled)
                if not pending:
                    break
            wait = self.limiter.reserve(len(pending))
            if (wait and not await self.pause(wait)) or self.stopping.is_set() or not holds():
                settled.finished = False
                return settled
            settled.attempts += 1
            outcomes = await self._attempt(pending)
            v = settle.judge(
                pending, outcomes, now=now_ms(), born=born, max_age_ms=c.retry_max_age * 1000
            )
            settled.ok += v.ok
            for event, reason in v.skipped:
                self._skip(settled, event, reason)
            settled.dead += v.dead
            if v.last_error is not None:
                self.last_error = v.last_error
            pending = v.retry
            if pending:
                self.metrics.retried.labels(self.name).inc(len(pending))
                self.retrying += len(pending)
                try:
                    resumed = await self.pause(
                        settle.backoff(
                            settled.attempts, v.after, c.retry_backoff, c.retry_backoff_max
                        )
                    )
                finally:
                    self.retrying -= len(pending)
                if not resumed:
                    settled.finished = False
                    return settled
        if self.transforms or self.stitch is not None:
            # Dead letters keep the stored event: a redrive transforms (stitches) it again.
            stored = {e.seq: e for e in batch}
            settled.ok = [stored[e.seq] for e in settled.ok]
            settled.dead = [(stored[e.seq], why) for e, why in settled.dead]
        for event, why in settled.dead:
            self.outcomes.record(event.seq, self.name, "dead_lettered", why)
        delivered = len(settled.ok) - settled.skipped
        self.delivered += delivered
        self.skipped += settled.skipped
        self.metrics.delivered.labels(self.name).inc(delivered)
        return settled

    async def _transform(self, batch: list[Event], settled: Settled) -> list[Event]:
        """The batch through the destination's transforms; what they drop is skipped,
        what they fail on is dead-lettered with the transform's error."""
        out: list[Event] = []
        for event in batch:
            try:
                changed = await transform(event, self.transforms)
            except TransformError as exc:
                settled.dead.append((event, str(exc)))
                continue
            if changed is None:
                self._skip(settled, event, "dropped by a transform")
            else:
                out.append(changed)
        return out

    async def _attempt(self, events: list[Event]) -> Sequence[Outcome]:
        started = time.perf_counter()
        try:
            result = await self.destination.deliver(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plugin bug must not kill the worker: retry, loudly
            log.exception("deliver raised", destination=self.name)
            result = Retry(f"deliver raised {type(exc).__name__}: {exc}")
        outcomes = settle.outcomes_of(result, len(events))
        self.metrics.delivery_seconds.labels(self.name, settle.outcome_label(outcomes)).observe(
            time.perf_counter() - started
        )
        return outcomes

    async def pause(self, seconds: float) -> bool:
        """Sleep unless stopping; False when shutdown cut it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        return not self.stopping.is_set()

    async def bury(self, settled: Settled) -> None:
        """Write a settled batch's dead letters (retrying while the store refuses)."""
        c = self.config
        await bury(
            self.store,
            self.metrics,
            self.name,
            settled.dead,
            settled.attempts,
            c.retry_backoff,
            c.retry_backoff_max,
        )
