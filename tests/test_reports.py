"""Every report against answers computed in plain Python (tests/reports_data.py), on a
real DuckDB file and a real PostgreSQL (the fixture of test_postgres.py), loaded by the
duckdb and postgres destinations from one generated data set: the same answers on both.

Then the daemon: ``eventd serve`` with a duckdb store, the endpoints (bad parameters
are a JSON 400 naming the parameter) and ``eventd report`` in each format.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from eventd_plugins.duckdb import Duckdb
from eventd_plugins.postgres import Postgres

from eventd import OK, Destination, Event
from eventd.identity.links import IdentityLink
from eventd.reports import REPORTS
from eventd.reports.params import BadParameter, parse
from tests import reports_data as data
from tests.contract.fixtures import destination, post
from tests.contract.postgres_server import PostgresServer
from tests.harness import EventdProcess
from tests.test_postgres import pg  # noqa: F401  (the session's PostgreSQL cluster)

DS = data.generate()
Open = Callable[[aiohttp.ClientSession], Destination]


async def _load(store: Destination, ds: data.DataSet, links: bool) -> None:
    events = [
        Event(i, e.source, 0, body=orjson.dumps(e.message())) for i, e in enumerate(ds.events)
    ]
    for k in range(0, len(events), 100):  # as the dispatcher hands them over
        assert await store.deliver(events[k : k + 100]) == OK or all(
            o == OK
            for o in await store.deliver(events[k : k + 100])  # type: ignore[union-attr]
        )
    if links:
        await store.write_identities(ds.links)  # type: ignore[attr-defined]
    await store.close()


def _loaded(make: Open, links: bool = True) -> Open:
    async def main() -> None:
        async with aiohttp.ClientSession() as s:
            await _load(make(s), DS, links)

    # on a thread of its own: the fixture may be set up from inside a test's event loop
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()
    return make


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> Open:
    path = tmp_path_factory.mktemp("duck") / "analytics.duckdb"
    return _loaded(lambda s: Duckdb("analytics", {"path": str(path)}, s))


@pytest.fixture(scope="module")
def duck_unlinked(tmp_path_factory: pytest.TempPathFactory) -> Open:
    path = tmp_path_factory.mktemp("duck") / "unlinked.duckdb"
    return _loaded(lambda s: Duckdb("analytics", {"path": str(path)}, s), links=False)


@pytest.fixture(scope="module")
def postgres(pg: PostgresServer) -> Open:  # noqa: F811
    db = pg.create_database()
    settings = {"dsn": pg.dsn(db), "password": pg.password}
    return _loaded(lambda s: Postgres("wh", settings, s))


@pytest.fixture(params=["duckdb", "postgres"])
def opener(request: pytest.FixtureRequest) -> Open:
    """The loaded store of each kind (set up outside any test's event loop)."""
    make: Open = request.getfixturevalue("duck" if request.param == "duckdb" else "postgres")
    return make


@pytest.fixture
async def store(opener: Open) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as s:
        opened = opener(s)
        yield opened
        await opened.close()


async def report(store: Any, name: str, **given: str) -> dict[str, Any]:
    module = REPORTS[name]
    result: dict[str, Any] = await module.run(store, parse(module.PARAMS, given))
    return result


# -- funnel ------------------------------------------------------------------------------


async def test_funnel_by_a_property_within_a_window(store: Any) -> None:
    steps = ",".join(data.STEPS)
    got = await report(store, "funnel", steps=steps, by="car", within="2d")
    assert got == data.funnel(DS, data.STEPS, timedelta(days=2), by="car")
    # the data set exercises what it should: drop-offs at each step and several values
    assert got["total"][0] > got["total"][1] > got["total"][2] > 0
    assert {"vw", "bmw", "fiat", "(none)"} <= set(got["by"])


async def test_funnel_window_order_and_range(store: Any) -> None:
    steps = ["Viewed Car", "Booked Test Drive", "Order Completed"]
    wide = await report(store, "funnel", steps=",".join(steps), within="30d")
    narrow = await report(store, "funnel", steps=",".join(steps), within="1h")
    assert wide == data.funnel(DS, steps, timedelta(days=30))
    assert narrow == data.funnel(DS, steps, timedelta(hours=1))
    assert wide["total"][2] > narrow["total"][2]  # late orders count only in a wide window
    reverse = ["Order Completed", "Booked Test Drive"]  # order matters
    assert await report(store, "funnel", steps=",".join(reverse)) == data.funnel(
        DS, reverse, timedelta(days=1)
    )
    since, until = data.START + timedelta(days=6), data.START + timedelta(days=15)
    got = await report(
        store,
        "funnel",
        steps=",".join(steps),
        since=since.date().isoformat(),
        until=until.isoformat(),
    )
    assert got == data.funnel(DS, steps, timedelta(days=1), since=since, until=until)
    # --by in a range: the anchoring step-1 event is the earliest in the range
    got = await report(
        store, "funnel", steps=",".join(steps), by="car", since=since.date().isoformat()
    )
    assert got == data.funnel(DS, steps, timedelta(days=1), by="car", since=since)


async def test_stitched_people_count_once(store: Any) -> None:
    # u00 viewed a car anonymously, signed up, and booked on a second device before
    # signing in there: one person, who reached step 2
    steps = ["Viewed Car", "Signed Up", "Booked Test Drive"]
    got = await report(store, "funnel", steps=",".join(steps), within="5d")
    assert got == data.funnel(DS, steps, timedelta(days=5))
    unlinked = data.DataSet(DS.events, [])
    assert data.funnel(unlinked, steps, timedelta(days=5))["total"][1] == 0  # not without links


async def test_without_links_a_person_is_the_user_id_else_the_anonymous_id(
    duck_unlinked: Open,
) -> None:
    unlinked = data.DataSet(DS.events, [])
    async with aiohttp.ClientSession() as s:
        store = duck_unlinked(s)
        try:
            got = await report(store, "funnel", steps=",".join(data.STEPS), by="car", within="2d")
            assert got == data.funnel(unlinked, data.STEPS, timedelta(days=2), by="car")
            assert await report(store, "engagement") == data.engagement(unlinked, "day")
        finally:
            await store.close()


@pytest.mark.parametrize("seed", range(4))
async def test_tangled_identities_on_duckdb(tmp_path: Path, seed: int) -> None:
    """DuckDB groups events per userId and anonymousId before per person
    (store.keyed_people_sql): shared devices, ties on linked_at, an anonymousId spelled
    like a userId give the people of eventd.identity.links' rule, as computed apart."""
    ds = data.generate_shared(seed)
    # the data set exercises what it should: a device linked to two users or more, and
    # an anonymousId that is also a userId, with events
    assert sum(1 for ln in ds.links if ln.anonymous_id == "d0") > 1
    assert any(e.anonymous_id == "u5" and e.user_id is None for e in ds.events)
    async with aiohttp.ClientSession() as s:
        store = Duckdb("analytics", {"path": str(tmp_path / "a.duckdb")}, s)
        try:
            await _load(store, ds, links=True)
            for given, within in (("1h", timedelta(hours=1)), ("3d", timedelta(days=3))):
                got = await report(store, "funnel", steps=",".join(data.STEPS), within=given)
                assert got == data.funnel(ds, data.STEPS, within)
            # --by: the anchoring step-1 event found in a pass of its own over step-1
            # events (ties on timestamp broken by id, across both sources)
            got = await report(store, "funnel", steps=",".join(data.STEPS), by="car", within="3d")
            assert got == data.funnel(ds, data.STEPS, timedelta(days=3), by="car")
            got = await report(store, "retention", start="Viewed Car", periods="7")
            assert got == data.retention(ds, "Viewed Car", "any", "day", 7)
            got = await report(
                store,
                "retention",
                start="Signed Up",
                period="week",
                periods="2",
                **{"return": "Order Completed"},
            )
            assert got == data.retention(ds, "Signed Up", "Order Completed", "week", 2)
        finally:
            await store.close()


# -- the other reports -------------------------------------------------------------------


@pytest.mark.parametrize(("period", "periods"), [("day", 14), ("week", 3)])
async def test_retention_cohorts(store: Any, period: str, periods: int) -> None:
    got = await report(store, "retention", start="Signed Up", period=period, periods=str(periods))
    assert got == data.retention(DS, "Signed Up", "any", period, periods)
    assert sum(c["size"] for c in got["cohorts"]) == 48 - 1  # u20 and u21 are one person
    assert any(r > 0 for c in got["cohorts"] for r in c["returned"])
    back = await report(store, "retention", start="Viewed Car", **{"return": "Order Completed"})
    assert back == data.retention(DS, "Viewed Car", "Order Completed", "day", 7)


@pytest.mark.parametrize("period", ["day", "week", "month"])
async def test_engagement(store: Any, period: str) -> None:
    assert await report(store, "engagement", period=period) == data.engagement(DS, period)


@pytest.mark.parametrize(("period", "inactive"), [("week", 1), ("day", 3)])
async def test_churn(store: Any, period: str, inactive: int) -> None:
    got = await report(store, "churn", period=period, inactive=str(inactive))
    assert got == data.churn(DS, period, inactive)
    assert any(p["churned"] for p in got["periods"])


@pytest.mark.parametrize("period", ["month", "week"])
async def test_revenue(store: Any, period: str) -> None:
    got = await report(store, "revenue", period=period)
    assert got == data.revenue(DS, "Order Completed", "revenue", period)
    assert sum(p["revenue"] for p in got["periods"]) > 0


async def test_a_property_that_is_not_a_number_is_a_bad_parameter(store: Any) -> None:
    with pytest.raises(BadParameter, match="property='car'"):
        await report(store, "revenue", event="Viewed Car", property="car")


def test_parameters_are_checked_and_named() -> None:
    cases = {
        ("funnel", "steps", ""): "steps=",
        ("funnel", "steps", "A,,B"): "separated by commas",
        ("funnel", "steps", "A,A"): "distinct",
        ("funnel", "within", "soon"): "within='soon': expected a duration like '30s'",
        ("funnel", "since", "yesterday"): "since='yesterday'",
        ("retention", "period", "year"): "day or week",
        ("retention", "periods", "0"): "from 1 to",
        ("churn", "inactive", "x"): "inactive='x'",
        ("funnel", "colour", "red"): "colour='red': expected one of the parameters",
    }
    for (name, key, value), message in cases.items():
        given = {"steps": "A,B", "start": "A", key: value}
        given = {
            k: v
            for k, v in given.items()
            if k in {p.name for p in REPORTS[name].PARAMS} or k == key
        }
        with pytest.raises(BadParameter, match=message) as err:
            parse(REPORTS[name].PARAMS, given)
        assert err.value.name == key


def test_times_are_durations_or_iso_dates() -> None:
    args = parse(
        REPORTS["funnel"].PARAMS,
        {"steps": "A", "since": "2026-11-01", "until": "2026-11-02T09:00:00+01:00"},
    )
    assert args["since"] == datetime(2026, 11, 1, tzinfo=UTC)
    assert args["until"] == datetime(2026, 11, 2, 8, tzinfo=UTC)
    ago = parse(REPORTS["funnel"].PARAMS, {"steps": "A", "since": "7d"})["since"]
    assert abs(datetime.now(UTC) - timedelta(days=7) - ago) < timedelta(minutes=1)


# -- the daemon: endpoints and the CLI ---------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventdProcess]:
    tmp = tmp_path_factory.mktemp("daemon")
    config = {
        # The answers here are the unstitched ones: the identity graph, on by default,
        # would link this data set's identifies (stitching has its own tests).
        "identity": {"enabled": False},
        "destinations": {
            "analytics": destination(
                "duckdb", {"path": str(tmp / "analytics.duckdb")}, batch_size=1000
            )
        },
    }
    ev = EventdProcess(tmp, config).start()
    try:
        messages = [e.message() for e in DS.events]
        for k in range(0, len(messages), 500):
            post(ev, messages[k : k + 500])
        ev.drain()
        yield ev
    finally:
        ev.stop()


def http_get(ev: EventdProcess, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        ev.url + path, headers={"Authorization": f"Bearer {ev.admin_token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_endpoints_answer_the_reports_json(daemon: EventdProcess) -> None:
    unlinked = data.DataSet(DS.events, [])  # the daemon has no identity graph here
    status, got = http_get(
        daemon,
        "/admin/reports/funnel?steps=Viewed+Car,Booked+Test+Drive,Order+Completed&by=car&within=2d",
    )
    assert status == 200
    assert got == data.funnel(unlinked, data.STEPS, timedelta(days=2), by="car")
    status, got = http_get(daemon, "/admin/reports/retention?start=Signed+Up&periods=14")
    assert (status, got) == (200, data.retention(unlinked, "Signed Up", "any", "day", 14))
    status, got = http_get(daemon, "/admin/reports/revenue?period=week")
    assert (status, got) == (200, data.revenue(unlinked, "Order Completed", "revenue", "week"))


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("funnel", "steps"),
        ("funnel?steps=A&within=-1d", "within"),
        ("funnel?steps=A&until=tomorrow", "until"),
        ("retention?start=A&periods=many", "periods"),
        ("engagement?period=year", "period"),
        ("churn?inactive=0", "inactive"),
        ("revenue?property=car&event=Viewed+Car", "property"),
        ("revenue?bogus=1", "bogus"),
    ],
)
def test_bad_parameters_are_a_json_400_naming_them(
    daemon: EventdProcess, query: str, parameter: str
) -> None:
    status, body = http_get(daemon, f"/admin/reports/{query}")
    assert status == 400
    assert body["code"] == "bad_parameter" and body["parameter"] == parameter
    assert body["message"].startswith(f"{parameter}=")


def test_endpoints_need_the_admin_token(daemon: EventdProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(daemon.url + "/admin/reports/engagement", timeout=30)
    assert err.value.code == 401


def test_cli_prints_table_json_and_csv(daemon: EventdProcess) -> None:
    unlinked = data.DataSet(DS.events, [])
    expected = data.funnel(unlinked, data.STEPS, timedelta(days=2), by="car")
    steps = ",".join(data.STEPS)
    base = ("report", "funnel", "--steps", steps, "--by", "car", "--within", "2d")
    done = daemon.cli(*base, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected
    done = daemon.cli(*base, "--format", "csv")
    rows = list(csv.reader(io.StringIO(done.stdout)))
    keys = list(expected["by"])
    assert rows[0] == ["step", "people", "of step 1", *keys]
    assert [r[0] for r in rows[1:]] == data.STEPS
    assert [int(r[1]) for r in rows[1:]] == expected["total"]
    assert [[int(r[3 + i]) for r in rows[1:]] for i in range(len(keys))] == list(
        expected["by"].values()
    )
    table = daemon.cli(*base).stdout.splitlines()
    assert table[0] == "funnel"
    assert table[1].split()[:2] == ["step", "people"]
    first = table[3]
    assert first.startswith("Viewed Car") and f" {expected['total'][0]} " in first
    bad = daemon.cli("report", "funnel", "--steps", "A", "--since", "soon")
    assert bad.returncode == 1 and "since='soon'" in bad.stderr
    assert "funnel" in daemon.cli("report", "--help").stdout


def test_cli_says_when_no_daemon_answers(tmp_path: Path) -> None:
    ev = EventdProcess(tmp_path)  # configured, never started
    done = ev.cli("report", "engagement")
    assert done.returncode == 1 and "eventd is not running" in done.stderr


def test_the_openapi_document_lists_each_reports_parameters() -> None:
    doc = json.loads((Path(__file__).parent.parent / "eventd" / "openapi.json").read_text())
    for name, module in REPORTS.items():
        op = doc["paths"][f"/admin/reports/{name}"]["get"]
        documented = {p["name"]: p["required"] for p in op["parameters"]}
        assert documented == {p.name: p.required for p in module.PARAMS}, name


async def test_postgres_upserts_identity_links_like_duckdb(
    pg: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    t0 = data.START
    later = t0 + timedelta(hours=1)
    first = [
        IdentityLink("a1", "u1", "p1", later),
        IdentityLink("a1", "u1", "p1", t0),  # the same key in one batch: the first time
        IdentityLink(None, "u1", "p1", t0),
    ]
    merged = [IdentityLink("a1", "u1", "p2", later), IdentityLink(None, "u1", "p2", later)]
    db = await asyncio.to_thread(pg.create_database)
    async with aiohttp.ClientSession() as s:
        stores: list[Any] = [
            Postgres("wh", {"dsn": pg.dsn(db), "password": pg.password}, s),
            Duckdb("analytics", {"path": str(tmp_path / "a.duckdb")}, s),
        ]
        for store in stores:
            await store.write_identities(first)
            await store.write_identities(merged)  # the profile merged: rows re-sent
            rows = await store.query(
                f"SELECT anonymous_id, user_id, profile_id, linked_at"
                f" FROM {store.identities_schema}.identities ORDER BY anonymous_id NULLS FIRST"
            )
            assert rows == [(None, "u1", "p2", t0), ("a1", "u1", "p2", t0)], store.dialect
            await store.close()
