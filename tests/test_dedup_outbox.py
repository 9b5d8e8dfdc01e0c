"""The SQLite outbox's dedup set (eventd/store/sqlite.py with eventd/store/dedup.py)
through what can go wrong around it: a kill between COMMIT and the key's write,
a failed write to the set, a lost set directory, and a store migrated from the
(source, message_id) index. Every case: each stored messageId sent again is a
repeat, and nothing distinct is dropped."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
import textwrap
from asyncio.subprocess import PIPE
from pathlib import Path

import orjson
import pytest

from eventd.metrics import Metrics
from eventd.store import EventRow, SqliteStore, now_ms
from eventd.store.dedup import DedupSet
from eventd.store.schema import INSERT_EVENT, MIGRATIONS, _statements
from eventd.store.sqlite import dedup_path

ROOT = Path(__file__).resolve().parents[1]


def row(mid: str, at: int, source: str = "web") -> EventRow:
    body = orjson.dumps({"type": "track", "event": "E", "messageId": mid})
    return (source, mid, "track", "E", "u", None, at, body)


async def stored_ids(store: SqliteStore) -> list[str]:
    return [orjson.loads(e.body)["messageId"] for e in await store.read(0, 1_000_000)]


def recovered(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("eventd_dedup_recovered_keys_total")
    assert value is not None
    return value


async def test_a_kill_between_commit_and_the_key_loses_no_dedup(tmp_path: Path) -> None:
    """A real process dies (os._exit, no clean-up) right after the COMMIT of its
    second append, before that append's keys reach the set; the restarted store
    reads them back from the log."""
    path = tmp_path / "eventd.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from pathlib import Path
        from eventd.store import SqliteStore
        from eventd.store.dedup import DedupSet
        from tests.test_dedup_outbox import row
        calls = 0
        real = DedupSet.add_stored
        def dying(self, items, watermark):
            global calls
            calls += 1
            if calls == 2:
                sys.stdout.write("committed\\n"); sys.stdout.flush()
                os._exit(9)
            real(self, items, watermark)
        DedupSet.add_stored = dying
        async def main():
            store = SqliteStore(Path({str(path)!r}))
            await store.open()
            await store.append([row(f"a{{i}}", {now_ms()}) for i in range(50)])
            await store.append([row(f"b{{i}}", {now_ms()}) for i in range(50)])
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 9 and b"committed" in out, err.decode()
    metrics = Metrics()
    store = SqliteStore(path, metrics=metrics)
    await store.open()
    try:
        assert recovered(metrics) == 50  # the b's, after the set's watermark
        ids = [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)]
        assert await stored_ids(store) == ids
        assert await store.append([row(m, now_ms()) for m in ids]) == 0
        assert await store.append([row("c0", now_ms())]) == 1
        assert await stored_ids(store) == [*ids, "c0"]
    finally:
        await store.close()


async def test_a_failed_write_to_the_set_is_caught_up_before_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    store = SqliteStore(tmp_path / "eventd.db", metrics=metrics)
    await store.open()
    try:
        real = DedupSet.add_stored
        failures = [RuntimeError("IO error: No space left on device")]

        def failing(self: DedupSet, items: list[tuple[bytes, int, int]], watermark: int) -> None:
            if failures:
                raise failures.pop()
            real(self, items, watermark)

        monkeypatch.setattr(DedupSet, "add_stored", failing)
        t = now_ms()
        # Stored and acknowledged: the log has them even though the set does not.
        assert await store.append([row("a", t), row("b", t)]) == 2
        assert await store.append([row("a", t + 1), row("b", t + 1), row("c", t + 1)]) == 1
        assert recovered(metrics) == 2
        assert await stored_ids(store) == ["a", "b", "c"]
    finally:
        await store.close()


async def test_a_lost_set_is_rebuilt_from_the_last_window_of_the_log(tmp_path: Path) -> None:
    path = tmp_path / "eventd.db"
    window_ms = 60_000
    t = now_ms()
    store = SqliteStore(path, dedup_window=window_ms / 1000)
    await store.open()
    await store.append([row("old", t - 2 * window_ms), row("new", t), row("x", t, "ios")])
    await store.close()
    shutil.rmtree(dedup_path(path))  # the operator removed it, or its disk is gone
    metrics = Metrics()
    store = SqliteStore(path, dedup_window=window_ms / 1000, metrics=metrics)
    await store.open()
    try:
        assert recovered(metrics) == 2  # only what is inside the window
        # "old" was stored 2 windows ago: stored again; "new" and ("ios", "x") are repeats;
        # ("web", "x") is another event.
        got = [row("old", t), row("new", t), row("x", t, "ios"), row("x", t)]
        assert await store.append(got) == 2
        assert await stored_ids(store) == ["old", "new", "x", "old", "x"]
        found = await store.find_event("ios", "x")
        assert found is not None and found.source == "ios" and found.seq == 3
    finally:
        await store.close()


async def test_a_store_with_the_old_dedup_index_is_migrated(tmp_path: Path) -> None:
    """A file written by migrations 1-3 (the index and trigger): the index goes, the
    set is built from the log, dedup goes on exactly, seqs go on from the last."""
    path = tmp_path / "eventd.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
    t = now_ms()
    conn.executemany(INSERT_EVENT, [row(f"m{i}", t) for i in range(1000)])
    conn.close()

    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.append([row(f"m{i}", t + 1) for i in range(0, 1100, 10)]) == 10
        events = await store.read(990, 1000)
        assert [e.seq for e in events] == list(range(991, 1011))
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "events_message_id" not in names and "events_dedup" not in names


async def test_seqs_are_not_reused_after_the_tail_is_erased(tmp_path: Path) -> None:
    """A consumer past an erased tail must not miss the events appended next."""
    store = SqliteStore(tmp_path / "eventd.db")
    await store.open()
    try:
        t = now_ms()
        await store.append([row("a", t), row("b", t)])
        await store.suppress("u", erase=True)
        await store.erase_user("u", store.last_seq + 1)
        await store.unsuppress("u")
        await store.append([row("c", t)])
        assert [e.seq for e in await store.read(0, 10)] == [3]
    finally:
        await store.close()
