"""The console's server side: sessions, the admin API through the cookie, security headers,
the per-event delivery outcomes behind the live debugger, and the history sampler.

Over real sockets (aiohttp's test server) with a real SQLite file; the pages' behaviour
in a browser (XSS, live events, redrive) is tests/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from eventd.app import create_app
from eventd.config import DestinationConfig
from eventd.console.sampler import Sampler, sample
from eventd.console.session import SESSIONS, admin_session_ok
from eventd.delivery.outcomes import RecentOutcomes
from eventd.delivery.worker import Worker
from eventd.metrics import Metrics
from eventd.store import MemoryStore, StorageUnavailable
from tests.delivery.test_worker import Scripted, rows, until_idle
from tests.harness import EventdProcess, Sink, running
from tests.test_operations import KEY, TOKEN, Client, MakeClient, config

PAGES = (
    "/console",
    "/console/live",
    "/console/dead-letters",
    "/console/profiles/someone",
    "/console/reports/funnel?steps=A,B",
    "/console/reports/retention",
)


class Form(HTMLParser):
    """The login page's form fields, and every script/inline-handler on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.forms: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.handlers += [k for k in a if k.startswith("on")]
        if tag == "input" and a.get("name"):
            self.inputs[str(a["name"])] = a
        elif tag == "form":
            self.forms.append(a)
        elif tag == "script":
            self.scripts.append(a)


def parse(html: str) -> Form:
    f = Form()
    f.feed(html)
    return f


async def sign_in(client: Client, token: str = TOKEN) -> web.StreamResponse:
    form = parse(await (await client.get("/console/login")).text())
    csrf = form.inputs["csrf"]["value"]
    return await client.post(
        "/console/login", data={"token": token, "csrf": csrf}, allow_redirects=False
    )


async def page_csrf(client: Client) -> str:
    html = await (await client.get("/console")).text()
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert match, html
    return match.group(1)


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(create_app(config(tmp_path)))


# -- signing in ----------------------------------------------------------------------


def test_the_console_arrives_as_a_plugin_from_its_entry_point() -> None:
    from eventd.console import plugin
    from eventd.plugins import plugin_manager

    assert plugin_manager().get_plugin("console") is plugin


async def test_root_redirects_and_every_page_needs_the_session(client: Client) -> None:
    resp = await client.get("/", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/console")
    for path in PAGES:
        resp = await client.get(path, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/console/login"), path
    resp = await client.get("/console/api/history")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    # the sign-in page and the package's own assets are open (they hold no data)
    assert (await client.get("/console/login")).status == 200
    assert (await client.get("/console/static/console.css")).status == 200
    assert (await client.get("/console/static/nope.js")).status == 404


async def test_sign_in_sets_a_strict_httponly_session_cookie(client: Client) -> None:
    login = await client.get("/console/login")
    form = parse(await login.text())
    assert form.forms == [{"method": "post", "action": "/console/login", "autocomplete": "off"}]
    assert form.inputs["token"]["type"] == "password"
    resp = await sign_in(client)
    assert (resp.status, resp.headers["Location"]) == (303, "/console")
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("eventd_session="))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attrs
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "secure" not in attrs  # plain http, no trusted proxy
    assert TOKEN not in str(resp.headers) and TOKEN not in await resp.text()
    for path in PAGES:
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 200, path
        assert TOKEN not in await resp.text(), path
    assert (await client.get("/console/login", allow_redirects=False)).status == 303


async def test_a_wrong_token_or_a_forged_form_signs_nobody_in(client: Client) -> None:
    resp = await sign_in(client, "not-the-token")
    assert resp.status == 401 and "not the admin token" in await resp.text()
    assert not any(c.startswith("eventd_session=") for c in resp.headers.getall("Set-Cookie"))
    assert "not-the-token" not in await resp.text()
    # a form posted from elsewhere has no matching sign-in cookie: refused even with the token
    client.session.cookie_jar.clear()
    resp = await client.post(
        "/console/login", data={"token": TOKEN, "csrf": "guess"}, allow_redirects=False
    )
    assert resp.status == 400
    assert (await client.get("/console", allow_redirects=False)).status == 303


async def test_a_token_in_the_url_signs_nobody_in_and_is_not_echoed(client: Client) -> None:
    for path in (f"/console/login?token={TOKEN}", f"/console?token={TOKEN}"):
        resp = await client.get(path)
        assert resp.url.path == "/console/login", path
        assert TOKEN not in await resp.text()
    assert not any(c.key == "eventd_session" for c in client.session.cookie_jar)
    assert (await client.get("/admin/runtime")).status == 401


async def test_secure_cookie_over_https_from_a_trusted_proxy_only(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    https = {"X-Forwarded-Proto": "https"}
    for trusted, secure in ((["127.0.0.1/32"], True), ([], False), (["10.0.0.0/8"], False)):
        client = await aiohttp_client(
            create_app(
                config(
                    tmp_path / str(len(trusted)) / str(secure), server={"trusted_proxies": trusted}
                )
            )
        )
        login = await client.get("/console/login", headers=https)
        form = parse(await login.text())
        # an http client keeps no Secure cookie: hand the form's back as a browser would
        login_cookie = login.cookies["eventd_login"]
        assert bool(login_cookie["secure"]) is secure
        resp = await client.post(
            "/console/login",
            data={"token": TOKEN, "csrf": form.inputs["csrf"]["value"]},
            headers={**https, "Cookie": f"eventd_login={login_cookie.value}"},
            allow_redirects=False,
        )
        assert resp.status == 303
        cookie = next(c for c in resp.headers.getall("Set-Cookie") if "eventd_session=" in c)
        assert ("Secure" in cookie) is secure, (trusted, cookie)
        await client.close()


async def test_sign_out_needs_the_csrf_token_and_ends_the_session(client: Client) -> None:
    await sign_in(client)
    csrf = await page_csrf(client)
    assert (await client.post("/console/logout", data={"csrf": "forged"})).status == 403
    assert (await client.get("/admin/destinations")).status == 200
    resp = await client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/console/login")
    assert (await client.get("/console", allow_redirects=False)).status == 303


# -- the admin API through the cookie --------------------------------------------------


async def test_admin_api_takes_the_session_cookie_and_csrf_for_changes(client: Client) -> None:
    assert (await client.get("/admin/destinations")).status == 401
    await sign_in(client)
    csrf = await page_csrf(client)
    resp = await client.get("/admin/destinations")
    assert resp.status == 200
    assert [d["name"] for d in await resp.json()] == ["file"]
    purge = "/admin/dead-letters/purge"
    assert (await client.post(purge, json={})).status == 401  # no CSRF token
    assert (await client.post(purge, json={}, headers={"X-CSRF-Token": "x" + csrf})).status == 401
    resp = await client.post(purge, json={}, headers={"X-CSRF-Token": csrf})
    assert (resp.status, await resp.json()) == (200, {"purged": 0})
    # the bearer token still works without any cookie
    client.session.cookie_jar.clear()
    resp = await client.get("/admin/runtime", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


async def test_admin_session_ok_without_the_console_installed() -> None:
    from aiohttp.test_utils import make_mocked_request

    bare = web.Application()
    request = make_mocked_request("GET", "/admin/runtime", app=bare)
    assert admin_session_ok(request) is False


async def test_an_expired_session_is_refused(client: Client) -> None:
    await sign_in(client)
    sessions = client.app[SESSIONS]
    ((sid, session),) = sessions._by_id.items()
    sessions._by_id[sid] = type(session)(session.csrf, time.monotonic() - 1)
    assert (await client.get("/admin/destinations")).status == 401
    assert (await client.get("/console", allow_redirects=False)).status == 303


# -- headers and pages -----------------------------------------------------------------


async def test_security_headers_and_no_inline_script(client: Client) -> None:
    await sign_in(client)
    for path in ("/console/login", *PAGES, "/console/static/console.js"):
        resp = await client.get(path, allow_redirects=False)
        csp = resp.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'", path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert directives["frame-ancestors"] == "'none'"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        if path.startswith("/console/static/"):
            continue
        assert resp.headers["Cache-Control"] == "no-store"
        page = parse(await resp.text())
        assert page.handlers == [], path
        assert all(s.get("src", "").startswith("/console/static/") for s in page.scripts), path
    vendor = await client.get("/console/static/vendor/chart.umd.min.js")
    assert vendor.status == 200 and vendor.content_type == "text/javascript"
    licence = await (await client.get("/console/static/vendor/chart.js-LICENSE.md")).text()
    assert "MIT" in licence or "Permission is hereby granted" in licence


async def test_report_pages_keep_their_parameters_and_refuse_unknown_reports(
    client: Client,
) -> None:
    await sign_in(client)
    resp = await client.get("/console/reports/funnel?steps=Viewed,%22Paid%22&by=%3Cb%3E")
    html = await resp.text()
    assert 'name="steps" value="Viewed,&#34;Paid&#34;"' in html
    assert 'name="by" value="&lt;b&gt;"' in html  # escaped, not markup
    assert (await client.get("/console/reports/nonsense")).status == 404
    profile = await (await client.get("/console/profiles/%3Cimg%20src=x%3E")).text()
    assert "<img src=x>" not in profile and "&lt;img src=x&gt;" in profile


# -- outcomes (the live debugger's "which destinations took it") ----------------------


def outcome_of(rec: RecentOutcomes, seq: int, name: str = "a") -> tuple[str, str | None]:
    (o,) = rec.describe(seq, [(name, 10**9, True)])
    return o["outcome"], o["reason"]


def test_recent_outcomes_spans_exceptions_and_their_bounds() -> None:
    rec = RecentOutcomes(capacity=3, batches=2)
    rec.delivered("a", 10, 19)  # a log batch: seqs 10..19
    rec.record(12, "a", "skipped", "filtered: type")
    rec.record(13, "a", "dead_lettered", "HTTP 400")
    assert outcome_of(rec, 11) == ("delivered", None)
    assert outcome_of(rec, 12) == ("skipped", "filtered: type")
    assert outcome_of(rec, 13) == ("dead_lettered", "HTTP 400")
    assert outcome_of(rec, 20) == ("not_recorded", None)
    assert outcome_of(rec, 11, "b") == ("not_recorded", None)  # another destination's span
    # a redrive delivers 13 (now delivered) and skips 12 again (still skipped)
    since = 0
    rec.record(12, "a", "skipped", "suppressed user")
    rec.delivered_aside("a", [12, 13], since)
    assert outcome_of(rec, 13) == ("delivered", None)
    assert outcome_of(rec, 12) == ("skipped", "suppressed user")
    # bounds: the oldest exception and the oldest span are forgotten first
    rec.record(30, "a", "skipped", "x")
    rec.record(31, "a", "skipped", "y")
    assert outcome_of(rec, 12) == ("delivered", None)  # its skip is gone; the span remains
    rec.delivered("a", 40, 49)
    rec.delivered("a", 50, 59)
    assert outcome_of(rec, 11) == ("not_recorded", None)
    assert outcome_of(rec, 45) == ("delivered", None)


def test_describe_names_what_was_not_recorded() -> None:
    rec = RecentOutcomes()
    rec.record(5, "a", "skipped", "filtered: type")
    dests = [("a", 5, True), ("b", 4, True), ("c", 9, True), ("d", 9, False)]
    got = {o["destination"]: (o["outcome"], o["reason"]) for o in rec.describe(5, dests)}
    assert got == {
        "a": ("skipped", "filtered: type"),
        "b": ("pending", None),  # its cursor (4) is before the event (5)
        "c": ("not_recorded", None),
        "d": ("not_routed", None),
    }
    assert {o["outcome"] for o in rec.describe(None, dests)} == {"not_stored"}


async def test_a_worker_records_delivered_dead_lettered_and_redriven() -> None:
    """The worker's own records (log batches, dead letters, a redrive through the aside
    loop) as describe() reads them, over the in-memory store."""
    rec = RecentOutcomes()
    store = MemoryStore()
    await store.open()
    config = DestinationConfig(name="s", type="scripted", retry_backoff=0.001)
    async with aiohttp.ClientSession() as session:
        dest = Scripted("s", {}, session)
        worker = Worker(config, dest, store, Metrics(), outcomes=rec)
        await worker.start()
        run = asyncio.create_task(worker.run())
        try:
            await store.append(rows("a", "bad1", "b"))
            await until_idle(worker)
            stored = await store.read(0, 9)
            seq = {m: e.seq for m, e in zip(("a", "bad1", "b"), stored, strict=True)}

            def got(mid: str) -> tuple[str, str | None]:
                (o,) = rec.describe(seq[mid], [("s", worker.cursor, True)])
                return o["outcome"], o["reason"]

            assert {m: got(m) for m in seq} == {
                "a": ("delivered", None),
                "bad1": ("dead_lettered", "refused bad1"),
                "b": ("delivered", None),
            }
            dest.refuse = False
            assert await store.request_redrive("s") == 1
            await until_idle(worker)
            assert got("bad1") == ("delivered", None)  # through the redrive loop
        finally:
            await worker.stop(0)
            run.cancel()


@pytest.fixture
def bouncer() -> Iterator[Sink]:
    """A webhook that refuses (400, permanent) any event whose properties say so."""

    def answer(r: Any) -> int:
        return 400 if b'"bounce":true' in r.body.replace(b" ", b"") else 200

    with running(Sink(handler=answer)) as s:
        yield s


async def test_outcomes_say_what_each_destination_did(
    tmp_path: Path, aiohttp_client: MakeClient, bouncer: Sink
) -> None:
    cfg = config(
        tmp_path,
        destinations={
            "file": {"type": "jsonl", "settings": {"path": str(tmp_path / "out.jsonl")}},
            "hook": {"type": "webhook", "settings": {"url": bouncer.url + "/h"}},
            "ios_only": {
                "type": "jsonl",
                "sources": ["ios"],
                "settings": {"path": str(tmp_path / "ios.jsonl")},
            },
            "no_tracks": {
                "type": "jsonl",
                "types": ["identify"],
                "settings": {"path": str(tmp_path / "ids.jsonl")},
            },
        },
    )
    client = await aiohttp_client(create_app(cfg))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    batch = [
        {"type": "track", "event": "Ok", "userId": "u1", "messageId": "m-ok"},
        {
            "type": "track",
            "event": "No",
            "userId": "u2",
            "messageId": "m-bad",
            "properties": {"bounce": True},
        },
        {
            "type": "track",
            "event": "Quiet",
            "userId": "u3",
            "messageId": "m-quiet",
            "integrations": {"hook": False},
        },
    ]
    resp = await client.post("/v1/batch", json={"batch": batch, "writeKey": KEY})
    assert resp.status == 200
    assert (await client.post("/admin/drain?timeout=30", headers=auth)).status == 200

    async def outcomes(message_id: str) -> dict[str, tuple[str, str | None]]:
        q = urllib.parse.urlencode({"source": "web", "message_id": message_id})
        resp = await client.get(f"/admin/outcomes?{q}", headers=auth)
        assert resp.status == 200
        body = await resp.json()
        return {d["destination"]: (d["outcome"], d["reason"]) for d in body["destinations"]}

    assert await outcomes("m-ok") == {
        "file": ("delivered", None),
        "hook": ("delivered", None),
        "ios_only": ("not_routed", None),
        "no_tracks": ("skipped", "filtered: type"),
    }
    assert await outcomes("m-quiet") == {
        "file": ("delivered", None),
        "hook": ("not_routed", None),  # its integrations keep it from the hook
        "ios_only": ("not_routed", None),
        "no_tracks": ("skipped", "filtered: type"),
    }
    bad = await outcomes("m-bad")
    assert bad["hook"][0] == "dead_lettered" and "400" in str(bad["hook"][1])
    assert bad["file"] == ("delivered", None)
    q = urllib.parse.urlencode({"source": "web", "message_id": "never-sent"})
    body = await (await client.get(f"/admin/outcomes?{q}", headers=auth)).json()
    assert body["seq"] is None
    assert {d["outcome"] for d in body["destinations"]} == {"not_stored"}
    resp = await client.get("/admin/outcomes?source=web", headers=auth)
    assert resp.status == 400 and (await resp.json())["code"] == "bad_request"


# -- the history sampler ---------------------------------------------------------------


def test_sample_reads_the_exposition() -> None:
    m = Metrics()
    m.ingested.labels("web", "track").inc(5)
    m.ingested.labels("web", "identify").inc(2)
    m.ingested.labels("ios", "track").inc(1)
    m.rejected.labels("invalid_type").inc(3)
    m.rejected.labels("unauthorized").inc(1)
    m.lag_events.labels("file").set(7)
    m.lag_seconds.labels("file").set(1.5)
    got = sample(m.exposition(), 1000.0)
    assert got == {
        "t": 1000.0,
        "ingested": {"web": 7, "ios": 1},
        "rejected": 4,
        "lag_events": {"file": 7.0},
        "lag_seconds": {"file": 1.5},
    }


async def test_sampler_keeps_an_hour_and_answers_with_one_taken_now() -> None:
    m = Metrics()
    clock = iter(range(100000)).__next__

    async def exposition() -> bytes:
        return m.exposition()

    sampler = Sampler(exposition, interval=10.0, clock=lambda: float(clock()))
    assert sampler.samples.maxlen == 361
    for _ in range(400):
        sampler.samples.append(await sampler.take())
    m.ingested.labels("web", "track").inc(9)
    hist = await sampler.history()
    assert hist["interval"] == 10.0 and len(hist["samples"]) == 362
    assert hist["samples"][0]["t"] == 39.0  # the 39 oldest were dropped
    assert hist["samples"][-1]["ingested"] == {"web": 9}


async def test_a_sample_the_store_cannot_answer_is_skipped_and_sampling_goes_on() -> None:
    # The cluster slow to answer once: before, the sampler's task ended there and its
    # stop() raised, so `eventd serve` exited 1 at shutdown.
    calls = 0
    fourth = asyncio.Event()  # by the 4th call, the 2nd and 3rd calls' samples are kept

    async def exposition() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageUnavailable("no answer")
        if calls == 4:
            fourth.set()
        return b""

    sampler = Sampler(exposition, interval=0.001)
    await sampler.start()
    await asyncio.wait_for(fourth.wait(), 10)
    await sampler.stop()  # no exception
    assert len(sampler.samples) >= 2


async def test_history_endpoint(client: Client) -> None:
    await sign_in(client)
    await client.post("/v1/track", json={"event": "A", "userId": "u", "writeKey": KEY})
    body = await (await client.get("/console/api/history")).json()
    assert body["samples"][-1]["ingested"] == {"web": 1}
    assert body["samples"][-1]["lag_events"].keys() == {"file"}


# -- the token never leaves the sign-in form (a real process and its log) -----------


def test_the_token_is_never_logged(eventd: Callable[..., EventdProcess]) -> None:
    ev = eventd()
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(ev.url + "/console/login") as r:
        csrf = parse(r.read().decode()).inputs["csrf"]["value"]
    assert csrf
    for token in ("wrong-" + ev.admin_token, ev.admin_token):
        data = urllib.parse.urlencode({"token": token, "csrf": csrf}).encode()
        try:
            with opener.open(ev.url + "/console/login", data) as r:
                assert r.geturl() == ev.url + "/console"
        except urllib.error.HTTPError as e:
            assert e.code == 401
            csrf = parse(e.read().decode()).inputs["csrf"]["value"]  # a fresh form
    with opener.open(ev.url + "/admin/destinations") as r:
        assert r.status == 200
    log = ev.log()
    assert "console sign-in refused" in log and "console sign-in" in log
    assert ev.admin_token not in log
