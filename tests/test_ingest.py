"""The Tracking API in process over a real socket: answers, errors, limits, keys, CORS."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from eventd.app import create_app
from eventd.config import parse_config
from tests.harness import basic

KEY = "wk_ingest_test"
Client = TestClient[web.Request, web.Application]


def make_config(tmp_path: Path, **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "e.db"), "synchronous": "normal"},
        "sources": {
            "web": {"write_key": KEY},
            "shop": {"write_key": "wk_shop", "allowed_origins": ["https://shop.example"]},
        },
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data, "test")


@pytest.fixture
async def client(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Awaitable[Client]]
) -> Client:
    return await aiohttp_client(create_app(make_config(tmp_path), {}))


def stored(tmp_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(tmp_path / "e.db")
    try:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    finally:
        conn.close()


async def post(client: Client, path: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(path, data=data, **kw)
    return resp.status, await resp.json(content_type=None), resp.headers


@pytest.mark.parametrize(
    ("path", "body", "stored_type"),
    [
        ("/v1/track", {"userId": "u", "event": "E"}, "track"),
        ("/v1/identify", {"userId": "u", "traits": {"a": 1}}, "identify"),
        ("/v1/page", {"anonymousId": "a", "name": "Home"}, "page"),
        ("/v1/screen", {"anonymousId": "a", "name": "Home"}, "screen"),
        ("/v1/group", {"userId": "u", "groupId": "g"}, "group"),
        ("/v1/alias", {"userId": "u", "previousId": "p"}, "alias"),
        ("/v1/t", {"userId": "u", "event": "E"}, "track"),
        ("/v1/i", {"userId": "u"}, "identify"),
        ("/v1/p", {"anonymousId": "a"}, "page"),
        ("/v1/s", {"anonymousId": "a"}, "screen"),
        ("/v1/g", {"userId": "u", "groupId": "g"}, "group"),
        ("/v1/a", {"userId": "u", "previousId": "p"}, "alias"),
    ],
)
async def test_each_path_stores_its_type_and_answers_exactly_success(
    client: Client, tmp_path: Path, path: str, body: dict[str, Any], stored_type: str
) -> None:
    status, answer, headers = await post(client, path, {**body, "writeKey": KEY})
    assert (status, answer) == (200, {"success": True})
    assert headers["Content-Type"].startswith("application/json")
    [msg] = stored(tmp_path)
    assert msg["type"] == stored_type and "writeKey" not in msg


async def test_batch_and_import(client: Client, tmp_path: Path) -> None:
    items = [{"type": "track", "userId": "u", "event": f"E{i}"} for i in range(3)]
    for path in ("/v1/batch", "/v1/import", "/v1/b"):
        status, answer, _ = await post(client, path, {"batch": items, "writeKey": KEY})
        assert (status, answer) == (200, {"success": True})
    assert len(stored(tmp_path)) == 9


@pytest.mark.parametrize(
    "auth",
    [
        {"headers": {"Authorization": basic(KEY)}},
        {"headers": {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}},
        {"body_key": True},
    ],
)
async def test_write_key_from_body_or_basic(
    client: Client, tmp_path: Path, auth: dict[str, Any]
) -> None:
    body: dict[str, Any] = {"userId": "u", "event": "E"}
    if auth.get("body_key"):
        body["writeKey"] = KEY
    status, _, _ = await post(client, "/v1/track", body, headers=auth.get("headers"))
    assert status == 200 and len(stored(tmp_path)) == 1


@pytest.mark.parametrize(
    ("headers", "body_key", "code"),
    [
        ({}, None, "missing_write_key"),
        ({"Authorization": basic("wk_wrong")}, None, "invalid_write_key"),
        ({}, "wk_wrong", "invalid_write_key"),
        ({"Authorization": f"Bearer {KEY}"}, None, "missing_write_key"),
        ({"Authorization": "Basic !!!notbase64"}, None, "missing_write_key"),
    ],
)
async def test_bad_write_keys_are_401_and_store_nothing(
    client: Client, tmp_path: Path, headers: dict[str, str], body_key: str | None, code: str
) -> None:
    body: dict[str, Any] = {"userId": "u", "event": "E"}
    if body_key:
        body["writeKey"] = body_key
    status, answer, _ = await post(client, "/v1/track", body, headers=headers)
    assert status == 401 and answer["code"] == code and answer["message"]
    assert stored(tmp_path) == []


async def test_gzip_and_text_plain_bodies(client: Client, tmp_path: Path) -> None:
    raw = json.dumps({"batch": [{"type": "identify", "userId": "u"}], "writeKey": KEY}).encode()
    status, _, _ = await post(
        client, "/v1/batch", gzip.compress(raw), headers={"Content-Encoding": "gzip"}
    )
    assert status == 200
    status, _, _ = await post(
        client,
        "/v1/t",
        {"userId": "u", "event": "E", "writeKey": KEY},
        headers={"Content-Type": "text/plain"},
    )
    assert status == 200
    assert [m["type"] for m in stored(tmp_path)] == ["identify", "track"]


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), (b"", "invalid_json")],
)
async def test_malformed_bodies_are_400_with_code_and_message(
    client: Client, tmp_path: Path, body: bytes, code: str
) -> None:
    status, answer, _ = await post(client, "/v1/track", body, headers={"Authorization": basic(KEY)})
    assert status == 400 and answer["code"] == code and isinstance(answer["message"], str)
    assert stored(tmp_path) == []


async def test_invalid_single_message_is_400(client: Client, tmp_path: Path) -> None:
    status, answer, _ = await post(client, "/v1/track", {"userId": "u", "writeKey": KEY})
    assert (status, answer["code"]) == (400, "missing_event")
    assert stored(tmp_path) == []


def body_of_size(size: int, batch: bool) -> bytes:
    """A valid request body of exactly ``size`` bytes (one message, or a batch of one)."""
    msg = {"type": "identify", "userId": "u", "writeKey": KEY, "traits": {"x": ""}}
    wrap = (lambda m: {"batch": [m], "writeKey": KEY}) if batch else (lambda m: m)
    pad = size - len(json.dumps(wrap(msg)).encode())
    msg["traits"] = {"x": "y" * pad}
    body = json.dumps(wrap(msg)).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/identify", 32 * 1024), ("/v1/batch", 500 * 1024)],
)
async def test_one_size_rule_at_every_size(
    client: Client, tmp_path: Path, path: str, limit: int
) -> None:
    """Over its path's limit a body is 413 body_too_large, whatever its size (it was 400
    up to aiohttp's own limit and 413 past it); at the limit it is stored. The limit is
    on the decompressed body."""
    batch = path == "/v1/batch"
    if batch:  # an item over 32 KB is dropped as too large: keep the at-limit one valid
        at_limit = json.dumps(
            {
                "batch": [
                    {"type": "identify", "userId": "u", "traits": {"x": "y" * 30_000}},
                ]
                * 16,
                "writeKey": KEY,
            }
        ).encode()
        at_limit = at_limit[:-1] + b" " * (limit - len(at_limit)) + b"}"
    else:
        at_limit = body_of_size(limit, batch)
    status, answer, _ = await post(client, path, at_limit)
    assert (len(at_limit), status, answer) == (limit, 200, {"success": True})
    for size in (limit + 1, 40_000, 100_000, 564 * 1024, 600_000, 2_000_000):
        if size <= limit:
            continue
        status, answer, _ = await post(client, path, body_of_size(size, batch))
        assert (size, status, answer["code"]) == (size, 413, "body_too_large")
        gz = gzip.compress(body_of_size(size, batch))
        status, answer, _ = await post(client, path, gz, headers={"Content-Encoding": "gzip"})
        assert (size, len(gz) < limit, status, answer["code"]) == (
            size,
            True,
            413,
            "body_too_large",
        )
    assert len(stored(tmp_path)) == (16 if batch else 1)


async def test_limits(client: Client, tmp_path: Path) -> None:
    many = {"batch": [{"type": "identify", "userId": "u"}] * 2501, "writeKey": KEY}
    status, answer, _ = await post(client, "/v1/batch", many)
    assert (status, answer["code"]) == (400, "batch_too_large")
    status, answer, _ = await post(client, "/v1/batch", {"batch": [], "writeKey": KEY})
    assert (status, answer["code"]) == (400, "empty_batch")
    assert stored(tmp_path) == []


async def test_partial_batch_keeps_valid_items_and_says_how_many_were_dropped(
    client: Client, tmp_path: Path
) -> None:
    items = [
        {"type": "track", "userId": "u", "event": "ok1", "messageId": "m1"},
        {"type": "track", "userId": "u"},  # no event
        {"type": "identify", "userId": "u", "traits": {"x": "y" * 33_000}},  # too large
        {"type": "track", "userId": "u", "event": "ok2", "messageId": "m2"},
    ]
    status, answer, headers = await post(client, "/v1/batch", {"batch": items, "writeKey": KEY})
    assert (status, answer) == (200, {"success": True})
    assert headers["X-Eventd-Rejected"] == "2"
    assert [m["messageId"] for m in stored(tmp_path)] == ["m1", "m2"]

    status, answer, _ = await post(client, "/v1/batch", {"batch": items[1:3], "writeKey": KEY})
    assert (status, answer["code"]) == (400, "missing_event")


async def test_a_repeated_message_id_is_acknowledged_and_stored_once(
    client: Client, tmp_path: Path
) -> None:
    body = {"userId": "u", "event": "E", "messageId": "dup-1", "writeKey": KEY}
    for _ in range(3):
        assert (await post(client, "/v1/track", body))[0] == 200
    batch = {"batch": [{"type": "track", **body}, {"type": "track", **body}], "writeKey": KEY}
    assert (await post(client, "/v1/batch", batch))[0] == 200
    # the same messageId from another source is another event
    other = {**body, "writeKey": "wk_shop"}
    assert (await post(client, "/v1/track", other))[0] == 200
    assert [m["messageId"] for m in stored(tmp_path)] == ["dup-1", "dup-1"]


async def test_browser_telemetry_is_accepted_and_discarded(client: Client, tmp_path: Path) -> None:
    status, answer, _ = await post(client, "/v1/m", {"series": [{"type": "Counter"}]})
    assert (status, answer) == (200, {"success": True})
    assert stored(tmp_path) == []


async def test_project_settings(client: Client) -> None:
    resp = await client.get(f"/v1/projects/{KEY}/settings")
    assert resp.status == 200
    settings = await resp.json()
    seg = settings["integrations"]["Segment.io"]
    assert seg["apiKey"] == KEY and seg["apiHost"] == f"{client.host}:{client.port}/v1"
    assert seg["protocol"] == "http" and settings["metrics"]["sampleRate"] == 0
    assert (await client.get("/v1/projects/wk_nope/settings")).status == 404


async def test_cors_preflight_and_origins(client: Client, tmp_path: Path) -> None:
    resp = await client.options(
        "/v1/t",
        headers={
            "Origin": "https://any.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://any.example"
    for h in ("Authorization", "Content-Type", "X-Retry-Count"):
        assert h in resp.headers["Access-Control-Allow-Headers"]

    body = {"userId": "u", "event": "E", "writeKey": KEY}
    status, _, headers = await post(client, "/v1/t", body, headers={"Origin": "https://x.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://x.example"
    assert "Access-Control-Allow-Credentials" not in headers

    shop = {**body, "writeKey": "wk_shop"}
    status, answer, _ = await post(
        client, "/v1/t", shop, headers={"Origin": "https://evil.example"}
    )
    assert (status, answer["code"]) == (403, "origin_not_allowed")
    status, _, headers = await post(
        client, "/v1/t", shop, headers={"Origin": "https://shop.example"}
    )
    assert status == 200 and headers["Access-Control-Allow-Credentials"] == "true"
    assert len(stored(tmp_path)) == 2


async def test_context_ip_from_peer_and_trusted_proxies(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Awaitable[Client]]
) -> None:
    untrusted = await aiohttp_client(create_app(make_config(tmp_path), {}))
    await post(
        untrusted,
        "/v1/track",
        {"userId": "u", "event": "E", "writeKey": KEY},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert stored(tmp_path)[-1]["context"]["ip"] == "127.0.0.1"
    await untrusted.close()

    cfg = make_config(tmp_path, server={"trusted_proxies": ["127.0.0.0/8"]})
    trusted = await aiohttp_client(create_app(cfg, {}))
    await post(
        trusted,
        "/v1/track",
        {"userId": "u", "event": "E", "writeKey": KEY},
        headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.5"},
    )
    assert stored(tmp_path)[-1]["context"]["ip"] == "203.0.113.7"


async def test_storage_over_max_size_is_503_and_stores_nothing(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Awaitable[Client]]
) -> None:
    cfg = make_config(tmp_path, storage={"max_size": 1})
    client = await aiohttp_client(create_app(cfg, {}))
    status, answer, headers = await post(
        client, "/v1/track", {"userId": "u", "event": "E", "writeKey": KEY}
    )
    assert (status, answer["code"]) == (503, "storage_unavailable")
    assert "storage.max_size" in answer["message"] and headers["Retry-After"]
    assert stored(tmp_path) == []


async def test_health_and_ready(client: Client) -> None:
    assert (await client.get("/health")).status == 200
    resp = await client.get("/ready")
    assert resp.status == 200 and (await resp.json())["ready"] is True


FORWARDED_CASES: list[tuple[dict[str, str], str]] = [
    # 5. X-Forwarded-For with a port (rudder-server #459)
    ({"X-Forwarded-For": "203.0.113.7:54321"}, "203.0.113.7"),
    ({"X-Forwarded-For": "203.0.113.7:54321, 127.0.0.5:443"}, "203.0.113.7"),
    ({"X-Forwarded-For": "[2001:db8::7]:443"}, "2001:db8::7"),
    ({"X-Forwarded-For": "[2001:db8::7]"}, "2001:db8::7"),
    ({"X-Forwarded-For": "2001:db8::7"}, "2001:db8::7"),
    # the nearest untrusted hop, not a client's claim before it
    ({"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}, "203.0.113.7"),
    # an entry that is not an address: what lies beyond cannot be vouched for
    ({"X-Forwarded-For": "203.0.113.7, unknown"}, "127.0.0.1"),
    # RFC 7239 Forwarded, preferred to X-Forwarded-For
    ({"Forwarded": "for=203.0.113.7;proto=https;by=127.0.0.1"}, "203.0.113.7"),
    ({"Forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "2001:db8:cafe::17"),
    ({"Forwarded": 'for=198.51.100.1, for="203.0.113.7:80"'}, "203.0.113.7"),
    ({"Forwarded": "For=203.0.113.9", "X-Forwarded-For": "198.51.100.1"}, "203.0.113.9"),
    ({"Forwarded": "for=_hidden"}, "127.0.0.1"),
    ({"Forwarded": "proto=https"}, "127.0.0.1"),
    # all hops trusted: the first one
    ({"X-Forwarded-For": "127.0.0.9, 127.0.0.5"}, "127.0.0.9"),
]


@pytest.mark.parametrize(("headers", "ip"), FORWARDED_CASES)
async def test_client_ip_behind_trusted_proxies(
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    headers: dict[str, str],
    ip: str,
) -> None:
    cfg = make_config(tmp_path, server={"trusted_proxies": ["127.0.0.0/8"]})
    client = await aiohttp_client(create_app(cfg, {}))
    body = {"userId": "u", "event": "E", "writeKey": KEY}
    status, _, _ = await post(client, "/v1/track", body, headers=headers)
    assert status == 200
    assert stored(tmp_path)[-1]["context"]["ip"] == ip


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    client: Client, tmp_path: Path
) -> None:
    for headers in ({"X-Forwarded-For": "203.0.113.7:1"}, {"Forwarded": "for=203.0.113.7"}):
        body = {"userId": "u", "event": "E", "writeKey": KEY}
        await post(client, "/v1/track", body, headers=headers)
        assert stored(tmp_path)[-1]["context"]["ip"] == "127.0.0.1"


async def test_rudderstack_source_config(client: Client) -> None:
    """The shape @rudderstack/analytics-js 3.x checks (isValidSourceConfig) and reads."""
    for path, kw in (
        (f"/sourceConfig/?p=npm&v=3.34.1&writeKey={KEY}", {}),
        ("/sourceConfig?p=npm", {"headers": {"Authorization": basic(KEY)}}),
    ):
        resp = await client.get(path, **kw)
        assert resp.status == 200, path
        source = (await resp.json())["source"]
        assert (source["id"], source["name"], source["enabled"]) == ("web", "web", True)
        assert source["destinations"] == [] and isinstance(source["config"], dict)
        assert source["config"]["statsCollection"]["errors"]["enabled"] is False
    resp = await client.get("/sourceConfig/?writeKey=nope")
    assert (resp.status, (await resp.json())["code"]) == (401, "invalid_write_key")
    # Its preflight, from a page on another origin, reflecting the asked headers.
    resp = await client.options(
        "/sourceConfig/",
        headers={
            "Origin": "https://site.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://site.example"


async def test_preflight_allows_the_headers_rudderstack_sends(client: Client) -> None:
    asked = (
        "anonymousid,authorization,content-type,sentat,rsa-retry-attempt,"
        "rsa-since-last-attempt,rsa-since-first-attempt,rsa-retry-reason,rsa-recovered"
    )
    resp = await client.options(
        "/v1/track",
        headers={
            "Origin": "https://site.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert resp.status == 204
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(asked.split(",")) <= allowed
    # Not a header list: not reflected (the defaults only).
    resp = await client.options(
        "/v1/track",
        headers={"Origin": "https://x.example", "Access-Control-Request-Headers": "a b; c=d"},
    )
    assert (
        resp.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Retry-Count"
    )


async def test_rudderstack_beacon_pixel_and_query_write_key(client: Client, tmp_path: Path) -> None:
    batch = {
        "batch": [{"type": "track", "anonymousId": "a", "event": "B", "messageId": "beacon-1"}],
        "sentAt": "2026-11-25T12:00:00.000Z",
    }
    # sendBeacon: text/plain, no Authorization, the key in the query
    resp = await client.post(
        f"/beacon/v1/batch?writeKey={KEY}",
        data=json.dumps(batch),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert (resp.status, await resp.json()) == (200, {"success": True})
    batch["batch"][0]["messageId"] = "query-1"
    status, answer, _ = await post(client, f"/v1/batch?writeKey={KEY}", batch)
    assert (status, answer) == (200, {"success": True})
    status, answer, _ = await post(client, "/beacon/v1/batch", batch)
    assert (status, answer["code"]) == (401, "missing_write_key")

    resp = await client.get(
        "/pixel/v1/page",
        params={
            "writeKey": KEY,
            "anonymousId": '"anon-1"',
            "name": "Newsletter",
            "properties.campaign": "nov",
            "context.campaign.source": "email",
            "messageId": "px-1",
        },
    )
    assert (resp.status, resp.content_type) == (200, "image/gif")
    assert (await resp.read()).startswith(b"GIF89a")
    resp = await client.get(
        "/pixel/v1/track",
        params={"writeKey": KEY, "anonymousId": "anon-1", "event": "Opened", "messageId": "px-2"},
    )
    assert resp.status == 200
    resp = await client.get("/pixel/v1/page", params={"writeKey": KEY, "anonymousId": "a2"})
    assert resp.status == 200  # no name: "Unknown Page"
    resp = await client.get("/pixel/v1/track", params={"writeKey": KEY, "anonymousId": "a"})
    assert (resp.status, (await resp.json())["code"]) == (400, "missing_event")
    resp = await client.get("/pixel/v1/track", params={"anonymousId": "a", "event": "E"})
    assert (resp.status, (await resp.json())["code"]) == (401, "missing_write_key")

    by_id = {m["messageId"]: m for m in stored(tmp_path)}
    assert by_id["beacon-1"]["event"] == by_id["query-1"]["event"] == "B"
    page = by_id["px-1"]
    assert (page["type"], page["anonymousId"], page["name"]) == ("page", "anon-1", "Newsletter")
    assert page["properties"] == {"campaign": "nov"}
    assert page["context"]["campaign"] == {"source": "email"}
    assert page["channel"] == "web"
    assert (by_id["px-2"]["type"], by_id["px-2"]["event"]) == ("track", "Opened")
    assert [m["name"] for m in by_id.values() if m.get("anonymousId") == "a2"] == ["Unknown Page"]
    assert len(by_id) == 5
