"""The SQLite outbox: the single-machine :class:`~eventd.store.base.Store`.

Every SQL statement eventd runs against its own file lives in this package.

Every write goes through one writer: callers queue statements and await a future;
the writer commits everything queued in one transaction (group commit) on its own
thread and resolves the futures only after COMMIT. The writer runs on a plain
``sqlite3`` connection in a single-thread executor so a whole group costs one
thread hop (aiosqlite would hop per statement). Reads use a pool of aiosqlite
connections, which WAL lets run beside the writer (one per concurrent reader, so
destinations read in parallel as they did with a connection each).

The events table is an append-only log: ``seq`` (the rowid) orders it, each
consumer keeps its own cursor into it, and retention deletes from its head.

Dedup of (source, messageId) inside ``dedup_window`` is a RocksDB set beside the
file (``<path>.dedup/``, :class:`~eventd.store.dedup.DedupSet`), not an index of
the events table: an LSM set takes random UUID keys at a cost that does not grow
with the store, where a B-tree index puts every insert on a random page (issue
18, docs/benchmarks.md). The writer thread owns the set. Per group commit: look
the group's keys up, insert the new events (each with its seq) and COMMIT, and
only then add their keys with the group's last seq as the set's watermark (one
RocksDB WriteBatch, not fsynced). So the set never holds the key of an event the
log does not hold, and what a crash (or a failed add) loses of the set is past
its watermark in the log: opening the store, and any commit after a failed add,
first re-adds the keys of the log's tail after the watermark. The log is the
truth; the set is a cache of its last window.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from eventd.event import Event
from eventd.metrics import Metrics
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
    next_group,
    now_ms,
)
from eventd.store.cursor_feed import CursorFeed
from eventd.store.datalock import DataLock
from eventd.store.dedup import DedupSet, dedup_key
from eventd.store.identity import IdentityStore
from eventd.store.log_reader import SqliteLogSource
from eventd.store.schema import INSERT_EVENT_SEQ, migrate

log = structlog.get_logger("eventd.store")

# Rows per delete when erasing a user: each batch its own short transaction.
ERASE_BATCH = 5000
# SQLite's INTEGER range: a bigger Python int cannot be bound as a parameter.
SQL_INT_MAX = 2**63 - 1

# Retention's batch: of the first ``limit`` events up to the passed seq (the head of
# the log), those before the first one still inside retention; received_at follows
# seq, and an old row behind a newer one waits until that one is old too. It reads
# ``limit`` rows whatever the size of the log. Issue 18: the form before it, a bound
# ``seq < (first row with received_at >= ?)`` beside ``seq <= ?``, had SQLite range
# over ``seq <= ?`` and test every row against received_at: on a 10,000,000-event store
# a 7.7 GB scan (~15 s) on the writer thread, holding every commit, at start-up and
# every minute after.
DELETE_OLD_EVENTS = (
    "WITH head AS MATERIALIZED ("
    "SELECT seq, received_at FROM events WHERE seq <= ? ORDER BY seq LIMIT ?)"
    " DELETE FROM events WHERE seq IN (SELECT seq FROM head WHERE seq < coalesce("
    f"(SELECT min(seq) FROM head WHERE received_at >= ?), {SQL_INT_MAX}))"
)
# Ids per IN (...) list: under SQLite's variable limit.
MAX_IDS = 10000
# Keys per WriteBatch when the dedup set re-adds the log's tail.
CATCH_UP_CHUNK = 20_000

SAVE_CURSOR = (
    "INSERT INTO cursors (destination, seq, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (destination) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"
)
INSERT_DEAD = (
    "INSERT INTO dead_letters (destination, seq, source, message_id, received_at, body, attempts,"
    " error, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
READ_EVENTS = "SELECT seq, source, received_at, body, user_id FROM events"
DEAD_COLUMNS = (
    "id, destination, seq, source, message_id, received_at, body, attempts, error, failed_at, state"
)
SELECT_SUPPRESSION = "SELECT user_id, created_at, erase, erased_events, erased_at FROM suppressions"
DELETION_COLUMNS = (
    "user_id, destination, type, state, erasure, attempts, reason, requested_at, updated_at,"
    " next_attempt_at"
)
# A new request; asked again, only a failed one starts over (DeletionStore.request_deletions).
REQUEST_DELETION = (
    f"INSERT INTO deletions ({DELETION_COLUMNS})"
    " VALUES (?, ?, ?, 'requested', ?, 0, NULL, ?, ?, NULL)"
    " ON CONFLICT (user_id, destination) DO UPDATE SET state = 'requested', attempts = 0,"
    " erasure = excluded.erasure, reason = NULL, requested_at = excluded.requested_at,"
    " updated_at = excluded.updated_at, next_attempt_at = NULL WHERE deletions.state = 'failed'"
)


@dataclass
class _Write:
    sql: str
    rows: Sequence[Sequence[Any]]
    future: asyncio.Future[int]
    is_ingest: bool = False


class SqliteStore:
    """Owns the database file: the writer task, its connection, and reader connections."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "full",
        dedup_window: float = 86400.0,
        max_size: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.dedup_window_ms = int(dedup_window * 1000)
        self.max_size = max_size
        self.metrics = metrics or Metrics()
        self.last_error: str | None = None
        self._last_seq = 0
        self._next_seq = 1  # seqs are never reused, even after the tail was erased
        self._dedup: DedupSet | None = None
        self._dedup_bytes_cached, self._dedup_bytes_at = 0, float("-inf")
        self._dedup_seq = 0  # the set's watermark: the log up to here has its keys in it
        self._writable = True  # false while the last commit failed; /ready says so
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._pending_events = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventd-writer")
        self._conn: sqlite3.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        # One process per outbox: a second one would deliver it too (datalock.py).
        self._lock = DataLock(path.with_name(path.name + ".lock"), f"storage.path = '{path}'")
        self._listeners: list[asyncio.Event] = []
        self._idle_readers: list[aiosqlite.Connection] = []
        self._readers: list[aiosqlite.Connection] = []

    # -- life cycle -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def pending_events(self) -> int:
        return self._pending_events

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def limit_share(self) -> tuple[int, int]:
        return 0, 1  # one machine: each destination's limits are this node's

    async def open(self) -> None:
        """Raises StorageInUse when another process has this outbox open."""
        self._lock.acquire()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._open_sync)
        except Exception:
            self._lock.release()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        # Checkpoint often enough that the WAL stays small; TRUNCATE runs in compact().
        conn.execute("PRAGMA wal_autocheckpoint=1000")
        # Deleted rows are overwritten with zeros, so an erased user's events (and
        # events past retention) do not linger in free pages. FAST was tried: it left
        # 14 of 40 erased copies in the file (tests/test_suppressions.py). Inserts
        # cost nothing more; deletes write their freed pages.
        conn.execute("PRAGMA secure_delete=ON")
        migrate(conn)
        conn.execute(
            "UPDATE settings SET value = ? WHERE key = 'dedup_window_ms'", (self.dedup_window_ms,)
        )
        self._last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        self._next_seq = self._last_seq + 1
        try:
            self._ready_dedup(conn)
        except Exception as exc:  # rocksdict raises plain Exception (a full disk, ...)
            # Reads and delivery go on; every commit tries again first, and ingest is
            # refused (503) until the set opens: never stored without exact dedup.
            log.warning("dedup set cannot open; ingest refused until it can", error=str(exc))
        self._conn = conn

    def _ready_dedup(self, conn: sqlite3.Connection) -> DedupSet:
        """The dedup set, open and holding the keys of the whole log (writer thread).

        (Re)opens it when it is not open or a write to it failed (RocksDB refuses
        writes after a background error, e.g. a full disk, until reopened), then
        re-reads the log after its watermark. Raises when it cannot: the commit then
        fails, and never dedups less than exactly."""
        dedup = self._dedup
        if dedup is not None and self._dedup_seq >= self._last_seq:
            return dedup
        if dedup is not None:
            self._dedup = None
            _close_dedup(dedup)
        dedup = DedupSet(dedup_path(self.path), self.dedup_window_ms)
        self._dedup = dedup
        self._dedup_seq = dedup.watermark
        self._next_seq = max(self._next_seq, self._dedup_seq + 1)
        added = self._catch_up_dedup(conn, dedup)
        if added:
            log.info("dedup set caught up with the log", keys=added, watermark=self._dedup_seq)
        return dedup

    def _catch_up_dedup(self, conn: sqlite3.Connection, dedup: DedupSet) -> int:
        """Add the keys of the log after the set's watermark (the whole last window
        when the set is new: a store from before migration 4, or a lost directory);
        returns how many keys were added."""
        if self._dedup_seq == 0:
            since = now_ms() - self.dedup_window_ms
            cur = conn.execute(
                "SELECT seq, source, message_id, received_at FROM events"
                " WHERE received_at >= ? ORDER BY seq",
                (_clamp(since),),
            )
        else:
            cur = conn.execute(
                "SELECT seq, source, message_id, received_at FROM events WHERE seq > ?"
                " ORDER BY seq",
                (self._dedup_seq,),
            )
        added = 0
        while rows := cur.fetchmany(CATCH_UP_CHUNK):
            last = rows[-1][0]
            dedup.add_stored(((dedup_key(s, m), at, seq) for seq, s, m, at in rows), last)
            self._dedup_seq = last
            added += len(rows)
        if self._last_seq > self._dedup_seq:
            # Nothing after the watermark is left (the tail was erased): move it on so
            # the next catch-up does not scan again.
            dedup.add_stored((), self._last_seq)
            self._dedup_seq = self._last_seq
        self.metrics.dedup_recovered.inc(added)
        return added

    async def close(self, within: float | None = None) -> None:
        """Commit everything queued, then close every connection (``within``: unused,
        see :meth:`eventd.store.base.Store.close`)."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        self._idle_readers.clear()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        if self._dedup is not None:
            dedup, self._dedup = self._dedup, None
            await asyncio.get_running_loop().run_in_executor(self._thread, _close_dedup, dedup)
        self._thread.shutdown(wait=True)
        self._lock.release()  # last: the next process may open everything above

    def subscribe(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._listeners.append(ev)
        return ev

    def stats(self) -> StoreStats:
        return StoreStats(
            size=self.file_bytes(),
            max_size=self.max_size,
            writable=self._writable,
            last_seq=self._last_seq,
            last_error=self.last_error,
            location=str(self.path),
        )

    # -- reads ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read-only connection from the pool (a new one when all are busy)."""
        if self._idle_readers:
            conn = self._idle_readers.pop()
        else:
            conn = await aiosqlite.connect(self.path)
            await conn.execute("PRAGMA query_only=1")
            await conn.execute("PRAGMA busy_timeout=5000")
            self._readers.append(conn)
        try:
            yield conn
        finally:
            if conn in self._readers:  # not closed meanwhile
                self._idle_readers.append(conn)

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self._reader() as conn:
                return list(await conn.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"storage cannot read: {exc}") from exc

    async def _events(self, where: str, params: Sequence[Any]) -> list[Event]:
        rows = await self._fetch(f"{READ_EVENTS} {where}", params)
        return [Event(r[0], r[1], r[2], body=r[3], user_id=r[4]) for r in rows]

    async def read(self, after: int, limit: int) -> list[Event]:
        return await self._events("WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))

    async def read_range(self, first: int, last: int, limit: int) -> list[Event]:
        return await self._events(
            "WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?", (first, last, limit)
        )

    def identity_store(self, path: Path, synchronous: str) -> IdentityStore:
        """identity.db at ``path``: a file of its own, so identity writes never wait on
        (or hold up) the ingest group commit (eventd/store/identity.py)."""
        return IdentityStore(path, synchronous)

    def feed(self, destination: str, partition: int | None = None) -> Feed:
        """``read`` after the destination's saved cursor (one fetcher: no partitions)."""
        return CursorFeed(self, destination, partition)

    def log_source(self) -> SqliteLogSource:
        """The file, read-only from another process (eventd/store/log_reader.py)."""
        return SqliteLogSource(str(self.path))

    async def find_event(self, source: str, message_id: str) -> Event | None:
        # Inside the dedup window the set knows the newest copy's seq; past it (or
        # after that copy was erased) only a scan of the log finds an older copy.
        key = dedup_key(source, message_id)
        seq = await asyncio.get_running_loop().run_in_executor(self._thread, self._stored_seq, key)
        if seq is not None:
            found = await self._events(
                "WHERE seq = ? AND source = ? AND message_id = ?", (seq, source, message_id)
            )
            if found:
                return found[0]
        found = await self._events(
            "WHERE source = ? AND message_id = ? ORDER BY seq DESC LIMIT 1", (source, message_id)
        )
        return found[0] if found else None

    def _stored_seq(self, key: bytes) -> int | None:
        """Writer thread: the set's seq for ``key`` (None when the set is not open)."""
        return self._dedup.stored_seq(key) if self._dedup is not None else None

    async def read_seqs(self, seqs: Sequence[int]) -> list[Event]:
        found: list[Event] = []
        wanted = sorted(set(seqs))
        for i in range(0, len(wanted), MAX_IDS):
            chunk = wanted[i : i + MAX_IDS]
            rows = await self._fetch(
                f"{READ_EVENTS} WHERE seq IN ({','.join('?' * len(chunk))}) ORDER BY seq", chunk
            )
            found += [Event(r[0], r[1], r[2], body=r[3], user_id=r[4]) for r in rows]
        return found

    async def received_at_after(self, seq: int) -> int | None:
        rows = await self._fetch(
            "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)
        )
        return int(rows[0][0]) if rows else None

    async def seq_range(self, since: int, until: int) -> SeqRange | None:
        # received_at follows seq closely (stamped at receipt, committed in order)
        rows = await self._fetch(
            "SELECT min(seq), max(seq), count(*) FROM events WHERE received_at >= ?"
            " AND received_at <= ?",
            (_clamp(since), _clamp(until)),
        )
        first, last, count = rows[0]
        return SeqRange(first, last, count) if count else None

    # -- cursors ----------------------------------------------------------------

    async def cursor(self, name: str) -> int | None:
        rows = await self._fetch("SELECT seq FROM cursors WHERE destination = ?", (name,))
        return int(rows[0][0]) if rows else None

    async def save_cursor(self, name: str, seq: int) -> None:
        await self._execute(SAVE_CURSOR, [(name, seq, now_ms())])

    async def cursors(self) -> dict[str, int]:
        return dict(await self._fetch("SELECT destination, seq FROM cursors"))

    # -- dead letters -----------------------------------------------------------

    async def add_dead_letters(
        self, destination: str, letters: Sequence[NewDeadLetter], attempts: int
    ) -> None:
        now = now_ms()
        rows = [
            (
                destination,
                d.seq,
                d.source,
                d.message_id,
                d.received_at,
                d.body,
                attempts,
                d.error[:MAX_ERROR_CHARS],
                now,
            )
            for d in letters
        ]
        await self._execute(INSERT_DEAD, rows)

    async def dead_letters(
        self, *, destination: str | None = None, since: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        where, args = _dead_filter(destination, "failed_at >= ?", since)
        rows = await self._fetch(
            f"SELECT {DEAD_COLUMNS} FROM dead_letters {where} ORDER BY id LIMIT ?",
            (*args, max(0, limit)),
        )
        return [DeadLetter(*r) for r in rows]

    async def dead_letter(self, dead_id: int) -> DeadLetter | None:
        if not 0 <= dead_id <= SQL_INT_MAX:
            return None
        rows = await self._fetch(
            f"SELECT {DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (dead_id,)
        )
        return DeadLetter(*rows[0]) if rows else None

    async def dead_letter_counts(self) -> dict[str, int]:
        return dict(
            await self._fetch(
                "SELECT destination, count(*) FROM dead_letters WHERE state = 'dead' GROUP BY 1"
            )
        )

    async def request_redrive(self, destination: str | None, ids: Sequence[int] = ()) -> int:
        where, args = _dead_filter(destination, None, None)
        where += " AND state = 'dead'" if where else "WHERE state = 'dead'"
        if ids:
            ids = [i for i in ids if 0 <= i <= SQL_INT_MAX][:MAX_IDS]
            where += f" AND id IN ({','.join('?' * len(ids))})"
            args = [*args, *ids]
        return await self._execute(f"UPDATE dead_letters SET state = 'redrive' {where}", [args])

    async def redrive_batch(self, destination: str, limit: int) -> list[DeadLetter]:
        rows = await self._fetch(
            f"SELECT {DEAD_COLUMNS} FROM dead_letters WHERE destination = ? AND state = 'redrive'"
            " ORDER BY id LIMIT ?",
            (destination, limit),
        )
        return [DeadLetter(*r) for r in rows]

    async def settle_redrive(
        self, delivered: Sequence[int], failed: Sequence[tuple[int, int, str]]
    ) -> None:
        if delivered:
            await self._execute("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in delivered])
        if failed:
            now = now_ms()
            await self._execute(
                "UPDATE dead_letters SET state = 'dead', attempts = attempts + ?, error = ?,"
                " failed_at = ? WHERE id = ?",
                [(attempts, why[:MAX_ERROR_CHARS], now, i) for i, attempts, why in failed],
            )

    async def purge_dead_letters(
        self, destination: str | None = None, before: int | None = None
    ) -> int:
        where, args = _dead_filter(destination, "failed_at < ?", before)
        return await self._execute(f"DELETE FROM dead_letters {where}", [args])

    # -- replay -----------------------------------------------------------------

    async def request_replay(self, destination: str, first: int, last: int) -> None:
        await self._execute(
            "INSERT INTO replays (destination, next_seq, until_seq, created_at) VALUES (?,?,?,?)",
            [(destination, first, last, now_ms())],
        )

    async def next_replay(self, destination: str) -> Replay | None:
        rows = await self._fetch(
            "SELECT id, destination, next_seq, until_seq FROM replays WHERE destination = ?"
            " ORDER BY id LIMIT 1",
            (destination,),
        )
        return Replay(*rows[0]) if rows else None

    async def advance_replay(self, replay_id: int, next_seq: int) -> None:
        await self._execute("UPDATE replays SET next_seq = ? WHERE id = ?", [(next_seq, replay_id)])

    async def finish_replay(self, replay_id: int) -> None:
        await self._execute("DELETE FROM replays WHERE id = ?", [(replay_id,)])

    # -- suppressed users -------------------------------------------------------

    async def suppressions(self) -> list[Suppression]:
        rows = await self._fetch(f"{SELECT_SUPPRESSION} ORDER BY created_at, user_id")
        return [_suppression(r) for r in rows]

    async def suppression(self, user_id: str) -> Suppression | None:
        rows = await self._fetch(f"{SELECT_SUPPRESSION} WHERE user_id = ?", (user_id,))
        return _suppression(rows[0]) if rows else None

    async def suppress(self, user_id: str, erase: bool) -> None:
        await self._execute(
            "INSERT INTO suppressions (user_id, created_at, erase) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET erase = max(erase, excluded.erase),"
            " erased_at = CASE WHEN excluded.erase > erase THEN NULL ELSE erased_at END",
            [(user_id, now_ms(), int(erase))],
        )

    async def unsuppress(self, user_id: str) -> bool:
        return await self._execute("DELETE FROM suppressions WHERE user_id = ?", [(user_id,)]) > 0

    async def erase_user(
        self, user_id: str, below_seq: int, also: Sequence[int] = ()
    ) -> tuple[int, int, bool]:
        # Found with a reader (one scan, off the writer), deleted by seq (fast, batched).
        found = {
            r[0] for r in await self._fetch("SELECT seq FROM events WHERE user_id = ?", (user_id,))
        }
        found.update(e.seq for e in await self.read_seqs(also))
        seqs = sorted(s for s in found if s < below_seq)
        erased = 0
        for i in range(0, len(seqs), ERASE_BATCH):
            chunk = seqs[i : i + ERASE_BATCH]
            erased += await self._execute("DELETE FROM events WHERE seq = ?", [(s,) for s in chunk])
        dead = [
            r[0]
            for r in await self._fetch(
                "SELECT id FROM dead_letters"
                " WHERE json_extract(CAST(body AS TEXT), '$.userId') = ?",
                (user_id,),
            )
        ]
        if dead:
            await self._execute("DELETE FROM dead_letters WHERE id = ?", [(d,) for d in dead])
        done = len(seqs) == len(found)
        await self._execute(
            "UPDATE suppressions SET erased_events = erased_events + ?,"
            " erased_at = CASE WHEN ? THEN ? ELSE NULL END WHERE user_id = ?",
            [(erased, done, now_ms(), user_id)],
        )
        return erased, len(dead), done

    async def pending_erasures(self) -> list[str]:
        rows = await self._fetch(
            "SELECT user_id FROM suppressions WHERE erase = 1 AND erased_at IS NULL"
        )
        return [r[0] for r in rows]

    # -- erasures forwarded to destinations (DeletionStore) ---------------------

    async def user_events(self, user_ids: Sequence[str]) -> list[UserEvent]:
        # One scan of the log, as for erase_user: there is no index on user_id.
        rows = await self._fetch(
            "SELECT seq, source, received_at, anonymous_id FROM events"
            f" WHERE user_id IN ({', '.join('?' * len(user_ids))}) ORDER BY seq",
            tuple(user_ids),
        )
        return [UserEvent(*r) for r in rows]

    async def request_deletions(
        self, user_id: str, destinations: Sequence[tuple[str, str]], erasure: bytes
    ) -> None:
        at = now_ms()
        await self._execute(
            REQUEST_DELETION, [(user_id, d, t, erasure, at, at) for d, t in destinations]
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
        await self._execute(
            "UPDATE deletions SET state = ?, attempts = ?, reason = ?, next_attempt_at = ?,"
            " updated_at = ? WHERE user_id = ? AND destination = ?",
            [
                (
                    state,
                    attempts,
                    reason[:MAX_ERROR_CHARS] if reason is not None else None,
                    next_attempt_at,
                    now_ms(),
                    user_id,
                    destination,
                )
            ],
        )

    async def pending_deletions(self) -> list[Deletion]:
        rows = await self._fetch(
            f"SELECT {DELETION_COLUMNS} FROM deletions WHERE state = ? ORDER BY requested_at",
            (REQUESTED,),
        )
        return [Deletion(*r) for r in rows]

    async def deletions(self, user_id: str) -> list[Deletion]:
        rows = await self._fetch(
            f"SELECT {DELETION_COLUMNS} FROM deletions WHERE user_id = ? ORDER BY destination",
            (user_id,),
        )
        return [Deletion(*r) for r in rows]

    # -- retention --------------------------------------------------------------

    async def delete_events(self, *, upto_seq: int, received_before: int, limit: int) -> int:
        return await self._execute(DELETE_OLD_EVENTS, [(upto_seq, limit, _clamp(received_before))])

    async def delete_dead_letters(self, *, failed_before: int, limit: int) -> int:
        return await self._execute(
            "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE failed_at < ?"
            " LIMIT ?)",
            [(_clamp(failed_before), limit)],
        )

    async def compact(self) -> None:
        """Truncate the WAL (it would otherwise keep its high-water size)."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        try:
            await loop.run_in_executor(self._thread, run)
        except sqlite3.Error as exc:
            log.warning("checkpoint failed", error=str(exc))

    # -- the writer -------------------------------------------------------------

    async def append(self, rows: Sequence[EventRow]) -> int:
        self._pending_events += len(rows)
        try:
            return await self._submit(INSERT_EVENT_SEQ, rows, is_ingest=True)
        finally:
            self._pending_events -= len(rows)

    async def _execute(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per row inside the next group commit; returns rows changed."""
        return await self._submit(sql, rows)

    async def _submit(
        self, sql: str, rows: Sequence[Sequence[Any]], is_ingest: bool = False
    ) -> int:
        if self._writer is None:
            raise StorageUnavailable("the outbox is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(sql, rows, fut, is_ingest))
        return await fut

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            # Commit whatever is queued as soon as the writer is free: no linger timer.
            group, stopping = await next_group(self._queue)
            if not group:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._thread, self._commit_sync, group)
            except BaseException as exc:
                for w in group:
                    if not w.future.done():
                        w.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self._after_commit(group, results, time.perf_counter() - started)

    def _after_commit(
        self, group: list[_Write], results: list[int | Exception], seconds: float
    ) -> None:
        stored = 0
        for w, result in zip(group, results, strict=True):
            if isinstance(result, Exception):
                w.future.set_exception(result)
                continue
            w.future.set_result(result)
            if w.is_ingest:
                stored += result
                if len(w.rows) > result:  # inc(0) would still take the counter's lock
                    self.metrics.duplicates.inc(len(w.rows) - result)
        if stored:
            for ev in self._listeners:
                ev.set()
        self.metrics.commit_events.observe(sum(len(w.rows) for w in group if w.is_ingest))
        self.metrics.commit_seconds.observe(seconds)
        self.metrics.storage_writable.set(1 if self._writable else 0)

    def _commit_sync(self, group: list[_Write]) -> list[int | Exception]:
        """Run on the writer thread: one transaction for the whole group."""
        conn = self._conn
        if conn is None:
            raise StorageUnavailable("the outbox is closed")
        results: list[int | Exception] = [0] * len(group)
        over = self._over_max_size(conn) if any(w.is_ingest for w in group) else None
        next_seq = self._next_seq
        keys: list[tuple[bytes, int, int]] = []
        try:
            fresh = self._fresh_rows(conn, group) if over is None else {}
        except Exception as exc:  # rocksdict raises plain Exception (I/O errors)
            return self._failed(group, exc)
        # Consecutive appends go in as one executemany (one statement run, not one per
        # request: single events come in groups of one-row appends); any other write
        # runs in its place, after the appends queued before it.
        appended: list[Sequence[Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, w in enumerate(group):
                if not w.is_ingest:
                    if appended:
                        conn.executemany(INSERT_EVENT_SEQ, appended)
                        appended = []
                    before = conn.total_changes
                    conn.executemany(w.sql, w.rows)
                    results[i] = conn.total_changes - before
                elif over is not None:
                    results[i] = StorageUnavailable(over)
                else:
                    rows, row_keys = fresh[i]
                    appended += [(next_seq + n, *r) for n, r in enumerate(rows)]
                    keys += [
                        (key, r[6], next_seq + n)
                        for n, (r, key) in enumerate(zip(rows, row_keys, strict=True))
                    ]
                    next_seq += len(rows)
                    results[i] = len(rows)
            if appended:
                conn.executemany(INSERT_EVENT_SEQ, appended)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return self._failed(group, exc)
        if not self._writable:
            log.info("storage writable again")
        self._writable = True
        self._next_seq = next_seq
        self._last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        if keys:
            self._add_keys(keys)
        return results

    def _failed(self, group: list[_Write], exc: Exception) -> list[int | Exception]:
        self._writable = False
        self.last_error = str(exc)
        self.metrics.commit_failures.inc()
        log.warning("commit failed", error=str(exc), writes=len(group))
        return [StorageUnavailable(f"storage cannot write: {exc}")] * len(group)

    def _fresh_rows(
        self, conn: sqlite3.Connection, group: list[_Write]
    ) -> dict[int, tuple[Sequence[Sequence[Any]], list[bytes]]]:
        """The group's appended rows that are not repeats and their dedup keys (in the
        same order), by the append's index in ``group``."""
        dedup = self._ready_dedup(conn)
        appends = [(i, w.rows) for i, w in enumerate(group) if w.is_ingest]
        items = [(dedup_key(r[0], r[1]), r[6]) for _, rows in appends for r in rows]
        new = dedup.filter_new(items)
        fresh: dict[int, tuple[Sequence[Sequence[Any]], list[bytes]]] = {}
        start = 0
        if len(new) == len(items):  # the common case: no repeat, every row is kept
            for i, rows in appends:
                fresh[i] = (rows, [key for key, _ in items[start : start + len(rows)]])
                start += len(rows)
            return fresh
        kept = set(new)
        for i, rows in appends:
            picked = [n for n in range(start, start + len(rows)) if n in kept]
            fresh[i] = ([rows[n - start] for n in picked], [items[n][0] for n in picked])
            start += len(rows)
        return fresh

    def _add_keys(self, keys: list[tuple[bytes, int, int]]) -> None:
        """After COMMIT: the committed events' keys into the set. A failure leaves the
        set behind the log (the next commit catches up first); the events are stored
        and acknowledged either way."""
        dedup = self._dedup
        assert dedup is not None  # _fresh_rows opened it
        try:
            dedup.add_stored(keys, keys[-1][2])
            self._dedup_seq = keys[-1][2]
        except Exception as exc:  # rocksdict raises plain Exception
            log.warning("dedup set write failed; caught up from the log next", error=str(exc))

    def _over_max_size(self, conn: sqlite3.Connection) -> str | None:
        if self.max_size is None:
            return None
        used = self.used_bytes(conn)
        if used < self.max_size:
            return None
        return f"storage.max_size reached ({used} of {self.max_size} bytes in use)"

    def used_bytes(self, conn: sqlite3.Connection | None = None) -> int:
        """Bytes of live pages plus the WAL plus the dedup set's directory: what
        max_size limits."""
        conn = conn or self._conn
        if conn is None:
            return 0
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = Path(f"{self.path}-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        return int((pages - free) * page_size + wal_bytes + self._dedup_bytes())

    def file_bytes(self) -> int:
        """Bytes on disk: the outbox file, its WAL and shared memory, the dedup set."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total + self._dedup_bytes()

    def _dedup_bytes(self) -> int:
        """The dedup set's directory size, read at most once a second: max_size is
        checked on every group commit, and the set grows by a memtable flush at a
        time (16 MB), so a second-old figure is close enough."""
        now = time.monotonic()
        if now - self._dedup_bytes_at >= 1.0:
            dedup = self._dedup
            with contextlib.suppress(OSError):
                self._dedup_bytes_cached = dedup.disk_bytes() if dedup is not None else 0
            self._dedup_bytes_at = now
        return self._dedup_bytes_cached


def _close_dedup(dedup: DedupSet) -> None:
    """Close the set; a failed flush (a full disk) loses nothing: what the set has
    not written is past its watermark and re-read from the log at the next open."""
    try:
        dedup.close()
    except Exception as exc:  # rocksdict raises plain Exception
        log.warning("dedup set flush failed; re-read from the log at the next open", error=str(exc))


def dedup_path(path: Path) -> Path:
    """The dedup set's RocksDB directory beside the outbox file ``path``."""
    return path.with_name(path.name + ".dedup")


def _clamp(ms: int) -> int:
    """A time as SQLite can bind it (a huge duration back from now is past int64)."""
    return max(-SQL_INT_MAX, min(SQL_INT_MAX, ms))


def _dead_filter(
    destination: str | None, time_clause: str | None, time_value: int | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if destination:
        clauses.append("destination = ?")
        args.append(destination)
    if time_clause and time_value is not None:
        clauses.append(time_clause)
        args.append(_clamp(time_value))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _suppression(row: Sequence[Any]) -> Suppression:
    user_id, created_at, erase, erased_events, erased_at = row
    return Suppression(user_id, created_at, bool(erase), erased_events, erased_at)
