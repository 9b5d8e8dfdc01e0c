"""The identity service: keeps the graph up with the log, off the ingest hot path.

A log consumer with its own cursor, kept in identity.db in the same transaction
as what each page changed (so a crash re-applies nothing twice) and copied to the
Store under ``service_cursor("identity")`` (at most once a second while pages follow
each other, and whenever the consumer goes idle), where retention sees it
(``app.passed_seq``: events the graph has not applied are kept; the copy may lag
identity.db's, never lead it). The identity writer (:mod:`eventd.identity.writer`,
a process of its own, so the graph's Python work never takes the GIL from ingest)
reads the pages after the cursor from the log itself (``Store.log_source``: the
outbox opened read-only; with the memory store, eventd reads them with
``Store.read`` and hands them over), applies them to the graph
(:mod:`eventd.identity.graph`) and writes identity.db; then
- releases deliveries waiting for it (:meth:`IdentityService.wait_past`, for
  stitched delivery),
- wakes the warehouse feeds (:mod:`eventd.identity.feed`), which send new and
  changed links to every destination that stores identities.

A page costs eventd's process the same whatever it holds, so after a short page (under
single events, a group commit's worth) the next waits up to ``STEP_LINGER`` seconds,
unless something waits on the graph (:meth:`IdentityService.wait_past`) or it stops.

It also answers profile lookups (the API) and erases a suppressed user's profile.

The graph never holds the front door: :meth:`IdentityService.start` returns at once
and identity.db is opened in the background. When it cannot be opened or written
(a full disk), the consumer retries with backoff (logged at warning; the
``eventd_identity_running`` gauge is 0 and ``eventd_identity_failures_total``
counts why), ingest and delivery of destinations that do not stitch carry on, and
once space is back it catches up from its own cursor: nothing is lost, it is a
consumer of the log. Until it has opened, profile reads raise
:class:`IdentityUnavailable` (the API answers 503) and stitched deliveries wait.

On the cluster the state is shared (a :class:`~eventd.store.base.SharedIdentityBackend`,
eventd/store/cluster_identity.py): every node opens the reader and follows the
graph's cursor as any node's writer moves it (stitched deliveries wait on that);
the writer of one node at a time (the lease's) applies the log, reading it after the
shared cursor with no local end (the read long-polls), and runs the warehouse feeds;
the others' writers get :class:`~eventd.store.base.NotLeader` and try again every
LEAD_RETRY seconds. No cursor is copied to the Store there (its retention does not
read one).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from eventd.config import IdentityConfig
from eventd.event import Event
from eventd.identity import writer
from eventd.identity.feed import LinkFeed, pause
from eventd.identity.graph import ANONYMOUS, REFUSAL_REASONS, USER, Profile, Rules
from eventd.identity.writer import PageResult, Writer
from eventd.metrics import Metrics
from eventd.store import NotLeader, StorageUnavailable, Store, service_cursor
from eventd.store.base import SharedIdentityBackend, SharedLog

log = structlog.get_logger("eventd.identity")

PAGE_EVENTS = 5000
# Seconds between copies of the cursor to the Store while pages follow each other (the
# copy is for retention, which may keep more: behind is safe). A copy per page was a
# write to the outbox per page, one more commit beside ingest's for every few events.
CURSOR_COPY_EVERY = 1.0
BACKOFF_FIRST = 0.5  # seconds before the first retry; doubled after each failure
BACKOFF_MAX = 30.0  # how long a freed disk may wait before the graph notices
# Seconds a node whose writer does not hold a shared graph's lease waits before trying
# again (the lease's renewal period: a dead holder's lease lapses within its TTL).
LEAD_RETRY = 3.0
UNBOUNDED = 2**63 - 1  # "as far as the log goes": a shared graph's page bound
# Seconds the graph waits after a page shorter than PAGE_EVENTS before reading the next,
# unless someone waits on it (wait_past: drain, erasure, a delivery reading identities).
# Under single-event load the log's wake comes with every group commit (~100 a second),
# and each page costs eventd's process ~0.2-0.4 ms of CPU whatever its size (the call to
# the writer process: pickling, its pipe, the pool's manager thread): ~5 % of
# /v1/track's CPU (issue 18). Pages at most this often cut that to a few; the graph
# is at most this much further behind.
STEP_LINGER = 0.05


class IdentityUnavailable(Exception):
    """The graph has not opened identity.db (yet): the message says why."""


def failure_reason(exc: BaseException) -> str:
    """A metric label for why identity.db could not be opened or written: ``disk_full``,
    ``io_error`` (sqlite3.OperationalError: disk I/O error, readonly, locked...),
    ``writer_died`` (the writer process was killed) or ``other``."""
    text = str(exc).lower()
    if "full" in text or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return "disk_full"
    if isinstance(exc, sqlite3.Error | OSError):
        return "io_error"
    if isinstance(exc, BrokenExecutor):
        return "writer_died"
    return "other"


FAILURE_REASONS = ("disk_full", "io_error", "writer_died", "other")


class IdentityService:
    name = "identity"

    def __init__(
        self,
        config: IdentityConfig,
        events: Store,
        path: Path,
        metrics: Metrics,
        *,
        synchronous: str = "normal",
        process: bool = True,
    ) -> None:
        self.rules = Rules.of(config.blocked_values, config.max_anonymous_ids)
        self.log = events  # the event log (opened by its owner before start())
        # The graph's state, behind the Store seam (SQLite: identity.db at ``path``); this
        # process reads it, the writer writes it.
        self.store = events.identity_store(path, synchronous)
        # Shared by nodes (the cluster's): this node reads it always, writes it only
        # while its writer holds the lease, and follows the cursor other nodes write.
        self.shared = isinstance(self.store, SharedIdentityBackend)
        self.leading = False  # shared: this node's writer holds the lease
        source = events.log_source()
        # Whether the writer reads pages from the log itself (off this process's loop).
        self.reads_log = source is not None
        self.writer = Writer(
            self.store,
            self.rules,
            process=process and not self.store.in_process,  # memory: a thread beside it
            source=source,
        )
        self.feeds: list[LinkFeed] = []  # running, each with its task in _feed_tasks
        # Which destinations store identities: asked at start, once their instances exist.
        self.find_feeds: Callable[[], list[LinkFeed]] = list
        self.cursor = 0  # the last log seq applied to the graph
        self._advanced = asyncio.Condition()
        self._waiters = 0  # callers in wait_past: no linger between pages while any wait
        self._hurry = asyncio.Event()  # set by wait_past and stop: a linger ends now
        self._last_page = 0  # events the last page applied
        self._stopping = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._feed_tasks: dict[LinkFeed, asyncio.Task[None]] = {}
        r = metrics.registry
        self.refused = Counter(
            "eventd_identity_links_refused",
            "Identity links refused by the merge protection, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)  # every reason shows, at 0 until it happens
        self.applied = Counter(
            "eventd_identity_events", "Events applied to the identity graph", registry=r
        )
        lag = Gauge(
            "eventd_identity_lag_events",
            "Events stored and not yet applied to the identity graph",
            registry=r,
        )
        metrics.on_scrape(lambda: lag.set(self.lag()))
        self.running = Gauge(
            "eventd_identity_running",
            "1 while the identity graph has identity.db open and its last page applied;"
            " 0 while it cannot (see eventd_identity_failures_total and the log)",
            registry=r,
        )
        self.failures = Counter(
            "eventd_identity_failures",
            "Times identity.db could not be opened or a page not written, by reason",
            ["reason"],
            registry=r,
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self._copied = -1  # the cursor last copied to the Store, and when (monotonic s)
        self._copied_at = float("-inf")
        self.opened = False  # identity.db open in the writer, the reader open here
        self.error: str | None = "starting"  # why the graph is not running (None: it is)
        self._wake = asyncio.Event()  # the log's, from start()

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the consumer in the background; returns without waiting for identity.db
        (which may not open: a full disk) so start-up and readiness never wait on it."""
        # The Store's copy of the cursor is for retention, which a shared graph's log
        # (the cluster's) does not keep by service cursors.
        if not self.shared and await self.log.cursor(service_cursor(self.name)) is None:
            # Retention holds from now on, before identity.db opens (the graph's first
            # start): events stored meanwhile are kept for it.
            await self._save_cursor(0)
        self._wake = self.log.subscribe()
        self._task = asyncio.create_task(self._run(), name="identity")

    async def _open(self) -> None:
        """Open identity.db (created when new) and the reader; start the warehouse feeds.
        A shared graph: the reader only, following the cursor (:meth:`_lead` opens the
        writer)."""
        if self.shared:
            await self._open_shared()
            return
        self.cursor = await self.writer.call(writer.cursor)
        await self._save_cursor()
        await self.store.open_reader()
        self._start_feeds()
        self.opened = True
        log.info("identity graph started", cursor=self.cursor, feeds=[f.name for f in self.feeds])
        async with self._advanced:
            self._advanced.notify_all()  # drain() of an empty log waits for this

    def _start_feeds(self, node_local: bool | None = None) -> None:
        """Start the warehouse feeds: all of them (``node_local`` None: one machine's
        graph), or of a shared graph the node-local destinations' (True: on every
        node, into its own data, their position kept here from 0) or the others'
        (False: on the writer's node, their positions in the graph)."""
        for feed in self.find_feeds():
            if node_local is not None and feed.node_local != node_local:
                continue
            if node_local:
                feed.save = None
            self.feeds.append(feed)
            self._feed_tasks[feed] = asyncio.create_task(feed.run(), name=f"identity-{feed.name}")

    async def _stop_feeds(self, node_local: bool | None = None) -> None:
        """Stop the running feeds (``node_local`` as for :meth:`_start_feeds`)."""
        stopping = [f for f in self.feeds if node_local is None or f.node_local == node_local]
        for feed in stopping:
            feed.stop()
        # A feed whose position the writer refused (its lease lost) ended with NotLeader.
        await asyncio.gather(*(self._feed_tasks.pop(f) for f in stopping), return_exceptions=True)
        self.feeds = [f for f in self.feeds if f not in stopping]

    async def _open_shared(self) -> None:
        """Open the reader of a shared graph and follow the cursor any node's writer
        writes: profile reads and stitched delivery work on every node from here on."""
        await self.store.open_reader()
        assert isinstance(self.store, SharedIdentityBackend)
        loop = asyncio.get_running_loop()

        def seen(cursor: int) -> None:  # on the store's thread
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._advance(cursor)))

        self.store.watch_cursor(seen)
        await self.store.serve_erasures(self._erase_asked, loop)
        self._start_feeds(node_local=True)  # every node's own data, whoever writes
        self.opened = True
        log.info("identity graph reader started (shared)")

    async def _lead(self) -> None:
        """Open this node's writer of a shared graph: NotLeader while another node's
        holds the lease. Then this node applies the log and runs the warehouse feeds."""
        self.cursor = await self.writer.call(writer.cursor)
        self.leading = True
        self._start_feeds(node_local=False)
        log.info("identity writer leading", cursor=self.cursor, feeds=[f.name for f in self.feeds])
        async with self._advanced:
            self._advanced.notify_all()

    async def stop(self) -> None:
        """Stop the consumer (after its page in hand), the feeds, the writer (its
        teardown: identity.db closed; on the cluster the lease given back) and the
        reader. Its caller bounds it (eventd/app.py, ``server.shutdown_timeout``);
        cut short (a cluster without a quorum answers none of these steps), it
        kills the writer process and drops the reader on its way out, steps that
        wait for nothing. Issue 14's fourth trial: after ``eventd stopped`` the
        writer process went on renewing its lease for 47 s, its call in hand waiting
        on the cluster, and the process's exit waited for it."""
        self._stopping = True
        self._stop.set()
        self._hurry.set()
        async with self._advanced:
            self._advanced.notify_all()  # deliveries waiting on the graph leave their batch
        stopped = False
        try:
            if self._task is not None:
                await self._task  # first: it starts the feeds when identity.db opens
            await self._stop_feeds()
            if self.opened:  # else the store's copy stays as it was: never behind identity.db's
                await self._save_cursor()
            await self.writer.close()
            await self.store.close_reader()
            stopped = True
        finally:
            if not stopped:  # cut short (cancelled) or failed: nothing of it may go on
                self._abort()
        log.info("identity graph stopped", cursor=self.cursor)

    def _abort(self) -> None:
        """End the writer, the reader and the feeds now (see :meth:`stop`): safe, as a
        crash is (the writer's pages are all or nothing, a feed's position is saved
        after what it sent)."""
        if self._task is not None:
            self._task.cancel()
        for task in self._feed_tasks.values():
            task.cancel()
        self.writer.kill()
        self.store.abort_reader()
        log.warning("identity graph stop cut short: its writer killed, its reader dropped")

    # -- the consumer ------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                if not self.opened:
                    await self._open()
                if self.shared and not self.leading:
                    await self._lead()
                applied = await self.step()
            except NotLeader as exc:  # another node writes the shared graph: read it
                await self._follow(exc)
                continue
            except Exception as exc:  # identity.db cannot open or write (disk full...)
                failures += 1
                self._failed(exc, failures)
                await self._pause(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1)))
                continue  # the same page again: the cursor moved only with a commit
            if failures:
                log.info("identity graph running again", cursor=self.cursor, failures=failures)
            failures = 0
            self.error = None
            self.running.set(1)
            if applied and self._last_page < PAGE_EVENTS and not self.shared:
                await self._linger()
            elif not applied:
                if self._copied < self.cursor:
                    await self._save_cursor()  # idle: the copy catches up
                # A shared graph's page waited on the log already (the cluster's long poll).
                await self._pause(0 if self.shared else None)

    async def _follow(self, why: NotLeader) -> None:
        """This node's writer does not (or no longer) hold the shared graph's lease: stop
        its feeds, keep reading, and try to lead again after LEAD_RETRY seconds."""
        if self.leading:
            log.info("identity writer no longer leading", reason=str(why))
            await self._stop_feeds(node_local=False)
        self.leading = False
        self.error = None  # healthy: the graph is written by another node
        self.running.set(1)
        await self._pause(LEAD_RETRY)

    def _failed(self, exc: Exception, failures: int) -> None:
        reason = failure_reason(exc)
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        self.running.set(0)
        self.failures.labels(reason).inc()
        # A warning, not an error: ingest is unaffected and the graph catches up later.
        log.warning(
            "identity graph not running; will retry",
            reason=reason,
            error=self.error,
            cursor=self.cursor,
            opened=self.opened,
            failures=failures,
        )

    async def _linger(self) -> None:
        """STEP_LINGER seconds before the next page, cut short by a waiter or stop."""
        if self._waiters or self._stopping:
            return
        self._hurry.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), STEP_LINGER)

    async def _pause(self, seconds: float | None) -> None:
        await pause(self._stop, self._wake, seconds)  # the log's wake: new events stored

    async def step(self) -> bool:
        """Apply one page of the log; False when there was nothing after the cursor."""
        # A shared graph's log has no local end: the writer's page is what is there.
        newest = UNBOUNDED if self.shared else self.log.last_seq
        if self.cursor >= newest:
            return False
        if self.reads_log:  # the writer reads the page itself: nothing crosses but seqs
            result = await self.writer.call(writer.apply_log, self.cursor, newest, PAGE_EVENTS)
        else:
            events = await self.log.read(self.cursor, PAGE_EVENTS)
            # Plain (seq, body) tuples: pickled to the writer, a few hundred bytes each.
            page = [(e.seq, e.body) for e in events]
            result = await self.writer.call(writer.apply_page, page) if page else PageResult()
        if not result.events:
            if not self.shared:
                await self._advance(newest)  # what was there has been deleted (erasure)
            return False
        self._last_page = result.events
        for reason, n in result.refused.items():
            self.refused.labels(reason).inc(n)
        self.applied.inc(result.events)
        await self._advance(result.last)
        if result.links_changed:
            for feed in self.feeds:
                feed.wake()
        return True

    async def _advance(self, seq: int) -> None:
        if seq > self.cursor:
            self.cursor = seq
            if self.shared:  # another node's writer may have linked: look (node-local feeds)
                for feed in self.feeds:
                    if feed.node_local:
                        feed.wake()
            if time.monotonic() - self._copied_at >= CURSOR_COPY_EVERY:
                await self._save_cursor()
        async with self._advanced:
            self._advanced.notify_all()

    async def _save_cursor(self, seq: int | None = None) -> None:
        """identity.db's cursor (``seq``: the one just written there), copied to the
        Store for retention (``app.passed_seq``)."""
        if self.shared:
            return  # the cluster's retention does not read service cursors
        seq = self.cursor if seq is None else seq
        try:
            await self.log.save_cursor(service_cursor(self.name), seq)
            self._copied, self._copied_at = seq, time.monotonic()
        except StorageUnavailable as exc:
            # Behind is safe: retention keeps more until the next page saves it.
            log.warning("identity cursor not copied to the store", error=str(exc))

    async def wait_past(self, seq: int) -> bool:
        """Wait until the graph has opened identity.db and applied the log up to ``seq``;
        False when it stopped first."""
        if self.opened and self.cursor >= seq:
            return True
        self._waiters += 1
        self._hurry.set()  # a linger between pages ends: someone waits for the next
        try:
            async with self._advanced:
                await self._advanced.wait_for(
                    lambda: (self.opened and self.cursor >= seq) or self._stopping
                )
        finally:
            self._waiters -= 1
        return self.opened and self.cursor >= seq

    async def drain(self) -> None:
        """Apply everything stored so far (tests, benchmarks, erasure), with the cursor's
        copy in the Store up to date."""
        if await self.wait_past(self.log.last_seq) and self._copied < self.cursor:
            await self._save_cursor()

    # -- reads -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self.opened:
            raise IdentityUnavailable(
                f"the identity graph has not opened identity.db yet ({self.error})"
            )

    async def find(self, id: str, kind: str | None = None) -> Profile | None:
        """The profile of a userId (tried first) or an anonymousId; ``kind`` forces one."""
        self._check_open()
        kinds = [USER, ANONYMOUS] if kind is None else [kind]
        for k in kinds:
            found = await self.store.read(self.store.find, k, id)
            if found is not None:
                return found
        return None

    async def timeline(self, profile: Profile, before: int | None, limit: int) -> list[Event]:
        """The profile's stored events, newest first, below seq ``before``."""
        self._check_open()
        top = 2**63 - 1 if before is None else before
        seqs = await self.store.read(self.store.timeline, profile, top, limit)
        return (await self.log.read_seqs(seqs))[::-1]

    # -- privacy ---------------------------------------------------------------------

    async def identities(self, user_id: str) -> tuple[list[str], list[str]]:
        """The userIds and anonymousIds of ``user_id``'s profile (``([], [])`` when it
        has none), once every event stored so far is in the graph: what an erasure
        forwarded to destinations covers (read before :meth:`erase` deletes it)."""
        await self.drain()
        profile = await self.find(user_id, USER)
        if profile is None:
            return [], []
        return list(profile.user_ids), list(profile.anonymous_ids)

    async def erase(self, user_id: str) -> list[int]:
        """Delete the profile of ``user_id`` and every identity linked to it; returns the
        seqs of its anonymous events for the caller (suppressions.py) to delete.

        On a shared graph only the leading node's writer may write: another node asks
        it (``forward_erase``; StorageUnavailable when none answers, and the
        suppression's erasure stays pending for the retention sweep to finish)."""
        if self.shared and not self.leading:
            assert isinstance(self.store, SharedIdentityBackend)
            return await self.store.forward_erase(user_id)
        await self.drain()  # every event of theirs stored so far is in the graph
        seqs = await self.writer.call(writer.erase, user_id)
        log.info("profile erased", anonymous_events=len(seqs))  # no ids: personal data
        return seqs

    async def _erase_asked(self, user_id: str) -> list[int] | None:
        """Another node's erasure (a shared graph's): this node's answer, or None when
        its writer does not lead (the leading node's answers)."""
        if not self.leading:
            return None
        try:
            return await self.erase(user_id)
        except NotLeader:  # lost the lease meanwhile: the new leader answers
            return None

    async def save_position(self, destination: str, version: int) -> None:
        """A warehouse feed's position (eventd/identity/feed.py), through the writer."""
        await self.writer.call(writer.save_position, destination, version)

    def lag(self) -> int:
        """Events stored and not applied yet; on the cluster (a :class:`SharedLog`) the
        log messages, each a group of events, after the graph's cursor up to the
        stream's end: the cluster-wide lag, the same on every node (as a destination's
        ``lag_events`` there)."""
        if isinstance(self.log, SharedLog):
            return self.log.behind(self.cursor)
        return max(0, self.log.last_seq - self.cursor)

    def status(self) -> dict[str, Any]:
        """``cursor``, ``lag_events``, ``running`` and ``error`` (why not, or None)."""
        return {
            "cursor": self.cursor,
            "lag_events": self.lag(),
            "running": self.error is None,
            "error": self.error,
        }
