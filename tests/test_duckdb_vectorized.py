"""The duckdb destination's vectorized path (tracks decoded by msgspec into typed
structs, handed to DuckDB as Arrow tables) gives exactly the rows the Python path
gives: the same batches are delivered to two real DuckDB files, one with the
vectorized path turned off, and every table of both is compared row by row (all
columns but uuid_ts, the load time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from eventd_plugins.duckdb import Duckdb

from eventd import OK, Event


def track(mid: str, name: str, /, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": name,
        "userId": "u1",
        "anonymousId": "a1",
        "messageId": mid,
        "timestamp": "2026-11-02T09:00:00.123Z",
        "receivedAt": "2026-11-02T10:00:00+01:00",
        "sentAt": "2026-11-02T09:00:00.5Z",
        "context": {"ip": "203.0.113.9", "library": {"name": "analytics.js", "version": "2"}},
        "properties": {"car": "vw", "price": 18000.5, "quantity": 2, "electric": True},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(message.get(key), dict):
            message[key] = {**message[key], **value}
        else:
            message[key] = value
    return message


def batch(*messages: dict[str, Any]) -> list[Event]:
    return [Event(i, "app", 0, body=orjson.dumps(m)) for i, m in enumerate(messages, 1)]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Duckdb, Duckdb]]:
    async with aiohttp.ClientSession() as session:
        fast = Duckdb("a", {"path": str(tmp_path / "fast.duckdb")}, session)
        # the Python path alone: a loader on a thread of this process, patched
        slow = Duckdb("a", {"path": str(tmp_path / "slow.duckdb")}, session, process=False)
        slow.loader._vectorized = lambda *_: None  # type: ignore[method-assign]
        yield fast, slow
        await fast.close()
        await slow.close()


async def dump(store: Duckdb) -> dict[str, list[tuple[Any, ...]]]:
    tables = await store.query(
        "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2"
    )
    out: dict[str, list[tuple[Any, ...]]] = {}
    for schema, table in tables:
        columns = await store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1"
            " AND table_name = $2 AND column_name <> 'uuid_ts' ORDER BY 1",
            [schema, table],
        )
        names = ", ".join(f'"{c}"' for (c,) in columns)
        rows = await store.query(f'SELECT {names} FROM "{schema}"."{table}" ORDER BY id')
        out[f"{schema}.{table}"] = [
            tuple(zip([c for (c,) in columns], r, strict=True)) for r in rows
        ]
    return out


async def deliver_both(pair: tuple[Duckdb, Duckdb], events: list[Event]) -> bool:
    """Deliver to both; whether the fast store took the vectorized path."""
    fast, slow = pair
    before = fast.vectorized_batches
    assert await fast.deliver(events) == [OK] * len(events)
    assert await slow.deliver(events) == [OK] * len(events)
    return fast.vectorized_batches > before


async def test_steady_batches_load_vectorized_with_the_python_paths_rows(
    pair: tuple[Duckdb, Duckdb],
) -> None:
    first = [track(f"m{i}", ["Viewed Car", "Order Completed"][i % 2]) for i in range(6)]
    assert not await deliver_both(pair, batch(*first))  # makes the tables: Python
    same_shape = [
        track("n1", "Viewed Car", userId="", properties={"car": "bmw", "price": 3}),
        track("n2", "Order Completed", anonymousId=None, context={"ip": "198.51.100.1"}),
        track("n3", "Viewed Car", properties={"price": -2, "quantity": -7, "car": "o'neil"}),
        track("n4", "Order Completed", properties={"car": None}),
        track("n5", "Viewed Car", timestamp=None, sentAt="2026-11-02T09:00:00.123456-05:30"),
    ]
    assert await deliver_both(pair, batch(*same_shape))
    # a redelivery of loaded ids beside new ones: ON CONFLICT keeps one row per id
    assert await deliver_both(pair, batch(*same_shape, track("n6", "Viewed Car")))
    fast, slow = pair
    assert await dump(fast) == await dump(slow)
    tables = await dump(fast)
    assert len(tables["app.tracks"]) == 12
    # the event tables (no key of their own) skipped the redelivered ids too
    ids = [dict(r)["id"] for t in ("app.viewed_car", "app.order_completed") for r in tables[t]]
    assert sorted(ids) == sorted([*(f"m{i}" for i in range(6)), *(f"n{i}" for i in range(1, 7))])


@pytest.mark.parametrize(
    "odd",
    [
        {"properties": {"colour": "red"}},  # a new column
        {"properties": {"quantity": 2.5}},  # dropped in a bigint column
        {"properties": {"quantity": "3"}},  # cast into a bigint column
        {"properties": {"car": 7}},  # cast into a text column
        {"properties": {"car": ["vw", "bmw"]}},  # an array
        {"properties": {"quantity": 2**63}},  # beyond bigint
        {"properties": {"car": {}}},  # an empty object
        {"properties": {"Car": "vw"}},  # same column as "car"
        {"properties": {"id": "x"}},  # a standard column
        {"context": {"ip": 4}},  # cast into a text column
        {"context": "not an object"},
        {"timestamp": "yesterday"},  # no timestamp
        {"timestamp": "2026-11-02 09:00:00"},  # no zone: the Python path's rule
        {"messageId": 5},
        {"event": "Viewed Cær"},  # name adjusted (non-ASCII)
        {"event": ""},
        {"context": None},  # not an object: Python ignores it
        {"timestamp": "2026-02-30T09:00:00Z"},  # no such day: dropped
        {"properties": {"quantity": True}},  # a boolean is no bigint
        {"properties": {"price": "1.5"}},  # cast into a double column
        {"userId": 5},  # a number: its text
        {"properties": {"quantity": None, "car": [None]}},  # an array of nulls
    ],
)
async def test_anything_to_adjust_takes_the_python_path(
    pair: tuple[Duckdb, Duckdb], odd: dict[str, Any]
) -> None:
    assert not await deliver_both(pair, batch(track("m1", "Viewed Car")))
    assert not await deliver_both(
        pair, batch(track("m2", "Viewed Car"), track("m3", "Viewed Car", **odd))
    )
    assert await deliver_both(pair, batch(track("m4", "Viewed Car")))  # steady again
    fast, slow = pair
    assert await dump(fast) == await dump(slow)


async def test_a_messageid_twice_in_a_batch_is_one_row(pair: tuple[Duckdb, Duckdb]) -> None:
    assert not await deliver_both(pair, batch(track("m1", "Viewed Car")))
    assert not await deliver_both(pair, batch(track("m2", "Viewed Car"), track("m2", "Viewed Car")))
    fast, slow = pair
    assert await dump(fast) == await dump(slow)


async def test_a_mixed_batch_loads_its_tracks_vectorized_and_the_rest_in_python(
    pair: tuple[Duckdb, Duckdb],
) -> None:
    assert not await deliver_both(pair, batch(track("m1", "Viewed Car")))
    identify = {
        "type": "identify",
        "userId": "u1",
        "messageId": "i1",
        "receivedAt": "2026-11-02T10:00:00Z",
        "traits": {"email": "a@example.com", "plan": 3},
    }
    page = {"type": "page", "anonymousId": "a2", "messageId": "p1", "name": "Home"}
    mixed = batch(track("m2", "Viewed Car"), identify, track("m3", "Viewed Car"), page)
    assert await deliver_both(pair, mixed)
    assert await deliver_both(pair, mixed)  # again: nothing twice
    fast, slow = pair
    got = await dump(fast)
    assert got == await dump(slow)
    assert [dict(r)["id"] for r in got["app.tracks"]] == ["m1", "m2", "m3"]
    assert [dict(r)["id"] for r in got["app.pages"]] == ["p1"]
    assert [dict(r)["id"] for r in got["app.users"]] == ["u1"]


async def test_a_key_its_table_has_is_learned_and_stays_on_the_fast_path(
    pair: tuple[Duckdb, Duckdb],
) -> None:
    """The structs know the keys seen since the tables were made; a batch bringing a
    key whose column exists (made by an earlier batch of the Python path) is learned
    from, and loaded on the fast path; a key only ever null needs no column."""
    coloured = track("m1", "Viewed Car", properties={"colour": "red"})
    assert not await deliver_both(pair, batch(track("m0", "Viewed Car"), coloured))
    assert await deliver_both(pair, batch(track("m2", "Viewed Car")))
    seen = track("m3", "Viewed Car", properties={"colour": "blue", "trim": None})
    assert await deliver_both(pair, batch(seen, track("m4", "Viewed Car", context={"ip": None})))
    assert await deliver_both(pair, batch(track("m5", "Viewed Car", properties={"trim": None})))
    fast, slow = pair
    got = await dump(fast)
    assert got == await dump(slow)
    colours = {dict(r)["id"]: dict(r)["colour"] for r in got["app.viewed_car"]}
    assert colours == {"m0": None, "m1": "red", "m2": None, "m3": "blue", "m4": None, "m5": None}


async def test_a_widened_column_gives_the_same_rows_and_the_fast_path_resumes(
    pair: tuple[Duckdb, Duckdb],
) -> None:
    """Issue 16's trial on the fast path: a decimal in a bigint column (which the structs
    refuse) widens it to DOUBLE on the Python path; the structs learned against bigint
    are dropped, and the next batches load vectorized into the DOUBLE column."""
    whole = {"properties": {"quantity": 2}}
    assert not await deliver_both(pair, batch(track("w1", "Order Completed", **whole)))
    assert await deliver_both(pair, batch(track("w2", "Order Completed", **whole)))
    half = {"properties": {"quantity": 7.5}}
    assert not await deliver_both(pair, batch(track("w3", "Order Completed", **half)))
    steady = [track("w4", "Order Completed", **whole), track("w5", "Order Completed", **half)]
    assert await deliver_both(pair, batch(*steady))
    fast, slow = pair
    assert await dump(fast) == await dump(slow)
    got = await fast.query("SELECT id, quantity FROM app.order_completed ORDER BY id")
    assert got == [("w1", 2.0), ("w2", 2.0), ("w3", 7.5), ("w4", 2.0), ("w5", 7.5)]
