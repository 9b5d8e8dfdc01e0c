"""The Store protocol: the one seam between eventd and where its data lives.

Everything eventd keeps goes through a :class:`Store`: the event log (append with
dedup, read after a position, wake-ups on new events), a cursor per consumer
(each destination by its name, each log-consuming service by
:func:`service_cursor`), dead letters with their redrive requests, replay
requests, suppressed users and their erasure, retention deletes and the store's
health (:meth:`Store.stats`). ``eventd/store/sqlite.py`` is the single-machine
backend (every SQL statement eventd runs lives under ``eventd/store/``);
``eventd/store/memory.py`` keeps the same contract in memory for unit tests.
A new backend passes ``tests/store/`` (the conformance suite) and is chosen in
``eventd.store.open_store``.
:class:`DeletionStore` is an optional part (erasures forwarded to destinations,
``eventd/privacy/``) that the SQLite and memory stores implement too.

Contract every backend keeps (the suite checks each):

- ``append`` returns only once its events are durable; a repeat of
  ``(source, message_id)`` whose earlier copy was received within the dedup
  window before it is acknowledged and not stored again. Seqs grow strictly.
- A consumer's cursor is the highest seq it has passed; it survives a restart.
- A dead letter keeps the stored body, so a redrive delivers what was stored.
- Nothing here decides policy (what to retry, what retention keeps): callers do.

Times are unix milliseconds (``int``) throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from eventd.event import Event
from eventd.identity.graph import Changes, Graph, Link, Profile
from eventd.identity.links import IdentityLink

# (source, message_id, type, event, user_id, anonymous_id, received_at ms, body JSON)
EventRow = tuple[str, str, str, str | None, str | None, str | None, int, bytes]

# Bytes of a dead letter's error kept (a vendor can answer with a whole HTML page).
MAX_ERROR_CHARS = 1000


class StorageUnavailable(Exception):
    """The store cannot take writes now (disk full, read-only, locked, over max_size).

    Nothing of the refused write was stored; ingest answers 503, the dispatcher
    retries its own writes."""


class NotSupported(Exception):
    """The backend cannot do this yet (the cluster store: service cursors, the identity
    graph's state, reading the log from another process). The admin API answers 501
    ``not_implemented`` with this message, which names what is missing."""


class Conflict(Exception):
    """The request cannot be done in the store's present state (a redrive of a dead
    letter whose node is gone for good). The admin API answers 409 ``conflict``
    with this message, which names what is in the way."""


class NotLeader(Exception):
    """A :class:`SharedIdentityBackend` lets one node's writer write at a time: this
    node's is not it (another node holds the writer's lease, or this node's lapsed).
    Not a failure: the node keeps reading the shared state and tries again later."""


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(ms: int | None) -> str | None:
    """A stored unix-ms time as ISO-8601 UTC (what the admin API shows)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


T = TypeVar("T")


async def next_group(queue: asyncio.Queue[T | None]) -> tuple[list[T], bool]:
    """Group commit's batching, for a store's single writer: wait for one item, then
    take everything else already queued (no linger timer: a group goes as soon as the
    writer is free). Returns the group, maybe empty, and whether the stop sentinel
    (None) came with it."""
    first = await queue.get()
    group = [] if first is None else [first]
    stopping = first is None
    while not queue.empty():
        item = queue.get_nowait()
        if item is None:
            stopping = True
        else:
            group.append(item)
    return group, stopping


def service_cursor(service: str) -> str:
    """The cursor name of a log-consuming service (``service:identity``): apart from
    every destination's, since a destination name cannot contain a colon."""
    return f"service:{service}"


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A store's health, for /ready, /admin/runtime and /metrics."""

    size: int  # bytes the store occupies (file, WAL, ...)
    max_size: int | None  # storage.max_size: appends refused at or past it
    writable: bool  # false while the last write failed
    last_seq: int  # the newest event's seq (0: none yet)
    last_error: str | None = None  # why the last write failed
    location: str = ""  # a path or a URL, for humans


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    """An event a destination gave up on, to be written with its reason."""

    seq: int
    source: str
    message_id: str
    received_at: int
    body: bytes  # as stored, whatever a transform made of it
    error: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stored dead letter; ``state`` is ``dead`` or ``redrive`` (asked back);
    ``node``: the id of the node whose own copy of a node-local destination refused
    it (the cluster store; a redrive is resent by that node), else None."""

    id: int
    destination: str
    seq: int
    source: str
    message_id: str
    received_at: int
    body: bytes
    attempts: int
    error: str
    failed_at: int
    state: str
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """A stored range ``[next_seq, until_seq]`` still to resend to ``destination``."""

    id: int
    destination: str
    next_seq: int
    until_seq: int


@dataclass(frozen=True, slots=True)
class SeqRange:
    """The stored events received in a time range: first and last seq, how many."""

    first: int
    last: int
    count: int


@dataclass(frozen=True, slots=True)
class Suppression:
    user_id: str
    created_at: int
    erase: bool  # the user's stored events are to be deleted too
    erased_events: int
    erased_at: int | None  # when none was left; None while some are


# A forwarded erasure's states (eventd/privacy/): asked and not finished (retried
# after a Retry), the destination deleted, it gave up or failed, it cannot delete.
REQUESTED, DONE, FAILED, UNSUPPORTED = "requested", "done", "failed", "unsupported"
# A node's copy only (NodeDeletion): the node is gone for good (its consumer of the
# node-local destination was removed), so its file no longer counts.
GONE = "gone"


@dataclass(frozen=True, slots=True)
class NodeDeletion:
    """One node's copy of a node-local destination's deletion (the cluster's: each node
    deletes from its own file, eventd/store/cluster_deletions.py)."""

    node: str  # the node's lasting id (its data directory's ``node-id``)
    state: str  # REQUESTED, DONE, FAILED, UNSUPPORTED or GONE
    attempts: int
    reason: str | None  # as Deletion.reason, this node's
    updated_at: int
    next_attempt_at: int | None


@dataclass(frozen=True, slots=True)
class Deletion:
    """An erasure forwarded to one destination: one per (suppressed user, destination)."""

    user_id: str  # the suppression's userId
    destination: str
    type: str  # the destination's type when asked
    state: str  # REQUESTED, DONE, FAILED or UNSUPPORTED
    erasure: bytes  # whom to delete, as the caller encoded it (eventd.privacy: JSON)
    attempts: int
    reason: str | None  # failed: why; requested: the last retry's; unsupported: what to do
    requested_at: int  # starts the retry_max_age clock
    updated_at: int
    next_attempt_at: int | None  # requested, after a Retry: not before
    # A node-local destination on the cluster: each node's copy, by node id (the
    # fields above then sum them up: Deletion.state is DONE only once every copy
    # not GONE is); () elsewhere (SQLite, memory, a shared destination).
    nodes: tuple[NodeDeletion, ...] = ()


def deletion_requested(
    old: Deletion | None, user_id: str, destination: str, type_: str, erasure: bytes, at: int
) -> Deletion:
    """:meth:`DeletionStore.request_deletions`' rule for one destination: a new or a
    FAILED one is (again) REQUESTED, with this ``erasure`` at ``at``; another stays."""
    if old is not None and old.state != FAILED:
        return old
    kind = old.type if old else type_
    return Deletion(user_id, destination, kind, REQUESTED, erasure, 0, None, at, at, None)


def deletion_saved(
    old: Deletion, state: str, attempts: int, reason: str | None, next_attempt_at: int | None
) -> Deletion:
    """:meth:`DeletionStore.save_deletion`' new record (``reason`` cut, updated now)."""
    return replace(
        old,
        state=state,
        attempts=attempts,
        reason=reason[:MAX_ERROR_CHARS] if reason is not None else None,
        next_attempt_at=next_attempt_at,
        updated_at=now_ms(),
    )


@dataclass(frozen=True, slots=True)
class UserEvent:
    """Where one of a user's events is in the log, and the anonymousId stored with it."""

    seq: int
    source: str
    received_at: int
    anonymous_id: str | None


class LogReader(Protocol):
    """The log, read from another process (:meth:`Store.log_source`), synchronously."""

    def page(self, after: int, upto: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (seq, body JSON) of the events with ``after`` < seq <= ``upto``,
        in seq order, from one consistent snapshot."""
        ...

    def lines(self, after: int, upto: int, limit: int) -> tuple[list[int], bytes]:
        """:meth:`page` as its seqs and its bodies joined by newlines (one buffer for
        ``msgspec``'s ``decode_lines``: no bytes object per event)."""
        ...

    def close(self) -> None: ...


class LogSource(Protocol):
    """A picklable handle on a store's log that another process opens (:meth:`open`)."""

    def open(self) -> LogReader:
        """A reader of the log; raises the backend's error when it cannot open."""
        ...


class IdentityBackend(Protocol):
    """The identity graph's state (issue 15): profiles, identifiers, links, the stitched
    timeline, the graph's cursor and the warehouse feeds' positions, behind the Store
    seam (:meth:`Store.identity_store`), so a cluster backend can share it between nodes.

    Two sides. The writer's (eventd/identity/writer.py: one writer at a time, in a
    process of its own unless :attr:`in_process`): :meth:`open_writer`, the graph's
    reads (:meth:`profile_of`, :meth:`profile`, :meth:`links_of`, :meth:`prefetch`)
    and :meth:`apply`, which writes a page's changes and the cursor past it
    atomically (all or nothing: the conformance suite in
    tests/store/test_identity_conformance.py checks it), :meth:`erase`,
    :meth:`save_position`. The readers' (API, stitched delivery, feeds, in eventd's
    process): :meth:`open_reader`, then ``await read(fn, *args)`` runs one of
    :meth:`find`, :meth:`find_many`, :meth:`links`, :meth:`timeline`,
    :meth:`links_after`, :meth:`position`, :meth:`counts` where the backend reads.
    Writer-side methods raise the backend's error (sqlite3.Error: a full disk) and
    keep nothing of a failed call."""

    @property
    def in_process(self) -> bool:
        """True when the state lives in this process's memory: the writer then runs on a
        thread beside the readers, not in a process of its own."""
        ...

    def open_writer(self) -> None: ...

    def close(self) -> None: ...

    def cursor(self) -> int:
        """The last log seq applied (0: none)."""
        ...

    def profile_of(self, kind: str, value: str) -> str | None: ...

    def profile(self, profile_id: str) -> Profile | None:
        """A fresh copy: the graph changes it in place before :meth:`apply` writes it."""
        ...

    def links_of(self, anonymous_id: str) -> list[Link]: ...

    def prefetch(
        self, graph: Graph, ids: Iterable[tuple[str, str]], linking: Iterable[str] = ()
    ) -> None:
        """Seed ``graph`` with the identifiers, profiles and links (of ``linking``) a
        page will need, read in bulk."""
        ...

    def apply(self, changes: Changes, cursor: int) -> None:
        """Write a page's changes and ``cursor`` atomically."""
        ...

    def erase(self, user_id: str) -> list[int]:
        """Delete the profile of ``user_id`` and every identity linked to it; returns
        the seqs of its anonymous events (links.py's rule), sorted."""
        ...

    def save_position(self, destination: str, version: int) -> None: ...

    async def open_reader(self) -> None: ...

    async def close_reader(self) -> None: ...

    def abort_reader(self) -> None:
        """Drop the reader now, waiting for nothing (a stop cut short: a cluster that
        answers nothing): a read in flight ends (raising) as soon as it can, and no
        thread of the reader holds the process's exit past it."""
        ...

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (one of the reads below) where this backend reads."""
        ...

    def find(self, kind: str, value: str) -> Profile | None: ...

    def find_many(self, ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Profile]: ...

    def links(self, anonymous_ids: Iterable[str]) -> dict[str, list[Link]]: ...

    def timeline(self, profile: Profile, before: int, limit: int) -> list[int]:
        """The log seqs of a profile's events below ``before``, newest first."""
        ...

    def links_after(self, version: int, limit: int) -> list[tuple[int, IdentityLink]]:
        """Links whose version is past ``version``, in version order, with the profile
        they belong to now (what warehouse feeds send)."""
        ...

    def position(self, destination: str) -> int: ...

    def counts(self) -> dict[str, int]:
        """Rows (entries) of ``profiles``, ``identifiers`` and ``links``."""
        ...


@runtime_checkable
class SharedIdentityBackend(IdentityBackend, Protocol):
    """An :class:`IdentityBackend` several nodes share (the cluster's,
    eventd/store/cluster_identity.py): every node reads it; one node's writer at a time
    writes it, and the others' writer-side calls raise :class:`NotLeader`."""

    def watch_cursor(self, seen: Callable[[int], None]) -> None:
        """Call ``seen(cursor)`` (from another thread) with the graph's cursor now and
        after each page any node's writer applies (once :meth:`open_reader` returned)."""
        ...

    async def serve_erasures(
        self,
        erase: Callable[[str], Coroutine[Any, Any, list[int] | None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Answer other nodes' :meth:`forward_erase`: ``erase(user_id)`` run on ``loop``
        (this node's), its seqs sent back; None from it: not this node's to answer (its
        writer does not lead), so no answer (once :meth:`open_reader` returned)."""
        ...

    async def forward_erase(self, user_id: str) -> list[int]:
        """Have the node whose writer leads erase ``user_id``'s profile (the writer's
        :meth:`IdentityBackend.erase`); its anonymous events' seqs. Raises
        :class:`StorageUnavailable` when no node answers in time."""
        ...


@runtime_checkable
class SharedLog(Protocol):
    """A log several nodes append to (the cluster's): its end is not the newest seq
    this node has seen (``Store.last_seq``), so how far a reader is behind is asked
    of the log itself."""

    def behind(self, seq: int) -> int:
        """How far the log goes past ``seq``, without I/O (as last read, every few
        seconds): on the cluster, the log messages (each a group of events) after the
        one ``seq`` is in, counted from the stream's last sequence."""
        ...


class Lag(NamedTuple):
    """A destination's lag (:meth:`Feed.lag`): ``events`` not passed, ``seconds``
    since the oldest of them was received, and whether ``events`` is an estimate (a
    cluster's reading of a long backlog reads part of it per reading: the rest
    counts at the mean of the messages read; exact once all were read)."""

    events: int
    seconds: float
    estimated: bool = False


class Span:
    """Part of what a :class:`Feed` handed out, cut by :meth:`Feed.cut`: settled or held
    as one. Opaque to the worker; each feed subclasses it."""

    __slots__ = ()


class Feed(Protocol):
    """One destination's way through the log (:meth:`Store.feed`), read by its worker.

    The worker fetches events in log order, cuts what it fetched into consecutive
    spans (one per batch it delivers, plus what routing kept out), and settles each
    span once every event in it is delivered, skipped or dead-lettered, in any order.
    A feed never loses a span it handed out and did not see settled: it comes back
    (after a restart on SQLite, to whichever node fetches next on a cluster), so
    delivery is at least once.

    - SQLite and memory (``eventd/store/cursor_feed.py``): ``read(after)`` and a saved
      cursor that moves over the spans settled without a gap; one fetcher per
      destination.
    - JetStream (``eventd/store/cluster.py``): the destination's durable pull
      consumer that every node fetches from; settling a span acks each log message
      all of whose events are settled; a node holds what it fetched (the server's
      ack_wait restarted) until it settles it, so a retry waits in the worker with
      eventd's own backoff and Retry-After, never NAKed with a delay.
    """

    @property
    def position(self) -> int:
        """The highest seq below which this feed has settled everything it handed out
        here (the cursor on SQLite): what retention and the live debugger compare to."""
        ...

    @property
    def unsettled(self) -> bool:
        """True while a span cut from a fetch is not settled yet."""
        ...

    @property
    def wakeup(self) -> asyncio.Event:
        """Set when fetching again may find more (new events, a span settled); the
        worker clears it before :meth:`fetch` and waits on it when it found none."""
        ...

    async def open(self) -> None:
        """Find where this destination is (a new one starts at the end of the log)."""
        ...

    async def fetch(self, limit: int) -> list[Event]:
        """Events after everything handed out so far, in log order, about ``limit``
        (a cluster hands out whole log messages); [] when none now."""
        ...

    def cut(self, upto: int) -> Span:
        """The fetched events not cut yet, through seq ``upto``, as one span."""
        ...

    async def settle(self, span: Span) -> None:
        """Every event of ``span`` is done with: the feed may move past it."""
        ...

    async def lag(self, now: int) -> Lag:
        """Events not settled, seconds since the oldest of them was received, and
        whether the count is an estimate (see :class:`Lag`)."""
        ...

    async def passed(self, target: int) -> bool:
        """True once this destination has passed every stored event through seq
        ``target`` (the store's ``last_seq`` when the caller began: ``POST
        /admin/drain``). On a cluster ``target`` (one node's) does not apply: true once
        every event any node acknowledged is settled for this destination, with
        nothing left in the ingest queue either (the cluster's own "drained")."""
        ...

    async def close(self) -> None:
        """Save where the feed is; spans not settled come back to the next reader."""
        ...


# An ordered destination's fetcher of partition p: run(p, holds), stopping once
# holds() is false (the partition's lease may have lapsed).
Lane = Callable[[int, Callable[[], bool]], Coroutine[Any, Any, None]]


@runtime_checkable
class Partitioned(Protocol):
    """A store whose log is split by user into partitions, read by several nodes (the
    cluster, eventd/store/cluster.py): an ordered destination keeps each user's order
    by reading each partition with one fetcher at a time, on whichever node holds
    that partition's lease. A single-machine store is not one: its one worker is
    the one fetcher."""

    def hold_partitions(self, destination: str, run: Lane) -> None:
        """Run ``run(p, holds)`` for each partition this node holds, from now on."""
        ...

    async def release_partitions(self, destination: str) -> None:
        """Stop ``destination``'s fetchers here and let other nodes take them."""
        ...


@runtime_checkable
class Store(Protocol):
    """Where eventd keeps its log and bookkeeping. Every method may raise
    :class:`StorageUnavailable`; reads never block writes."""

    # -- life cycle ------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate, then load what the properties below report."""

    async def close(self, within: float | None = None) -> None:
        """Commit everything accepted, then release every resource. ``within``: the
        seconds a cluster store's close may take in all (None: its own bound); what
        it could not give back by then (leases, claims) lapses with its TTL. A local
        store's close is local I/O and ignores it."""

    # -- the log ---------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest stored event's seq (0 when none), without I/O."""
        ...

    @property
    def pending_events(self) -> int:
        """Events handed to :meth:`append` and not yet durable (ingest sheds load on it)."""
        ...

    @property
    def writable(self) -> bool:
        """False while the last write failed."""
        ...

    @property
    def limit_share(self) -> tuple[int, int]:
        """(this node's place, how many nodes) sharing every destination's
        ``max_in_flight`` and ``rate_limit``, without I/O: (0, 1) on one machine; on a
        cluster the live nodes as of the last heartbeat round, places in node-id order
        (eventd/delivery/share.py divides the limits by it)."""
        ...

    def stats(self) -> StoreStats:
        """Size, limit, health and position, without awaiting."""
        ...

    def subscribe(self) -> asyncio.Event:
        """An event set after every write that stored new events (clear it, then read)."""
        ...

    async def append(self, rows: Sequence[EventRow]) -> int:
        """Store events durably; returns how many were new (the rest were duplicates
        within the dedup window). Raises StorageUnavailable and stores none of them
        when it cannot take them (over ``max_size`` too)."""
        ...

    async def read(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with seq > ``after``, in seq order."""
        ...

    async def read_range(self, first: int, last: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with ``first`` <= seq <= ``last``, in seq order."""
        ...

    def identity_store(self, path: Path, synchronous: str) -> IdentityBackend:
        """Where the identity graph keeps its state for this store (not opened yet).
        SQLite: identity.db at ``path``, a file of its own beside the outbox, with its
        own writer (``synchronous`` as ``[storage]``); the memory store: its
        :class:`MemoryData`; a cluster backend: state its nodes share (``path``
        ignored)."""
        ...

    def log_source(self) -> LogSource | None:
        """A handle another process can open to read the log itself (the identity
        writer reads its pages so, off eventd's event loop), or None when the log can
        only be read in this process (:meth:`read`): the memory store."""
        ...

    def feed(self, destination: str, partition: int | None = None) -> Feed:
        """The way ``destination``'s worker reads the log (not opened yet). SQLite and
        memory: ``read`` after the saved cursor (``partition`` must be None); a cluster:
        the destination's durable consumer (of one partition, for an ordered one)."""
        ...

    async def find_event(self, source: str, message_id: str) -> Event | None:
        """The newest stored event with this ``(source, messageId)``, or None (not
        stored: not committed yet, never sent, or deleted by retention or erasure)."""

    async def read_seqs(self, seqs: Sequence[int]) -> list[Event]:
        """The events at ``seqs`` still stored (retention, erasure), in seq order: a
        feature's index into the log (identity's stitched timeline) reads them back."""
        ...

    async def received_at_after(self, seq: int) -> int | None:
        """When the first event after ``seq`` was received (a consumer's lag), or None."""
        ...

    async def seq_range(self, since: int, until: int) -> SeqRange | None:
        """The events received in ``[since, until]`` (ms), or None when there are none."""
        ...

    # -- cursors (destinations by name; services by service_cursor(name)) ------

    async def cursor(self, name: str) -> int | None:
        """The consumer's saved position, or None when it has none yet."""
        ...

    async def save_cursor(self, name: str, seq: int) -> None:
        """Save the consumer's position (durable when it returns)."""
        ...

    async def cursors(self) -> dict[str, int]:
        """Every saved cursor by consumer name."""
        ...

    # -- dead letters ----------------------------------------------------------

    async def add_dead_letters(
        self, destination: str, letters: Sequence[NewDeadLetter], attempts: int
    ) -> None:
        """Write dead letters (state ``dead``, failed now; error cut to MAX_ERROR_CHARS)."""
        ...

    async def dead_letters(
        self, *, destination: str | None = None, since: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters by id, optionally of one destination and failed at or after ``since``."""
        ...

    async def dead_letter(self, dead_id: int) -> DeadLetter | None:
        """One dead letter, or None."""
        ...

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters in state ``dead`` by destination."""
        ...

    async def request_redrive(self, destination: str | None, ids: Sequence[int] = ()) -> int:
        """Mark dead letters (of ``destination`` if given; only ``ids`` if any) for
        redrive; returns how many were marked."""
        ...

    async def redrive_batch(self, destination: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` of the destination's dead letters marked for redrive, by id."""
        ...

    async def settle_redrive(
        self, delivered: Sequence[int], failed: Sequence[tuple[int, int, str]]
    ) -> None:
        """After a redrive: delete the ``delivered`` ids; put each ``(id, attempts, error)``
        of ``failed`` back to ``dead`` with its attempts added and its new error."""
        ...

    async def purge_dead_letters(
        self, destination: str | None = None, before: int | None = None
    ) -> int:
        """Delete dead letters (of one destination, failed before ``before``); how many."""
        ...

    # -- replay ----------------------------------------------------------------

    async def request_replay(self, destination: str, first: int, last: int) -> None:
        """Ask for the stored range [first, last] to be resent to ``destination``."""
        ...

    async def next_replay(self, destination: str) -> Replay | None:
        """The destination's oldest unfinished replay request."""
        ...

    async def advance_replay(self, replay_id: int, next_seq: int) -> None:
        """Record that the replay has resent everything before ``next_seq``."""
        ...

    async def finish_replay(self, replay_id: int) -> None:
        """Forget a finished replay request."""
        ...

    # -- suppressed users ------------------------------------------------------

    async def suppressions(self) -> list[Suppression]:
        """Every suppression, oldest first."""
        ...

    async def suppression(self, user_id: str) -> Suppression | None: ...

    async def suppress(self, user_id: str, erase: bool) -> None:
        """Add a suppression or update one: ``erase`` can be turned on, never off
        (turning it on marks the erasure unfinished)."""
        ...

    async def unsuppress(self, user_id: str) -> bool:
        """Remove a suppression; False when there was none."""
        ...

    async def erase_user(
        self, user_id: str, below_seq: int, also: Sequence[int] = ()
    ) -> tuple[int, int, bool]:
        """Delete the user's stored events with seq < ``below_seq`` and every dead
        letter of theirs (by the body's ``userId``); the events at the seqs ``also``
        too, by the same bound (what a feature found of theirs without their userId:
        identity's anonymous events). Count the events on the suppression and mark it
        erased when none of theirs (nor of ``also``) is left. Returns (events deleted,
        dead letters deleted, done)."""
        ...

    async def pending_erasures(self) -> list[str]:
        """Users whose erasure is asked and not finished."""
        ...

    # -- retention -------------------------------------------------------------

    async def delete_events(self, *, upto_seq: int, received_before: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events with seq <= ``upto_seq`` received
        before ``received_before``; returns how many (call again while it is ``limit``)."""
        ...

    async def delete_dead_letters(self, *, failed_before: int, limit: int) -> int:
        """Delete up to ``limit`` dead letters that failed before ``failed_before``."""
        ...

    async def compact(self) -> None:
        """Give back space deleted rows left (SQLite: truncate the WAL). Never raises."""
        ...


@runtime_checkable
class DeletionStore(Protocol):
    """What a store keeps for erasures forwarded to destinations (``eventd/privacy/``).

    Optional beside :class:`Store`: the SQLite and memory stores implement it (the
    suite in ``tests/store/test_deletions.py`` checks every backend that does); the
    privacy feature forwards no erasure on a store that does not, and says so."""

    async def user_events(self, user_ids: Sequence[str]) -> list[UserEvent]:
        """Every stored event of these userIds, in seq order (a scan of the log)."""
        ...

    async def request_deletions(
        self, user_id: str, destinations: Sequence[tuple[str, str]], erasure: bytes
    ) -> None:
        """Record an erasure of ``user_id`` asked of each ``(destination, type)``, state
        REQUESTED. Asked again, only a FAILED one starts over (attempts 0, this
        ``erasure``, requested now); the others stay as they are."""
        ...

    async def save_deletion(
        self,
        user_id: str,
        destination: str,
        state: str,
        attempts: int,
        reason: str | None,
        next_attempt_at: int | None = None,
    ) -> None:
        """Record how one stands now (``reason`` cut to MAX_ERROR_CHARS)."""
        ...

    async def pending_deletions(self) -> list[Deletion]:
        """Every REQUESTED one (what a restart resumes), oldest request first."""
        ...

    async def deletions(self, user_id: str) -> list[Deletion]:
        """The user's, by destination name."""
        ...


@runtime_checkable
class SharedDeletionStore(DeletionStore, Protocol):
    """A :class:`DeletionStore` several nodes run at once (the cluster's,
    eventd/store/cluster_deletions.py). Every node's privacy service sees every
    request; a node asks a destination only while it holds that (user, destination)'s
    claim, so one node at a time does (a node that dies leaves its claim to lapse).

    A node-local destination (``Destination.node_local``: each node its own file) is
    asked by every node, each of its own copy: :meth:`pending_deletions` gives a
    node its own copies to run, :meth:`save_deletion` records a node's own, and
    :meth:`deletions` shows the sum with each node's (``Deletion.nodes``)."""

    async def claim_deletion(self, user_id: str, destination: str) -> bool:
        """Take or keep the claim: True while this node may ask ``destination``; False
        while another node holds it. Held claims are kept alive until released. (A
        node-local destination's claim is this node's own: each node asks its own.)"""
        ...

    async def deletion_here(self, user_id: str, destination: str) -> Deletion | None:
        """The deletion as this node is to run it, read from the shared state (None:
        none, or not this node's to run): a shared destination's as it stands; a
        node-local destination's with this node's copy's state, attempts, reason and
        next attempt (what :meth:`save_deletion` then saves on this node)."""
        ...

    async def release_deletion(self, user_id: str, destination: str) -> None:
        """Give the claim back (never raises: an unreleased claim lapses)."""
        ...

    def on_deletion(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(user_id)`` on this node's loop whenever any node changes one
        of the user's deletions."""
        ...
