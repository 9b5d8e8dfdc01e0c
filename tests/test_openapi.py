"""The OpenAPI document (eventd/openapi.json): valid, complete, and true of the running server.

- the document is valid OpenAPI 3.1 (openapi-spec-validator), is what ``/openapi.json``
  serves, and is what tools/gen_openapi.py generates;
- every route the app registers is documented, with its methods, and nothing else is;
- schemathesis fuzzes every operation of a real ``eventd serve`` from the served
  document: no 5xx, positive examples answered as documented (status, content type,
  headers, body schema), and afterwards the process is healthy with no traceback logged;
- the crashes the fuzzer found stay fixed (deterministic regression cases).

The fuzz is derandomized: the same examples every run, so CI passes or fails on the
code, not on luck. A longer randomized run is opt-in (README, "Fuzzing")::

    EVENTD_FUZZ_RANDOM=1 EVENTD_FUZZ_EXAMPLES=200 \
        .venv/bin/python -m pytest tests/test_openapi.py -k fuzz_every_operation
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from eventd import ingest
from eventd.app import create_app
from eventd.config import parse_config
from tests.harness import EventdProcess, basic

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# aiohttp's {name} or {name:regex}: the regex may itself hold braces ({1,3}).
ROUTE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(?:[^{}]|\{[^{}]*\})*)?\}")
# Per operation and generation mode: the default run takes ~30 s.
FUZZ_EXAMPLES = int(os.environ.get("EVENTD_FUZZ_EXAMPLES", "20"))
# Opt-in: new random examples each run (the default derives them from the test's code).
FUZZ_RANDOM = os.environ.get("EVENTD_FUZZ_RANDOM", "") not in ("", "0")
# /admin/live never ends (an event stream); it has its own test below.
FUZZ_SKIP = {("GET", "/admin/live")}

StartEventd = Callable[..., EventdProcess]


def document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("eventd").joinpath("openapi.json").read_bytes()
    )
    return data


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


# -- the document itself ------------------------------------------------------------------


def test_document_is_valid_openapi_3() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    doc = document()
    assert doc["openapi"].startswith("3.")
    validator.validate(doc)


def test_document_is_what_the_generator_writes() -> None:
    """eventd/openapi.json is generated; a hand edit (or a stale file) fails here."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_openapi.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_document_limits_match_the_code() -> None:
    schemas = document()["components"]["schemas"]
    assert schemas["Batch"]["properties"]["batch"]["maxItems"] == ingest.MAX_BATCH_EVENTS
    assert str(ingest.MAX_BATCH_BYTES) in schemas["Batch"]["description"]
    assert str(ingest.MAX_MESSAGE_BYTES) in schemas["MessageCommon"]["description"]


def test_document_version_is_the_package_version() -> None:
    from eventd import __version__

    assert document()["info"]["version"] == __version__


def test_every_operation_has_a_unique_operation_id() -> None:
    ids = [
        op["operationId"]
        for item in document()["paths"].values()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(ids) == len(set(ids))


# -- routes versus document -----------------------------------------------------------------


def registered_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, /path/{param}) for every route create_app registers."""
    config = parse_config(
        {
            "storage": {"path": str(tmp_path / "eventd.db")},
            "admin": {"token": "adm_routes"},
            "sources": {"web": {"write_key": "wk_routes"}},
        },
        "<test>",
    )
    app = create_app(config)
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        assert isinstance(path, str), f"cannot tell the path of {route!r}"
        routes.add((route.method, ROUTE_PARAM.sub(r"{\1}", path)))
    # add_get also registers HEAD (allow_head=True): not an operation of its own.
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def test_route_param_normalisation() -> None:
    assert ROUTE_PARAM.sub(r"{\1}", "/admin/dead-letters/{id:\\d+}") == "/admin/dead-letters/{id}"
    assert ROUTE_PARAM.sub(r"{\1}", "/v1/{tail:.*}") == "/v1/{tail}"
    assert ROUTE_PARAM.sub(r"{\1}", "/x/{a:[0-9]{1,3}}/{b}") == "/x/{a}/{b}"


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    registered = registered_operations(tmp_path)
    documented = documented_operations(document())
    assert registered, "no routes found: is create_app still wiring them?"
    assert sorted(registered - documented) == [], "routes missing from eventd/openapi.json"
    assert sorted(documented - registered) == [], "documented operations no route serves"


def test_served_document_is_the_packaged_file(eventd: StartEventd) -> None:
    ev = eventd()
    with urllib.request.urlopen(ev.url + "/openapi.json", timeout=10) as r:
        assert r.headers.get_content_type() == "application/json"
        assert json.loads(r.read()) == document()


# -- fuzzing a real eventd from the served document ------------------------------------------


@dataclass
class Fuzzer:
    """Sends schemathesis cases to a running eventd and collects what goes wrong."""

    ev: EventdProcess
    conformance: list[Any]  # schemathesis checks run on positive examples
    problems: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "POST /v1/track 200" -> n
    suppressed: set[str] = field(default_factory=set)  # user_ids any case suppressed
    # Every case sent, hashed in order: printed, so runs can be compared (derandomized
    # runs must print the same digest).
    digest: Any = field(default_factory=hashlib.sha256)

    def auth(self, path: str) -> dict[str, str]:
        if path.startswith("/v1/"):
            return {"Authorization": basic(self.ev.write_key)}
        if path.startswith(("/admin/", "/metrics")):
            return {"Authorization": f"Bearer {self.ev.admin_token}"}
        return {}

    def fuzz(self, op: Any, mode: Any, positive: bool) -> None:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            derandomize=not FUZZ_RANDOM,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            self.send(op, case, positive)

        try:
            run()
        except Unsatisfiable:
            # Negative mode has nothing to break in a GET without parameters, or in a
            # path parameter that may be any string.
            assert not positive, f"{op.label}: no example could be generated"

    def send(self, op: Any, case: Any, positive: bool) -> int:
        if isinstance(case.body, dict) and "writeKey" in case.body:
            case.body["writeKey"] = self.ev.write_key  # else most such bodies are 401s
        auth = self.auth(op.path)
        sent = json.dumps(  # not repr(): schemathesis's NotSet shows its memory address
            [op.label, case.path_parameters, case.query, case.body, case.media_type],
            default=lambda o: type(o).__name__,
        )
        # the process's write key is random; the cases are what must not be
        sent = sent.replace(self.ev.write_key, "<key>")
        self.digest.update(sent.encode("utf-8", "surrogatepass"))
        if op.path == "/admin/suppressions" and isinstance(case.body, dict):
            # Sent before the answer is known: a suppression may apply even if the
            # answer is lost. Its user's events are then skipped (or erased).
            self.suppressed.add(str(case.body.get("user_id")))
        response = case.call(base_url=self.ev.url, headers=auth, timeout=30)
        status = response.status_code
        self.statuses[f"{op.label} {status}"] += 1
        # 504 is /admin/drain's answer when its (tiny, generated) timeout runs out.
        if status >= 500 and not (op.path == "/admin/drain" and status == 504):
            self.problems.append(
                f"{op.label}: {status} {response.text[:300]}\n"
                f"  {case.as_curl_command(headers=auth)}"
            )
        elif positive:
            try:
                case.validate_response(response, checks=self.conformance, headers=auth)
            except BaseExceptionGroup as exc:  # schemathesis's FailureGroup
                self.problems.append(f"{op.label}: not as documented: {exc}"[:2000])
        return int(status)


def test_fuzz_every_operation(eventd: StartEventd, tmp_path: Path) -> None:
    import schemathesis  # a test dependency: fails, never skips, when missing
    from schemathesis.specs.openapi import checks

    ev = eventd(
        {
            "destinations": {
                "file": {"type": "jsonl", "settings": {"path": str(tmp_path / "out.jsonl")}},
                # the report store, so /admin/reports/* answer from real DuckDB tables
                "analytics": {
                    "type": "duckdb",
                    "settings": {"path": str(tmp_path / "analytics.duckdb")},
                },
            }
        }
    )
    schema = schemathesis.openapi.from_url(ev.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = {(op.method.upper(), op.path) for op in operations}
    # schemathesis leaves out the operation that serves the document it was loaded from.
    assert documented_operations(document()) - fuzzed == {("GET", "/openapi.json")}

    fuzzer = Fuzzer(
        ev,
        [
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_headers_conformance,
            checks.response_schema_conformance,
        ],
    )
    # Examples the generator would rarely hit (a real write key, a real destination),
    # answered as documented.
    track = {"type": "track", "userId": "u", "event": "e"}
    examples: list[tuple[str, str, dict[str, Any], int]] = [
        (
            "GET",
            "/v1/projects/{write_key}/settings",
            {"path_parameters": {"write_key": ev.write_key}},
            200,
        ),
        (
            "POST",
            "/v1/batch",
            {"body": {"batch": [track, {"type": "track"}]}, "media_type": "application/json"},
            200,
        ),
        ("POST", "/v1/t", {"body": json.dumps(track), "media_type": "text/plain"}, 200),
        (
            "OPTIONS",
            "/v1/{tail}",
            {"path_parameters": {"tail": "t"}, "headers": {"Origin": "https://a.example"}},
            204,
        ),
        (
            "POST",
            "/admin/replay",
            {"body": {"destination": "file", "since": "1h"}, "media_type": "application/json"},
            200,
        ),
        ("POST", "/admin/drain", {"query": {"timeout": 30}}, 200),
        ("GET", "/admin/runtime", {}, 200),
        ("GET", "/admin/reports/funnel", {"query": {"steps": "e", "by": "x"}}, 200),
        ("GET", "/admin/reports/retention", {"query": {"start": "e"}}, 200),
        ("GET", "/metrics", {}, 200),
    ]
    for method, path, kwargs, expected in examples:
        op = schema[path][method]
        assert fuzzer.send(op, op.Case(**kwargs), positive=True) == expected, (method, path)

    for op in operations:
        if (op.method.upper(), op.path) not in FUZZ_SKIP:
            fuzzer.fuzz(op, schemathesis.GenerationMode.POSITIVE, positive=True)
            fuzzer.fuzz(op, schemathesis.GenerationMode.NEGATIVE, positive=False)

    print(
        f"\nfuzz cases digest: {fuzzer.digest.hexdigest()} ({sum(fuzzer.statuses.values())} cases)"
    )
    assert fuzzer.problems == [], "\n\n".join(fuzzer.problems[:20])
    with urllib.request.urlopen(ev.url + "/health", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(ev.url + "/ready", timeout=5) as r:
        assert json.loads(r.read())["ready"] is True
    # The run reached what it is meant to (stored events and admin answers, not only
    # refusals), and every stored event ended delivered or skipped for a reason the
    # test can name (its integrations turn "file" off, its user was suppressed), none
    # dead-lettered, none pending.
    stored = {m["messageId"]: m for m in ev.stored()}
    assert len(stored) >= FUZZ_EXAMPLES, fuzzer.statuses
    assert fuzzer.statuses["GET /admin/destinations 200"] > 0, fuzzer.statuses
    destinations = ev.drain(timeout=30)
    assert [(d["name"], d["lag_events"], d["dead"]) for d in destinations] == [
        ("analytics", 0, 0),
        ("file", 0, 0),
    ]
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    delivered = {json.loads(line)["messageId"]: json.loads(line) for line in lines}
    off = {mid for mid, m in stored.items() if not routed_to_file(m.get("integrations"))}
    suppressed = {mid for mid, m in stored.items() if m.get("userId") in fuzzer.suppressed}
    # Erased (suppress with erase) after delivery: delivered, no longer stored.
    assert {mid for mid, m in delivered.items() if mid not in stored} <= {
        mid for mid, m in delivered.items() if m.get("userId") in fuzzer.suppressed
    }
    assert not off & set(delivered), "delivered what its integrations turned off"
    not_delivered = set(stored) - set(delivered)
    assert not_delivered <= off | suppressed, [stored[m] for m in not_delivered - off][:3]
    # /admin/replay passes events again, so skips may be counted more than once.
    assert destinations[0]["skipped"] >= len(not_delivered), destinations
    log = ev.log()
    assert "Traceback" not in log, log[-5000:]
    assert '"level":"error"' not in log, log[-5000:]
    assert ev.stop() == 0


def routed_to_file(integrations: object) -> bool:
    """analytics.js's reading of ``integrations``, for the jsonl destination named "file"
    (written out here, not imported: the test's own statement of the rule)."""
    if not isinstance(integrations, dict) or not integrations:
        return True
    value = integrations.get("file")
    if value is False:
        return False
    return integrations.get("All") is not False or value not in (None, False, 0, "")


# -- what the fuzzer found, kept fixed -------------------------------------------------------


def nested(depth: int, **fields: Any) -> dict[str, Any]:
    """A message ``depth`` objects deep: ``fields`` on top, properties nested below.

    orjson reads 1024 levels but writes only 254.
    """
    value: dict[str, Any] = {}
    for _ in range(depth - 2):
        value = {"a": value}
    return {**fields, "properties": value}


def test_nested_depth_is_orjson_s_limit() -> None:
    import orjson

    orjson.dumps(nested(254))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(nested(255))


def post_raw(ev: EventdProcess, path: str, body: bytes) -> tuple[int, dict[str, Any], str | None]:
    req = urllib.request.Request(
        ev.url + path,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": basic(ev.write_key)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), r.headers.get("X-Eventd-Rejected")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("X-Eventd-Rejected")


OUT_OF_RANGE = [
    # UTC form before year 1
    {"timestamp": "0001-01-01T00:00:00+01:00"},
    {"sentAt": "0001-01-01T00:00:00+01:00"},
    # skew-corrected timestamp (receivedAt - (sentAt - timestamp)) before year 1
    {"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"},
    # ... or after year 9999
    {"timestamp": "9999-12-31T00:00:00Z", "sentAt": "0001-01-02T00:00:00Z"},
]


def test_fuzz_findings_ingest(eventd: StartEventd) -> None:
    """Timestamps out of datetime's range (were a 500, then a 400 costing the message):
    repaired and stored, the message and its batch kept."""
    ev = eventd()
    for fields in OUT_OF_RANGE:
        status, body = ev.post("/v1/identify", {"userId": "u", **fields}, key=ev.write_key)
        assert (status, body) == (200, {"success": True}), fields
    status, body, rejected = post_raw(
        ev,
        "/v1/batch",
        json.dumps(
            {
                "batch": [
                    {"type": "identify", "userId": "u", "messageId": f"m{i}", **fields}
                    for i, fields in enumerate([{}, *OUT_OF_RANGE])
                ]
            }
        ).encode(),
    )
    assert (status, body, rejected) == (200, {"success": True}, None)

    # Nested deeper than orjson writes back: refused as invalid, not a 500.
    for path, payload in (
        ("/v1/identify", nested(255, userId="u")),
        ("/v1/batch", {"batch": [nested(255, userId="u", type="identify")]}),
    ):
        status, body, _ = post_raw(ev, path, json.dumps(payload).encode())
        assert (status, body["code"]) == (400, "invalid_message"), path
    # 254 levels is still fine.
    status, body, _ = post_raw(ev, "/v1/identify", json.dumps(nested(254, userId="u")).encode())
    assert (status, body) == (200, {"success": True})

    stored = ev.stored()
    batch_ids = [m["messageId"] for m in stored[len(OUT_OF_RANGE) :][: len(OUT_OF_RANGE) + 1]]
    assert batch_ids == [f"m{i}" for i in range(len(OUT_OF_RANGE) + 1)]
    assert all("repaired" in m["context"] for m in stored[: len(OUT_OF_RANGE)])
    assert len(stored) == 2 * len(OUT_OF_RANGE) + 2
    assert "Traceback" not in ev.log()


def test_fuzz_findings_batch_item_type_not_a_string(eventd: StartEventd) -> None:
    """A batch item whose type is an object or a list is invalid_type, like any other
    unknown type (normalize.py tested ``type in TYPES`` on an unhashable value: 500)."""
    ev = eventd()
    batch = [
        {"type": "identify", "userId": "u", "messageId": "ok"},
        {"type": {"track": 1}, "userId": "u"},
        {"type": ["track"], "userId": "u"},
    ]
    status, body, rejected = post_raw(ev, "/v1/batch", json.dumps({"batch": batch}).encode())
    assert (status, body, rejected) == (200, {"success": True}, "2")
    status, body, _ = post_raw(ev, "/v1/batch", json.dumps({"batch": batch[1:]}).encode())
    assert (status, body["code"]) == (400, "invalid_type")
    assert [m["messageId"] for m in ev.stored()] == ["ok"]
    assert "Traceback" not in ev.log()


ADMIN_BAD_REQUESTS: list[tuple[str, str, Any]] = [
    # a destination that is not a string (unhashable: was TypeError)
    ("POST", "/admin/dead-letters/purge", {"destination": {}}),
    ("POST", "/admin/dead-letters/redrive", {"destination": []}),
    # times that are neither strings nor seconds (was TypeError in fromisoformat)
    ("POST", "/admin/dead-letters/purge", {"before": []}),
    ("POST", "/admin/dead-letters/purge", {"before": True}),
    ("POST", "/admin/dead-letters/purge", {"before": -5}),
    ("POST", "/admin/replay", {"destination": "file", "since": {"h": 1}}),
    # times past SQLite's integer range (was OverflowError binding the parameter, which
    # left the writer's transaction open and failed the next commit, ingest included)
    ("POST", "/admin/dead-letters/purge", {"before": "9" * 30 + "d"}),
    ("POST", "/admin/dead-letters/purge", {"before": 1e300}),
    ("GET", "/admin/dead-letters?since=" + "9" * 400 + "d", None),
    # a negative limit (SQLite: no limit at all; past int64: OverflowError)
    ("GET", "/admin/dead-letters?limit=-1", None),
    ("GET", "/admin/dead-letters?limit=-" + "9" * 30, None),
    # ids that are not int64 dead-letter ids, or too many of them for one statement
    ("POST", "/admin/dead-letters/redrive", {"ids": [2**64]}),
    ("POST", "/admin/dead-letters/redrive", {"ids": [True]}),
    ("POST", "/admin/dead-letters/redrive", {"ids": [-1]}),
    ("POST", "/admin/dead-letters/redrive", {"ids": list(range(1, 10_002))}),
    # drain timeouts asyncio cannot honour
    ("POST", "/admin/drain?timeout=nan", None),
    ("POST", "/admin/drain?timeout=-1", None),
    ("POST", "/admin/drain?timeout=inf", None),
]


def test_fuzz_findings_admin_bad_requests(eventd: StartEventd, tmp_path: Path) -> None:
    ev = eventd(
        {
            "destinations": {
                "file": {"type": "jsonl", "settings": {"path": str(tmp_path / "out.jsonl")}}
            }
        }
    )
    answers = []
    for method, path, body in ADMIN_BAD_REQUESTS:
        req = urllib.request.Request(
            ev.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {ev.admin_token}"},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answers.append((path, r.status, json.loads(r.read())))
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                answers.append((path, e.code, json.loads(raw).get("code")))
            except ValueError:
                answers.append((path, e.code, raw[:200].decode(errors="replace")))
        # The store is still writable after each, and ingest unaffected.
        status, _ = ev.post("/v1/track", {"userId": "u", "event": "e"}, key=ev.write_key)
        assert status == 200, (path, body)
    assert answers == [(path, 400, "bad_request") for _, path, _ in ADMIN_BAD_REQUESTS]
    assert "Traceback" not in ev.log()


def test_fuzz_findings_admin_huge_dead_letter_id(eventd: StartEventd) -> None:
    ev = eventd()
    req = urllib.request.Request(
        ev.url + "/admin/dead-letters/" + "9" * 30,
        headers={"Authorization": f"Bearer {ev.admin_token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 404
    assert json.loads(info.value.read())["code"] == "not_found"
    assert "Traceback" not in ev.log()


def test_live_stream_survives_an_unwritable_rejected_message(eventd: StartEventd) -> None:
    """A rejected message is published as sent: at 254 levels it is one level too deep
    for orjson to write inside the live item. The stream sends it without the message."""
    ev = eventd()
    req = urllib.request.Request(
        ev.url + "/admin/live", headers={"Authorization": f"Bearer {ev.admin_token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as stream:
        assert stream.readline() == b": connected\n"  # subscribed from here on
        assert stream.readline() == b"\n"
        no_user = nested(254)  # writable alone, not inside the live item
        status, body, _ = post_raw(ev, "/v1/identify", json.dumps(no_user).encode())
        assert (status, body["code"]) == (400, "missing_user")
        status, body, _ = post_raw(ev, "/v1/track", b'{"userId": "u2", "event": "after"}')
        assert status == 200
        first = json.loads(stream.readline().removeprefix(b"data: "))
        assert stream.readline() == b"\n"
        second = json.loads(stream.readline().removeprefix(b"data: "))
    assert (first["rejected"], first["code"], first["message"]) == (True, "missing_user", None)
    assert (second["rejected"], second["message"]["event"]) == (False, "after")
    assert "Traceback" not in ev.log()


def test_basic_helper_matches_what_the_document_says() -> None:
    """The Basic scheme the document describes is what tests send: key as username."""
    assert base64.b64decode(basic("wk").removeprefix("Basic ")) == b"wk:"
