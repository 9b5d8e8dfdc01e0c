"""The Store protocol over the JetStream cluster store: what ``eventd serve`` runs on N nodes.

:class:`ClusterStore` puts eventd's Store seam (eventd/store/base.py) on
:class:`~eventd.store.jetstream.JetStreamStore`. It serves what a node needs to
ingest and deliver:

- ``append``: acknowledged only after the ingest stream's quorum did (else
  StorageUnavailable: ingest answers 503 + Retry-After);
- ``feed``: a :class:`ClusterFeed` on the destination's durable pull consumer,
  which every node fetches from (see :class:`~eventd.store.base.Feed`);
- dead letters: copies of the events in ``S_DEAD`` (they outlive the log's
  retention), listed, counted, shown;
- retention: the jetstream sweep (SQLite's rule: nothing a destination has not
  settled is purged), run by any node;
- health: ``writable`` is false while the log's stream has no leader that heard
  from a quorum of its replicas lately (:meth:`JetStreamStore.ready`) or the last
  publish was refused.

Suppressions, redrive, replay, purges, reads of the log by seq or messageId and
erasure are :class:`~eventd.store.cluster_admin.ClusterAdmin`'s, erasures forwarded
to destinations :class:`~eventd.store.cluster_deletions.ClusterDeletions`' (state in
key-value buckets every node shares). What is not kept in the cluster yet raises
:class:`~eventd.store.base.NotSupported` (the admin API answers 501 naming it):
service cursors. The identity graph's state is in buckets of its own
(eventd/store/cluster_identity.py); its writer reads the log through
eventd/store/cluster_log.py. A node-local destination (its data on the node:
duckdb's file) has a consumer per node, named by this node's lasting id (the
``node-id`` file in its data directory): docs/scaling.md, "Node-local destinations".

An event's seq on the cluster is ``log message sequence << EVENT_BITS | its place
in the message's group`` (log order kept; unique per event).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import time
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog
from nats.aio.msg import Msg

from eventd.config import StorageConfig
from eventd.event import Event
from eventd.metrics import Metrics
from eventd.store.base import (
    MAX_ERROR_CHARS,
    EventRow,
    Feed,
    IdentityBackend,
    Lag,
    Lane,
    LogSource,
    NewDeadLetter,
    NotSupported,
    Span,
    StorageUnavailable,
    StoreStats,
)
from eventd.store.cluster_admin import EVENT_BITS as EVENT_BITS  # re-exported: cluster_log
from eventd.store.cluster_deletions import ClusterDeletions
from eventd.store.cluster_errors import unavailable
from eventd.store.cursor_feed import lag as feed_lag
from eventd.store.datalock import DataLock
from eventd.store.jetstream import (
    CLOSE_TIMEOUT,
    READ_BUDGET,
    DestinationReader,
    JetStreamStore,
    LogEvent,
    sum_backlogs,
)
from eventd.store.leases import PartitionLeases
from eventd.store.live_nodes import LiveNodes
from eventd.tasks import Budget, cancel, finish

log = structlog.get_logger("eventd.store.cluster")

# Seconds a node may keep a fetched log message unsettled and unheld before the server
# gives it to another node: a node that dies returns its messages after this.
ACK_WAIT = 30.0
FETCH_MESSAGES = 16  # log messages per fetch (each a group of events)
LONG_POLL = 1.0  # seconds a fetch waits for a message before the worker looks again
# Seconds a node waits at start for the cluster (connect, streams and consumers led).
OPEN_TIMEOUT = 60.0
# Seconds between health rounds (``writable``: the log's quorum; the node list).
HEALTH_EVERY = 2.0


NODE_ID_FILE = "node-id"


def node_id(data_dir: Path) -> tuple[str, bool]:
    """This node's lasting id and whether it is new: read from ``data_dir/node-id``,
    else made (host name and a random part) and written there first. It names the
    node's consumers of node-local destinations, so it must last as long as their
    data (a DuckDB file) does, and differ between nodes: a data directory copied to
    another node must not take its ``node-id`` along."""
    path = data_dir / NODE_ID_FILE
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    host = re.sub(r"[^A-Za-z0-9_-]", "-", os.uname().nodename)[:40]
    made = f"{host}-{uuid.uuid4().hex[:12]}"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(made + "\n")
    tmp.replace(path)  # whole or absent: a crash never leaves half an id
    return made, True


def _refused(what: str) -> NotSupported:
    return NotSupported(f"{what} is not available with storage.backend = 'jetstream' yet")


class ClusterStore(ClusterDeletions):
    """One node's Store on the JetStream cluster (see the module docstring; the
    administrative state is :class:`~eventd.store.cluster_admin.ClusterAdmin`'s and
    :class:`~eventd.store.cluster_deletions.ClusterDeletions`')."""

    def __init__(
        self,
        config: StorageConfig,
        destinations: Sequence[str] = (),
        ordered: Sequence[str] = (),
        local: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """``destinations``: the enabled ones; ``ordered``: those among them with
        ``ordered = true`` (a consumer per partition each); ``local``: the node-local
        ones (``Destination.node_local``): a consumer of this node's own each, which
        wins over ``ordered`` (one fetcher per node keeps order there). ``metrics``:
        where consumers found out of step with their stream are counted
        (``eventd_cluster_consumer_faults_total``), stream leaders asked to step down
        (``eventd_cluster_stepdowns_total``), and the groups waiting in the ingest
        stream shown (``eventd_ingest_waiting_groups``, ``eventd_dedup_waiting_seconds``)."""
        assert config.jetstream is not None
        self.config = config
        self.destinations = list(destinations)
        self.local = [d for d in destinations if d in set(local)]
        self.ordered = [d for d in ordered if d not in set(local)]
        data_dir = Path(config.path).parent  # this node's dedup sets, rebuildable from the log
        # One id for the node wherever a user reads it: the values of its leases and
        # its heartbeat, its node-local consumers, a deletion's or a letter's `node`.
        lasting, self._new_node = node_id(data_dir)
        self.node_id = lasting if self.local else ""  # what admin records name: "" when none
        # One node per data directory (its node-id, its dedup sets): datalock.py.
        self._lock = DataLock(
            data_dir / "node.lock", f"the data directory of storage.path = '{config.path}'"
        )
        self.js = JetStreamStore(
            config.jetstream,
            data_dir,
            dedup_window=config.dedup_window,
            retention=config.retention,
            ack_wait=ACK_WAIT,
            node_id=lasting,
            local_id=lasting,
        )
        self.metrics = metrics
        if metrics is not None:
            faults = metrics.consumer_faults
            self.js.on_fault = lambda consumer, reason: faults.labels(consumer, reason).inc()
            stepdowns = metrics.stepdowns
            self.js.on_stepdown = lambda stream, reason: stepdowns.labels(stream, reason).inc()
            metrics.on_scrape(self._show_stages)
        self._last_seq = 0
        self._ready = False
        self._last_error: str | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._share = (0, 1)  # (place, live nodes): see limit_share
        self._live = LiveNodes(self.js.node_id, self.js.lease_ttl)
        self._graph_holds_log = False  # set when the identity graph runs on this node
        self._admin_init()
        # A mended log loss leaves out the events of users being erased.
        self.js.erased = lambda user_id: user_id is not None and self.erasing(user_id)

    # -- life cycle -------------------------------------------------------------

    def _show_stages(self) -> None:
        """``eventd_dedup_stage_running``: where each partition's stage runs, at each
        scrape (node-local: no cluster read, so a scrape during a loss has it too)."""
        assert self.metrics is not None
        for p, running in enumerate(self.js.stages_running()):
            self.metrics.dedup_stages.labels(str(p)).set(int(running))

    async def open(self) -> None:
        """Connect and create or find the streams and consumers, within OPEN_TIMEOUT
        (nats-py retries an unreachable cluster forever); StorageUnavailable else."""
        servers = ",".join(self.js.cfg.servers)
        self._lock.acquire()  # before anything joins the cluster
        try:
            await asyncio.wait_for(
                self.js.open(self.destinations, ordered=self.ordered, local=self.local),
                OPEN_TIMEOUT,
            )
            await asyncio.wait_for(self.open_admin(), OPEN_TIMEOUT)
        except asyncio.CancelledError:  # SIGTERM while the cluster is awaited: leave
            await self.js.close()
            self._lock.release()
            raise
        except Exception as exc:
            await self.js.close()
            self._lock.release()
            if isinstance(exc, TimeoutError):
                why = f"not within {OPEN_TIMEOUT:g}s: {self.js.open_error or 'no answer'}"
            else:
                why = repr(exc)
            raise StorageUnavailable(
                f"the jetstream cluster at {servers} did not open: {why}"
            ) from exc
        self._ready = True
        for destination in sorted(self.js.created_local):
            self.started_local(destination, self._new_node)
        await self._read_share()  # the workers start with their part, not the whole
        self._monitor = asyncio.create_task(self._watch(), name="cluster-health")

    def started_local(self, destination: str, new_node: bool) -> None:
        """Say where a node-local consumer just created starts: the log's first kept
        message. A node seen before (its ``node-id`` existed) had one that the servers
        removed: its data lacks what was purged while it was away."""
        if new_node:
            log.info("node-local destination starts", destination=destination, node=self.node_id)
            return
        log.warning(
            "node-local destination's consumer was gone (this node was away longer than"
            " storage.retention): it starts at the log's first kept message; events"
            " purged meanwhile are missing from this node's data (copy a current file"
            " from another node to fill it: docs/scaling.md)",
            destination=destination,
            node=self.node_id,
        )

    async def close(self, within: float | None = None) -> None:
        """Stop the health loop, give back the administrative claims, close the log's
        store, all within ``within`` seconds (None: CLOSE_TIMEOUT): a cluster without
        a quorum answers no give-back, and each would wait for its own timeout."""
        budget = Budget(CLOSE_TIMEOUT if within is None else within)
        await cancel(self._monitor, within=budget.share(4))
        with contextlib.suppress(TimeoutError):  # claims not given back lapse (TTL)
            await finish(self.close_admin(), budget.share(3))
        await self.js.close(within=budget.left())
        self._lock.release()

    async def _watch(self) -> None:
        """Keep ``writable`` current: false while the log's stream has no leader that
        heard from a quorum lately (:meth:`JetStreamStore.ready`), every HEALTH_EVERY. A
        refused publish makes it false until the stream has a leader again. The node
        list is read beside it, not in turn: that read waits up to publish_timeout on a
        stalled cluster, and the answer here would stand that much longer."""
        share: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    self._ready = await self.js.ready()
                except Exception as exc:  # whatever the client raises, this loop goes on
                    log.info("cluster health check failed", error=repr(exc))
                    self._ready = False
                if self._ready:
                    self._last_error = None
                if share is None or share.done():
                    share = asyncio.create_task(self._read_share(), name="cluster-share")
                await asyncio.sleep(HEALTH_EVERY)
        finally:
            await cancel(share)

    async def _read_share(self) -> None:
        """Who shares the destinations' limits now (the heartbeats in S_LEASES); a
        failed read keeps the last answer."""
        try:
            ids = set(await self.js.node_ids())
        except Exception as exc:  # a stalled cluster: keep the last share
            log.info("node list not read", error=repr(exc))
            return
        share = self._live.read(ids, time.monotonic())  # this node counts itself
        if share != self._share:
            log.info("destination limits shared", place=share[0], nodes=share[1])
        self._share = share

    # -- the log ----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest event seq this node has fetched (the cluster's own is not local)."""
        return self._last_seq

    def seen(self, seq: int) -> None:
        self._last_seq = max(self._last_seq, seq)

    def behind(self, seq: int) -> int:
        """Log messages after the one event ``seq`` is in (the identity graph's cursor
        lands on a message's last event), counted from the stream's last sequence as
        the health round read it (every 2 s) and from its first kept one: the
        cluster-wide end, not this node's newest fetched event (``SharedLog``)."""
        first, last = self.js.log_bounds
        return max(0, last - max(seq >> EVENT_BITS, first - 1))

    @property
    def pending_events(self) -> int:
        return self.js.pending_events

    @property
    def writable(self) -> bool:
        return self._ready and self._last_error is None

    @property
    def limit_share(self) -> tuple[int, int]:
        """(place, nodes) as of the last health round (every 2 s): every live node's
        heartbeat, this one's included; eventd/delivery/share.py divides by it."""
        return self._share

    def stats(self) -> StoreStats:
        cfg = self.js.cfg
        return StoreStats(
            size=0,  # the servers keep the bytes; see their /jsz
            max_size=None,
            writable=self.writable,
            last_seq=self._last_seq,
            last_error=self._last_error,
            location=f"jetstream stream {cfg.stream} on {','.join(cfg.servers)}",
        )

    def subscribe(self) -> asyncio.Event:
        # No local commit to signal: feeds long-poll their consumers instead.
        return asyncio.Event()

    async def append(self, rows: Sequence[EventRow]) -> int:
        try:
            taken = await self.js.append(rows)
        except StorageUnavailable as exc:
            self._last_error = str(exc)
            raise
        self._last_error = None
        return taken

    def feed(self, destination: str, partition: int | None = None) -> Feed:
        return ClusterFeed(self, destination, partition)

    def hold_partitions(self, destination: str, run: Lane) -> None:
        """Run ``run(p, holds)`` for each partition p of the ordered ``destination``
        while this node holds its lease ``order-<destination>-<p>`` (S_LEASES, as the
        dedup stages hold theirs: eventd/store/leases.py); ``holds()`` turns false
        before another node can take p, and the fetcher must stop then."""
        group: PartitionLeases | None = None

        def start(p: int) -> Coroutine[Any, Any, None]:
            assert group is not None
            return run(p, functools.partial(group.holds, p))

        group = self.js.hold_partitions(destination, start)

    async def release_partitions(self, destination: str) -> None:
        """Stop ``destination``'s fetchers and give their leases back."""
        await self.js.release_partitions(destination)

    def identity_store(self, path: Path, synchronous: str) -> IdentityBackend:
        """The graph's state in the cluster's buckets, shared by every node
        (eventd/store/cluster_identity.py; ``path`` and ``synchronous`` unused)."""
        from eventd.store.cluster_identity import ClusterIdentityStore

        assert self.config.jetstream is not None
        self._graph_holds_log = True  # retention keeps what the graph has not applied
        return ClusterIdentityStore(self.config.jetstream, self.js.node_id)

    def log_source(self) -> LogSource | None:
        """The log by position, for the identity writer (eventd/store/cluster_log.py)."""
        from eventd.store.cluster_log import ClusterLogSource

        assert self.config.jetstream is not None
        return ClusterLogSource(self.config.jetstream)

    async def read_seqs(self, seqs: Sequence[int]) -> list[Event]:
        from eventd.store.cluster_log import read_seqs

        return await read_seqs(self.js.js, self.js.names.stream, seqs)

    # -- cursors: a destination's is its consumer; services with cursors do not run --

    async def cursor(self, name: str) -> int | None:
        raise _refused("a service cursor")

    async def save_cursor(self, name: str, seq: int) -> None:
        raise _refused("a service cursor")

    async def cursors(self) -> dict[str, int]:
        return {}

    # -- dead letters ----------------------------------------------------------

    async def add_dead_letters(
        self, destination: str, letters: Sequence[NewDeadLetter], attempts: int
    ) -> None:
        for d in letters:
            event = LogEvent(
                d.seq >> EVENT_BITS,
                d.seq & ((1 << EVENT_BITS) - 1),
                d.source,
                d.message_id,
                None,
                d.received_at,
                d.body,
            )
            node = self.node_id if destination in self.local else None
            await self.js.dead_letter(destination, event, attempts, d.error[:MAX_ERROR_CHARS], node)

    # -- retention -------------------------------------------------------------

    @unavailable()  # a timeout ended the retention task, and serve exited 1 at stop
    async def delete_events(self, *, upto_seq: int, received_before: int, limit: int) -> int:
        """The cluster's sweep: below every destination consumer's ack floor (the
        cluster-wide truth, not this node's ``upto_seq``) and older than
        ``storage.retention``, and past the identity graph's shared cursor when the
        graph runs (SQLite's rule: a service's cursor holds retention as a
        destination's does). Purges whole log messages; returns 0 (one call is the
        whole sweep)."""
        keep = None
        if self._graph_holds_log:
            from eventd.store.cluster_identity import graph_cursor

            cursor = await graph_cursor(self.js.js, self.js.names.stream)
            # The graph's cursor lands on a log message's last event: that message
            # and those before it are applied.
            keep = ((cursor or 0) >> EVENT_BITS) + 1
        kept_from = await self.js.sweep(
            self.destinations, now=received_before / 1000, keep_from=keep
        )
        log.debug("log swept", first_kept=kept_from)
        return 0

    async def compact(self) -> None:
        return None


class _Held:
    """A fetched log message and how many of its events are not settled yet
    (``msg`` None: resent from the log at a take-over, not handed out by the consumer
    to this fetcher; its ack waits for the consumer's redelivery)."""

    __slots__ = ("msg", "remaining")

    def __init__(self, msg: Msg | None, remaining: int) -> None:
        self.msg = msg
        self.remaining = remaining


class _Part(Span):
    """A span: how many events of each held message it covers."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[int, int]) -> None:
        self.counts = counts


class ClusterFeed:
    """A destination's durable pull consumer, as one node's worker reads it.

    Settling: a log message is acked once every event of it is settled (the spans
    of one message can end in any order). Holding: every message fetched and not
    settled is kept in progress (``in_progress`` every ``ACK_WAIT / 3`` seconds), so
    the server gives it to another node only if this one dies or stalls; a failed
    batch therefore waits in the worker, with eventd's own backoff and Retry-After,
    not NAKed with a delay (which would let later messages, one user's later events
    among them, go out first, and every node retry a down destination at once).
    Closing NAKs what is not settled, so another node takes it at once.

    An ordered destination's partition (``partition`` given; one fetcher at a time,
    under a lease): opening first takes over what the previous fetcher left unacked
    (:meth:`JetStreamStore.handed_out`), which the first fetch returns before
    anything newer; when the consumer redelivers those messages later, a settled one
    is acked without being handed out again.
    """

    def __init__(self, store: ClusterStore, destination: str, partition: int | None) -> None:
        self.store = store
        self.destination = destination
        self.partition = partition
        self.reader: DestinationReader | None = None
        self._wake = asyncio.Event()
        self._held: dict[int, _Held] = {}  # log sequence -> message, in fetch order
        self._uncut: list[tuple[int, int]] = []  # (event seq, log sequence) not cut yet
        self._settled_upto = 0  # the newest event seq fetched here
        self._settled_below = 0  # the log sequence below which every node settled (lag)
        self._keeper: asyncio.Task[None] | None = None
        self._ahead: list[list[LogEvent]] = []  # taken over: handed out before the rest
        self._resent: set[int] = set()  # log sequences taken over and settled here

    @property
    def position(self) -> int:
        """This node's position, or the consumers' ack floor as :meth:`lag` last read
        it when that is further: other nodes settle too, and an ordered destination's
        feed on the worker never fetches (its partitions' feeds do), so its own
        position stayed 0 (`eventd status` showed cursor 0). 0 before log sequence 1
        is passed (not 1048575, the last event seq of a log message 0, which a
        trial's `eventd status` showed for a destination that delivered nothing)."""
        own = _before(min(self._held)) if self._held else self._settled_upto
        return max(own, _before(self._settled_below))

    @property
    def unsettled(self) -> bool:
        return bool(self._held)

    @property
    def wakeup(self) -> asyncio.Event:
        return self._wake

    async def open(self) -> None:
        self.reader = await self.store.js.reader(self.destination, self.partition)
        if self.partition is not None:
            self._ahead = await self.store.js.handed_out(self.destination, self.partition)
        self._keeper = asyncio.create_task(self._keep(), name=f"feed-keeper-{self.destination}")

    async def fetch(self, limit: int) -> list[Event]:
        assert self.reader is not None
        got: list[tuple[Msg | None, list[LogEvent]]] = [(None, g) for g in self._ahead if g]
        self._ahead = []
        try:
            if not got:
                got += await self.reader.fetch(FETCH_MESSAGES, wait=LONG_POLL)
        except Exception as exc:  # a stalled cluster: look again, after the long poll
            log.info("fetch failed", destination=self.destination, error=repr(exc))
            await asyncio.sleep(LONG_POLL)
        if not got:
            self._wake.set()  # the long poll was the wait: look again
            return []
        events: list[Event] = []
        for msg, group in got:
            seq = msg.metadata.sequence.stream if msg is not None else group[0].seq
            if seq in self._held:  # redelivered while still here (a stalled hold)
                if self._held[seq].msg is None:
                    self._held[seq].msg = msg  # taken over: acked once settled here
                continue
            if msg is not None and seq in self._resent:  # taken over and settled here
                self._resent.discard(seq)
                await self._ack(msg)
                continue
            self._held[seq] = _Held(msg, len(group))
            for e in group:
                event_seq = e.seq << EVENT_BITS | e.offset
                events.append(
                    Event(event_seq, e.source, e.received_at, body=e.body, user_id=e.user_id)
                )
                self._uncut.append((event_seq, seq))
        if events:
            self._settled_upto = max(self._settled_upto, events[-1].seq)
            self.store.seen(events[-1].seq)
        return events

    def cut(self, upto: int) -> Span:
        counts: dict[int, int] = {}
        taken = 0
        for event_seq, msg_seq in self._uncut:
            if event_seq > upto:
                break
            counts[msg_seq] = counts.get(msg_seq, 0) + 1
            taken += 1
        del self._uncut[:taken]
        return _Part(counts)

    async def settle(self, span: Span) -> None:
        assert isinstance(span, _Part) and self.reader is not None
        for msg_seq, n in span.counts.items():
            held = self._held.get(msg_seq)
            if held is None:
                continue
            held.remaining -= n
            if held.remaining <= 0:
                del self._held[msg_seq]
                if held.msg is None:
                    self._resent.add(msg_seq)
                else:
                    await self._ack(held.msg)
        if not self._held:
            self._wake.set()

    async def _ack(self, msg: Msg) -> None:
        assert self.reader is not None
        try:
            await self.reader.settle(msg)
        except Exception as exc:
            # Not acked: the server gives it again after ack_wait (a duplicate, at
            # least once), never loses it.
            log.warning("ack failed", destination=self.destination, error=repr(exc))

    async def lag(self, now: int) -> Lag:
        """(events not passed by this destination: those of the log messages after its
        consumers' ack floors, plus those of the ingest stream's groups still waiting
        for their dedup stage, which every destination will get; seconds since the
        oldest of them was received, as SQLite's lag gives them), each read after its
        consumer's leader's ack floor (:meth:`JetStreamStore.backlog`). Also sets the
        ingest gauges: groups waiting, and per partition the age of its oldest
        (``eventd_dedup_waiting_seconds``: a stage that runs keeps it near 0). The
        messages are read for READ_BUDGET seconds at most: past it, or past
        COUNT_READS per consumer, the rest is estimated (``Lag.estimated``)."""
        js = self.store.js
        until = time.monotonic() + READ_BUDGET
        counts, waiting, mine, ingest = await asyncio.gather(
            js.lag(self.destination),
            js.ingest_waiting(),
            js.backlog(self.destination, until),
            js.ingest_backlog(until),
        )
        metrics = self.store.metrics
        if metrics is not None:
            metrics.ingest_waiting.set(waiting)
            for p, part in enumerate(ingest):
                metrics.dedup_waiting.labels(str(p)).set(feed_lag(0, 0, part.oldest, now)[1])
        self._settled_below = max(self._settled_below, counts["settled_below"])
        total = sum_backlogs([mine, *ingest])
        return Lag(*feed_lag(total.events, 0, total.oldest, now), estimated=not total.exact)

    async def passed(self, target: int) -> bool:
        """Cluster-wide, whatever ``target``: the ingest queue empty (an acknowledged
        group waits there until a dedup stage forwarded it to the log), then this
        destination's consumers with nothing pending or in flight (a node-local
        destination's: this node's own, what this node's data lacks). Read in that
        order: a group leaves the queue only after it is in the log, so nothing
        acknowledged before the first read slips between the two."""
        return await self.store.js.drained(self.destination)

    async def close(self) -> None:
        await cancel(self._keeper)
        for held in list(self._held.values()):
            if held.msg is None:
                continue
            with contextlib.suppress(Exception):  # left to ack_wait
                await held.msg.nak()
        self._held.clear()
        self._uncut.clear()

    async def _keep(self) -> None:
        """Hold every message fetched and not settled (see the class docstring); a
        node-local destination's consumer, created again if the servers removed it
        (this node's pulls stopped longer than its inactive threshold: a long stall)."""
        while True:
            await asyncio.sleep(ACK_WAIT / 3)
            for held in list(self._held.values()):
                if held.msg is None:
                    continue
                with contextlib.suppress(Exception):  # a stall: the next round
                    await held.msg.in_progress()
            if self.destination in self.store.local:
                try:  # bounded: a stalled cluster must not stop the holds above
                    if await asyncio.wait_for(
                        self.store.js.ensure_local(self.destination), ACK_WAIT / 3
                    ):
                        self.store.started_local(self.destination, new_node=False)
                except Exception as exc:  # a stall: the next round
                    log.info("node-local consumer not checked", error=repr(exc))


def _before(log_seq: int) -> int:
    """The last event seq of the log messages before ``log_seq`` (0: none)."""
    return (log_seq << EVENT_BITS) - 1 if log_seq > 1 else 0
