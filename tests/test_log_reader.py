"""The SQLite outbox read from another connection, read-only (eventd/store/log_reader.py):
what the identity writer reads its pages with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from eventd.identity import writer
from eventd.identity.graph import DEFAULT_BLOCKED_VALUES, USER
from eventd.store import SqliteStore, now_ms
from eventd.store.identity import IdentityStore


def row(n: int) -> tuple[str, str, str, None, None, str, int, bytes]:
    body = orjson.dumps({"type": "track", "messageId": f"m{n}", "anonymousId": "a"})
    return ("app", f"m{n}", "track", None, None, "a", now_ms(), body)


async def test_pages_are_bounded_see_new_commits_and_never_write(tmp_path: Path) -> None:
    # A '#' and a '?' in the directory: the reader's URI must not end the path there.
    store = SqliteStore(tmp_path / "odd #dir?x" / "eventd.db", synchronous="normal")
    await store.open()
    try:
        await store.append([row(n) for n in range(1, 6)])
        source = store.log_source()
        assert source is not None
        reader = source.open()
        try:
            assert [seq for seq, _ in reader.page(0, 5, 10)] == [1, 2, 3, 4, 5]
            assert [seq for seq, _ in reader.page(1, 4, 2)] == [2, 3]  # limit
            assert [seq for seq, _ in reader.page(3, 4, 10)] == [4]  # upto
            page = reader.page(4, 5, 10)
            assert page == [(5, row(5)[7])]  # the stored body, as stored
            # The same pages in one row: seqs, and the bodies as stored joined by newlines
            assert reader.lines(1, 4, 2) == ([2, 3], row(2)[7] + b"\n" + row(3)[7])
            assert reader.lines(0, 5, 10) == (
                [1, 2, 3, 4, 5],
                b"\n".join(row(n)[7] for n in range(1, 6)),
            )
            assert reader.lines(5, 5, 10) == ([], b"")
            await store.append([row(6)])  # committed after the reader opened: seen
            assert [seq for seq, _ in reader.page(5, store.last_seq, 10)] == [6]
            with pytest.raises(sqlite3.OperationalError):
                reader._conn.execute("DELETE FROM events")  # type: ignore[attr-defined]
        finally:
            reader.close()
        assert [e.seq for e in await store.read(0, 10)] == [1, 2, 3, 4, 5, 6]
    finally:
        await store.close()


async def test_the_writer_reads_a_page_in_one_row_or_row_by_row_alike(tmp_path: Path) -> None:
    """apply_log decodes a page from LogReader.lines in one call; a page with a body the
    decoder cannot type (context no object) is read again row by row: both give the
    profiles the same events would give applied one by one."""
    store = SqliteStore(tmp_path / "eventd.db", synchronous="normal")
    await store.open()
    bodies = [
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "pro"}},
        {"type": "track", "anonymousId": "a1", "properties": {"revenue": 2}},
        {"type": "track", "userId": "u2", "context": "not an object"},  # page 2
        {"type": "track", "userId": "u2", "properties": {"revenue": 3}},
    ]
    await store.append(
        [
            ("app", f"m{n}", "track", None, None, None, now_ms(), orjson.dumps(b))
            for n, b in enumerate(bodies)
        ]
    )
    identity = IdentityStore(tmp_path / "identity.db")
    source = store.log_source()
    assert source is not None
    writer.start(identity, DEFAULT_BLOCKED_VALUES, 100, source)
    try:
        assert [writer.apply_log(after, 4, 2).last for after in (0, 2, 4)] == [2, 4, 0]
        for user, count, revenue in (("u1", 2, 2), ("u2", 2, 3)):
            pid = identity.profile_of(USER, user)
            assert pid is not None
            profile = identity.profile(pid)
            assert profile is not None
            assert (profile.event_count, profile.revenue) == (count, revenue)
    finally:
        writer.stop()
        await store.close()
