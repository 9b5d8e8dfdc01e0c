"""The SQLite outbox read from another connection, read-only (eventd/store/log_reader.py):
what the identity writer reads its pages with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from eventd.store import SqliteStore, now_ms


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
            await store.append([row(6)])  # committed after the reader opened: seen
            assert [seq for seq, _ in reader.page(5, store.last_seq, 10)] == [6]
            with pytest.raises(sqlite3.OperationalError):
                reader._conn.execute("DELETE FROM events")  # type: ignore[attr-defined]
        finally:
            reader.close()
        assert [e.seq for e in await store.read(0, 10)] == [1, 2, 3, 4, 5, 6]
    finally:
        await store.close()
