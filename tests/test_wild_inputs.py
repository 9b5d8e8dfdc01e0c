"""Imperfect data real SDKs send, over a real socket to a real ``eventd serve``, through to
a webhook destination (issue 12: twelve public bug reports replayed).

Each input is kept (repaired, counted, logged at warning) or refused as a JSON 4xx,
never a 5xx or a traceback; and whatever is stored ends delivered, skipped (counted),
dead-lettered or pending (:func:`tests.harness.account_for_every_event`).
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import EventdProcess, Sink, account_for_every_event, basic

StartEventd = Callable[..., EventdProcess]
SWIFT_TS = "2021-10-16T16:00:27.029:Z"  # analytics-swift #75
WIDE = 123456789012345678901  # past 64 bits


def with_hook(sink: Sink) -> dict[str, Any]:
    return {
        "destinations": {"hook": {"type": "webhook", "settings": {"url": sink.url + "/hook"}}},
    }


def post_raw(
    ev: EventdProcess, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, Any]:
    hdrs = {"Content-Type": "application/json", "Authorization": basic(ev.write_key)}
    req = urllib.request.Request(
        ev.url + path, data=body, headers={**hdrs, **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get_content_type(), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), json.loads(e.read())


def raw_exchange(ev: EventdProcess, request: bytes, half_close: bool = False) -> bytes:
    """``request`` as bytes on a socket; the whole answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", ev.port), timeout=30) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def metric(ev: EventdProcess, name: str, **labels: str) -> float:
    req = urllib.request.Request(
        ev.url + "/metrics", headers={"Authorization": f"Bearer {ev.admin_token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def delivered(sink: Sink) -> dict[str, dict[str, Any]]:
    """messageId -> the event as the webhook received it (bodies parsed keeping ints)."""
    out: dict[str, dict[str, Any]] = {}
    with sink.cond:
        for r in sink.received:
            body = json.loads(r.body)
            for event in body if isinstance(body, list) else [body]:
                out[event["messageId"]] = event
    return out


def test_part_level_defects_cost_nothing(eventd: StartEventd, sink: Sink) -> None:
    ev = eventd(with_hook(sink))
    # 1. a lone surrogate (an emoji cut in half) in one event of three, in a value and a key
    surrogates = (
        b'{"batch": ['
        b'{"type":"track","userId":"u","event":"A","messageId":"s1"},'
        b'{"type":"track","userId":"u","event":"B","messageId":"s2",'
        b'"properties":{"title":"deal \\ud83c","k\\udc00":1}},'
        b'{"type":"track","userId":"u","event":"C","messageId":"s3"}]}'
    )
    assert post_raw(ev, "/v1/batch", surrogates)[::2] == (200, {"success": True})
    # ... and raw bytes that are not UTF-8, in a single message
    latin1 = b'{"userId":"u","event":"D","messageId":"s4","properties":{"city":"Z\xfcrich"}}'
    assert post_raw(ev, "/v1/track", latin1)[::2] == (200, {"success": True})
    # 2. analytics-swift's timestamps, in every item and in the batch's sentAt
    swift = {
        "sentAt": SWIFT_TS,
        "batch": [
            {
                "type": "track",
                "userId": "u",
                "event": "S",
                "messageId": f"t{i}",
                "originalTimestamp": SWIFT_TS,
            }
            for i in range(3)
        ],
    }
    assert post_raw(ev, "/v1/batch", json.dumps(swift).encode())[::2] == (200, {"success": True})
    # 6. integers wider than 64 bits: ids as exact strings, properties as exact numbers
    big = (
        b'{"type":"track","userId":123456789012345678901,"event":"Big","messageId":"b1",'
        b'"properties":{"n":123456789012345678901234567890,"neg":-9223372036854775809,'
        b'"u64":18446744073709551615,"f":0.1,"e":1.5e300}}'
    )
    assert post_raw(ev, "/v1/track", big)[::2] == (200, {"success": True})
    # 10. messageIds that are only whitespace, NUL or invisible: new ids, nothing dropped
    blanks = ["   ", "\u0000", "\u200b", " \t"]
    for blank in blanks:
        status, body = ev.post(
            "/v1/track", {"userId": "u", "event": "Blank", "messageId": blank}, key=ev.write_key
        )
        assert (status, body) == (200, {"success": True})
    status, _ = ev.post(
        "/v1/track",
        {"userId": "u", "event": "Trim", "messageId": "  m-trim\u200b "},
        key=ev.write_key,
    )
    assert status == 200

    stored = {m["messageId"]: m for m in ev.stored()}
    blank_ids = {mid for mid, m in stored.items() if m["event"] == "Blank"}
    assert len(stored) == 3 + 1 + 3 + 1 + len(blanks) + 1
    assert len(blank_ids) == len(blanks) and "m-trim" in stored

    s2 = stored["s2"]
    assert s2["properties"] == {"title": "deal \ufffd", "k\ufffd": 1}
    assert s2["context"]["repaired"] == [{"reason": "invalid_unicode", "replaced": 2}]
    assert "repaired" not in stored["s1"].get("context", {})
    assert stored["s4"]["properties"] == {"city": "Z\ufffdrich"}
    for i in range(3):
        t = stored[f"t{i}"]
        assert t["timestamp"] == t["receivedAt"] and "originalTimestamp" not in t
        assert sorted((r["reason"], r["field"], r["sent"]) for r in t["context"]["repaired"]) == [
            ("unreadable_sent_at", "sentAt", SWIFT_TS),
            ("unreadable_timestamp", "originalTimestamp", SWIFT_TS),
        ]
    assert stored["b1"]["userId"] == str(WIDE)

    # Through to the webhook, every event, values exact (json keeps ints of any width).
    sink.wait_for(lambda s: set(delivered(s)) == set(stored))
    got = delivered(sink)
    assert got["b1"]["userId"] == "123456789012345678901"
    assert got["b1"]["properties"] == {
        "n": 123456789012345678901234567890,
        "neg": -9223372036854775809,
        "u64": 18446744073709551615,
        "f": 0.1,
        "e": 1.5e300,
    }
    with sink.cond:
        raw = next(r.body for r in sink.received if b'"b1"' in r.body)
    assert b'"n":123456789012345678901234567890' in raw
    assert got["s2"]["properties"]["title"] == "deal \ufffd"
    account_for_every_event(ev, "hook", set(got), lambda m: None)

    # Counted by reason, and logged at warning (never silently).
    assert metric(ev, "eventd_repaired_events_total", reason="invalid_unicode") == 2
    assert metric(ev, "eventd_repaired_events_total", reason="unreadable_timestamp") == 3
    assert metric(ev, "eventd_repaired_events_total", reason="unreadable_sent_at") == 3
    log = ev.log()
    assert log.count('"message repaired"') == 8, log[-3000:]
    assert all(
        '"level":"warning"' in line for line in log.splitlines() if "message repaired" in line
    )
    assert "Traceback" not in log


def test_every_refusal_is_a_json_4xx(eventd: StartEventd) -> None:
    ev = eventd()
    body = json.dumps({"userId": "u", "event": "E"}).encode()
    # 3. a corrupt gzip body, a gzip body cut short, encodings not supported
    for data, encoding, code in [
        (b"\x1f\x8b\x08garbage", "gzip", "unreadable_body"),
        # cut short: aiohttp does not check the gzip trailer, the JSON is cut instead
        (gzip.compress(body)[:15], "gzip", "invalid_json"),
        (b"not deflate", "deflate", "unreadable_body"),
        (body, "compress", "unsupported_encoding"),
        (body, "gzip, gzip", "unsupported_encoding"),
    ]:
        status, ctype, answer = post_raw(ev, "/v1/track", data, {"Content-Encoding": encoding})
        assert (encoding, status, ctype, answer["code"]) == (
            encoding,
            400,
            "application/json",
            code,
        ), answer
    # Content-Encodings aiohttp refuses itself (no brotli/zstd here), before any route:
    # the same code as any other encoding eventd does not take
    for encoding in ("br", "zstd"):
        status, ctype, answer = post_raw(ev, "/v1/track", body, {"Content-Encoding": encoding})
        assert (status, ctype, answer["code"]) == (400, "application/json", "unsupported_encoding")
        assert answer["message"].endswith("send gzip, deflate or none"), answer
    # {"batch": []}: nothing to store
    status, _, answer = post_raw(ev, "/v1/batch", b'{"batch": []}')
    assert (status, answer["code"]) == (400, "empty_batch")
    # 12. unknown /v1 paths: JSON 404; a known path with another method: JSON 405
    status, ctype, answer = post_raw(ev, "/v1/nothing-here", body)
    assert (status, ctype, answer["code"]) == (404, "application/json", "not_found")
    req = urllib.request.Request(ev.url + "/v1/track", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert (info.value.code, json.loads(info.value.read())["code"]) == (405, "method_not_allowed")
    assert info.value.headers["Allow"] == "POST, OPTIONS"

    # What aiohttp refuses before routing: over-long request line and header, too many
    # headers, a body shorter than its Content-Length, garbage.
    answers = [
        raw_exchange(ev, b"GET /v1/track?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        raw_exchange(ev, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"),
        raw_exchange(
            ev,
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
        ),
        raw_exchange(ev, b"\x16\x03\x01 not http\r\n\r\n"),
        raw_exchange(
            ev,
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
    ]
    for answer in answers:
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", head), answer[:300]
        assert b"Content-Type: application/json" in head, answer[:300]
        assert set(json.loads(payload)) == {"code", "message"}, answer[:300]
    # A Content-Length body cut short: the connection ends before the body does.
    cut = raw_exchange(
        ev,
        b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
        b"Authorization: " + basic(ev.write_key).encode() + b"\r\n\r\n" + body,
        half_close=True,
    )
    assert cut == b"" or cut.startswith(b"HTTP/1.1 400"), cut[:300]

    assert ev.stored() == []
    with urllib.request.urlopen(ev.url + "/health", timeout=10) as r:
        assert r.status == 200
    log = ev.log()
    assert "Traceback" not in log, log[-5000:]
    assert '"level":"error"' not in log, log[-5000:]


INTEGRATIONS: list[tuple[dict[str, Any] | None, bool]] = [
    # 4. an options object means "send it there", with or without "All": false
    ({"Webhooks": {}}, True),
    ({"All": False, "Webhooks": {}}, True),
    ({"All": False, "Webhooks": {"x": 1}}, True),
    ({"All": False, "hook": True}, True),
    ({"Webhooks": True}, True),
    ({"Webhooks": "yes"}, True),
    ({"Webhooks": None}, True),
    ({"Mixpanel": False}, True),
    ({}, True),
    (None, True),
    # only false disables; "All": false disables the ones not named (or named falsy)
    ({"Webhooks": False}, False),
    ({"hook": False, "Webhooks": {}}, False),
    ({"All": False}, False),
    ({"All": False, "Mixpanel": {}}, False),
    ({"All": False, "Webhooks": None}, False),
    ({"All": True, "Webhooks": False}, False),
]


def analytics_js_enabled(integrations: Any) -> bool:
    """The test's own reading of analytics.js's rule, for the webhook named "hook"."""
    if not isinstance(integrations, dict):
        return True
    names = [n for n in ("hook", "Webhooks") if n in integrations]
    value = integrations[names[0]] if names else None
    if value is False:
        return False
    truthy = value not in (None, False, 0, "")
    return integrations.get("All") is not False or truthy


def test_integrations_route_as_analytics_js_reads_them(eventd: StartEventd, sink: Sink) -> None:
    ev = eventd(with_hook(sink))
    batch = []
    for i, (integrations, _) in enumerate(INTEGRATIONS):
        item: dict[str, Any] = {"type": "track", "userId": "u", "event": "E", "messageId": f"i{i}"}
        if integrations is not None:
            item["integrations"] = integrations
        batch.append(item)
    # batch-level integrations merge under each item's
    batch_level = {
        "integrations": {"Webhooks": False},
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "messageId": "bl-off"},
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "messageId": "bl-on",
                "integrations": {"Webhooks": {}},
            },
        ],
    }
    status, _ = ev.post("/v1/batch", {"batch": batch}, key=ev.write_key)
    assert status == 200
    status, _ = ev.post("/v1/batch", batch_level, key=ev.write_key)
    assert status == 200
    want = {f"i{i}" for i, (_, on) in enumerate(INTEGRATIONS) if on} | {"bl-on"}
    assert {f"i{i}" for i, (g, _) in enumerate(INTEGRATIONS) if analytics_js_enabled(g)} | {
        "bl-on"
    } == want
    ev.drain(timeout=60)
    got = set(delivered(sink))
    assert got == want
    result = account_for_every_event(
        ev,
        "hook",
        got,
        lambda m: None if analytics_js_enabled(m.get("integrations")) else "integrations",
    )
    assert result["skipped"] == {f"i{i}" for i, (_, on) in enumerate(INTEGRATIONS) if not on} | {
        "bl-off"
    }
    assert metric(ev, "eventd_skipped_events_total", destination="hook", reason="integrations") == (
        len(result["skipped"])
    )


def test_event_field_that_is_not_a_string_on_another_type(eventd: StartEventd) -> None:
    """The fuzzer's find: ``"event": {}`` on an identify went to the store's event
    column and failed the commit (a 503, as if the disk were full)."""
    ev = eventd()
    for value in ({}, [1], 5, True):
        status, body = ev.post("/v1/identify", {"userId": "u", "event": value}, key=ev.write_key)
        assert (status, body) == (200, {"success": True}), value
    assert [m["event"] for m in ev.stored()] == [{}, [1], 5, True]
    assert "Traceback" not in ev.log()


def test_wide_integer_as_a_timestamp_is_repaired_and_logged(eventd: StartEventd) -> None:
    """The randomized fuzz's find: an unreadable timestamp that is an integer past 64
    bits went into the warning log line, which orjson (the JSON log) cannot write: 500."""
    ev = eventd()
    body = (
        b'{"event":"x","originalTimestamp":-25994846351291932234219520,'
        b'"timestamp":52388472632941903872,"userId":"0","messageId":"w1"}'
    )
    assert post_raw(ev, "/v1/t", body)[::2] == (200, {"success": True})
    (stored,) = ev.stored()
    assert [r["sent"] for r in stored["context"]["repaired"]] == [
        52388472632941903872,
        -25994846351291932234219520,
    ]
    log = ev.log()
    assert '"sent":"52388472632941903872"' in log and "Traceback" not in log
