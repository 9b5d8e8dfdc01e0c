"""The identity service: keeps the graph up with the log, off the ingest hot path.

A log consumer with its own cursor, kept in identity.db in the same transaction
as what each page changed (so a crash re-applies nothing twice) and copied to the
Store under ``service_cursor("identity")`` after each page, where retention sees
it (``app.passed_seq``: events the graph has not applied are kept; the copy may lag
identity.db's, never lead it). It reads pages after the cursor (``Store.read``)
and hands them to the identity writer
(:mod:`eventd.identity.writer`, a process of its own, so the graph's Python work
never takes the GIL from ingest), which applies them to the graph
(:mod:`eventd.identity.graph`) and writes identity.db; then
- releases deliveries waiting for it (:meth:`IdentityService.wait_past`, for
  stitched delivery),
- wakes the warehouse feeds (:mod:`eventd.identity.feed`), which send new and
  changed links to every destination that stores identities.

It also answers profile lookups (the API) and erases a suppressed user's profile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from eventd.config import IdentityConfig
from eventd.event import Event
from eventd.identity import writer
from eventd.identity.feed import LinkFeed, pause
from eventd.identity.graph import ANONYMOUS, REFUSAL_REASONS, USER, Profile, Rules
from eventd.identity.writer import Writer
from eventd.metrics import Metrics
from eventd.store import StorageUnavailable, Store, service_cursor
from eventd.store.identity import IdentityStore

log = structlog.get_logger("eventd.identity")

PAGE_EVENTS = 5000


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
        self.store = IdentityStore(path, synchronous)  # this process's reads
        self.writer = Writer(path, synchronous, self.rules, process=process)
        self.feeds: list[LinkFeed] = []
        # Which destinations store identities: asked at start, once their instances exist.
        self.find_feeds: Callable[[], list[LinkFeed]] = list
        self.cursor = 0  # the last log seq applied to the graph
        self._advanced = asyncio.Condition()
        self._stopping = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._feed_tasks: list[asyncio.Task[None]] = []
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
        metrics.on_scrape(lambda: lag.set(max(0, self.log.last_seq - self.cursor)))
        self._wake = asyncio.Event()  # the log's, from start()

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.cursor = await self.writer.call(writer.cursor)  # creates identity.db when new
        await self._save_cursor()  # retention holds from now on, before the first page
        await self.store.open_reader()
        self.feeds = self.find_feeds()
        self._wake = self.log.subscribe()
        self._task = asyncio.create_task(self._run(), name="identity")
        for feed in self.feeds:
            self._feed_tasks.append(asyncio.create_task(feed.run(), name=f"identity-{feed.name}"))
        log.info("identity graph started", cursor=self.cursor, feeds=[f.name for f in self.feeds])

    async def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        async with self._advanced:
            self._advanced.notify_all()  # deliveries waiting on the graph leave their batch
        for feed in self.feeds:
            feed.stop()
        if self._task is not None:
            await self._task
        await asyncio.gather(*self._feed_tasks)
        await self._save_cursor()
        await self.writer.close()
        await self.store.close_reader()
        log.info("identity graph stopped", cursor=self.cursor)

    # -- the consumer ------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                if await self.step():
                    failures = 0
                    continue
            except Exception:  # identity.db cannot write (disk full...): the page is retried
                failures += 1
                log.exception("identity page not applied; will retry", cursor=self.cursor)
                await self._pause(min(60.0, 0.5 * 2**failures))
                continue
            await self._pause(None)

    async def _pause(self, seconds: float | None) -> None:
        await pause(self._stop, self._wake, seconds)  # the log's wake: new events stored

    async def step(self) -> bool:
        """Apply one page of the log; False when there was nothing after the cursor."""
        newest = self.log.last_seq
        if self.cursor >= newest:
            return False
        events = await self.log.read(self.cursor, PAGE_EVENTS)
        if not events:
            await self._advance(newest)  # what was there has been deleted (erasure)
            return False
        # Plain (seq, body) tuples: pickled to the writer, a few hundred bytes each.
        result = await self.writer.call(writer.apply_page, [(e.seq, e.body) for e in events])
        for reason, n in result.refused.items():
            self.refused.labels(reason).inc(n)
        self.applied.inc(len(events))
        await self._advance(events[-1].seq)
        if result.links_changed:
            for feed in self.feeds:
                feed.wake()
        return True

    async def _advance(self, seq: int) -> None:
        if seq > self.cursor:
            await self._save_cursor(seq)  # first: who waits past seq finds it saved too
            self.cursor = seq
        async with self._advanced:
            self._advanced.notify_all()

    async def _save_cursor(self, seq: int | None = None) -> None:
        """identity.db's cursor (``seq``: the one just written there), copied to the
        Store for retention (``app.passed_seq``)."""
        try:
            await self.log.save_cursor(
                service_cursor(self.name), self.cursor if seq is None else seq
            )
        except StorageUnavailable as exc:
            # Behind is safe: retention keeps more until the next page saves it.
            log.warning("identity cursor not copied to the store", error=str(exc))

    async def wait_past(self, seq: int) -> bool:
        """Wait until the graph has applied the log up to ``seq``; False when it stopped first."""
        if self.cursor >= seq:
            return True
        async with self._advanced:
            await self._advanced.wait_for(lambda: self.cursor >= seq or self._stopping)
        return self.cursor >= seq

    async def drain(self) -> None:
        """Apply everything stored so far (tests, benchmarks, erasure)."""
        await self.wait_past(self.log.last_seq)

    # -- reads -----------------------------------------------------------------------

    async def find(self, id: str, kind: str | None = None) -> Profile | None:
        """The profile of a userId (tried first) or an anonymousId; ``kind`` forces one."""
        kinds = [USER, ANONYMOUS] if kind is None else [kind]
        for k in kinds:
            found = await self.store.read(self.store.find, k, id)
            if found is not None:
                return found
        return None

    async def timeline(self, profile: Profile, before: int | None, limit: int) -> list[Event]:
        """The profile's stored events, newest first, below seq ``before``."""
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
        seqs of its anonymous events for the caller (suppressions.py) to delete."""
        await self.drain()  # every event of theirs stored so far is in the graph
        seqs = await self.writer.call(writer.erase, user_id)
        log.info("profile erased", anonymous_events=len(seqs))  # no ids: personal data
        return seqs

    async def save_position(self, destination: str, version: int) -> None:
        """A warehouse feed's position (eventd/identity/feed.py), through the writer."""
        await self.writer.call(writer.save_position, destination, version)

    def status(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "lag_events": max(0, self.log.last_seq - self.cursor)}
