"""The postgres destination: its naming and typing rules, then real ``eventd serve``
processes loading a real PostgreSQL 15 (``tests/contract/postgres_server.py``).

Every end-to-end test gets a database of its own in one session-wide cluster and
compares what PostgreSQL holds with what eventd stored, by messageId. Without the
PostgreSQL binaries the end-to-end tests are skipped, saying so; in CI
(``CI=true``) that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eventd_plugins.postgres import masked_dsn
from eventd_plugins.warehouse.rows import (
    ADJUSTED_CAST,
    ADJUSTED_DROPPED,
    ADJUSTED_NO_EVENT_TABLE,
    ADJUSTED_NON_ASCII,
    ADJUSTED_RESERVED,
    ADJUSTED_TRUNCATED,
    BIGINT,
    BOOLEAN,
    DOUBLE,
    TEXT,
    TIMESTAMP,
    fit,
    infer_type,
    plan,
    snake_case,
)

from tests.contract.fixtures import counters, dead_letters, destination, post
from tests.contract.postgres_server import PostgresServer, missing_binaries
from tests.harness import EventdProcess

Start = Callable[..., EventdProcess]
NAME = "wh"  # the destination's name in every config here

# -- the rules, without a server ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("Order Completed", "order_completed"),
        ("accountType", "account_type"),
        ("Base64Encode", "base64_encode"),
        ("sample 2 Text", "sample_2_text"),
        ("FOO:BAR$BAZ", "foo_bar_baz"),
        ("context.page.url", "context_page_url"),
        ("Prénom", "pr_nom"),
        ("$$", ""),
    ],
)
def test_names_are_snake_cased_like_segment(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_types_are_inferred_from_the_first_value() -> None:
    assert infer_type(True) == BOOLEAN
    assert infer_type(3) == BIGINT
    assert infer_type(2**63) == TEXT  # past bigint: every digit kept
    assert infer_type(1.5) == DOUBLE
    assert infer_type("2024-05-01T10:00:00.000Z") == TIMESTAMP
    assert infer_type("2024-05-01") == TIMESTAMP
    assert infer_type("May 1st") == TEXT
    assert infer_type(["a", 1]) == TEXT


def test_values_are_fitted_to_the_column() -> None:
    assert fit(12, TEXT) == ("12", "cast")
    assert fit(["a"], TEXT) == ('["a"]', "ok")
    assert fit("12", BIGINT) == (12, "cast")
    assert fit(2.0, BIGINT) == (2, "cast")
    assert fit(2.5, BIGINT) == (None, "drop")
    assert fit(True, BIGINT) == (None, "drop")
    assert fit(3, DOUBLE) == (3.0, "ok")
    assert fit("TRUE", BOOLEAN) == (True, "cast")
    assert fit("yes", BOOLEAN) == (None, "drop")
    assert fit("2024-05-01T10:00:00Z", TIMESTAMP) == (
        datetime(2024, 5, 1, 10, tzinfo=UTC),
        "ok",
    )
    assert fit("soon", TIMESTAMP) == (None, "drop")
    assert fit(5, "integer") == ("5", "ok")  # a type eventd does not make: the server casts


def test_a_track_plans_its_tracks_row_and_its_event_table_row() -> None:
    message = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m1",
        "userId": "u1",
        "receivedAt": "2024-05-01T10:00:00.000Z",
        "context": {"ip": "1.2.3.4", "library": {"name": "analytics.js"}},
        "properties": {
            "orderId": "o1",
            "coupon": {"code": "X"},
            "user_id": "other",  # a standard column's name: dropped, like Segment does
            "Prénom": "Zoé",
            "k" * 70: 1,
            "empty": None,
        },
    }
    planned = plan(message, "app", datetime(2024, 5, 1, tzinfo=UTC))
    tracks, own = planned.rows
    assert tracks.table == "tracks" and own.table == "order_completed"
    assert tracks.values["event"] == "order_completed"
    assert tracks.values["event_text"] == "Order Completed"
    assert tracks.values["context_library_name"] == "analytics.js"
    assert "order_id" not in tracks.values
    assert own.values["order_id"] == "o1" and own.values["coupon_code"] == "X"
    assert own.values["user_id"] == "u1" and own.values["pr_nom"] == "Zoé"
    assert own.values["k" * 63] == 1 and "empty" not in own.values
    assert planned.adjusted == {ADJUSTED_RESERVED, ADJUSTED_NON_ASCII, ADJUSTED_TRUNCATED}


def test_an_event_named_like_a_standard_table_stays_in_tracks() -> None:
    message = {"type": "track", "event": "Users", "messageId": "m1", "userId": "u1"}
    planned = plan(message, "app", datetime(2024, 5, 1, tzinfo=UTC))
    assert [r.table for r in planned.rows] == ["tracks"]
    assert planned.adjusted == {ADJUSTED_NO_EVENT_TABLE}


def test_a_password_in_a_dsn_is_masked() -> None:
    assert masked_dsn("postgresql://u:s3cr3t@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert masked_dsn("postgresql://h/db?password=s3cr3t&sslmode=require") == (
        "postgresql://h/db?password=***&sslmode=require"
    )


# -- a real PostgreSQL ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    missing = missing_binaries()
    if missing:
        reason = (
            f"PostgreSQL binaries not on PATH: {', '.join(missing)} (apt-get install postgresql)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"postgres tests cannot run in CI: {reason}")
        print(f"\ntest_postgres skipped: {reason}")
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        server.setup_role()
        yield server
    finally:
        server.remove()


@pytest.fixture
def db(pg: PostgresServer) -> str:
    """A fresh database owned by the test role."""
    return pg.create_database()


def warehouse(pg: PostgresServer, db: str, **options: Any) -> dict[str, Any]:
    """The ``[destinations.wh]`` table: the DSN without its password, which is its own key."""
    settings = {"dsn": pg.dsn(db), "password": pg.password, **options.pop("settings", {})}
    return {"destinations": {NAME: destination("postgres", settings, **options)}}


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def rows(pg: PostgresServer, db: str, table: str, schema: str = "app") -> dict[str, dict[str, Any]]:
    """id → row of a warehouse table."""
    return {r["id"]: r for r in pg.fetch(db, f'SELECT * FROM "{schema}"."{table}"')}


def columns(pg: PostgresServer, db: str, table: str, schema: str = "app") -> dict[str, str]:
    found = pg.fetch(
        db,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    return {r["column_name"]: r["data_type"] for r in found}


def assert_has(found: dict[str, str], **expected: str) -> None:
    assert {k: found.get(k) for k in expected} == expected


def adjusted(ev: EventdProcess) -> dict[str, float]:
    return {
        labels["reason"]: value
        for labels, value in counters(ev, "eventd_adjusted_events")
        if labels["destination"] == NAME
    }


def status(ev: EventdProcess) -> dict[str, Any]:
    [found] = [d for d in ev.admin("GET", "/admin/destinations") if d["name"] == NAME]
    return dict(found)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.05)  # polling the condition itself


CONTEXT = {
    "ip": "203.0.113.9",
    "library": {"name": "analytics.js", "version": "2.11.1"},
    "page": {"url": "https://shop.example/cart", "path": "/cart"},
    "userAgent": "Mozilla/5.0",
}


def test_every_call_lands_in_its_tables(pg: PostgresServer, db: str, eventd: Start) -> None:
    ev = eventd(warehouse(pg, db, batch_size=250))
    mid = {
        k: str(uuid.uuid4())
        for k in ("identify", "order", "signup", "page", "screen", "group", "alias")
    }
    clicks = ids(300)
    post(
        ev,
        [
            {
                "type": "identify",
                "messageId": mid["identify"],
                "userId": "u1",
                "anonymousId": "anon-1",
                "context": CONTEXT,
                "timestamp": "2024-05-01T10:00:00.000Z",
                "traits": {
                    "email": "ada@example.com",
                    "plan": "pro",
                    "address": {"city": "Paris", "geo": {"lat": 48.85}},
                    "logins": 3,
                    "verified": True,
                    "createdAt": "2024-01-02T03:04:05Z",
                    "tags": ["a", "b"],
                },
            },
            {
                "type": "track",
                "messageId": mid["order"],
                "userId": "u1",
                "event": "Order Completed",
                "context": CONTEXT,
                "properties": {
                    "orderId": "o-1",
                    "revenue": 99.5,
                    "products": [{"sku": "G-32"}],
                    "coupon": {"code": "SPRING", "percent": 10},
                },
            },
            {
                "type": "track",
                "messageId": mid["signup"],
                "anonymousId": "anon-2",
                "event": "Signed Up",
                "properties": {"accountType": "Facebook"},
            },
            {
                "type": "page",
                "messageId": mid["page"],
                "userId": "u1",
                "name": "Cart",
                "category": "Shop",
                "properties": {"title": "Your cart", "url": "https://shop.example/cart"},
            },
            {
                "type": "screen",
                "messageId": mid["screen"],
                "userId": "u1",
                "name": "Dashboard",
                "properties": {"tab": "home"},
            },
            {
                "type": "group",
                "messageId": mid["group"],
                "userId": "u1",
                "groupId": "g-1",
                "traits": {"name": "Acme", "employees": 50},
            },
            {"type": "alias", "messageId": mid["alias"], "userId": "u1", "previousId": "anon-1"},
            *(
                {
                    "type": "track",
                    "messageId": m,
                    "userId": f"u{i % 7}",
                    "event": "Button Clicked",
                    "properties": {"index": i},
                }
                for i, m in enumerate(clicks)
            ),
        ],
    )
    later = str(uuid.uuid4())  # a second identify: users keeps the latest traits
    post(ev, [{"type": "identify", "messageId": later, "userId": "u1", "traits": {"plan": "team"}}])
    ev.drain()

    stored = {m["messageId"]: m for m in ev.stored()}
    by_type = Counter(m["type"] for m in stored.values())
    tracks = rows(pg, db, "tracks")
    identifies = rows(pg, db, "identifies")
    # counts in == rows out, by messageId
    assert set(tracks) == {m for m, s in stored.items() if s["type"] == "track"}
    assert len(tracks) == by_type["track"] == 302
    assert set(identifies) == {mid["identify"], later}
    assert set(rows(pg, db, "button_clicked")) == set(clicks)
    singles = {
        "order": "order_completed",
        "signup": "signed_up",
        "page": "pages",
        "screen": "screens",
        "group": "groups",
        "alias": "aliases",
    }
    for kind, table in singles.items():
        assert set(rows(pg, db, table)) == {mid[kind]}, table
    assert status(ev)["delivered"] == len(stored) and dead_letters(ev, NAME) == {}

    # identifies: standard columns, context and traits flattened, types inferred
    ident = identifies[mid["identify"]]
    assert ident["user_id"] == "u1" and ident["anonymous_id"] == "anon-1"
    assert ident["context_ip"] == "203.0.113.9"
    assert ident["context_library_name"] == "analytics.js"
    assert ident["context_library_version"] == "2.11.1"
    assert ident["context_page_url"] == "https://shop.example/cart"
    assert ident["context_user_agent"] == "Mozilla/5.0"
    assert ident["address_city"] == "Paris" and ident["address_geo_lat"] == 48.85
    assert ident["created_at"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert json.loads(ident["tags"]) == ["a", "b"]
    s = stored[mid["identify"]]
    assert ident["received_at"] == datetime.fromisoformat(s["receivedAt"])
    assert ident["timestamp"] == datetime.fromisoformat(s["timestamp"])
    assert ident["original_timestamp"] == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert ident["uuid_ts"] >= ident["received_at"]
    assert_has(
        columns(pg, db, "identifies"),
        logins="bigint",
        verified="boolean",
        created_at="timestamp with time zone",
        address_geo_lat="double precision",
        tags="text",
        id="text",
    )

    # users: one row per user_id, the latest value of each trait
    [user] = rows(pg, db, "users").values()
    assert user["id"] == "u1" and user["plan"] == "team" and user["email"] == "ada@example.com"
    assert "anonymous_id" not in user and "context_ip" not in user

    # tracks: standard and context columns only; the event table adds the properties
    order = rows(pg, db, "order_completed")[mid["order"]]
    assert tracks[mid["order"]]["event"] == order["event"] == "order_completed"
    assert tracks[mid["order"]]["event_text"] == order["event_text"] == "Order Completed"
    assert tracks[mid["order"]]["context_page_path"] == "/cart"
    assert "order_id" not in columns(pg, db, "tracks")
    assert order["order_id"] == "o-1" and order["revenue"] == 99.5
    assert order["coupon_code"] == "SPRING" and order["coupon_percent"] == 10
    assert json.loads(order["products"]) == [{"sku": "G-32"}]
    assert rows(pg, db, "signed_up")[mid["signup"]]["account_type"] == "Facebook"
    assert sorted(r["index"] for r in rows(pg, db, "button_clicked").values()) == list(range(300))

    page = rows(pg, db, "pages")[mid["page"]]
    assert (page["name"], page["category"], page["title"]) == ("Cart", "Shop", "Your cart")
    assert rows(pg, db, "screens")[mid["screen"]]["tab"] == "home"
    assert rows(pg, db, "screens")[mid["screen"]]["name"] == "Dashboard"
    group = rows(pg, db, "groups")[mid["group"]]
    assert (group["group_id"], group["name"], group["employees"]) == ("g-1", "Acme", 50)
    alias = rows(pg, db, "aliases")[mid["alias"]]
    assert (alias["user_id"], alias["previous_id"]) == ("u1", "anon-1")
    assert adjusted(ev) == {}


def test_replay_and_redelivery_leave_no_duplicates(
    pg: PostgresServer, db: str, eventd: Start
) -> None:
    ev = eventd(warehouse(pg, db))
    sent = ids(120)
    post(ev, [{"type": "track", "messageId": m, "userId": "u", "event": "Tick"} for m in sent])
    post(
        ev,
        [{"type": "identify", "messageId": m, "userId": "u", "traits": {"n": 1}} for m in ids(3)],
    )
    ev.drain()
    done = ev.cli("replay", NAME, "--since", "1h")
    assert done.returncode == 0 and "replaying 123 events" in done.stdout, done.stdout + done.stderr
    ev.drain()
    assert status(ev)["delivered"] == 2 * 123  # the replay really went through the destination
    for table, expected in [("tracks", 120), ("tick", 120), ("identifies", 3), ("users", 1)]:
        counted = pg.fetch(db, f'SELECT count(*) AS n, count(DISTINCT id) AS d FROM app."{table}"')
        assert counted == [{"n": expected, "d": expected}], table
    assert set(rows(pg, db, "tick")) == set(sent)


def test_new_keys_add_columns_and_type_conflicts_are_counted(
    pg: PostgresServer, db: str, eventd: Start
) -> None:
    ev = eventd(warehouse(pg, db, settings={"schema": "analytics"}))

    def item(**properties: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "messageId": str(uuid.uuid4()),
            "userId": "u",
            "event": "Item Viewed",
            "properties": properties,
        }

    first = item(price=10, sku="A1", in_stock=True, seen_at="2024-05-01T10:00:00Z", ratio=0.5)
    post(ev, [first])
    ev.drain()
    assert_has(
        columns(pg, db, "item_viewed", "analytics"),
        price="bigint",
        sku="text",
        in_stock="boolean",
        seen_at="timestamp with time zone",
        ratio="double precision",
    )
    ddl_after_first = len(pg.ddl(db))

    # A steady stream of known keys issues no DDL at all.
    steady = [item(price=i, sku=f"S{i}", in_stock=False, ratio=1.0) for i in range(200)]
    post(ev, steady)
    ev.drain()
    assert len(pg.ddl(db)) == ddl_after_first, pg.ddl(db)[ddl_after_first:]

    cast = item(price="12", sku=42, in_stock="true", ratio="2.5", color="red")
    dropped = item(price=2.5, in_stock="yes", seen_at="last week")
    bad = item(note="nul \u0000 inside")  # PostgreSQL text cannot hold NUL: refused
    both = item(price="7", seen_at=123)  # one value cast, one dropped
    post(ev, [cast, dropped, bad, both])
    ev.drain()

    got = rows(pg, db, "item_viewed", "analytics")
    assert set(got) == {m["messageId"] for m in [first, *steady, cast, dropped, both]}
    assert columns(pg, db, "item_viewed", "analytics")["color"] == "text"
    c = got[cast["messageId"]]
    assert (c["price"], c["sku"], c["in_stock"], c["ratio"], c["color"]) == (
        12, "42", True, 2.5, "red"
    )  # fmt: skip
    # 2.5 widened price to double precision (issue 16), the stored whole prices kept
    assert columns(pg, db, "item_viewed", "analytics")["price"] == "double precision"
    assert got[first["messageId"]]["price"] == 10.0
    d = got[dropped["messageId"]]
    assert (d["price"], d["in_stock"], d["seen_at"]) == (2.5, None, None)
    assert (got[both["messageId"]]["price"], got[both["messageId"]]["seen_at"]) == (7, None)
    assert adjusted(ev) == {ADJUSTED_CAST: 2, ADJUSTED_DROPPED: 2}
    # never silent: the widening and each dropped column are in eventd's log
    log = ev.log()
    assert "analytics.item_viewed.price widened from bigint to double precision" in log
    for column, column_type, value_type in [
        ("in_stock", "boolean", "string"),
        ("seen_at", "timestamp with time zone", "string"),
        ("seen_at", "timestamp with time zone", "number"),
    ]:
        said = f"analytics.item_viewed.{column} ({column_type}): 1 {value_type} value(s)"
        assert said in log, said

    dead = dead_letters(ev, NAME)
    assert list(dead) == [bad["messageId"]]
    assert dead[bad["messageId"]].startswith("PostgreSQL refused the row: ")
    assert "0x00" in dead[bad["messageId"]]
    # Everything went to the fixed schema; no per-source schema was made.
    schemas = {r["nspname"] for r in pg.fetch(db, "SELECT nspname FROM pg_namespace")}
    assert "analytics" in schemas and "app" not in schemas


def test_columns_changed_by_hand_are_honoured(pg: PostgresServer, db: str, eventd: Start) -> None:
    ev = eventd(warehouse(pg, db))

    def sized(**properties: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "messageId": str(uuid.uuid4()),
            "userId": "u",
            "event": "Sized",
            "properties": properties,
        }

    first = sized(code="A1", size="5")
    post(ev, [first])
    ev.drain()
    assert_has(columns(pg, db, "sized"), code="text", size="text")
    # A DBA narrows the columns while eventd runs (its cache still says text).
    pg.run_sql(
        "ALTER TABLE app.sized ALTER COLUMN size TYPE integer USING size::integer,"
        " ALTER COLUMN code TYPE varchar(3)",
        database=db,
    )
    fits, too_long, not_a_number = (
        sized(code="B2", size="7"),
        sized(code="TOOLONG"),
        sized(size="big"),
    )
    post(ev, [fits, too_long, not_a_number])
    ev.drain()
    got = rows(pg, db, "sized")
    assert set(got) == {first["messageId"], fits["messageId"]}
    assert (got[fits["messageId"]]["code"], got[fits["messageId"]]["size"]) == ("B2", 7)
    dead = dead_letters(ev, NAME)
    assert set(dead) == {too_long["messageId"], not_a_number["messageId"]}
    assert "too long for type character varying(3)" in dead[too_long["messageId"]]
    assert 'invalid input syntax for type integer: "big"' in dead[not_a_number["messageId"]]


def test_a_role_that_may_not_create_schemas_loads_one_it_owns(
    pg: PostgresServer, db: str, eventd: Start
) -> None:
    loader = "loader_" + uuid.uuid4().hex[:8]  # roles are cluster-wide: one per test
    pg.run_sql(
        f"CREATE ROLE {loader} LOGIN PASSWORD '{pg.password}';"
        f" CREATE SCHEMA segment AUTHORIZATION {loader}",
        user=pg.superuser,
        database=db,
    )
    settings = {"dsn": pg.dsn(db, user=loader), "password": pg.password, "schema": "segment"}
    ev = eventd({"destinations": {NAME: destination("postgres", settings)}})
    sent = ids(5)
    post(ev, [{"type": "track", "messageId": m, "userId": "u", "event": "Tick"} for m in sent])
    ev.drain()
    assert dead_letters(ev, NAME) == {}
    loaded = pg.fetch(db, "SELECT id FROM segment.tick", user=pg.superuser)
    assert {r["id"] for r in loaded} == set(sent)


def test_postgres_down_then_back_delivers_every_event_once(
    pg: PostgresServer, db: str, eventd: Start
) -> None:
    ev = eventd(warehouse(pg, db, batch_size=50, settings={"timeout": 5}))
    before = ids(30)
    post(ev, [{"type": "track", "messageId": m, "userId": "u", "event": "Tick"} for m in before])
    ev.drain()
    pg.stop()
    try:
        during = ids(200)
        post(
            ev, [{"type": "track", "messageId": m, "userId": "u", "event": "Tick"} for m in during]
        )
        # (a connection pooled before the stop may fail first, as "closed", then refused)
        wait_until(
            lambda: "cannot reach PostgreSQL" in (status(ev)["last_error"] or ""),
            "eventd retrying while PostgreSQL is down",
        )
        assert status(ev)["delivered"] == 30 and dead_letters(ev, NAME) == {}
    finally:
        pg.start()
    ev.drain()
    counted = pg.fetch(db, 'SELECT count(*) AS n, count(DISTINCT id) AS d FROM app."tick"')
    assert counted == [{"n": 230, "d": 230}]
    assert set(rows(pg, db, "tick")) == {*before, *during}
    assert dead_letters(ev, NAME) == {}


def test_a_connection_dropped_mid_batch_is_retried(
    pg: PostgresServer, db: str, eventd: Start
) -> None:
    ev = eventd(warehouse(pg, db))
    first = ids(1)
    post(ev, [{"type": "track", "messageId": first[0], "userId": "u", "event": "Tick"}])
    ev.drain()
    # Hold the next insert into app.tracks (once) so it can be cut off mid-transaction.
    pg.run_sql(
        """
        CREATE TABLE public.released (x int);
        CREATE FUNCTION public.hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NOT EXISTS (SELECT 1 FROM public.released) THEN PERFORM pg_sleep(60); END IF;
          RETURN NULL;
        END $$;
        CREATE TRIGGER hold AFTER INSERT ON app.tracks FOR EACH STATEMENT
          EXECUTE FUNCTION public.hold();
        """,
        database=db,
    )
    held = ids(40)
    post(ev, [{"type": "track", "messageId": m, "userId": "u", "event": "Tick"} for m in held])
    busy = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'eventd wh' AND wait_event = 'PgSleep'"
    )
    wait_until(lambda: bool(pg.fetch(db, busy)), "eventd's insert held by the trigger")
    # Its rows are in the table, uncommitted; cut the connection, then let the retry through.
    pg.run_sql("INSERT INTO public.released VALUES (1)", database=db)
    pg.run_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'eventd wh' AND wait_event = 'PgSleep'",
        database=db,
    )
    ev.drain()
    for table in ("tracks", "tick"):
        counted = pg.fetch(db, f'SELECT count(*) AS n, count(DISTINCT id) AS d FROM app."{table}"')
        assert counted == [{"n": 41, "d": 41}], table
    assert dead_letters(ev, NAME) == {}
    assert "terminating connection" in (status(ev)["last_error"] or "")
    assert status(ev)["delivered"] == 41


def test_refused_logins_and_missing_databases_are_dead_letters_without_the_password(
    pg: PostgresServer, db: str, eventd: Start
) -> None:
    wrong = "Wrong-Password-" + uuid.uuid4().hex
    ev = eventd(
        {
            "destinations": {
                NAME: destination("postgres", {"dsn": pg.dsn(db, password=wrong)}),
                "nodb": destination(
                    "postgres", {"dsn": pg.dsn("no_such_db"), "password": pg.password}
                ),
            }
        }
    )
    sent = ids(3)
    post(ev, [{"type": "track", "messageId": m, "userId": "u", "event": "Tick"} for m in sent])
    ev.drain()
    dead = dead_letters(ev, NAME)
    assert set(dead) == set(sent)
    for reason in dead.values():
        assert reason.startswith("PostgreSQL refused the login: ")
        assert 'password authentication failed for user "eventd"' in reason
        assert wrong not in reason
    nodb = dead_letters(ev, "nodb")
    assert set(nodb) == set(sent)
    assert all(r.startswith("the database does not exist: ") for r in nodb.values())
    assert all(pg.password not in r for r in nodb.values())
    ev.stop()
    assert wrong not in ev.log() and pg.password not in ev.log()
    assert 'password authentication failed for user \\"eventd\\"' in ev.log()  # said why


def check(
    tmp_path: Path, settings: dict[str, Any], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``eventd check`` on a config with one postgres destination ``wh``."""
    ev = EventdProcess(
        tmp_path, {"destinations": {NAME: {"type": "postgres", "settings": settings}}}
    )
    return subprocess.run(
        [sys.executable, "-m", "eventd.cli", "check", "--config", str(ev.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_names_the_key_and_never_shows_a_password(tmp_path: Path) -> None:
    done = check(tmp_path, {"dsn": "mysql://ada:Hunter2-secret@db.example/shop"})
    out = done.stdout + done.stderr
    assert done.returncode == 1
    assert "destinations.wh.settings.dsn = 'mysql://ada:***@db.example/shop'" in out
    assert "postgresql://" in out and "Hunter2-secret" not in out

    done = check(tmp_path, {"dsn": "postgresql://h/db", "pool_size": 0})
    assert (
        done.returncode == 1
        and "destinations.wh.settings.pool_size = 0" in done.stdout + done.stderr
    )

    done = check(tmp_path, {"dsn": "postgresql://h/db", "password": 12345678})
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "destinations.wh.settings.password = ***" in out
    assert "12345678" not in out

    done = check(tmp_path, {"dsn": "postgresql://ada:Hunter2-secret@h/db", "schema": "Bad Name"})
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "destinations.wh.settings.schema = 'Bad Name'" in out
    assert "Hunter2-secret" not in out

    done = check(tmp_path, {"dsn": "postgresql://ada:Hunter2-secret@h/db"})
    assert done.returncode == 0 and "Hunter2-secret" not in done.stdout + done.stderr


def test_without_asyncpg_check_says_how_to_install_it(tmp_path: Path) -> None:
    # An asyncpg that cannot be imported, first on the path: what a machine without it sees.
    shadow = tmp_path / "shadow" / "asyncpg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named asyncpg')\n")
    env = {"PYTHONPATH": str(shadow.parent)}
    done = check(tmp_path, {"dsn": "postgresql://h/db"}, env)
    assert done.returncode == 1
    assert (
        "destinations.wh.type = 'postgres' needs asyncpg, which is not installed:"
        " pip install 'eventd[postgres]'"
    ) in done.stdout + done.stderr
    # Other destinations are unaffected: the plugin itself loads without asyncpg.
    other = EventdProcess(
        tmp_path, {"destinations": {"file": {"type": "jsonl", "settings": {"path": "x.jsonl"}}}}
    )
    done = subprocess.run(
        [sys.executable, "-m", "eventd.cli", "check", "--config", str(other.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
