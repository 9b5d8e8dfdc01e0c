"""An in-memory :class:`~eventd.store.base.Store` for unit tests of what sits above it.

It keeps the SQLite store's contract (the conformance suite in ``tests/store/``
runs both) without a file: its state lives in a :class:`MemoryData` that a test
may hand to a second store to stand for a restart of the process (what was
acknowledged is there; what a store kept only in its own fields is not).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from eventd.event import Event
from eventd.store.base import (
    MAX_ERROR_CHARS,
    REQUESTED,
    DeadLetter,
    Deletion,
    EventRow,
    Feed,
    NewDeadLetter,
    Replay,
    SeqRange,
    StorageUnavailable,
    StoreStats,
    Suppression,
    UserEvent,
    deletion_requested,
    deletion_saved,
    now_ms,
)
from eventd.store.cursor_feed import CursorFeed
from eventd.store.memory_identity import MemoryIdentityData, MemoryIdentityStore


@dataclass
class _Stored:
    seq: int
    row: EventRow


@dataclass
class MemoryData:
    """What a :class:`MemoryStore` holds: its "disk"."""

    events: list[_Stored] = field(default_factory=list)  # by seq
    next_seq: int = 1
    cursors: dict[str, int] = field(default_factory=dict)
    dead: dict[int, DeadLetter] = field(default_factory=dict)
    next_dead: int = 1
    replays: dict[int, Replay] = field(default_factory=dict)
    next_replay: int = 1
    suppressions: dict[str, Suppression] = field(default_factory=dict)
    deletions: dict[tuple[str, str], Deletion] = field(default_factory=dict)
    identity: MemoryIdentityData = field(default_factory=MemoryIdentityData)


class MemoryStore:
    """The Store contract over plain Python structures; ``fail`` makes writes refuse."""

    def __init__(
        self,
        data: MemoryData | None = None,
        *,
        dedup_window: float = 86400.0,
        max_size: int | None = None,
    ) -> None:
        self.data = data if data is not None else MemoryData()
        self.dedup_window_ms = int(dedup_window * 1000)
        self.max_size = max_size
        self.fail: str | None = None  # set: every write raises StorageUnavailable(fail)
        self._pending = 0
        self._writable = True
        self._listeners: list[asyncio.Event] = []
        self._open = False

    # -- life cycle -------------------------------------------------------------

    async def open(self) -> None:
        self._open = True

    async def close(self, within: float | None = None) -> None:
        self._open = False

    @property
    def last_seq(self) -> int:
        return self.data.events[-1].seq if self.data.events else 0

    @property
    def pending_events(self) -> int:
        return self._pending

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def limit_share(self) -> tuple[int, int]:
        return 0, 1  # one machine: each destination's limits are this node's

    def _size(self) -> int:
        return sum(len(s.row[7]) for s in self.data.events) + sum(
            len(d.body) for d in self.data.dead.values()
        )

    def stats(self) -> StoreStats:
        return StoreStats(
            size=self._size(),
            max_size=self.max_size,
            writable=self._writable,
            last_seq=self.last_seq,
            last_error=self.fail,
            location="memory",
        )

    def subscribe(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._listeners.append(ev)
        return ev

    async def _write(self) -> None:
        """Every write's common gate: yields to the loop once (as a commit would)."""
        if not self._open:
            raise StorageUnavailable("the store is closed")
        await asyncio.sleep(0)
        if self.fail is not None:
            self._writable = False
            raise StorageUnavailable(f"storage cannot write: {self.fail}")
        self._writable = True

    # -- the log ----------------------------------------------------------------

    async def append(self, rows: Sequence[EventRow]) -> int:
        self._pending += len(rows)
        try:
            await self._write()
        finally:
            self._pending -= len(rows)
        if self.max_size is not None and self._size() >= self.max_size:
            raise StorageUnavailable(f"storage.max_size reached (of {self.max_size} bytes)")
        d = self.data
        stored = 0
        for row in rows:
            source, message_id, received_at = row[0], row[1], row[6]
            if any(
                s.row[0] == source
                and s.row[1] == message_id
                and s.row[6] > received_at - self.dedup_window_ms
                for s in d.events
            ):
                continue
            d.events.append(_Stored(d.next_seq, row))
            d.next_seq += 1
            stored += 1
        if stored:
            for ev in self._listeners:
                ev.set()
        return stored

    def _index(self, seq: int) -> int:
        """Position of the first event with seq >= ``seq``."""
        return bisect.bisect_left([s.seq for s in self.data.events], seq)

    @staticmethod
    def _event(s: _Stored) -> Event:
        return Event(s.seq, s.row[0], s.row[6], body=s.row[7], user_id=s.row[4])

    async def read(self, after: int, limit: int) -> list[Event]:
        i = self._index(after + 1)
        return [self._event(s) for s in self.data.events[i : i + limit]]

    async def read_range(self, first: int, last: int, limit: int) -> list[Event]:
        i = self._index(first)
        return [self._event(s) for s in self.data.events[i : i + limit] if s.seq <= last]

    def identity_store(self, path: Path, synchronous: str) -> MemoryIdentityStore:
        """The identity graph's state in :attr:`data` (``path`` and ``synchronous`` unused)."""
        return MemoryIdentityStore(self.data.identity)

    def feed(self, destination: str, partition: int | None = None) -> Feed:
        """``read`` after the destination's saved cursor (one fetcher: no partitions)."""
        return CursorFeed(self, destination, partition)

    def log_source(self) -> None:
        """None: the log lives in this process's memory (readers use :meth:`read`)."""
        return None

    async def find_event(self, source: str, message_id: str) -> Event | None:
        found = [s for s in self.data.events if s.row[0] == source and s.row[1] == message_id]
        return self._event(found[-1]) if found else None

    async def read_seqs(self, seqs: Sequence[int]) -> list[Event]:
        wanted = set(seqs)
        return [self._event(s) for s in self.data.events if s.seq in wanted]

    async def received_at_after(self, seq: int) -> int | None:
        i = self._index(seq + 1)
        return self.data.events[i].row[6] if i < len(self.data.events) else None

    async def seq_range(self, since: int, until: int) -> SeqRange | None:
        seqs = [s.seq for s in self.data.events if since <= s.row[6] <= until]
        return SeqRange(seqs[0], seqs[-1], len(seqs)) if seqs else None

    # -- cursors ----------------------------------------------------------------

    async def cursor(self, name: str) -> int | None:
        return self.data.cursors.get(name)

    async def save_cursor(self, name: str, seq: int) -> None:
        await self._write()
        self.data.cursors[name] = seq

    async def cursors(self) -> dict[str, int]:
        return dict(self.data.cursors)

    # -- dead letters -----------------------------------------------------------

    async def add_dead_letters(
        self, destination: str, letters: Sequence[NewDeadLetter], attempts: int
    ) -> None:
        await self._write()
        now = now_ms()
        for x in letters:
            i = self.data.next_dead
            self.data.next_dead += 1
            self.data.dead[i] = DeadLetter(
                i,
                destination,
                x.seq,
                x.source,
                x.message_id,
                x.received_at,
                x.body,
                attempts,
                x.error[:MAX_ERROR_CHARS],
                now,
                "dead",
            )

    def _matching(self, destination: str | None) -> list[DeadLetter]:
        return [
            d
            for _, d in sorted(self.data.dead.items())
            if not destination or d.destination == destination
        ]

    async def dead_letters(
        self, *, destination: str | None = None, since: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        found = [d for d in self._matching(destination) if since is None or d.failed_at >= since]
        return found[: max(0, limit)]

    async def dead_letter(self, dead_id: int) -> DeadLetter | None:
        return self.data.dead.get(dead_id)

    async def dead_letter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.data.dead.values():
            if d.state == "dead":
                counts[d.destination] = counts.get(d.destination, 0) + 1
        return counts

    async def request_redrive(self, destination: str | None, ids: Sequence[int] = ()) -> int:
        await self._write()
        wanted = set(ids)
        n = 0
        for d in self._matching(destination):
            if d.state == "dead" and (not wanted or d.id in wanted):
                self.data.dead[d.id] = replace(d, state="redrive")
                n += 1
        return n

    async def redrive_batch(self, destination: str, limit: int) -> list[DeadLetter]:
        return [d for d in self._matching(destination) if d.state == "redrive"][:limit]

    async def settle_redrive(
        self, delivered: Sequence[int], failed: Sequence[tuple[int, int, str]]
    ) -> None:
        await self._write()
        for i in delivered:
            self.data.dead.pop(i, None)
        now = now_ms()
        for i, attempts, why in failed:
            d = self.data.dead.get(i)
            if d is not None:
                self.data.dead[i] = replace(
                    d,
                    state="dead",
                    attempts=d.attempts + attempts,
                    error=why[:MAX_ERROR_CHARS],
                    failed_at=now,
                )

    async def purge_dead_letters(
        self, destination: str | None = None, before: int | None = None
    ) -> int:
        await self._write()
        gone = [d.id for d in self._matching(destination) if before is None or d.failed_at < before]
        for i in gone:
            del self.data.dead[i]
        return len(gone)

    # -- replay -----------------------------------------------------------------

    async def request_replay(self, destination: str, first: int, last: int) -> None:
        await self._write()
        i = self.data.next_replay
        self.data.next_replay += 1
        self.data.replays[i] = Replay(i, destination, first, last)

    async def next_replay(self, destination: str) -> Replay | None:
        return next(
            (r for _, r in sorted(self.data.replays.items()) if r.destination == destination),
            None,
        )

    async def advance_replay(self, replay_id: int, next_seq: int) -> None:
        await self._write()
        r = self.data.replays.get(replay_id)
        if r is not None:
            self.data.replays[replay_id] = replace(r, next_seq=next_seq)

    async def finish_replay(self, replay_id: int) -> None:
        await self._write()
        self.data.replays.pop(replay_id, None)

    # -- suppressed users -------------------------------------------------------

    async def suppressions(self) -> list[Suppression]:
        return sorted(self.data.suppressions.values(), key=lambda s: (s.created_at, s.user_id))

    async def suppression(self, user_id: str) -> Suppression | None:
        return self.data.suppressions.get(user_id)

    async def suppress(self, user_id: str, erase: bool) -> None:
        await self._write()
        old = self.data.suppressions.get(user_id)
        if old is None:
            self.data.suppressions[user_id] = Suppression(user_id, now_ms(), erase, 0, None)
        elif erase and not old.erase:
            self.data.suppressions[user_id] = replace(old, erase=True, erased_at=None)

    async def unsuppress(self, user_id: str) -> bool:
        await self._write()
        return self.data.suppressions.pop(user_id, None) is not None

    async def erase_user(
        self, user_id: str, below_seq: int, also: Sequence[int] = ()
    ) -> tuple[int, int, bool]:
        await self._write()
        d = self.data
        extra = set(also)
        theirs = [s for s in d.events if s.row[4] == user_id or s.seq in extra]
        gone = {s.seq for s in theirs if s.seq < below_seq}
        d.events = [s for s in d.events if s.seq not in gone]
        dead = [i for i, x in d.dead.items() if _user_id(x.body) == user_id]
        for i in dead:
            del d.dead[i]
        done = len(gone) == len(theirs)
        old = d.suppressions.get(user_id)
        if old is not None:
            d.suppressions[user_id] = replace(
                old,
                erased_events=old.erased_events + len(gone),
                erased_at=now_ms() if done else None,
            )
        return len(gone), len(dead), done

    async def pending_erasures(self) -> list[str]:
        return [s.user_id for s in self.data.suppressions.values() if s.erase and not s.erased_at]

    # -- erasures forwarded to destinations (DeletionStore) ---------------------

    async def user_events(self, user_ids: Sequence[str]) -> list[UserEvent]:
        ids = set(user_ids)
        return [
            UserEvent(s.seq, s.row[0], s.row[6], s.row[5])
            for s in self.data.events
            if s.row[4] in ids
        ]

    async def request_deletions(
        self, user_id: str, destinations: Sequence[tuple[str, str]], erasure: bytes
    ) -> None:
        await self._write()
        at = now_ms()
        for destination, type_ in destinations:
            key = (user_id, destination)
            old = self.data.deletions.get(key)
            self.data.deletions[key] = deletion_requested(
                old, user_id, destination, type_, erasure, at
            )

    async def save_deletion(
        self,
        user_id: str,
        destination: str,
        state: str,
        attempts: int,
        reason: str | None,
        next_attempt_at: int | None = None,
    ) -> None:
        await self._write()
        old = self.data.deletions.get((user_id, destination))
        if old is not None:
            self.data.deletions[(user_id, destination)] = deletion_saved(
                old, state, attempts, reason, next_attempt_at
            )

    async def pending_deletions(self) -> list[Deletion]:
        found = [d for d in self.data.deletions.values() if d.state == REQUESTED]
        return sorted(found, key=lambda d: d.requested_at)

    async def deletions(self, user_id: str) -> list[Deletion]:
        found = [d for (u, _), d in self.data.deletions.items() if u == user_id]
        return sorted(found, key=lambda d: d.destination)

    # -- retention --------------------------------------------------------------

    async def delete_events(self, *, upto_seq: int, received_before: int, limit: int) -> int:
        await self._write()
        gone = {s.seq for s in self.data.events if s.seq <= upto_seq and s.row[6] < received_before}
        gone = set(sorted(gone)[:limit])
        self.data.events = [s for s in self.data.events if s.seq not in gone]
        return len(gone)

    async def delete_dead_letters(self, *, failed_before: int, limit: int) -> int:
        await self._write()
        gone = [i for i, d in sorted(self.data.dead.items()) if d.failed_at < failed_before]
        for i in gone[:limit]:
            del self.data.dead[i]
        return len(gone[:limit])

    async def compact(self) -> None:
        return None


def _user_id(body: bytes) -> object:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return message.get("userId") if isinstance(message, dict) else None
