"""Operating eventd: admin auth, /metrics, the live stream, retention and disk use."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from eventd import logs
from eventd.app import RUNTIME, create_app
from eventd.config import parse_config
from eventd.identity.service import IdentityService
from eventd.plugins import destination_types
from tests.harness import EventdProcess, Sink

KEY = "wk_ops"
TOKEN = "adm_ops_token"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    data: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "e.db"), "synchronous": "normal"},
        "admin": {"token": TOKEN},
        "sources": {"web": {"write_key": KEY}, "ios": {"write_key": "wk_ios"}},
        "destinations": {
            "file": {"type": "jsonl", "settings": {"path": str(tmp_path / "out.jsonl")}}
        },
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return parse_config(data, "test")


async def track(client: Client, n: int, key: str = KEY, pad: int = 0) -> None:
    batch = [
        {"type": "track", "userId": f"u{i}", "event": "Clicked", "properties": {"p": "x" * pad}}
        for i in range(n)
    ]
    resp = await client.post("/v1/batch", json={"batch": batch, "writeKey": key})
    assert resp.status == 200


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_admin_needs_the_bearer_token(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(create_app(config(tmp_path)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.get("/admin/destinations", headers=headers)
        assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
        assert (await client.get("/metrics", headers=headers)).status == 401
    resp = await client.get("/admin/destinations", headers=AUTH)
    assert resp.status == 200 and [d["name"] for d in await resp.json()] == ["file"]
    runtime = await (await client.get("/admin/runtime", headers=AUTH)).json()
    assert runtime["storage"]["writable"] and runtime["destinations"] == ["file"]
    sources = await (await client.get("/admin/sources", headers=AUTH)).json()
    assert {s["name"] for s in sources} == {"web", "ios"}
    assert KEY not in json.dumps(sources), "write keys are never shown"


async def test_admin_is_off_without_a_token_and_metrics_can_be_public(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    cfg = config(tmp_path, admin={"token": None, "metrics_auth": False})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.get("/admin/destinations", headers=AUTH)
    assert resp.status == 403 and "admin.token" in (await resp.json())["message"]
    assert (await client.get("/metrics")).status == 200


async def test_metrics_count_ingest_rejects_delivery_and_lag(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    app = create_app(config(tmp_path))
    client = await aiohttp_client(app)
    await track(client, 7)
    await track(client, 2, key="wk_ios")
    await client.post("/v1/track", json={"userId": "u", "writeKey": KEY})  # no event: rejected
    await client.post("/v1/track", data=b"{", headers={"Authorization": "Basic x"})
    await app[RUNTIME].dispatcher.drain()

    resp = await client.get("/metrics", headers=AUTH)
    assert resp.headers["Content-Type"].startswith("text/plain")
    m = metrics(await resp.text())
    assert m[("eventd_ingested_events_total", (("source", "web"), ("type", "track")))] == 7
    assert m[("eventd_ingested_events_total", (("source", "ios"), ("type", "track")))] == 2
    assert m[("eventd_rejected_events_total", (("reason", "missing_event"),))] == 1
    assert m[("eventd_rejected_events_total", (("reason", "invalid_json"),))] == 1
    assert m[("eventd_delivered_events_total", (("destination", "file"),))] == 9
    assert m[("eventd_lag_events", (("destination", "file"),))] == 0
    assert m[("eventd_commit_events_count", ())] >= 2
    assert m[("eventd_outbox_bytes", ())] > 0
    assert m[("eventd_storage_writable", ())] == 1
    latency = ("eventd_request_seconds_count", (("path", "/v1/batch"),))
    assert m[latency] == 2


async def test_max_size_refusal_is_visible_in_metrics_and_ready(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    app = create_app(config(tmp_path, storage={"max_size": 1}))
    client = await aiohttp_client(app)
    resp = await client.post("/v1/track", json={"userId": "u", "event": "E", "writeKey": KEY})
    assert resp.status == 503
    m = metrics(await (await client.get("/metrics", headers=AUTH)).text())
    assert m[("eventd_rejected_events_total", (("reason", "storage_unavailable"),))] == 1


async def test_live_stream_shows_accepted_and_rejected_events(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    client = await aiohttp_client(create_app(config(tmp_path)))
    resp = await client.get("/admin/live?source=web&format=json", headers=AUTH)
    assert resp.status == 200
    await client.post("/v1/track", json={"userId": "u", "event": "Seen", "writeKey": KEY})
    await client.post("/v1/track", json={"userId": "u", "event": "Other", "writeKey": "wk_ios"})
    await client.post("/v1/track", json={"userId": "u", "writeKey": KEY})
    assert await resp.content.readline() == b"\n"  # the stream is open
    first = json.loads(await resp.content.readline())
    second = json.loads(await resp.content.readline())
    assert first["rejected"] is False and first["message"]["event"] == "Seen"
    assert second["rejected"] is True and second["code"] == "missing_event"
    resp.close()

    sse = await client.get("/admin/live", headers=AUTH)
    assert sse.headers["Content-Type"].startswith("text/event-stream")
    assert await sse.content.readline() == b": connected\n"
    sse.close()


async def test_a_reader_that_never_reads_cannot_stall_ingest(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    app = create_app(config(tmp_path))
    client = await aiohttp_client(app)
    stalled = await client.get("/admin/live?format=json", headers=AUTH)  # never read
    for _ in range(30):
        await track(client, 100)  # 3,000 events: three times the subscriber's queue
    assert app[RUNTIME].store.last_seq == 3000
    stalled.close()


def test_tail_prints_matching_events(eventd: Callable[..., EventdProcess]) -> None:
    ev = eventd()
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventd.cli",
            "tail",
            "--config",
            str(ev.config_path),
            "--type",
            "track",
            "--event",
            "Wanted",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()
    watchdog = threading.Timer(30, tail.kill)  # a hung tail fails the test, not the suite

    def send() -> None:
        # tail subscribes asynchronously: keep sending until it has printed a line
        while not stop.is_set():
            ev.post("/v1/identify", {"userId": "u"}, key=ev.write_key)
            ev.post("/v1/track", {"userId": "u", "event": "Unwanted"}, key=ev.write_key)
            ev.post("/v1/track", {"userId": "u", "event": "Wanted"}, key=ev.write_key)
            stop.wait(0.05)

    sender = threading.Thread(target=send, daemon=True)
    watchdog.start()
    sender.start()
    try:
        assert tail.stdout is not None
        lines = [tail.stdout.readline() for _ in range(3)]
        items = [json.loads(line) for line in lines]
        assert all(i["message"]["event"] == "Wanted" for i in items)
        assert all(i["message"]["type"] == "track" and i["source"] == "app" for i in items)
    finally:
        stop.set()
        watchdog.cancel()
        tail.kill()
        tail.wait()
        sender.join(10)


def test_cli_verbs_say_when_the_daemon_is_not_running(
    eventd: Callable[..., EventdProcess],
) -> None:
    ev = eventd()
    ev.kill()
    done = ev.cli("status")
    assert done.returncode == 1
    assert f"eventd is not running at http://127.0.0.1:{ev.port}" in done.stderr


async def test_retention_keeps_the_database_size_level(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    cfg = config(tmp_path, storage={"retention": "0s", "dead_letter_retention": "0s"})
    app = create_app(cfg)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    sizes = []
    for _ in range(12):
        for _ in range(10):
            await track(client, 200, pad=200)
        await rt.dispatcher.drain()
        for service in rt.services:  # the identity graph reads the log too: retention waits
            if isinstance(service, IdentityService):
                await service.drain()
        swept = await rt.retention.sweep()
        assert swept["events"] > 0
        # The outbox's own files: the dedup set beside it (in stats().size too) keeps
        # its keys for storage.dedup_window, not for retention.
        db = tmp_path / "e.db"
        sizes.append(sum(p.stat().st_size for p in (db, db.with_name("e.db-wal")) if p.exists()))
    total = rt.store.last_seq
    assert total == 12 * 2000
    left = await asyncio.to_thread(_count, tmp_path / "e.db")
    assert left == 1, "only the newest event is kept (its seq must not be reused)"
    # After the first rounds, freed pages are reused: the file stops growing.
    assert max(sizes[3:]) <= sizes[2] * 1.1, sizes
    print("database bytes after each round:", sizes)


def _count(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


async def test_retention_keeps_what_a_destination_has_not_passed(
    tmp_path: Path, aiohttp_client: MakeClient, sink: Sink
) -> None:
    sink.default = 500  # the destination is down
    cfg = config(
        tmp_path,
        storage={"retention": "0s"},
        destinations={
            "down": {"type": "webhook", "retry_backoff": "10s", "settings": {"url": sink.url}}
        },
    )
    app = create_app(cfg, destination_types())
    client = await aiohttp_client(app)
    await track(client, 50)
    await asyncio.to_thread(sink.wait_for, lambda s: len(s.attempts) >= 1)
    swept = await app[RUNTIME].retention.sweep()
    assert swept["events"] == 0
    assert await asyncio.to_thread(_count, tmp_path / "e.db") == 50


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_serve_logs_never_show_keys_or_tokens(
    eventd: Callable[..., EventdProcess], fmt: str
) -> None:
    ev = eventd()
    ev.post("/v1/track", {"userId": "u", "event": "E"}, key=ev.write_key)
    ev.post("/v1/track", {"userId": "u", "event": "E"}, key="wk_wrong_key")
    ev.admin("GET", "/admin/destinations")
    ev.stop()
    log = ev.log()
    assert ev.write_key not in log and ev.admin_token not in log and "wk_wrong_key" not in log
    for line in log.splitlines():
        json.loads(line)  # one JSON object per line


def test_library_log_lines_are_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    # nats-py logs a failed reconnect through stdlib logging, with a traceback: under
    # the JSON format that is one JSON line too (the traceback a field of it).
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("json", "info")
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except ConnectionRefusedError as exc:
            logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=exc)
        logging.getLogger("aiohttp.access").debug("below the level: not written")
        out = capsys.readouterr().out.splitlines()
    finally:  # this process's other tests log as they did
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()
    assert len(out) == 1, out
    line = json.loads(out[0])
    assert line["event"] == "nats: encountered error"
    assert line["logger"] == "nats.aio.client" and line["level"] == "error"
    assert "ConnectionRefusedError" in line["exception"]
