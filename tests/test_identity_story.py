"""The car-connection story end to end: the real segment-analytics-python client over a
real socket into eventd, a webhook sink that receives stitched deliveries, a real
PostgreSQL warehouse (the postgres destination) and an ``identities`` table in it.

Anonymous visitors step through "Viewed Car List" -> "Selected Make" -> "Entered VIN"
-> "Car Connected"; some sign in, one returns on a phone identified later, one laptop
is shared by two users, some send "null"-like ids. Everything asserted is exact and
written out by hand from the story, not read back from eventd.

eventd runs in this process (on a thread with its own event loop) so the warehouse
destination that stores identities can be a class of this test: the postgres
destination's own ``write_identities`` comes with the reports issue; this one creates
its table itself, the way that one does.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import tomli_w
from aiohttp import web

from eventd.app import RUNTIME, Runtime, create_app
from eventd.config import load_file
from eventd.identity.service import IdentityService
from eventd.plugins import destination_types
from tests.contract.fixtures import destination
from tests.contract.postgres_server import PostgresServer
from tests.harness import Sink, admin_get, free_port, running
from tests.test_postgres import db, pg  # noqa: F401 (fixtures)

T = TypeVar("T")
STEPS = ["Viewed Car List", "Selected Make", "Entered VIN", "Car Connected"]


class Server:
    """eventd's app on a real loopback port, on a thread with its own event loop."""

    def __init__(self, config_path: Path) -> None:
        config = load_file(config_path)
        self.app = create_app(config, destination_types())
        self.port = config.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = config.admin.token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def identity(self) -> IdentityService:
        [svc] = [s for s in self.runtime.services if isinstance(s, IdentityService)]
        return svc

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Server:
        self.thread.start()
        self.runner = web.AppRunner(self.app)
        self.call(self.runner.setup())
        self.call(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def admin(self, path: str) -> tuple[int, Any]:
        return admin_get(self.url + path, self.token)


class Story:
    """The story's calls through the real SDK, with timestamps one second apart."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.at = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
        self.ids: dict[str, str] = {}  # label -> messageId
        self.order: list[str] = []

    def _next(self, label: str) -> dict[str, Any]:
        self.at += timedelta(seconds=1)
        self.ids[label] = str(uuid.uuid4())
        self.order.append(label)
        return {"timestamp": self.at, "message_id": self.ids[label]}

    def track(self, label: str, event: str, user: str | None = None, anon: str | None = None,
              **properties: Any) -> None:  # fmt: skip
        self.client.track(
            user_id=user, event=event, anonymous_id=anon, properties=properties, **self._next(label)
        )

    def identify(self, label: str, user: str, anon: str | None, **traits: Any) -> None:
        self.client.identify(user_id=user, anonymous_id=anon, traits=traits, **self._next(label))


def play(story: Story) -> None:
    s = story
    # Ana: browses anonymously, signs in, connects her Volvo.
    s.track("ana-1", "Viewed Car List", anon="anon-ana")
    s.track("ana-2", "Selected Make", anon="anon-ana", make="Volvo")
    s.identify("ana-id", "user-ana", "anon-ana", car_make="Volvo", plan="pro")
    s.track("ana-3", "Entered VIN", "user-ana", "anon-ana")
    s.track("ana-4", "Car Connected", "user-ana", revenue=9.99)
    # Bo: never signs in.
    s.track("bo-1", "Viewed Car List", anon="anon-bo")
    s.track("bo-2", "Selected Make", anon="anon-bo", make="BMW")
    # Ben: signs in on his laptop, drops off, comes back on his phone, signs in there later.
    s.track("ben-1", "Viewed Car List", anon="anon-ben-laptop")
    s.identify("ben-id", "user-ben", "anon-ben-laptop", car_make="Audi")
    s.track("ben-2", "Selected Make", "user-ben", make="Audi")
    s.track("ben-3", "Viewed Car List", anon="anon-ben-phone")
    s.track("ben-4", "Entered VIN", anon="anon-ben-phone")
    s.identify("ben-id2", "user-ben", "anon-ben-phone")
    s.track("ben-5", "Car Connected", "user-ben", revenue=9.99)
    # One laptop, two people: Cat signs in, then Dan signs in on it.
    s.track("cat-1", "Viewed Car List", anon="anon-shared")
    s.identify("cat-id", "user-cat", "anon-shared", car_make="Tesla")
    s.track("cat-2", "Selected Make", anon="anon-shared", make="Tesla")  # the app sent no userId
    s.identify("dan-id", "user-dan", "anon-shared", car_make="Volvo")
    s.track("dan-1", "Entered VIN", anon="anon-shared")
    s.track("dan-2", "Car Connected", "user-dan", revenue=9.99)
    # "null" ids: Eve's app sends the anonymousId "null"; Fay's sends the userId "undefined".
    s.track("eve-1", "Viewed Car List", anon="null")
    s.identify("eve-id", "user-eve", "null", car_make="Kia")
    s.track("eve-2", "Selected Make", "user-eve", make="Kia")
    s.identify("fay-id", "undefined", "anon-fay", car_make="Fiat")
    s.track("fay-1", "Viewed Car List", anon="anon-fay")


def profile(pid: str, user_ids: list[str], anonymous_ids: list[str], traits: dict[str, Any],
            first: str, last: str, tracks: int, identifies: int,
            revenue: float) -> dict[str, Any]:  # fmt: skip
    by_type = {k: v for k, v in (("track", tracks), ("identify", identifies)) if v}
    return {
        "profile_id": pid,
        "user_ids": user_ids,
        "anonymous_ids": anonymous_ids,
        "traits": traits,
        "first_seen": first,
        "last_seen": last,
        "event_count": tracks + identifies,
        "events_by_type": by_type,
        "revenue": revenue,
        "groups": [],
    }


def test_the_car_connection_story(
    tmp_path: Path,
    pg: PostgresServer,  # noqa: F811 (the fixture)
    db: str,  # noqa: F811
) -> None:
    from segment.analytics import Client

    sink = Sink()
    config_path = tmp_path / "eventd.toml"
    token, key = "adm_" + uuid.uuid4().hex, "wk_" + uuid.uuid4().hex
    config = {
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_timeout": "5s"},
        "storage": {"path": str(tmp_path / "data" / "eventd.db"), "synchronous": "normal"},
        "admin": {"token": token},
        "sources": {"app": {"write_key": key}},
        "destinations": {
            "hook": destination(
                "webhook",
                {"url": f"http://127.0.0.1:{sink.port}/hook", "batch": True},
                resolve_identity=True,
                enrich_traits=["car_make"],
            ),
            "wh": destination("postgres", {"dsn": pg.dsn(db), "password": pg.password}),
        },
    }
    config_path.write_text(tomli_w.dumps(config))
    errors: list[Any] = []
    with running(sink), Server(config_path) as server:
        client = Client(key, host=server.url, on_error=lambda e, b: errors.append(e), gzip=True)
        story = Story(client)
        play(story)
        client.flush()
        client.shutdown()
        assert errors == []
        server.call(server.identity.drain())
        server.call(server.runtime.dispatcher.drain())
        seq_of = {e["messageId"]: seq for seq, e in _stored(tmp_path)}
        stored = {e["messageId"]: e for _, e in _stored(tmp_path)}
        ids = story.ids
        assert set(stored) == set(ids.values())
        ts = {label: stored[ids[label]]["timestamp"] for label in ids}

        # -- profiles: exact ------------------------------------------------------------
        p: dict[str, dict[str, Any]] = {}
        for name, lookup in (("ana", "user-ana"), ("bo", "anon-bo"), ("ben", "anon-ben-phone"),
                             ("cat", "user-cat"), ("dan", "user-dan"), ("eve", "user-eve"),
                             ("fay", "anon-fay")):  # fmt: skip
            status, p[name] = server.admin(f"/admin/profiles/{lookup}")
            assert status == 200, (lookup, p[name])
        pid = {name: found["profile_id"] for name, found in p.items()}
        assert len(set(pid.values())) == 7
        assert p == {
            "ana": profile(pid["ana"], ["user-ana"], ["anon-ana"],
                           {"car_make": "Volvo", "plan": "pro"},
                           ts["ana-1"], ts["ana-4"], 4, 1, 9.99),
            "bo": profile(pid["bo"], [], ["anon-bo"], {}, ts["bo-1"], ts["bo-2"], 2, 0, 0),
            "ben": profile(pid["ben"], ["user-ben"], ["anon-ben-laptop", "anon-ben-phone"],
                           {"car_make": "Audi"}, ts["ben-1"], ts["ben-5"], 5, 2, 9.99),
            "cat": profile(pid["cat"], ["user-cat"], ["anon-shared"], {"car_make": "Tesla"},
                           ts["cat-1"], ts["cat-2"], 2, 1, 0),
            "dan": profile(pid["dan"], ["user-dan"], ["anon-shared"], {"car_make": "Volvo"},
                           ts["dan-id"], ts["dan-2"], 2, 1, 9.99),
            "eve": profile(pid["eve"], ["user-eve"], [], {"car_make": "Kia"},
                           ts["eve-id"], ts["eve-2"], 1, 1, 0),
            "fay": profile(pid["fay"], [], ["anon-fay"], {"car_make": "Fiat"},
                           ts["fay-id"], ts["fay-1"], 1, 1, 0),
        }  # fmt: skip
        # the shared laptop answers with the person who signed in on it last
        assert server.admin("/admin/profiles/anon-shared")[1] == p["dan"]
        assert server.admin("/admin/profiles/anon-shared?kind=user_id")[0] == 404
        assert server.admin("/admin/profiles/null")[1]["code"] == "not_found"
        assert server.admin("/admin/profiles/user-ben?kind=nope")[1]["code"] == "bad_request"
        refused = _refused(server)
        assert refused == {"blocked_value": 2, "shared_anonymous_id": 1, "max_anonymous_ids": 0}

        # Ben's stitched timeline: both devices, newest first, as stored
        status, timeline = server.admin("/admin/profiles/user-ben/events?limit=4")
        ben = ["ben-5", "ben-id2", "ben-4", "ben-3", "ben-2", "ben-id", "ben-1"]
        assert [e["event"]["messageId"] for e in timeline["events"]] == [ids[x] for x in ben[:4]]
        before = timeline["next_before"]
        status, rest = server.admin(f"/admin/profiles/user-ben/events?before={before}")
        assert [e["event"]["messageId"] for e in rest["events"]] == [ids[x] for x in ben[4:]]
        assert rest["next_before"] is None
        assert rest["events"][-1]["event"] == stored[ids["ben-1"]]

        # -- stitched delivery: each event once, resolved when stored after its link ------
        delivered = {e["messageId"]: e for r in sink.received for e in r.json()}
        assert sink.message_ids() == {m: 1 for m in ids.values()}
        resolved = {"ana-id": "user-ana", "ana-3": "user-ana", "ana-4": "user-ana",
                    "ben-id": "user-ben", "ben-2": "user-ben", "ben-id2": "user-ben",
                    "ben-5": "user-ben", "cat-id": "user-cat", "cat-2": "user-cat",
                    "dan-id": "user-dan", "dan-1": "user-dan", "dan-2": "user-dan",
                    "eve-id": "user-eve", "eve-2": "user-eve", "fay-id": "undefined"}  # fmt: skip
        assert {x: delivered[ids[x]].get("userId") for x in ids} == {
            x: resolved.get(x) for x in ids
        }
        assert "userId" not in stored[ids["cat-2"]]  # the stored event never changes
        make = {"ana": "Volvo", "ben": "Audi", "cat": "Tesla", "dan": "Volvo", "eve": "Kia"}
        for label in resolved:
            person = label.split("-")[0]
            traits = delivered[ids[label]].get("context", {}).get("traits", {})
            if person in make:
                assert traits.get("car_make") == make[person], label

        # -- the warehouse: identities rows, one join from pre-login events to users -------
        server.call(_until(lambda: _rows(pg, db) == _expected_rows(pid), wait=0.05))
        linked = {(r["anonymous_id"], r["user_id"]): r["linked_at"] for r in _all(pg, db)}
        assert linked[("anon-shared", "user-dan")] == _dt(ts["dan-id"])
        assert linked[("anon-ben-phone", "user-ben")] == _dt(ts["ben-id2"])

        # -- drop-off per step by car make: the README's query ---------------------------
        found = pg.fetch(db, _readme_sql())
        by_make = {r["car_make"]: [r[f"step{i}"] for i in range(1, 5)] for r in found}
        assert by_make == {
            "Volvo": [1, 1, 2, 2],  # Ana all the way; Dan from the VIN on (Cat browsed for him)
            "Audi": [1, 1, 1, 1],  # Ben, across his two devices
            "Tesla": [1, 1, 0, 0],  # Cat
            "Kia": [0, 1, 0, 0],  # Eve: her "null" anonymous view is nobody's
            None: [3, 1, 0, 0],  # Bo, Fay's device and the "null" visitor
        }

        # -- the CLI --------------------------------------------------------------------
        shown = _cli(config_path, "profiles", "show", "anon-ben-laptop", "--json")
        assert json.loads(shown.stdout) == p["ben"]
        listed = _cli(config_path, "profiles", "events", "user-dan", "--limit", "2")
        rows = [line.split()[:3] for line in listed.stdout.splitlines()[1:]]
        assert rows == [[str(seq_of[ids[x]]), ts[x], "track"] for x in ("dan-2", "dan-1")]
        missing = _cli(config_path, "profiles", "show", "nobody")
        assert (missing.returncode, missing.stderr.strip()) == (
            1,
            "eventd: GET /admin/profiles/nobody: HTTP 404: no profile has the userId or"
            " anonymousId 'nobody'",
        )


async def _until(condition: Any, wait: float = 0.01, within: float = 60) -> None:
    """Poll a condition read from another thread (the sink's, PostgreSQL's)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await asyncio.to_thread(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(wait)


def _stored(tmp: Path) -> list[tuple[int, dict[str, Any]]]:
    conn = sqlite3.connect(tmp / "data" / "eventd.db")
    try:
        rows = conn.execute("SELECT seq, body FROM events ORDER BY seq")
        return [(seq, json.loads(body)) for seq, body in rows]
    finally:
        conn.close()


def _refused(server: Server) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for m in server.runtime.metrics.registry.collect()
        if m.name == "eventd_identity_links_refused"
        for s in m.samples
        if s.name.endswith("_total")
    }


def _all(server: PostgresServer, database: str) -> list[dict[str, Any]]:
    try:
        return server.fetch(database, "SELECT * FROM identities")
    except asyncpg.UndefinedTableError:
        return []


def _rows(server: PostgresServer, database: str) -> set[tuple[str | None, str, str]]:
    return {(r["anonymous_id"], r["user_id"], r["profile_id"]) for r in _all(server, database)}


def _expected_rows(pid: Mapping[str, str]) -> set[tuple[str | None, str, str]]:
    return {
        (None, "user-ana", pid["ana"]),
        ("anon-ana", "user-ana", pid["ana"]),
        (None, "user-ben", pid["ben"]),
        ("anon-ben-laptop", "user-ben", pid["ben"]),
        ("anon-ben-phone", "user-ben", pid["ben"]),
        (None, "user-cat", pid["cat"]),
        ("anon-shared", "user-cat", pid["cat"]),
        (None, "user-dan", pid["dan"]),
        ("anon-shared", "user-dan", pid["dan"]),
        (None, "user-eve", pid["eve"]),
    }


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _readme_sql() -> str:
    """The drop-off query from README.md (section "Who the anonymous visitor became")."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("-- drop-off per step, by car make")
    return readme[start : readme.index("```", start)]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    verb, action, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "eventd.cli", verb, action, "--config", str(config), *rest],
        capture_output=True,
        text=True,
        timeout=60,
    )
