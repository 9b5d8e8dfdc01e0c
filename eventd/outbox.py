"""The SQLite write-ahead outbox: the one durable store of events, cursors and dead letters.

Every write goes through one writer: callers queue statements and await a future;
the writer commits everything queued in one transaction (group commit) on its own
thread and resolves the futures only after COMMIT. The writer runs on a plain
``sqlite3`` connection in a single-thread executor so a whole group costs one
thread hop (aiosqlite would hop per statement). Reads use separate aiosqlite
connections, which WAL lets run beside the writer.

The events table is an append-only log: ``seq`` (the rowid) orders it, each
destination keeps its own cursor into it, and retention deletes from its head.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from eventd.metrics import Metrics

log = structlog.get_logger("eventd.outbox")

# Numbered migrations, applied in order at start. Never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        event TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        received_at INTEGER NOT NULL,   -- unix ms
        body BLOB NOT NULL              -- the normalized message, JSON
    );
    CREATE INDEX events_message_id ON events (source, message_id);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    INSERT INTO settings VALUES ('dedup_window_ms', 86400000);
    -- A repeat of (source, messageId) inside the dedup window is dropped in SQL, so a
    -- whole group commit stays one executemany.
    CREATE TRIGGER events_dedup BEFORE INSERT ON events
    WHEN EXISTS (
        SELECT 1 FROM events
        WHERE source = NEW.source AND message_id = NEW.message_id
          AND received_at > NEW.received_at
                - (SELECT value FROM settings WHERE key = 'dedup_window_ms')
    )
    BEGIN SELECT RAISE(IGNORE); END;
    CREATE TABLE cursors (
        destination TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        seq INTEGER NOT NULL,
        source TEXT NOT NULL,
        message_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        failed_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'dead'   -- 'dead' or 'redrive'
    );
    CREATE INDEX dead_letters_destination ON dead_letters (destination, state, id);
    CREATE TABLE replays (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        until_seq INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    """
    -- Users whose events are no longer taken (the right to object), and whether their
    -- stored events are to be deleted too (the right to erasure).
    CREATE TABLE suppressions (
        user_id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        erase INTEGER NOT NULL,         -- 1: delete the stored events too
        erased_events INTEGER NOT NULL DEFAULT 0,
        erased_at INTEGER               -- when none was left; NULL while some are
    ) WITHOUT ROWID;
    """,
    """
    -- Erasures forwarded to destinations (eventd/privacy/): one row per suppressed
    -- user and destination, so a restart resumes what is not finished.
    CREATE TABLE deletions (
        user_id TEXT NOT NULL,          -- the suppression's userId
        destination TEXT NOT NULL,
        type TEXT NOT NULL,             -- the destination's type when asked
        state TEXT NOT NULL,            -- requested | done | failed | unsupported
        erasure BLOB NOT NULL,          -- JSON: user_ids, anonymous_ids, events [seq, source, ms]
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,                    -- failed: why; requested: the last retry's reason;
                                        -- unsupported: what to do by hand
        requested_at INTEGER NOT NULL,  -- unix ms, starts the retry_max_age clock
        updated_at INTEGER NOT NULL,
        next_attempt_at INTEGER,        -- requested after a Retry: not before
        PRIMARY KEY (user_id, destination)
    ) WITHOUT ROWID;
    """,
)

EVENT_COLUMNS = "source, message_id, type, event, user_id, anonymous_id, received_at, body"
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
EventRow = tuple[str, str, str, str | None, str | None, str | None, int, bytes]


class StorageUnavailable(Exception):
    """The store cannot take writes now (disk full, read-only, locked, over max_size)."""


@dataclass
class _Write:
    sql: str
    rows: Sequence[Sequence[Any]]
    future: asyncio.Future[int]
    is_ingest: bool = False


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    source: str
    received_at: int  # unix ms
    body: bytes


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(ms: int | None) -> str | None:
    """A stored unix-ms time as ISO-8601 UTC (what the admin API shows)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class Outbox:
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
        self.last_seq = 0
        self.metrics = metrics or Metrics()
        self.last_error: str | None = None
        self.writable = True  # false while the last commit failed; /ready and metrics say so
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        # Events handed to append() and not yet committed: ingest sheds load on it.
        self.pending_events = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventd-writer")
        self._conn: sqlite3.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Event] = []
        self._readers: list[aiosqlite.Connection] = []

    # -- life cycle -------------------------------------------------------------

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
        # Checkpoint often enough that the WAL stays small; TRUNCATE runs in retention.
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
        self.last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
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
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)

    async def reader(self) -> aiosqlite.Connection:
        """A new read-only connection, closed with the outbox."""
        conn = await aiosqlite.connect(self.path)
        await conn.execute("PRAGMA query_only=1")
        await conn.execute("PRAGMA busy_timeout=5000")
        self._readers.append(conn)
        return conn

    def subscribe(self) -> asyncio.Event:
        """An event set after every commit that stored new events."""
        ev = asyncio.Event()
        self._listeners.append(ev)
        return ev

    # -- writes ----------------------------------------------------------------

    async def append(self, rows: list[EventRow]) -> int:
        """Store events; returns how many were new (the rest were duplicates).

        Returns only after COMMIT. Raises :class:`StorageUnavailable` when the
        store cannot take them; then none of them was stored.
        """
        self.pending_events += len(rows)
        try:
            return await self._submit(INSERT_EVENT, rows, is_ingest=True)
        finally:
            self.pending_events -= len(rows)

    async def execute(self, sql: str, rows: Iterable[Sequence[Any]] = ((),)) -> int:
        """Run one statement per row inside the next group commit; returns rows changed."""
        return await self._submit(sql, list(rows))

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
        self.metrics.storage_writable.set(1 if self.writable else 0)

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
            self.writable = False
            self.last_error = str(exc)
            self.metrics.commit_failures.inc()
            log.warning("commit failed", error=str(exc), writes=len(group))
            return [StorageUnavailable(f"storage cannot write: {exc}")] * len(group)
        if not self.writable:
            log.info("storage writable again")
        self.writable = True
        self.last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
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

    async def checkpoint(self) -> None:
        """Truncate the WAL (it would otherwise keep its high-water size)."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        try:
            await loop.run_in_executor(self._thread, run)
        except sqlite3.Error as exc:
            log.warning("checkpoint failed", error=str(exc))

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total


async def fetch(conn: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> list[Any]:
    """All rows of a query on a reader connection, as a list."""
    return list(await conn.execute_fetchall(sql, args))


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied; returns the schema version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] or 0
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("migration applied", version=number)
        version = number
    return version


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would commit on its own)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
