"""The duckdb destination on its own: deliver() into a real DuckDB file under tmp_path,
read back with DuckDB; identity links upserted by the rule of eventd.identity.links."""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import orjson
import pytest
from eventd_plugins.duckdb import Duckdb
from eventd_plugins.duckdb.loader import LOAD_THREADS
from eventd_plugins.warehouse.rows import ADJUSTED_DROPPED

from eventd import OK, Event, Permanent, Retry
from eventd.config import ConfigError
from eventd.identity.links import IdentityLink
from eventd.priority import BACKGROUND_NICE as LOAD_NICE

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def events(*messages: dict[str, Any], source: str = "app") -> list[Event]:
    return [
        Event(seq, source, 1_700_000_000_000, body=orjson.dumps(m))
        for seq, m in enumerate(messages, 1)
    ]


def track(mid: str, event: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": "u1",
        "messageId": mid,
        "timestamp": T0.isoformat(),
        "receivedAt": T0.isoformat(),
        "context": {"ip": "203.0.113.9"},
        "properties": properties,
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def store(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[Duckdb]:
    settings = {"path": str(tmp_path / "data" / "analytics.duckdb")}
    Duckdb.validate_settings("analytics", settings)
    dest = Duckdb("analytics", settings, session)
    yield dest
    await dest.close()


def read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_a_batch_lands_in_segments_tables_once(store: Duckdb) -> None:
    batch = events(
        track("m1", revenue=12.5, plan="pro"),
        track("m2", revenue=3, plan="free"),  # 3 fits the double column as it is
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m3",
            "timestamp": T0.isoformat(),
            "receivedAt": T0.isoformat(),
            "traits": {"email": "a@example.com", "address": {"city": "Oslo"}},
        },
        {"type": "page", "anonymousId": "a1", "messageId": "m4", "name": "Home"},
    )
    assert await store.deliver(batch) == [OK] * 4
    assert await store.deliver(batch) == [OK] * 4  # a redelivery adds nothing
    await store.close()
    path = store.path
    assert read(path, "SELECT id, event_text, user_id FROM app.tracks ORDER BY id") == [
        ("m1", "Order Completed", "u1"),
        ("m2", "Order Completed", "u1"),
    ]
    assert read(
        path, "SELECT id, revenue, plan, context_ip FROM app.order_completed ORDER BY id"
    ) == [
        ("m1", 12.5, "pro", "203.0.113.9"),
        ("m2", 3.0, "free", "203.0.113.9"),
    ]
    assert read(path, "SELECT id, email, address_city FROM app.users") == [
        ("u1", "a@example.com", "Oslo")
    ]
    assert read(path, "SELECT id, anonymous_id, name FROM app.pages") == [("m4", "a1", "Home")]
    assert read(path, "SELECT count(*) FROM app.identifies") == [(1,)]


async def test_a_batch_with_some_ids_loaded_adds_only_the_new_ones(store: Duckdb) -> None:
    # the plain insert fails on m1's key; the batch is loaded again skipping loaded ids
    assert await store.deliver(events(track("m1", revenue=12.5))) == [OK]
    assert await store.deliver(events(track("m2", revenue=3), track("m1", revenue=99))) == [OK] * 2
    await store.close()
    assert read(store.path, "SELECT id, revenue FROM app.order_completed ORDER BY id") == [
        ("m1", 12.5),
        ("m2", 3.0),
    ]
    assert read(store.path, "SELECT id FROM app.tracks ORDER BY id") == [("m1",), ("m2",)]


async def test_a_redelivery_on_the_python_path_adds_only_new_ids_to_every_table(
    store: Duckdb,
) -> None:
    """An event table has no key (its rows are tracks rows, which has one): a batch with
    a loaded id and a new column (planned in Python) still adds each messageId once."""
    assert await store.deliver(events(track("m1", revenue=12.5), track("m2"))) == [OK] * 2
    again = events(track("m1", colour="red"), track("m3", colour="blue"), track("m2"))
    assert await store.deliver(again) == [OK] * 3
    assert await store.query("SELECT id, revenue, colour FROM app.order_completed ORDER BY id") == [
        ("m1", 12.5, None),
        ("m2", None, None),
        ("m3", None, "blue"),
    ]
    assert await store.query("SELECT id FROM app.tracks ORDER BY id") == [
        ("m1",),
        ("m2",),
        ("m3",),
    ]
    keys = await store.query(
        "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
        " AND schema_name = 'app' ORDER BY 1"
    )
    assert keys == [("tracks",)]


async def test_new_keys_add_columns_and_misfits_are_dropped_and_counted(store: Duckdb) -> None:
    counted: dict[str, int] = {}
    store.on_adjusted = lambda reason, n: counted.__setitem__(reason, counted.get(reason, 0) + n)
    assert await store.deliver(events(track("m1", size=2))) == [OK]
    assert await store.deliver(events(track("m2", size="large", colour="red"))) == [OK]
    await store.close()
    assert read(store.path, "SELECT id, size, colour FROM app.order_completed ORDER BY id") == [
        ("m1", 2, None),
        ("m2", None, "red"),
    ]
    assert counted == {ADJUSTED_DROPPED: 1}


async def test_integers_past_64_bits_land_with_every_digit(store: Duckdb) -> None:
    """Event.message keeps them exact (issue 12): a bare one becomes text (bigint would
    overflow, double would round), one inside a list or object stays in its JSON."""
    body = (
        b'{"type":"track","event":"Big","userId":"u1","messageId":"w1",'
        b'"timestamp":"2026-11-02T09:00:00+00:00","receivedAt":"2026-11-02T09:00:00+00:00",'
        b'"properties":{"n":123456789012345678901,"ids":[123456789012345678902]}}'
    )
    assert await store.deliver([Event(1, "app", 1_700_000_000_000, body=body)]) == [OK]
    await store.close()
    [(n, ids)] = read(store.path, "SELECT n, ids FROM app.big")
    assert n == "123456789012345678901"
    assert json.loads(ids) == [123456789012345678902]


async def test_a_row_duckdb_refuses_fails_alone(store: Duckdb) -> None:
    assert await store.deliver(events(track("m1", code="1"))) == [OK]
    await store.close()
    con = duckdb.connect(str(store.path))
    con.execute("ALTER TABLE app.order_completed ALTER code TYPE INTEGER")  # by hand
    con.close()
    outcomes = await store.deliver(events(track("m2", code="7"), track("m3", code="x")))
    assert isinstance(outcomes, list)
    assert outcomes[0] == OK
    assert isinstance(outcomes[1], Permanent) and "DuckDB refused the row" in outcomes[1].reason
    await store.close()
    assert read(store.path, "SELECT id, code FROM app.order_completed ORDER BY id") == [
        ("m1", 1),
        ("m2", 7),
    ]


async def test_identity_links_upsert_keeping_the_first_linked_at(store: Duckdb) -> None:
    later = T0 + timedelta(hours=1)
    await store.write_identities(
        [
            IdentityLink("a1", "u1", "p1", later),
            IdentityLink("a1", "u1", "p1", T0),  # the same key in one batch: the first time
            IdentityLink(None, "u1", "p1", T0),
        ]
    )
    # the profile merged into p2: the graph re-sends its rows
    await store.write_identities(
        [IdentityLink("a1", "u1", "p2", later), IdentityLink(None, "u1", "p2", later)]
    )
    rows = await store.query(
        "SELECT anonymous_id, user_id, profile_id, linked_at FROM main.identities"
        " ORDER BY anonymous_id NULLS FIRST"
    )
    assert rows == [(None, "u1", "p2", T0), ("a1", "u1", "p2", T0)]


def _nices(pid: int) -> dict[int, int]:
    """Each thread of process ``pid``: its nice."""
    return {
        int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")
    }


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux: per-thread nice")
async def test_the_load_runs_in_a_process_of_its_own_at_a_lower_cpu_priority(
    store: Duckdb,
) -> None:
    """Ingest keeps its CPU and its GIL beside the load (bench ingest-duckdb): the loader
    is another process, and every thread of it, DuckDB's included (a report opening
    the file first), runs at nice LOAD_NICE or more; eventd's own threads keep theirs."""
    ours = _nices(os.getpid())
    assert await store.query("SELECT 1") == [(1,)]  # the first use opens the file
    pid = await store.loader_pid()
    assert pid != os.getpid()
    low = _nices(pid)
    assert len(low) > 2  # DuckDB's own threads, not only the loader's
    assert all(nice >= max(min(ours.values()), LOAD_NICE) for nice in low.values()), low
    now = _nices(os.getpid())  # (a thread of ours may have ended meanwhile)
    assert {t: n for t, n in now.items() if t in ours} == {t: ours[t] for t in now if t in ours}
    assert now[threading.get_native_id()] == ours[threading.get_native_id()]


async def test_loads_run_duckdb_on_one_thread_and_reports_on_every_core(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """One DuckDB thread while loading (bench.duckdb_load: less CPU an event, no more
    wall time); a report's query gets a thread per core, and the load after it one
    again. The loader on a thread of this process, to read its connection."""
    settings = {"path": str(tmp_path / "analytics.duckdb")}
    Duckdb.validate_settings("analytics", settings)
    dest = Duckdb("analytics", settings, session, process=False)
    threads = "SELECT current_setting('threads')"
    try:
        assert await dest.deliver(events(track("m1"), track("m2"))) == [OK, OK]
        con = dest.loader._con
        assert con is not None
        assert con.execute(threads).fetchall() == [(LOAD_THREADS,)] == [(1,)]
        assert await dest.query(threads) == [(os.cpu_count(),)]
        assert con.execute(threads).fetchall() == [(LOAD_THREADS,)]
        assert await dest.deliver(events(track("m3"))) == [OK]
        assert await dest.query("SELECT count(*) FROM app.tracks") == [(3,)]
        assert con.execute(threads).fetchall() == [(LOAD_THREADS,)]
    finally:
        await dest.close()


def _wait_gone(pid: int) -> None:
    """Block until process ``pid`` has ended (a pidfd is readable then)."""
    fd = os.pidfd_open(pid)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


async def test_a_loader_killed_after_a_commit_loses_nothing_and_loads_nothing_twice(
    store: Duckdb,
) -> None:
    """A crash between the load and the worker's cursor save (the loader killed after a
    batch committed, before anything acknowledged it): the worker sends the batch again
    with the next, and each messageId is in the file once."""
    first = events(track("m1"), track("m2"), {"type": "page", "messageId": "p1", "name": "Home"})
    assert await store.deliver(first) == [OK] * 3
    pid = await store.loader_pid()
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    again = [*first, *events(track("m3"), source="app")]
    outcome = await store.deliver(again)
    if isinstance(outcome, Retry):  # the dead pool was noticed by this call: sent again
        assert "loader process ended" in outcome.reason
        outcome = await store.deliver(again)
    assert outcome == [OK] * 4
    assert await store.loader_pid() not in (pid, os.getpid())
    assert await store.query("SELECT id FROM app.tracks ORDER BY id") == [
        ("m1",),
        ("m2",),
        ("m3",),
    ]
    assert await store.query("SELECT id FROM app.order_completed ORDER BY id") == [
        ("m1",),
        ("m2",),
        ("m3",),
    ]
    assert await store.query("SELECT id FROM app.pages") == [("p1",)]


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"destinations\.analytics\.settings: .*'path'"):
        Duckdb.validate_settings("analytics", {})
    with pytest.raises(ConfigError, match=r"destinations\.analytics\.settings\.schema"):
        Duckdb.validate_settings("analytics", {"path": "x.duckdb", "schema": "Bad-Name"})
