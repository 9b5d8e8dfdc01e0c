"""Writes events straight into an outbox file, as if ingested, before eventd starts.

Uses the outbox's own schema (``migrate``), statement and dedup set (each event's
key with its seq, the seq as the set's watermark), so eventd opens it as its own
without re-reading the log into the set. Destinations get a cursor at 0, so they start at the
head of the log (a new destination would otherwise start at its end).
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from bench import events
from eventd.identity.graph import Changes
from eventd.store import now_ms
from eventd.store.base import service_cursor
from eventd.store.dedup import DedupSet, dedup_key
from eventd.store.identity import IdentityStore
from eventd.store.schema import INSERT_EVENT_SEQ, migrate
from eventd.store.sqlite import SAVE_CURSOR, dedup_path

DEDUP_WINDOW_MS = 86_400_000  # eventd's default storage.dedup_window

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet migrate()

CHUNK = 20_000


def prefill(
    path: Path,
    count: int,
    *,
    prefix: str = "pre",
    destinations: Iterable[str] = (),
    uuids: bool = False,
    caught_up: Iterable[str] = (),
) -> None:
    """A new outbox file holding ``count`` events (fast: synchronous=OFF, big transactions),
    with ``destinations`` at the head of the log and the log-consuming services named in
    ``caught_up`` (``identity``) at its end, as if they had read it; ``uuids``: random
    UUID messageIds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    dedup = DedupSet(dedup_path(path), DEDUP_WINDOW_MS)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        migrate(conn)
        rows = events.stored_rows(prefix, 0, count, now_ms(), uuids=uuids)
        seq = 0
        while chunk := list(itertools.islice(rows, CHUNK)):
            numbered: list[tuple[Any, ...]] = [(seq + 1 + n, *r) for n, r in enumerate(chunk)]
            conn.execute("BEGIN")
            conn.executemany(INSERT_EVENT_SEQ, numbered)
            conn.execute("COMMIT")
            dedup.add_stored(
                ((dedup_key(r[1], r[2]), r[7], r[0]) for r in numbered), seq + len(chunk)
            )
            seq += len(chunk)
        conn.executemany(SAVE_CURSOR, [(name, 0, now_ms()) for name in destinations])
        conn.executemany(SAVE_CURSOR, [(service_cursor(s), seq, now_ms()) for s in caught_up])
        if "identity" in caught_up:
            graph_caught_up(identity_path(path), seq)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # A set filled this fast owes RocksDB compactions, which eventd would pay
        # for while being measured; a set filled over a day pays as it goes.
        dedup.compact()
    finally:
        conn.close()
        dedup.close()


# A cached store is reused while its events are this young: all of them stay inside the
# 24 h dedup window (and far inside retention) through a run, as the row requires.
CACHE_MAX_AGE_MS = 12 * 3_600_000
_COMPLETE = "complete"  # written last: a prefill killed halfway is never reused


def cached(cache: Path, count: int, *, uuids: bool, caught_up: Iterable[str] = ()) -> Path:
    """The outbox of a :func:`prefill` (``prefix="prefilled"``) kept under ``cache`` and
    reused while its events are younger than :data:`CACHE_MAX_AGE_MS` (filled again
    after): 10,000,000 events take ~5-15 minutes to write here, a copy ~1 minute.
    Copy it (:func:`copy_with_cursors`) before eventd opens it."""
    ids = "uuids" if uuids else "seq"
    services = "-".join(sorted(caught_up)) or "none"
    home = cache / f"prefilled-{count}-{ids}-{services}"
    path = home / "eventd.db"
    if (home / _COMPLETE).exists() and now_ms() - _first_received(path) < CACHE_MAX_AGE_MS:
        return path
    shutil.rmtree(home, ignore_errors=True)
    prefill(path, count, prefix="prefilled", uuids=uuids, caught_up=caught_up)
    (home / _COMPLETE).touch()
    return path


def _first_received(path: Path) -> int:
    """received_at of the log's first event (ms; 0 when there is none)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT received_at FROM events ORDER BY seq LIMIT 1").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def identity_path(outbox: Path) -> Path:
    """Where eventd keeps identity.db: beside the outbox (``config.data_dir``)."""
    return outbox.parent / "identity.db"


def graph_caught_up(path: Path, seq: int) -> None:
    """An identity.db (``path``) whose cursor is ``seq``: the graph has nothing to apply.

    The Store's copy of the cursor alone does not do it: the graph starts from
    identity.db's own cursor (0 in a new file) and overwrites the copy. Without this
    the writer applies the whole prefilled log while delivery or ingest is measured,
    on eventd's core (it was 30 % of the delivery run's wall time). The graph is left
    empty: the benchmarks that use it stitch nothing."""
    store = IdentityStore(path, "off")
    store.open_writer()
    try:
        store.apply(Changes(), seq)  # an empty page up to seq: the cursor alone
    finally:
        store.close()


def copy_with_cursors(template: Path, path: Path, destinations: Iterable[str]) -> None:
    """Copy a prefilled file (and its identity.db, when it has one) and set every
    destination's cursor to the head of the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    shutil.copytree(dedup_path(template), dedup_path(path))
    if identity_path(template).exists():
        shutil.copyfile(identity_path(template), identity_path(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executemany(SAVE_CURSOR, [(name, 0, now_ms()) for name in destinations])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
