"""Erasures forwarded to destinations, end to end: one eventd subprocess delivering to
every first-party destination (each vendor's contract server, a real PostgreSQL, moto's
S3, a webhook sink, a JSON-lines file), then ``eventd suppressions add USER --erase``:
each place that can delete shows the deletion, the others say what to do by hand, and
the status reads the same through the CLI and HTTP. Retries, permanent failures and a
restart mid-retry are shown on the destinations that make them easy to provoke.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import tomli_w
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from eventd import privacy
from eventd.store import DeletionStore, MemoryStore
from eventd.suppressions import Suppressions
from tests.contract.amplitude_server import DELETIONS as AMPLITUDE_DELETIONS
from tests.contract.amplitude_server import AmplitudeServer
from tests.contract.fixtures import destination
from tests.contract.ga4_server import Ga4Server
from tests.contract.intercom_server import IntercomServer
from tests.contract.mixpanel_server import GDPR_DELETIONS, MixpanelServer
from tests.contract.postgres_server import PostgresServer
from tests.contract.s3_server import MotoS3
from tests.harness import EventdProcess, Sink
from tests.test_postgres import db, pg  # noqa: F401  (the real PostgreSQL fixtures)
from tests.test_s3 import moto, s3_settings  # noqa: F401  (moto's S3 server, session-wide)

Start = Callable[..., EventdProcess]
MakeSink = Callable[..., Sink]

USER, ANON = "user-erase-7741", "anon-erase-5c2e9d"
OTHER, OTHER_ANON = "user-keep-1029", "anon-keep-3b8f1a"
TABLES = ("identifies", "tracks", "signed_up", "pages", "users")


def calls(user_id: str, anonymous_id: str) -> list[dict[str, Any]]:
    """An identify (first: Intercom needs the contact), a track and a page of one person."""
    both = {"userId": user_id, "anonymousId": anonymous_id}
    return [
        {
            "type": "identify",
            "messageId": str(uuid.uuid4()),
            "traits": {"email": f"{user_id}@example.com", "name": user_id},
            **both,
        },
        {
            "type": "track",
            "event": "Signed Up",
            "messageId": str(uuid.uuid4()),
            "properties": {"plan": "pro"},
            **both,
        },
        {
            "type": "page",
            "name": "Pricing",
            "messageId": str(uuid.uuid4()),
            "properties": {"url": "https://example.com/pricing"},
            **both,
        },
    ]


def post(ev: EventdProcess, messages: list[dict[str, Any]]) -> None:
    status, body = ev.post("/v1/batch", {"batch": messages}, key=ev.write_key)
    assert (status, body) == (200, {"success": True})


def show(ev: EventdProcess, user_id: str, wait: float = 60) -> dict[str, Any]:
    """The suppression's status through the CLI (as JSON), once nothing is requested."""
    done = ev.cli("suppressions", "show", user_id, "--wait", str(wait), "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def by_destination(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["destination"]: d for d in status["deletions"]}


def to_mixpanel(server: MixpanelServer, **settings: Any) -> dict[str, Any]:
    return destination(
        "mixpanel", {"project_token": server.project_token, "endpoint": server.url, **settings}
    )


def to_amplitude(server: AmplitudeServer, **settings: Any) -> dict[str, Any]:
    return destination("amplitude", {"api_key": server.api_key, "endpoint": server.url, **settings})


def erase(ev: EventdProcess, user_id: str) -> None:
    added = ev.cli("suppressions", "add", user_id, "--erase")
    assert added.returncode == 0, added.stderr
    assert f"eventd suppressions show {user_id}" in added.stdout


def test_an_erased_user_is_deleted_wherever_a_destination_can_and_the_rest_say_how(
    eventd: Start,
    tmp_path: Path,
    mixpanel: MixpanelServer,
    amplitude: AmplitudeServer,
    ga4: Ga4Server,
    intercom: IntercomServer,
    sink: Sink,
    pg: PostgresServer,  # noqa: F811
    db: str,  # noqa: F811
    moto: MotoS3,  # noqa: F811
) -> None:
    bucket = moto.bucket(f"erase-{uuid.uuid4().hex[:12]}")
    jsonl = tmp_path / "out" / "events.jsonl"
    ga4_settings = {"measurement_id": ga4.measurement_id, "api_secret": ga4.api_secret}
    ev = eventd(
        {
            "destinations": {
                "mixpanel": to_mixpanel(mixpanel, gdpr_oauth_token=mixpanel.gdpr_token),
                "amplitude": to_amplitude(amplitude, secret_key=amplitude.secret_key),
                "ga4": destination("ga4", {**ga4_settings, "endpoint": ga4.url}),
                "intercom": destination(
                    "intercom", {"access_token": intercom.token, "endpoint": intercom.url}
                ),
                "warehouse": destination("postgres", {"dsn": pg.dsn(db), "password": pg.password}),
                "hook": destination(
                    "webhook", {"url": sink.url + "/hook", "forward_deletions": True}
                ),
                "archive": destination("s3", s3_settings(moto, bucket)),
                "file": destination("jsonl", {"path": str(jsonl)}),
            }
        }
    )
    theirs, kept = calls(USER, ANON), calls(OTHER, OTHER_ANON)
    post(ev, theirs + kept)
    status = {d["name"]: d for d in ev.drain()}
    assert {name: (d["delivered"], d["dead"]) for name, d in status.items()}["warehouse"] == (6, 0)
    assert all(d["dead"] == 0 for d in status.values()), status

    # Delivered everywhere first: what the deletion must take away is there.
    people = {USER, ANON, OTHER, OTHER_ANON}
    assert {e["properties"]["distinct_id"] for e in mixpanel.imported} <= people
    assert USER in {e["properties"]["distinct_id"] for e in mixpanel.imported}
    assert {e.get("user_id") for e in amplitude.ingested.values()} == {USER, OTHER}
    assert intercom.contact(USER)["external_id"] == USER
    assert {r["user_id"] for r in pg.fetch(db, 'SELECT user_id FROM "app"."tracks"')} == {
        USER,
        OTHER,
    }
    objects = moto.objects(bucket)
    theirs_ids = {m["messageId"] for m in theirs}
    holding = sorted(
        key
        for key, body in objects.items()
        if {json.loads(line)["messageId"] for line in body.splitlines()} & theirs_ids
    )
    assert holding

    erase(ev, USER)
    result = show(ev, USER)
    http = ev.admin("GET", f"/admin/suppressions/{USER}")
    assert result == http  # the CLI prints the admin API's JSON
    assert result["erase"] is True and result["erased_events"] == 3
    states = {name: d["state"] for name, d in by_destination(result).items()}
    assert states == {
        "mixpanel": "done",
        "amplitude": "done",
        "intercom": "done",
        "warehouse": "done",
        "hook": "done",
        "ga4": "unsupported",
        "archive": "unsupported",
        "file": "unsupported",
    }
    for d in result["deletions"]:
        assert d["user_ids"] == [USER] and d["anonymous_ids"] == [ANON]
        assert d["attempts"] == 1 and d["reason"] is None

    # Mixpanel: one GDPR deletion task for every distinct_id of theirs; the other stays.
    assert [(d["distinct_ids"], d["compliance_type"]) for d in mixpanel.deletions] == [
        ([USER, ANON], "GDPR")
    ]
    assert {e["properties"]["distinct_id"] for e in mixpanel.imported} <= {OTHER, OTHER_ANON}
    assert {p["$distinct_id"] for p in mixpanel.profiles} == {OTHER}
    # Amplitude: one User Privacy API job; their events are gone, the other's are not.
    assert [(j["user_ids"], j["requester"]) for j in amplitude.deletions] == [([USER], "eventd")]
    assert {e.get("user_id") for e in amplitude.ingested.values()} == {OTHER}
    # Intercom: their contact was deleted with its events, the other is there.
    assert [c["external_id"] for c in intercom.deleted] == [USER]
    assert {c["external_id"] for c in intercom.contacts.values()} == {OTHER}
    assert {e["user_id"] for e in intercom.events} == {OTHER}
    # The warehouse: none of their rows in any table (users included); the other's stay.
    for table in TABLES:
        rows = pg.fetch(db, f'SELECT * FROM "app"."{table}"')
        column = "id" if table == "users" else "user_id"
        assert {r[column] for r in rows} == {OTHER}, table
        if table != "users":
            assert {r["anonymous_id"] for r in rows} == {OTHER_ANON}, table
    # The webhook got one delete message.
    deletes = [r.json() for r in sink.received if r.json().get("type") == "delete"]
    assert [(d["userId"], d["anonymousIds"]) for d in deletes] == [(USER, [ANON])]
    assert deletes[0]["messageId"].startswith("delete-")

    # What cannot delete says what to do, naming what to delete.
    how = {name: d["instructions"] for name, d in by_destination(result).items()}
    assert USER in how["ga4"] and ANON in how["ga4"] and "User Deletion API" in how["ga4"]
    assert str(jsonl) in how["file"] and USER in how["file"] and ANON in how["file"]
    named = [k for k in objects if k in how["archive"]]
    assert sorted(named) == holding  # exactly the objects that hold their events

    # eventd's own copy is gone too, and the table shows each state with its detail.
    assert ev.query("SELECT count(*) FROM events WHERE user_id = ?", (USER,)) == [(0,)]
    table = ev.cli("suppressions", "show", USER)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert any(line.split()[:3] == ["ga4", "ga4", "unsupported"] for line in lines)
    assert any(line.split()[:4] == ["warehouse", "postgres", "done", "1"] for line in lines)


def test_429_and_5xx_answers_are_retried_with_backoff_until_done(
    eventd: Start, amplitude: AmplitudeServer, mixpanel: MixpanelServer
) -> None:
    ev = eventd(
        {
            "destinations": {
                "amplitude": to_amplitude(amplitude, secret_key=amplitude.secret_key),
                "mixpanel": to_mixpanel(mixpanel, gdpr_oauth_token=mixpanel.gdpr_token),
            }
        }
    )
    post(ev, calls(USER, ANON))
    ev.drain()
    amplitude.fail_next(AMPLITUDE_DELETIONS, 429, headers={"Retry-After": "0"})
    amplitude.fail_next(AMPLITUDE_DELETIONS, 503)
    mixpanel.fail_next(GDPR_DELETIONS, 502, times=2)
    erase(ev, USER)
    result = by_destination(show(ev, USER))
    assert {n: (d["state"], d["attempts"]) for n, d in result.items()} == {
        "amplitude": ("done", 3),
        "mixpanel": ("done", 3),
    }
    assert amplitude.statuses(AMPLITUDE_DELETIONS) == [429, 503, 200]
    assert mixpanel.statuses(GDPR_DELETIONS) == [502, 502, 200]
    assert [j["user_ids"] for j in amplitude.deletions] == [[USER]]
    assert result["amplitude"]["reason"] is None  # the last retry's reason is cleared


def test_a_permanent_refusal_is_failed_with_its_reason_until_erased_again(
    eventd: Start, mixpanel: MixpanelServer, amplitude: AmplitudeServer, tmp_path: Path
) -> None:
    def config(gdpr_token: str) -> dict[str, Any]:
        return {
            "destinations": {
                "mixpanel": to_mixpanel(mixpanel, gdpr_oauth_token=gdpr_token),
                # Without secret_key: Amplitude says what to set.
                "amplitude": to_amplitude(amplitude),
            }
        }

    ev = eventd(config("expired-token-0000"))
    post(ev, calls(USER, ANON))
    ev.drain()
    erase(ev, USER)
    result = by_destination(show(ev, USER))
    assert result["mixpanel"]["state"] == "failed"
    assert result["mixpanel"]["attempts"] == 1
    assert "HTTP 401" in result["mixpanel"]["reason"]
    assert "destinations.mixpanel.settings.gdpr_oauth_token" in result["mixpanel"]["reason"]
    assert "expired-token" not in json.dumps(result)  # never the token itself
    assert result["amplitude"]["state"] == "unsupported"
    assert "settings.secret_key" in result["amplitude"]["instructions"]
    assert USER in result["amplitude"]["instructions"]
    assert mixpanel.deletions == []

    # The operator fixes the token and erases again: the failed one is asked again with
    # the ids found the first time (eventd's copy of the events is gone by now).
    assert ev.stop() == 0
    ev.config.update(config(mixpanel.gdpr_token))
    ev.config_path.write_text(tomli_w.dumps(ev.config))
    ev.start()  # the same database file
    assert by_destination(show(ev, USER))["mixpanel"]["state"] == "failed"
    erase(ev, USER)
    again = by_destination(show(ev, USER))
    assert (again["mixpanel"]["state"], again["mixpanel"]["attempts"]) == ("done", 1)
    assert again["amplitude"]["state"] == "unsupported"  # not asked again
    assert [d["distinct_ids"] for d in mixpanel.deletions] == [[USER, ANON]]


def test_a_restart_resumes_a_deletion_still_being_retried(
    eventd: Start, make_sink: MakeSink
) -> None:
    hook = make_sink(default=503)
    ev = eventd(
        {
            "destinations": {
                "hook": destination(
                    "webhook",
                    {"url": hook.url + "/hook", "forward_deletions": True},
                    retry_backoff="10ms",
                    retry_backoff_max="50ms",
                )
            }
        }
    )
    post(ev, calls(USER, ANON))
    hook.default = 200
    ev.drain()
    hook.default = 503
    erase(ev, USER)
    hook.wait_for(lambda s: sum(1 for r in s.attempts if b'"delete"' in r.body) >= 3)
    during = by_destination(show(ev, USER, wait=0))["hook"]
    assert during["state"] == "requested" and during["reason"].startswith("HTTP 503")
    assert ev.proc is not None
    os.kill(ev.proc.pid, signal.SIGKILL)  # no goodbye: the state on disk is all there is
    ev.proc.wait()

    hook.default = 200
    ev.start()  # the same database file
    result = by_destination(show(ev, USER))["hook"]
    assert result["state"] == "done" and result["attempts"] > during["attempts"]
    deletes = [r.json() for r in hook.received if b'"delete"' in r.body]
    assert [d["userId"] for d in deletes] == [USER]


def test_show_says_clearly_when_a_user_is_not_suppressed_or_not_erased(eventd: Start) -> None:
    ev = eventd()
    missing = ev.cli("suppressions", "show", "nobody")
    assert missing.returncode != 0 and "is not suppressed" in missing.stderr
    assert ev.cli("suppressions", "add", "quiet").returncode == 0
    shown = ev.cli("suppressions", "show", "quiet")
    assert shown.returncode == 0
    assert "no deletion forwarded to destinations" in shown.stdout
    assert ev.admin("GET", "/admin/suppressions/quiet")["deletions"] == []


async def test_a_store_without_deletion_requests_forwards_none_and_show_says_so() -> None:
    """A backend that does not implement DeletionStore (a future one): the privacy
    service does not run, eventd still erases its own copy, and the status route
    answers 501 naming why instead of an empty list that would read as "nothing to do"."""

    class LogOnly:  # the Store protocol's suppressions, nothing of DeletionStore
        def __init__(self) -> None:
            self.memory = MemoryStore()

        def __getattr__(self, name: str) -> Any:
            if name in {"user_events", "request_deletions", "deletions"}:
                raise AttributeError(name)
            return getattr(self.memory, name)

    store = LogOnly()
    await store.memory.open()
    suppressions = Suppressions(store)  # type: ignore[arg-type]
    runtime: Any = SimpleNamespace(
        store=store,
        suppressions=suppressions,
        services=[],
        config=SimpleNamespace(admin=SimpleNamespace(token="t0ken")),
    )
    assert not isinstance(store, DeletionStore)
    assert privacy.eventd_services(runtime) == []
    await suppressions.suppress(USER, erase=True)
    app = web.Application()
    privacy.eventd_routes(app, runtime)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get(
            f"/admin/suppressions/{USER}", headers={"Authorization": "Bearer t0ken"}
        )
        assert resp.status == 501
        body = await resp.json()
    assert body["code"] == "not_supported"
    assert "erasures are not forwarded to destinations" in body["message"]
