"""The dispatcher: delivers the outbox log to every destination, each at its own pace.

One :class:`Worker` per destination, each with its own cursor into the log, so a
destination that is down or slow holds back only itself. A worker reads pages
after its read position, routes them (``sources``, the event's ``integrations``),
filters them (``types``, ``events``, ``exclude_events``: counted as skipped),
cuts them into batches within the plugin's limits and delivers up to
``max_in_flight`` batches at once, each after the rate limiter allows it.

Per event, an outcome decides what happens:
    Ok / Skip .... done
    Retry ........ the batch waits (exponential backoff with jitter, or the API's
                   Retry-After) and resends what is left; past ``retry_max_age``
                   since the event arrived, it is dead-lettered instead
    Permanent .... dead-lettered at once, with the reason

The cursor advances only over ranges whose every event is done, so a crash or a
SIGTERM resends at most the batches in flight (delivery is at least once).
Redrive (dead letters put back) and replay (a stored range resent) run beside
the log, through the same delivery path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiosqlite
import structlog

from eventd.config import Config, DestinationConfig
from eventd.destination import Destination, Event, Ok, Outcome, Permanent, Retry, Skip
from eventd.metrics import Metrics
from eventd.outbox import Outbox, StorageUnavailable, fetch, now_ms
from eventd.ratelimit import RateLimiter
from eventd.transform import Transform, TransformError, transform

log = structlog.get_logger("eventd.dispatcher")

PAGE_EVENTS = 1000
# A batch as a destination should get it (identity/stitch.py: resolved userIds, profile
# traits); None when it cannot say yet (the identity graph stopped first).
Stitch = Callable[[DestinationConfig, list[Event]], Awaitable[list[Event] | None]]
MAX_ERROR_CHARS = 1000
SAVE_CURSOR = (
    "INSERT INTO cursors (destination, seq, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (destination) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"
)
INSERT_DEAD = (
    "INSERT INTO dead_letters (destination, seq, source, message_id, received_at, body, attempts,"
    " error, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


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
        outbox: Outbox,
        metrics: Metrics,
        transforms: Sequence[tuple[str, Transform]] = (),
        suppressed: AbstractSet[str] = frozenset(),
        stitch: Stitch | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.stitch = stitch
        self.transforms = transforms
        # userIds not to deliver: their events still in the log stay there (suppressions.py)
        self.suppressed = suppressed
        self.destination = destination
        self.outbox = outbox
        self.metrics = metrics
        destination.on_adjusted = metrics.adjusted_counter(config.name)
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
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = outbox.subscribe()
        self._stopping = asyncio.Event()
        self._cursor_dirty = False
        self._cursor_saver: asyncio.Task[None] | None = None
        self._reader: aiosqlite.Connection | None = None
        self.idle = asyncio.Event()  # set while caught up with nothing in flight

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        self._reader = await self.outbox.reader()
        rows = await fetch(
            self._reader, "SELECT seq FROM cursors WHERE destination = ?", (self.name,)
        )
        if rows:
            self.cursor = rows[0][0]
        else:
            # A new destination starts at the end of the log: it gets new events;
            # `eventd replay` sends it older ones.
            self.cursor = self.outbox.last_seq
            await self.outbox.execute(SAVE_CURSOR, [(self.name, self.cursor, now_ms())])
        self.read_pos = self.cursor

    def wake(self) -> None:
        """Look for work now (admin redrive/replay, drain)."""
        self.idle.clear()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            worked = await self._redrive_some()
            worked = await self._replay_some() or worked
            worked = await self._read_page() or worked
            if worked:
                continue
            if not self._ranges:
                self.idle.set()
            stop = asyncio.create_task(self._stopping.wait())
            wake = asyncio.create_task(self._wake.wait())
            await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            wake.cancel()

    async def stop(self, deadline: float) -> None:
        """Stop reading; let in-flight deliveries finish until ``deadline``; save the cursor."""
        self._stopping.set()
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
        if self.read_pos >= self.outbox.last_seq:
            return False
        assert self._reader is not None
        rows = await fetch(
            self._reader,
            "SELECT seq, source, received_at, body, user_id FROM events WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            # A page holds at least one full batch of the largest size the plugin takes.
            (self.read_pos, max(PAGE_EVENTS, self.max_events)),
        )
        if not rows:
            return False
        self.idle.clear()
        events = self._route(self._stored(rows))
        end = rows[-1][0]
        for batch in self._batches(events):
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                return False
            rng = _Range(hi=batch[-1].seq, first_received_at=batch[0].received_at)
            self._ranges.append(rng)
            self._spawn(self._deliver_range(batch, rng))
        # Filtered events past the last batch are passed as soon as the batches before are.
        self._ranges.append(_Range(hi=end, first_received_at=None, done=True))
        self.read_pos = end
        self._advance()
        return True

    async def _deliver_range(self, batch: list[Event], rng: _Range) -> None:
        try:
            settled = await self._settle(batch, lambda e: e.received_at)
            if not settled.finished:
                return
            await self._bury(settled)
            rng.done = True
            self._advance()
        finally:
            self._slots.release()

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
            self._wake.set()  # let run() look again, and say it is idle if it is

    async def _save_cursor_loop(self) -> None:
        # At most one cursor write in flight per worker; group commit batches them.
        while self._cursor_dirty:
            await self._save_cursor_now()

    async def _save_cursor_now(self) -> None:
        self._cursor_dirty = False
        try:
            await self.outbox.execute(SAVE_CURSOR, [(self.name, self.cursor, now_ms())])
        except StorageUnavailable as exc:
            # The cursor stays behind: at worst a restart resends what it covered.
            log.warning("cursor not saved", destination=self.name, error=str(exc))

    # -- delivery ---------------------------------------------------------------

    def routes(self, event: Event) -> bool:
        """Does this event go to this destination (sources, then integrations)?"""
        if self.config.sources is not None and event.source not in self.config.sources:
            return False
        if b'"integrations"' not in event.body:  # most events: routed without parsing
            return True
        integrations = event.message.get("integrations")
        if not isinstance(integrations, dict) or not integrations:
            return True
        for key in (self.name, self.destination.integration_name):
            if key is not None and key in integrations:
                return bool(integrations[key])
        return bool(integrations.get("All", True))

    def _stored(self, rows: Iterable[Any]) -> list[Event]:
        """Events from (seq, source, received_at, body, user_id) rows."""
        return [Event(r[0], r[1], r[2], body=r[3], user_id=r[4]) for r in rows]

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

    @property
    def filtering(self) -> bool:
        c = self.config
        return c.types is not None or c.events is not None or bool(c.exclude_events)

    def filtered_out(self, event: Event) -> str | None:
        """Why the destination's filters (``types``, ``events``, ``exclude_events``) keep
        this event from it, or None when they let it through."""
        c = self.config
        msg = event.message
        if c.types is not None and msg.get("type") not in c.types:
            return "filtered: type"
        if msg.get("type") != "track":
            return None
        name = msg.get("event")
        if c.events is not None and name not in c.events:
            return "filtered: event not in events"
        if name in c.exclude_events:
            return "filtered: event in exclude_events"
        return None

    def _route(self, events: Iterable[Event]) -> list[Event]:
        """The events for this destination: routed, then through its filters."""
        routed = [e for e in events if self.routes(e)]
        if not self.filtering:
            return routed
        # Filtered events are counted as skipped (with the filter as the reason), so
        # `eventd status` and /metrics show where they went.
        kept: list[Event] = []
        for event in routed:
            reason = self.filtered_out(event)
            if reason is None:
                kept.append(event)
            else:
                self.metrics.skipped.labels(self.name, reason).inc()
                self.skipped += 1
        return kept

    def _batches(self, events: Iterable[Event]) -> Iterable[list[Event]]:
        batch: list[Event] = []
        size = 0
        for event in events:
            if batch and (len(batch) >= self.max_events or size + event.size > self.max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(event)
            size += event.size
        if batch:
            yield batch

    async def _settle(self, batch: list[Event], born: Callable[[Event], int]) -> Settled:
        """Deliver until every event is ok, skipped or dead; ``born`` starts its retry clock."""
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
        while pending:
            if self.suppressed and settled.attempts:
                # A user suppressed while their events are retried gets none delivered.
                pending = self._not_suppressed(pending, settled)
                if not pending:
                    break
            wait = self.limiter.reserve(len(pending))
            if (wait and not await self._pause(wait)) or self._stopping.is_set():
                settled.finished = False
                return settled
            settled.attempts += 1
            outcomes = await self._attempt(pending)
            retry: list[Event] = []
            after: float | None = None
            max_age_ms = self.config.retry_max_age * 1000
            for event, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Ok):
                    settled.ok.append(event)
                elif isinstance(outcome, Skip):
                    self._skip(settled, event, outcome.reason)
                elif isinstance(outcome, Permanent):
                    settled.dead.append((event, outcome.reason))
                elif now_ms() - born(event) >= max_age_ms:
                    settled.dead.append((event, f"retry_max_age passed; last: {outcome.reason}"))
                else:
                    retry.append(event)
                    self.last_error = outcome.reason
                    if outcome.after is not None:
                        after = max(after or 0.0, outcome.after)
            pending = retry
            if pending:
                self.metrics.retried.labels(self.name).inc(len(pending))
                self.retrying += len(pending)
                try:
                    resumed = await self._pause(self._backoff(settled.attempts, after))
                finally:
                    self.retrying -= len(pending)
                if not resumed:
                    settled.finished = False
                    return settled
        if self.transforms or self.stitch is not None:
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
        outcomes = [result] * len(events) if not isinstance(result, Sequence) else result
        if len(outcomes) != len(events):
            outcomes = [Retry(f"plugin returned {len(outcomes)} outcomes for {len(events)}")] * len(
                events
            )
        label = (
            type(outcomes[0]).__name__.lower() if len(set(map(type, outcomes))) == 1 else "mixed"
        )
        self.metrics.delivery_seconds.labels(self.name, label).observe(
            time.perf_counter() - started
        )
        return outcomes

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 3600.0)
        ceiling = min(self.config.retry_backoff_max, self.config.retry_backoff * 2 ** (attempt - 1))
        return float(ceiling * random.uniform(0.5, 1.0))  # jitter spreads a herd of retries

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; False when shutdown cut it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return not self._stopping.is_set()

    async def _bury(self, settled: Settled) -> None:
        """Write a settled batch's dead letters (retrying while the disk refuses)."""
        if not settled.dead:
            return
        rows = [
            (
                self.name,
                e.seq,
                e.source,
                e.message.get("messageId", ""),
                e.received_at,
                e.body,  # as stored, whatever a destination did to its message
                settled.attempts,
                reason[:MAX_ERROR_CHARS],
                now_ms(),
            )
            for e, reason in settled.dead
        ]
        await self._write_until_stored(INSERT_DEAD, rows)
        self.metrics.dead_lettered.labels(self.name).inc(len(rows))
        log.warning(
            "dead-lettered",
            destination=self.name,
            events=len(rows),
            reason=settled.dead[0][1][:200],
        )

    async def _write_until_stored(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        attempt = 0
        while True:
            try:
                await self.outbox.execute(sql, rows)
                return
            except StorageUnavailable as exc:
                attempt += 1
                log.warning("write failed; will retry", destination=self.name, error=str(exc))
                await asyncio.sleep(self._backoff(attempt, None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- redrive and replay -----------------------------------------------------

    async def _settle_aside(self, events: list[Event]) -> Settled | None:
        """Deliver events taken out of the log's order (redrive, replay) in batches within
        the plugin's limits, one after another; None when shutdown cut it short."""
        started = now_ms()  # their retry clock starts now, not when they first arrived
        total = Settled()
        for batch in self._batches(events):
            await self._slots.acquire()
            try:
                settled = await self._settle(batch, lambda e: started)
            finally:
                self._slots.release()
            if not settled.finished:
                return None
            total.ok += settled.ok
            total.dead += settled.dead
            total.skipped += settled.skipped
            total.attempts = max(total.attempts, settled.attempts)
        return total

    async def _redrive_some(self) -> bool:
        """Put dead letters marked for redrive back in front of the destination."""
        assert self._reader is not None
        rows = await fetch(
            self._reader,
            "SELECT id, seq, source, received_at, body FROM dead_letters "
            "WHERE destination = ? AND state = 'redrive' ORDER BY id LIMIT ?",
            (self.name, self.max_events),
        )
        if not rows:
            return False
        ids = {r[1]: r[0] for r in rows}
        batch = []
        for _, seq, source, received_at, body in rows:
            event = Event(seq, source, received_at, body=body)
            if self.suppressed:  # a dead letter keeps no user_id column: rare, so parsed
                user_id = event.message.get("userId")
                event.user_id = user_id if isinstance(user_id, str) else None
            batch.append(event)
        settled = await self._settle_aside(batch)
        if settled is None:
            return False
        await self._write_until_stored(
            "DELETE FROM dead_letters WHERE id = ?", [(ids[e.seq],) for e in settled.ok]
        )
        await self._write_until_stored(
            "UPDATE dead_letters SET state = 'dead', attempts = attempts + ?, error = ?,"
            " failed_at = ? WHERE id = ?",
            [
                (settled.attempts, why[:MAX_ERROR_CHARS], now_ms(), ids[e.seq])
                for e, why in settled.dead
            ],
        )
        if settled.dead:
            self.metrics.dead_lettered.labels(self.name).inc(len(settled.dead))
        return True

    async def _replay_some(self) -> bool:
        """Resend one page of a stored range (``eventd replay``); others are untouched."""
        assert self._reader is not None
        replays = await fetch(
            self._reader,
            "SELECT id, next_seq, until_seq FROM replays WHERE destination = ? ORDER BY id LIMIT 1",
            (self.name,),
        )
        if not replays:
            return False
        replay_id, next_seq, until_seq = replays[0]
        rows = await fetch(
            self._reader,
            "SELECT seq, source, received_at, body, user_id FROM events"
            " WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
            (next_seq, until_seq, self.max_events),
        )
        if not rows:
            await self._write_until_stored("DELETE FROM replays WHERE id = ?", [(replay_id,)])
            log.info("replay finished", destination=self.name)
            return True
        batch = self._route(self._stored(rows))
        if batch:
            settled = await self._settle_aside(batch)
            if settled is None:
                return False
            await self._bury(settled)
        await self._write_until_stored(
            "UPDATE replays SET next_seq = ? WHERE id = ?", [(rows[-1][0] + 1, replay_id)]
        )
        return True


class Dispatcher:
    """Starts a worker per enabled destination and stops them on shutdown."""

    def __init__(
        self,
        config: Config,
        destination_types: dict[str, type[Destination]],
        outbox: Outbox,
        metrics: Metrics,
        transforms: Mapping[str, Transform] | None = None,
        suppressed: AbstractSet[str] = frozenset(),
    ) -> None:
        self.config = config
        self.types = destination_types
        self.transforms = transforms or {}
        self.suppressed = suppressed
        self.outbox = outbox
        self.metrics = metrics
        self.stitch: Stitch | None = None  # set by the identity feature before start()
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
            stitch = self.stitch if cfg.resolve_identity or cfg.enrich_traits else None
            worker = Worker(
                cfg, destination, self.outbox, self.metrics, chain, self.suppressed, stitch
            )
            await worker.start()
            self.workers[name] = worker
        for worker in self.workers.values():
            self._runs.append(asyncio.create_task(worker.run(), name=f"worker-{worker.name}"))
        self.metrics.on_scrape(self._fill_gauges)
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

    async def drain(self) -> None:
        """Wait until every worker has passed every stored event (tests, benchmarks)."""
        while True:
            target = self.outbox.last_seq
            for w in self.workers.values():
                w.wake()
            await asyncio.gather(*(w.idle.wait() for w in self.workers.values()))
            if all(w.cursor >= target for w in self.workers.values()):
                return

    def _fill_gauges(self) -> None:
        now = now_ms()
        for name, w in self.workers.items():
            self.metrics.lag_events.labels(name).set(max(0, self.outbox.last_seq - w.cursor))
            head = next((r.first_received_at for r in w._ranges if r.first_received_at), None)
            self.metrics.lag_seconds.labels(name).set(max(0, now - head) / 1000 if head else 0)
