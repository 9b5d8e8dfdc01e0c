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
    DeadLetter,
    EventRow,
    NewDeadLetter,
    Replay,
    SeqRange,
    StorageUnavailable,
    StoreStats,
    Suppression,
    now_ms,
)
from eventd.store.schema import INSERT_EVENT, migrate

log = structlog.get_logger("eventd.store")

# Rows per delete when erasing a user: each batch its own short transaction.
ERASE_BATCH = 5000
# SQLite's INTEGER range: a bigger Python int cannot be bound as a parameter.
SQL_INT_MAX = 2**63 - 1
# Ids per IN (...) list: under SQLite's variable limit.
MAX_IDS = 10000

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
        self._writable = True  # false while the last commit failed; /ready says so
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._pending_events = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventd-writer")
        self._conn: sqlite3.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
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

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._open_sync)
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
        self._conn = conn

    async def close(self) -> None:
        """Commit everything queued, then close every connection."""
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
        self._thread.shutdown(wait=True)

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

    async def read(self, after: int, limit: int) -> list[Event]:
        rows = await self._fetch(
            f"{READ_EVENTS} WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [Event(r[0], r[1], r[2], body=r[3], user_id=r[4]) for r in rows]

    async def read_range(self, first: int, last: int, limit: int) -> list[Event]:
        rows = await self._fetch(
            f"{READ_EVENTS} WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?", (first, last, limit)
        )
        return [Event(r[0], r[1], r[2], body=r[3], user_id=r[4]) for r in rows]

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

    async def erase_user(self, user_id: str, below_seq: int) -> tuple[int, int, bool]:
        # Found with a reader (one scan, off the writer), deleted by seq (fast, batched).
        found = [
            r[0] for r in await self._fetch("SELECT seq FROM events WHERE user_id = ?", (user_id,))
        ]
        seqs = [s for s in found if s < below_seq]
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

    # -- retention --------------------------------------------------------------

    async def delete_events(self, *, upto_seq: int, received_before: int, limit: int) -> int:
        return await self._execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? AND"
            " received_at < ? ORDER BY seq LIMIT ?)",
            [(upto_seq, _clamp(received_before), limit)],
        )

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
            return await self._submit(INSERT_EVENT, rows, is_ingest=True)
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
            first = await self._queue.get()
            group: list[_Write] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            # Commit whatever is queued as soon as the writer is free: no linger timer.
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                else:
                    group.append(item)
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
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, w in enumerate(group):
                if over is not None and w.is_ingest:
                    results[i] = StorageUnavailable(over)
                    continue
                before = conn.total_changes
                conn.executemany(w.sql, w.rows)
                results[i] = conn.total_changes - before
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._writable = False
            self.last_error = str(exc)
            self.metrics.commit_failures.inc()
            log.warning("commit failed", error=str(exc), writes=len(group))
            return [StorageUnavailable(f"storage cannot write: {exc}")] * len(group)
        if not self._writable:
            log.info("storage writable again")
        self._writable = True
        self._last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        return results

    def _over_max_size(self, conn: sqlite3.Connection) -> str | None:
        if self.max_size is None:
            return None
        used = self.used_bytes(conn)
        if used < self.max_size:
            return None
        return f"storage.max_size reached ({used} of {self.max_size} bytes in use)"

    def used_bytes(self, conn: sqlite3.Connection | None = None) -> int:
        """Bytes of live pages plus the WAL: what max_size limits."""
        conn = conn or self._conn
        if conn is None:
            return 0
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = Path(f"{self.path}-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        return int((pages - free) * page_size + wal_bytes)

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total


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
