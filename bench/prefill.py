"""Writes events straight into an outbox file, as if ingested, before eventd starts.

Uses the outbox's own schema (``migrate``) and statement (``INSERT_EVENT``), so
eventd opens it as its own. Destinations get a cursor at 0, so they start at the
head of the log (a new destination would otherwise start at its end).
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import structlog

from bench import events
from eventd.store import now_ms
from eventd.store.schema import INSERT_EVENT, migrate
from eventd.store.sqlite import SAVE_CURSOR

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet migrate()

CHUNK = 20_000


def prefill(
    path: Path, count: int, *, prefix: str = "pre", destinations: Iterable[str] = ()
) -> None:
    """A new outbox file holding ``count`` events (fast: synchronous=OFF, big transactions),
    with ``destinations`` at the head of the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        migrate(conn)
        rows = events.stored_rows(prefix, 0, count, now_ms())
        while chunk := list(itertools.islice(rows, CHUNK)):
            conn.execute("BEGIN")
            conn.executemany(INSERT_EVENT, chunk)
            conn.execute("COMMIT")
        conn.executemany(SAVE_CURSOR, [(name, 0, now_ms()) for name in destinations])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def copy_with_cursors(template: Path, path: Path, destinations: Iterable[str]) -> None:
    """Copy a prefilled file and set every destination's cursor to the head of the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executemany(SAVE_CURSOR, [(name, 0, now_ms()) for name in destinations])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
