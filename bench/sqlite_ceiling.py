"""Ceiling B: raw SQLite inserts of the rows eventd stores, in large transactions.

Same file settings as eventd's writer (WAL, the configured ``synchronous``),
same rows, same statement; no HTTP, no asyncio, no parsing. Two tables:

``outbox``       the outbox's schema (``migrate``) and its RocksDB dedup set, as eventd's
                 writer runs them per transaction: look the keys up, insert the rows
                 with their seqs, COMMIT, add the keys; messageIds ``{prefix}-{n}``
                 as the load generators send them;
``outbox_uuid``  the same with random UUID messageIds, as the SDKs send them;
``index_uuid``   the dedup eventd had before issue 18: a (source, message_id) index
                 and a trigger on the events table, UUIDs: each insert lands on a
                 random page of the index;
``plain``        the same columns without any dedup: the disk and SQLite alone;
``batched``      the record-batch layout DESIGN.md suggests, measured before choosing
                 it: one row per 100 events (their JSON joined) plus a slim
                 (source, message_id) dedup table, UUID messageIds.

Run (in its own process, pinned like the server):
``python -m bench.sqlite_ceiling DIR --rows N --txn ROWS --synchronous full``;
prints one JSON object, rows per second.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
import uuid
from pathlib import Path

import orjson
import structlog

from bench import events
from eventd.store import EventRow, now_ms
from eventd.store.dedup import DedupSet, dedup_key
from eventd.store.schema import INSERT_EVENT, INSERT_EVENT_SEQ, MIGRATIONS, _statements, migrate
from eventd.store.sqlite import dedup_path

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet migrate()

PLAIN = """CREATE TABLE events (
    seq INTEGER PRIMARY KEY, source TEXT NOT NULL, message_id TEXT NOT NULL,
    type TEXT NOT NULL, event TEXT, user_id TEXT, anonymous_id TEXT,
    received_at INTEGER NOT NULL, body BLOB NOT NULL)"""


BATCHED = (
    "CREATE TABLE batches (seq INTEGER PRIMARY KEY, source TEXT NOT NULL,"
    " received_at INTEGER NOT NULL, count INTEGER NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE message_ids (source TEXT NOT NULL, message_id TEXT NOT NULL,"
    " received_at INTEGER NOT NULL, PRIMARY KEY (source, message_id)) WITHOUT ROWID",
)
SCHEMAS = ("outbox", "outbox_uuid", "index_uuid", "plain", "batched")
DAY_MS = 86_400_000


def _insert_deduped(
    conn: sqlite3.Connection, dedup: DedupSet, rows: list[EventRow], seq: int
) -> int:
    """What SqliteStore._commit_sync does for one group; returns the next seq."""
    keys = [(dedup_key(r[0], r[1]), r[6]) for r in rows]
    new = dedup.filter_new(keys)
    conn.executemany(INSERT_EVENT_SEQ, [(seq + n, *rows[i]) for n, i in enumerate(new)])
    conn.execute("COMMIT")
    dedup.add_stored(
        ((keys[i][0], keys[i][1], seq + n) for n, i in enumerate(new)), seq + len(new) - 1
    )
    return seq + len(new)


def _insert_batched(conn: sqlite3.Connection, rows: list[EventRow]) -> None:
    for j in range(0, len(rows), 100):
        part = rows[j : j + 100]
        conn.executemany(
            "INSERT OR IGNORE INTO message_ids VALUES (?, ?, ?)", [r[:2] + r[6:7] for r in part]
        )
        conn.execute(
            "INSERT INTO batches (source, received_at, count, body) VALUES (?, ?, ?, ?)",
            (part[0][0], part[0][6], len(part), b"[" + b",".join(r[7] for r in part) + b"]"),
        )


def insert_rate(path: Path, schema: str, rows: int, txn: int, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA wal_autocheckpoint=1000")  # as eventd's writer
        data = list(events.stored_rows(f"ceil-{schema}", 0, rows, now_ms()))
        if schema in ("outbox_uuid", "index_uuid", "batched"):
            data = [(r[0], str(uuid.uuid4()), *r[2:]) for r in data]
        dedup = DedupSet(dedup_path(path), DAY_MS) if schema.startswith("outbox") else None
        seq = 1
        if schema.startswith("outbox"):
            migrate(conn)
        elif schema == "index_uuid":
            for statement in _statements(MIGRATIONS[0]):
                conn.execute(statement)
        elif schema == "plain":
            conn.execute(PLAIN)
        else:
            for statement in BATCHED:
                conn.execute(statement)
        started = time.perf_counter()
        for i in range(0, rows, txn):
            conn.execute("BEGIN IMMEDIATE")
            if dedup is not None:
                seq = _insert_deduped(conn, dedup, data[i : i + txn], seq)
                continue
            if schema == "batched":
                _insert_batched(conn, data[i : i + txn])
            else:
                conn.executemany(INSERT_EVENT, data[i : i + txn])
            conn.execute("COMMIT")
        return rows / (time.perf_counter() - started)
    finally:
        conn.close()
        if dedup is not None:
            dedup.close()


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
        for schema in SCHEMAS
    }
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
