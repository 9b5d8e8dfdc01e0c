"""One destination's delivery: reads the log after its cursor and orchestrates the rest.

A :class:`Worker` reads pages after its read position, has them routed
(``routing.py``), cut into batches within the plugin's limits and delivered up
to ``max_in_flight`` at once, each after the rate limiter allows it
(``ratelimit.py``) and through the destination's transforms (``transform.py``).
What each outcome means, and how long to wait, is decided in ``settle.py``;
dead letters are written by ``deadletters.py``; redrive and replay run as their
own loop (``aside.py``) through the same :meth:`Worker.settle`.

The cursor advances only over ranges whose every event is done, so a crash or a
SIGTERM resends at most the batches in flight (delivery is at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import structlog

from eventd.config import DestinationConfig
from eventd.delivery import routing, settle
from eventd.delivery.deadletters import bury
from eventd.delivery.ratelimit import RateLimiter
from eventd.delivery.transform import Transform, TransformError, transform
from eventd.destination import Destination, Outcome, Retry
from eventd.event import Event
from eventd.metrics import Metrics
from eventd.store import StorageUnavailable, Store, now_ms

log = structlog.get_logger("eventd.delivery")

PAGE_EVENTS = 1000


@dataclass
class _Range:
    """Log seqs (lo, hi] handed to one batch; done when every event in it is settled."""

    hi: int
    first_received_at: int | None
    done: bool = False


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
    ) -> None:
        from eventd.delivery.aside import Aside  # its own loop, through this worker

        self.config = config
        self.name = config.name
        self.transforms = transforms
        # userIds not to deliver: their events still in the log stay there (suppressions.py)
        self.suppressed = suppressed
        self.destination = destination
        self.store = store
        self.metrics = metrics
        destination.on_adjusted = metrics.adjusted_counter(config.name)
        self.route = routing.Route(config.name, destination.integration_name, config)
        self.limiter = RateLimiter(config.rate_limit)
        self.max_events = max(1, min(config.batch_size, destination.max_batch_events))
        self.max_bytes = destination.max_batch_bytes
        self.cursor = 0
        self.read_pos = 0
        self.delivered = 0
        self.skipped = 0
        self.retrying = 0
        self.last_error: str | None = None
        self._ranges: deque[_Range] = deque()
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = store.subscribe()
        self.stopping = asyncio.Event()
        self._cursor_dirty = False
        self._cursor_saver: asyncio.Task[None] | None = None
        self._log_idle = False
        self.aside = Aside(self)
        self.idle = asyncio.Event()  # set while caught up with nothing in flight

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        saved = await self.store.cursor(self.name)
        if saved is not None:
            self.cursor = saved
        else:
            # A new destination starts at the end of the log: it gets new events;
            # `eventd replay` sends it older ones.
            self.cursor = self.store.last_seq
            await self.store.save_cursor(self.name, self.cursor)
        self.read_pos = self.cursor

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
        await asyncio.gather(self._run_log(), self.aside.run())

    async def _run_log(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()
            if await self._read_page():
                continue
            self._log_idle = not self._ranges
            self.update_idle()
            await self.wait(self._wake)
            self._log_idle = False

    async def wait(self, wake: asyncio.Event) -> None:
        """Until ``wake`` is set or the worker stops."""
        stop = asyncio.create_task(self.stopping.wait())
        woken = asyncio.create_task(wake.wait())
        await asyncio.wait({stop, woken}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        woken.cancel()

    async def stop(self, deadline: float) -> None:
        """Stop reading; let in-flight deliveries finish until ``deadline``; save the cursor."""
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
        if self._cursor_saver is not None:
            await asyncio.gather(self._cursor_saver, return_exceptions=True)
        await self._save_cursor_now()
        await self.destination.close()

    # -- the log ----------------------------------------------------------------

    async def _read_page(self) -> bool:
        if self.read_pos >= self.store.last_seq:
            return False
        # A page holds at least one full batch of the largest size the plugin takes.
        events = await self.store.read(self.read_pos, max(PAGE_EVENTS, self.max_events))
        if not events:
            return False
        self.idle.clear()
        end = events[-1].seq
        for batch in routing.batches(self.routed(events), self.max_events, self.max_bytes):
            await self.slots.acquire()
            if self.stopping.is_set():
                self.slots.release()
                return False
            rng = _Range(hi=batch[-1].seq, first_received_at=batch[0].received_at)
            self._ranges.append(rng)
            self._spawn(self._deliver_range(batch, rng))
        # Filtered events past the last batch are passed as soon as the batches before are.
        self._ranges.append(_Range(hi=end, first_received_at=None, done=True))
        self.read_pos = end
        self._advance()
        return True

    def routed(self, events: Sequence[Event]) -> list[Event]:
        """The events for this destination; those its filters keep out are counted as
        skipped (with the filter as the reason), so `eventd status` shows them."""
        kept, filtered = routing.route(self.route, events)
        for _, reason in filtered:
            self.metrics.skipped.labels(self.name, reason).inc()
        self.skipped += len(filtered)
        return kept

    async def _deliver_range(self, batch: list[Event], rng: _Range) -> None:
        try:
            settled = await self.settle(batch, lambda e: e.received_at)
            if not settled.finished:
                return
            await self.bury(settled)
            rng.done = True
            self._advance()
        finally:
            self.slots.release()

    def _advance(self) -> None:
        moved = False
        while self._ranges and self._ranges[0].done:
            self.cursor = self._ranges.popleft().hi
            moved = True
        if moved:
            self._cursor_dirty = True
            if self._cursor_saver is None or self._cursor_saver.done():
                self._cursor_saver = asyncio.create_task(self._save_cursor_loop())
        if not self._ranges:
            self._wake.set()  # let the loop look again, and say it is idle if it is

    async def _save_cursor_loop(self) -> None:
        # At most one cursor write in flight per worker; group commit batches them.
        while self._cursor_dirty:
            await self._save_cursor_now()

    async def _save_cursor_now(self) -> None:
        self._cursor_dirty = False
        try:
            await self.store.save_cursor(self.name, self.cursor)
        except StorageUnavailable as exc:
            # The cursor stays behind: at worst a restart resends what it covered.
            log.warning("cursor not saved", destination=self.name, error=str(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- delivery ---------------------------------------------------------------

    def _skip(self, settled: Settled, event: Event, reason: str) -> None:
        """``event`` is done with, not delivered: counted as skipped, by reason."""
        self.metrics.skipped.labels(self.name, reason).inc()
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

    async def settle(self, batch: list[Event], born: Callable[[Event], int]) -> Settled:
        """Deliver until every event is ok, skipped or dead; ``born`` starts its retry clock."""
        settled = Settled()
        pending = self._not_suppressed(batch, settled) if self.suppressed else batch
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
            if (wait and not await self.pause(wait)) or self.stopping.is_set():
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
        if self.transforms:
            # Dead letters keep the stored event: a redrive transforms it again.
            stored = {e.seq: e for e in batch}
            settled.ok = [stored[e.seq] for e in settled.ok]
            settled.dead = [(stored[e.seq], why) for e, why in settled.dead]
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
