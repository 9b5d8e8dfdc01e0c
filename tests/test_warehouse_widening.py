"""Issue 16's trial: a number column that meets a value it cannot hold, on the real
DuckDB and the real PostgreSQL (the fixture of test_postgres.py), through each
destination's ``deliver``.

A ``bigint`` column (made from ``100, 50``) widens to ``double precision`` for ``7.5``
and keeps its values, so the revenue report sums 157.5 (it showed 150 + NULL). Any
other misfit (a string in a number column, a number in a boolean one) is stored as
NULL, counted (``value dropped...``) and logged at warning naming the table, the
column and the value's type: never silently.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from eventd_plugins.duckdb import Duckdb
from eventd_plugins.postgres import Postgres
from eventd_plugins.warehouse.rows import (
    ADJUSTED_DROPPED,
    BIGINT,
    BOOLEAN,
    DOUBLE,
    TEXT,
    widened,
)

from eventd import OK, Destination, Event
from eventd.reports import REPORTS
from eventd.reports.params import parse
from tests.contract.postgres_server import PostgresServer
from tests.test_postgres import pg  # noqa: F401  (the session's PostgreSQL cluster)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
Counted = dict[str, int]


def track(mid: str, event: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": f"user-{mid}",
        "messageId": mid,
        "timestamp": T0.isoformat(),
        "receivedAt": T0.isoformat(),
        "properties": properties,
    }


def events(*messages: dict[str, Any]) -> list[Event]:
    return [
        Event(seq, "app", 1_700_000_000_000, body=orjson.dumps(m))
        for seq, m in enumerate(messages, 1)
    ]


Open = Callable[[aiohttp.ClientSession], Destination]


def test_only_a_bigint_column_widens_and_only_for_a_number_it_cannot_hold() -> None:
    assert widened(7.5, BIGINT) == DOUBLE
    assert widened("7.5", BIGINT) == DOUBLE  # a string holding a number, as fit() reads it
    assert widened(1e20, BIGINT) == DOUBLE  # whole, but past bigint's range
    assert widened(2.0, BIGINT) is None  # cast to 2
    assert widened(12, BIGINT) is None
    assert widened(2**70, BIGINT) is None  # dropped: double would round it
    assert widened(True, BIGINT) is None
    assert widened("abc", BIGINT) is None
    assert widened(7.5, BOOLEAN) is None
    assert widened(7.5, DOUBLE) is None
    assert widened(7.5, TEXT) is None


@pytest.fixture(params=["duckdb", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Open:
    """A fresh store of each kind (its database made outside any test's event loop)."""
    if request.param == "duckdb":
        path = str(tmp_path / "analytics.duckdb")
        # on a thread of this process, so its warnings reach caplog
        return lambda s: Duckdb("analytics", {"path": path}, s, process=False)
    server: PostgresServer = request.getfixturevalue("pg")
    settings = {"dsn": server.dsn(server.create_database()), "password": server.password}
    return lambda s: Postgres("wh", settings, s)


@pytest.fixture
async def store(opener: Open) -> AsyncIterator[tuple[Destination, Counted]]:
    async with aiohttp.ClientSession() as session:
        dest = opener(session)
        counted: Counted = {}
        dest.on_adjusted = lambda reason, n: counted.__setitem__(reason, counted.get(reason, 0) + n)
        yield dest, counted
        await dest.close()


async def query(dest: Destination, sql: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = await dest.query(sql)  # type: ignore[attr-defined]
    return rows


async def column_type(dest: Destination, table: str, column: str) -> str:
    [(found,)] = await query(
        dest,
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app'"
        f" AND table_name = '{table}' AND column_name = '{column}'",
    )
    return str(found).lower()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "eventd.warehouse" and r.levelno == logging.WARNING
    ]


async def test_a_decimal_widens_an_integer_column_and_the_report_sums_it(
    store: tuple[Destination, Counted], caplog: pytest.LogCaptureFixture
) -> None:
    dest, counted = store
    caplog.set_level(logging.WARNING, "eventd.warehouse")
    # the trial: the column is made bigint from the first values, then 7.5 arrives
    assert await dest.deliver(events(track("m1", revenue=100), track("m2", revenue=50))) == [OK] * 2
    assert await column_type(dest, "order_completed", "revenue") == "bigint"
    assert await dest.deliver(events(track("m3", revenue=7.5))) == [OK]
    assert await column_type(dest, "order_completed", "revenue") in ("double", "double precision")
    assert await query(dest, "SELECT id, revenue FROM app.order_completed ORDER BY id") == [
        ("m1", 100.0),
        ("m2", 50.0),
        ("m3", 7.5),
    ]
    module = REPORTS["revenue"]
    got = await module.run(dest, parse(module.PARAMS, {"period": "month"}))
    assert [(p["start"], p["revenue"], p["paying_users"]) for p in got["periods"]] == [
        ("2026-11-01", 157.5, 3)
    ]
    assert counted == {}  # nothing dropped, nothing cast
    [said] = warnings(caplog)
    assert "app.order_completed.revenue widened from bigint to double precision" in said


async def test_a_decimal_in_the_batch_that_makes_the_column_is_kept(
    store: tuple[Destination, Counted],
) -> None:
    dest, counted = store
    batch = events(track("m1", revenue=100), track("m2", revenue=50), track("m3", revenue="7.5"))
    assert await dest.deliver(batch) == [OK] * 3
    assert await query(dest, "SELECT sum(revenue) FROM app.order_completed") == [(157.5,)]
    # "7.5" is a string holding the number: cast into the widened column, and counted so
    assert counted == {"value cast to the column's type": 1}


async def test_other_misfits_are_null_counted_and_logged_by_table_column_and_type(
    store: tuple[Destination, Counted], caplog: pytest.LogCaptureFixture
) -> None:
    dest, counted = store
    caplog.set_level(logging.WARNING, "eventd.warehouse")
    first = events(track("m1", "Item Viewed", price=10, in_stock=True))
    assert await dest.deliver(first) == [OK]
    later = events(
        track("m2", "Item Viewed", price="ten", in_stock=1),
        track("m3", "Item Viewed", price="eleven", in_stock=True),
    )
    assert await dest.deliver(later) == [OK] * 2
    assert await query(dest, "SELECT id, price, in_stock FROM app.item_viewed ORDER BY id") == [
        ("m1", 10, True),
        ("m2", None, None),
        ("m3", None, True),
    ]
    assert await column_type(dest, "item_viewed", "price") == "bigint"  # not widened to text
    assert counted == {ADJUSTED_DROPPED: 2}  # events m2 and m3
    assert sorted(warnings(caplog)) == [
        "warehouse app.item_viewed.in_stock (boolean): 1 number value(s) did not fit and"
        f" were stored as NULL (counted as {ADJUSTED_DROPPED!r})",
        "warehouse app.item_viewed.price (bigint): 2 string value(s) did not fit and"
        f" were stored as NULL (counted as {ADJUSTED_DROPPED!r})",
    ]


async def test_keyed_tables_widen_too(store: tuple[Destination, Counted]) -> None:
    """``identifies`` and ``users`` have a primary key on ``id``; their trait columns
    widen like an event table's (and ``users`` keeps its upsert)."""
    dest, counted = store

    def identify(mid: str, score: Any) -> dict[str, Any]:
        return {
            "type": "identify",
            "userId": "u1",
            "messageId": mid,
            "timestamp": T0.isoformat(),
            "receivedAt": T0.isoformat(),
            "traits": {"score": score},
        }

    assert await dest.deliver(events(identify("i1", 3))) == [OK]
    assert await dest.deliver(events(identify("i2", 4.25))) == [OK]
    assert await query(dest, "SELECT id, score FROM app.identifies ORDER BY id") == [
        ("i1", 3.0),
        ("i2", 4.25),
    ]
    assert await query(dest, "SELECT id, score FROM app.users") == [("u1", 4.25)]
    assert counted == {}
