"""The SQLite outbox's retention batch (``DELETE_OLD_EVENTS``, eventd/store/sqlite.py)
reads the head of the log, not the log: its cost must not grow with the store.

Issue 18: the form before it ranged over ``seq <= passed`` and tested every row's
received_at, so on a store whose events are all inside retention (nothing to
delete) it read the whole log: ~15 s on a 10,000,000-event store, on the writer
thread, at start-up and every minute. What it deletes is the conformance suite's
(tests/store/test_conformance.py, retention).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from eventd.store.schema import INSERT_EVENT_SEQ, migrate
from eventd.store.sqlite import DELETE_OLD_EVENTS

T0 = 1_800_000_000_000  # received_at of every event, ms
LIMIT = 100  # rows per batch


def log_of(path: Path, events: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    body = b'{"type":"track","event":"E"}'
    rows = ((n, "web", f"m{n}", "track", "E", "u", None, T0, body) for n in range(1, events + 1))
    conn.execute("BEGIN")
    conn.executemany(INSERT_EVENT_SEQ, rows)
    conn.execute("COMMIT")
    return conn


def steps_of_one_batch(conn: sqlite3.Connection, received_before: int) -> tuple[int, int]:
    """(virtual machine steps / 10, rows deleted) of one batch, rolled back."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    conn.set_progress_handler(count, 10)
    conn.execute("BEGIN")
    try:
        before = conn.total_changes  # rowcount is -1 for a statement that starts with WITH
        conn.execute(DELETE_OLD_EVENTS, (2**62, LIMIT, received_before))
        deleted = conn.total_changes - before
    finally:
        conn.execute("ROLLBACK")
        conn.set_progress_handler(None, 0)
    return steps, deleted


def test_a_batch_with_nothing_to_delete_reads_the_same_in_a_log_30_times_longer(
    tmp_path: Path,
) -> None:
    small = log_of(tmp_path / "small.db", 1_000)
    large = log_of(tmp_path / "large.db", 30_000)
    try:
        # every event inside retention: nothing to delete
        small_steps, small_deleted = steps_of_one_batch(small, T0)
        large_steps, large_deleted = steps_of_one_batch(large, T0)
        assert (small_deleted, large_deleted) == (0, 0)
        assert large_steps <= small_steps * 1.2, (small_steps, large_steps)
        # every event old: one batch deletes LIMIT rows, reading as much either way
        small_steps, small_deleted = steps_of_one_batch(small, T0 + 1)
        large_steps, large_deleted = steps_of_one_batch(large, T0 + 1)
        assert (small_deleted, large_deleted) == (LIMIT, LIMIT)
        assert large_steps <= small_steps * 1.2, (small_steps, large_steps)
    finally:
        small.close()
        large.close()
