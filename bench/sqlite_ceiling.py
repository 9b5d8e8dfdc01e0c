"""Ceiling B: raw SQLite inserts of the rows eventd stores, in large transactions.

Same file settings as eventd's writer (WAL, the configured ``synchronous``),
same rows, same statement; no HTTP, no asyncio, no parsing. Two tables:

``outbox``  the outbox's schema (``migrate``): the (source, message_id) index and
            the dedup trigger, i.e. what every eventd insert pays;
``plain``   the same columns without index or trigger: the disk and SQLite alone.

Run (in its own process, pinned like the server):
``python -m bench.sqlite_ceiling DIR --rows N --txn ROWS --synchronous full``;
prints one JSON object, rows per second.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path

import orjson
import structlog

from bench import events
from eventd.outbox import INSERT_EVENT, migrate, now_ms

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet migrate()

PLAIN = """CREATE TABLE events (
    seq INTEGER PRIMARY KEY, source TEXT NOT NULL, message_id TEXT NOT NULL,
    type TEXT NOT NULL, event TEXT, user_id TEXT, anonymous_id TEXT,
    received_at INTEGER NOT NULL, body BLOB NOT NULL)"""


def insert_rate(path: Path, schema: str, rows: int, txn: int, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA wal_autocheckpoint=1000")  # as eventd's writer
        if schema == "outbox":
            migrate(conn)
        else:
            conn.execute(PLAIN)
        data = list(events.stored_rows(f"ceil-{schema}", 0, rows, now_ms()))
        started = time.perf_counter()
        for i in range(0, rows, txn):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_EVENT, data[i : i + txn])
            conn.execute("COMMIT")
        return rows / (time.perf_counter() - started)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sqlite_ceiling")
    p.add_argument("dir", type=Path)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--txn", type=int, default=10_000)
    p.add_argument("--synchronous", default="full")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    result = {
        schema: insert_rate(
            args.dir / f"{schema}.db", schema, args.rows, args.txn, args.synchronous
        )
        for schema in ("outbox", "plain")
    }
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
