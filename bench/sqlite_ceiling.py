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
                 (source, message_id) dedup table, UUID messageIds;
``batch_rocks``  record-batch rows beside the RocksDB set (issue 18, seventh pass):
                 per transaction the writer's steps of ``outbox_uuid`` (look the keys
                 up, insert, COMMIT, add the keys with each event's own seq), but one
                 row per 100 events (a request's batch): the first seq as the row's
                 key, the count, and the events packed in one blob (their columns
                 as msgpack, their stored JSON joined, so a reader slices bodies out
                 without parsing); UUID messageIds;
``batch_rocks_bodies`` the same with only the joined bodies in the row (no per-event
                 columns): the bound of the layout, what SQLite alone asks of it.

Run (in its own process, pinned like the server):
``python -m bench.sqlite_ceiling DIR --rows N --txn ROWS --synchronous full``;
prints one JSON object, rows per second (``{schema}``) and per CPU-second of the
process (``{schema}_cpu``: on a shared machine the wall-clock rate measures the others).
``--only a,b`` measures some schemas.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
import uuid
from pathlib import Path

import msgspec
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
BATCH_ROCKS = (
    "CREATE TABLE batches (seq INTEGER PRIMARY KEY, count INTEGER NOT NULL,"
    " received_at INTEGER NOT NULL, meta BLOB NOT NULL, body BLOB NOT NULL)"
)
INSERT_BATCH = "INSERT INTO batches VALUES (?, ?, ?, ?, ?)"
BATCH_EVENTS = 100
SCHEMAS = (
    "outbox",
    "outbox_uuid",
    "index_uuid",
    "plain",
    "batched",
    "batch_rocks",
    "batch_rocks_bodies",
)
UUID_SCHEMAS = ("outbox_uuid", "index_uuid", "batched", "batch_rocks", "batch_rocks_bodies")
_encode_meta = msgspec.msgpack.Encoder().encode
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


def _insert_batch_rocks(
    conn: sqlite3.Connection,
    dedup: DedupSet,
    rows: list[EventRow],
    seq: int,
    *,
    meta: bool,
    per_row: int = BATCH_EVENTS,
) -> int:
    """``_insert_deduped`` with one row per ``per_row`` events; returns the next seq."""
    keys = [(dedup_key(r[0], r[1]), r[6]) for r in rows]
    new = dedup.filter_new(keys)
    kept = [rows[i] for i in new]
    batch_rows = []
    for j in range(0, len(kept), per_row):
        part = kept[j : j + per_row]
        bodies = [r[7] for r in part]
        columns = (
            _encode_meta([(*r[:6], len(r[7])) for r in part])
            if meta
            else _encode_meta([len(b) for b in bodies])
        )
        batch_rows.append((seq + j, len(part), part[0][6], columns, b"".join(bodies)))
    conn.executemany(INSERT_BATCH, batch_rows)
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


def insert_rate(
    path: Path, schema: str, rows: int, txn: int, synchronous: str, per_row: int = BATCH_EVENTS
) -> tuple[float, float]:
    """Rows per second, wall clock and per CPU-second of this process (every thread:
    RocksDB's own too), of inserting ``rows`` in transactions of ``txn``; the
    record-batch schemas pack ``per_row`` events a row."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA wal_autocheckpoint=1000")  # as eventd's writer
        data = list(events.stored_rows(f"ceil-{schema}", 0, rows, now_ms()))
        if schema in UUID_SCHEMAS:
            data = [(r[0], str(uuid.uuid4()), *r[2:]) for r in data]
        rocks = schema.startswith(("outbox", "batch_rocks"))
        dedup = DedupSet(dedup_path(path), DAY_MS) if rocks else None
        seq = 1
        if schema.startswith("outbox"):
            migrate(conn)
        elif schema.startswith("batch_rocks"):
            conn.execute(BATCH_ROCKS)
        elif schema == "index_uuid":
            for statement in _statements(MIGRATIONS[0]):
                conn.execute(statement)
        elif schema == "plain":
            conn.execute(PLAIN)
        else:
            for statement in BATCHED:
                conn.execute(statement)
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, rows, txn):
            conn.execute("BEGIN IMMEDIATE")
            if dedup is not None and schema.startswith("batch_rocks"):
                part = data[i : i + txn]
                meta = schema == "batch_rocks"
                seq = _insert_batch_rocks(conn, dedup, part, seq, meta=meta, per_row=per_row)
                continue
            if dedup is not None:
                seq = _insert_deduped(conn, dedup, data[i : i + txn], seq)
                continue
            if schema == "batched":
                _insert_batched(conn, data[i : i + txn])
            else:
                conn.executemany(INSERT_EVENT, data[i : i + txn])
            conn.execute("COMMIT")
        return rows / (time.perf_counter() - started), rows / (time.process_time() - cpu)
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
    p.add_argument("--only", default=",".join(SCHEMAS), help="comma-separated schemas")
    p.add_argument(
        "--per-row",
        type=int,
        default=BATCH_EVENTS,
        help="events a record-batch row (100: a request's batch; --txn: a group commit)",
    )
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, float] = {}
    for schema in args.only.split(","):
        wall, cpu = insert_rate(
            args.dir / f"{schema}.db", schema, args.rows, args.txn, args.synchronous, args.per_row
        )
        result[schema] = wall
        result[f"{schema}_cpu"] = cpu
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
