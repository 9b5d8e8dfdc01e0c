"""The ``s3`` destination: the object layout on its own, then real ``eventd serve``
processes archiving into moto's S3 server (a subprocess checking SigV4 signatures
and IAM policies), read back with boto3 the way a data team would.

Two received days: eventd stamps ``received_at`` with its own clock, so the
archive fixture stores events with a first eventd, moves the first half of them
back one day in its SQLite file while it is stopped (the column and the body's
``receivedAt``), then starts eventd again with the s3 destination and replays
the log into it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eventd_plugins.s3 import S3, s3_error
from eventd_plugins.s3.layout import day, group, object_body

from eventd import OK, Event, Permanent, Response, Retry
from eventd.config import ConfigError
from tests.contract.fixtures import counters, dead_letters, destination
from tests.contract.s3_server import MotoS3
from tests.harness import EventdProcess, Received, Sink, running

Start = Callable[..., EventdProcess]
DAY_MS = 86_400_000
KEY = re.compile(
    r"^segment-logs/(?P<source>[a-z]+)/(?P<day>\d{4}-\d{2}-\d{2})/"
    r"(?P<ms>\d+)-(?P<first>\d+)-(?P<last>\d+)\.jsonl\.gz$"
)
TYPES = ("identify", "track", "page", "screen", "group", "alias")
SOURCES = {"web": "wk_s3_web_0123456789", "ios": "wk_s3_ios_0123456789"}


# -- unit: the layout ------------------------------------------------------------------


def ev(seq: int, source: str, received_at: int, body: bytes | None = None) -> Event:
    return Event(seq, source, received_at, body=body or b'{"messageId":"m%d"}' % seq)


T0 = 1_714_607_999_000  # 2024-05-01T23:59:59Z


def test_a_batch_is_grouped_by_source_and_utc_day_in_seq_order() -> None:
    batch = [
        ev(10, "web", T0),
        ev(11, "ios", T0),
        ev(12, "web", T0 + 500),
        ev(13, "web", T0 + 1000),  # 2024-05-02T00:00:00Z: the next day
        ev(14, "ios", T0 + 2000),
        ev(15, "web", T0 + 999),
    ]
    groups = group(batch)
    assert [(g.source, g.day, [e.seq for e in g.events], g.indexes) for g in groups] == [
        ("web", "2024-05-01", [10, 12, 15], [0, 2, 5]),
        ("ios", "2024-05-01", [11], [1]),
        ("web", "2024-05-02", [13], [3]),
        ("ios", "2024-05-02", [14], [4]),
    ]
    assert [g.key("segment-logs", True) for g in groups] == [
        "segment-logs/web/2024-05-01/1714607999000-10-15.jsonl.gz",
        "segment-logs/ios/2024-05-01/1714607999000-11-11.jsonl.gz",
        "segment-logs/web/2024-05-02/1714608000000-13-13.jsonl.gz",
        "segment-logs/ios/2024-05-02/1714608001000-14-14.jsonl.gz",
    ]
    assert groups[0].key("", False) == "web/2024-05-01/1714607999000-10-15.jsonl"
    assert groups[0].key("archive/eventd", True).startswith("archive/eventd/web/2024-05-01/")
    assert day(0) == "1970-01-01"


def test_an_object_is_the_stored_bodies_one_per_line_gzipped_the_same_every_time() -> None:
    bodies = [b'{"b":1,"a":"caf\xc3\xa9"}', b'{"type":"track","event":"E"}']
    events = [ev(i, "web", T0, b) for i, b in enumerate(bodies, 1)]
    data = object_body(events, gzipped=True)
    assert gzip.decompress(data) == bodies[0] + b"\n" + bodies[1] + b"\n"
    assert object_body(events, gzipped=True) == data  # no timestamp in the gzip header
    assert object_body(events, gzipped=False) == gzip.decompress(data)
    # A body with a raw newline (not what the outbox stores) must not split a line.
    odd = Event(3, "web", T0, body=b'{\n"a": 1}')
    assert object_body([odd], gzipped=False) == b'{"a":1}\n'


def test_s3_error_documents_are_parsed_for_code_and_message() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code>'
        b"<Message>The request signature we calculated does not match &amp; so on</Message>"
        b"<AWSAccessKeyId>AKIA</AWSAccessKeyId><StringToSign>x</StringToSign></Error>"
    )
    assert s3_error(body) == (
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match & so on",
    )
    assert s3_error(b"<html>bad gateway</html>") == (None, "")


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> Response:
    body = f"<Error><Code>{code}</Code><Message>said {code}</Message></Error>".encode()
    return Response(status, headers or {}, body)


async def test_answers_map_to_outcomes_with_reasons_naming_the_setting() -> None:
    settings = {"bucket": "arch-bucket", "access_key_id": "AKIA1", "secret_access_key": "s" * 40}
    S3.validate_settings("archive", settings)
    async with aiohttp.ClientSession() as session:
        d = S3("archive", settings, session)
    key = "segment-logs/web/2024-05-01/1-1-1.jsonl.gz"
    assert d.answer(Response(200, {}, b""), key) == OK
    for code, status in (
        ("SlowDown", 503),
        ("InternalError", 500),
        ("RequestTimeout", 400),
        ("ServiceUnavailable", 503),
    ):
        outcome = d.answer(_error(status, code, {"Retry-After": "7"}), key)
        assert isinstance(outcome, Retry) and code in outcome.reason, code
        assert outcome.after == 7.0
    hints = {
        "NoSuchBucket": "bucket 'arch-bucket' does not exist",
        "InvalidBucketName": "destinations.archive.settings.bucket",
        "InvalidAccessKeyId": "destinations.archive.settings.access_key_id",
        "SignatureDoesNotMatch": "secret_access_key",
        "AccessDenied": "s3:PutObject on arn:aws:s3:::arch-bucket/segment-logs/*",
        "EntityTooLarge": "",
    }
    for code, hint in hints.items():
        outcome = d.answer(_error(403 if code == "AccessDenied" else 400, code), key)
        assert isinstance(outcome, Permanent) and code in outcome.reason, code
        assert hint in outcome.reason, outcome.reason
    wrong_region = d.answer(
        _error(400, "AuthorizationHeaderMalformed", {"x-amz-bucket-region": "eu-west-1"}), key
    )
    assert isinstance(wrong_region, Permanent)
    assert "eu-west-1" in wrong_region.reason and "settings.region" in wrong_region.reason
    # Without an S3 error document (a proxy): the usual HTTP contract.
    assert isinstance(d.answer(Response(502, {}, b"<html>"), key), Retry)
    assert isinstance(d.answer(Response(413, {}, b"too big"), key), Permanent)


async def test_object_urls_are_path_style_at_an_endpoint_else_virtual_hosted() -> None:
    async with aiohttp.ClientSession() as session:
        assert S3("a", {"bucket": "b-1"}, session).base_url == (
            "https://b-1.s3.us-east-1.amazonaws.com"
        )
        assert S3("a", {"bucket": "my.logs", "region": "eu-west-3"}, session).base_url == (
            "https://s3.eu-west-3.amazonaws.com/my.logs"
        )
        local = S3("a", {"bucket": "b-1", "endpoint": "http://127.0.0.1:9000/"}, session)
        assert local.base_url == "http://127.0.0.1:9000/b-1"
        assert (local.max_batch_events, local.max_batch_bytes) == (10_000, 8_000_000)


async def test_each_object_has_its_own_outcome_and_every_put_is_signed() -> None:
    def answer(r: Received) -> Any:
        if "/ios/2024-05-02/" in r.path:
            return 404  # no S3 error document: a plain 4xx
        return 503 if "/ios/" in r.path else 200

    batch = [
        ev(1, "web", T0),
        ev(2, "ios", T0),
        ev(3, "web", T0 + 1000),
        ev(4, "ios", T0 + 1000),
        ev(5, "web", T0 + 2000),
    ]
    with running(Sink(handler=answer)) as sink:
        settings = {
            "bucket": "arch-bucket",
            "endpoint": sink.url,
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "session_token": "FwoGZXIvYXdzEXAMPLETOKEN",
            "server_side_encryption": "AES256",
        }
        async with aiohttp.ClientSession() as session:
            outcomes = await S3("archive", settings, session).deliver(batch)
    assert isinstance(outcomes, list)
    assert [type(o).__name__ for o in outcomes] == ["Ok", "Retry", "Ok", "Permanent", "Ok"]
    assert sorted(r.path for r in sink.attempts) == [
        "/arch-bucket/segment-logs/ios/2024-05-01/1714607999000-2-2.jsonl.gz",
        "/arch-bucket/segment-logs/ios/2024-05-02/1714608000000-4-4.jsonl.gz",
        "/arch-bucket/segment-logs/web/2024-05-01/1714607999000-1-1.jsonl.gz",
        "/arch-bucket/segment-logs/web/2024-05-02/1714608000000-3-5.jsonl.gz",
    ]
    for r in sink.attempts:
        h = {k.lower(): v for k, v in r.headers.items()}
        assert (
            h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20")
            and "/us-east-1/s3/aws4_request" in h["authorization"]
        )
        assert h["x-amz-content-sha256"] == hashlib.sha256(r.body).hexdigest()
        assert h["content-md5"] == base64.b64encode(hashlib.md5(r.body).digest()).decode()
        assert h["x-amz-security-token"] == settings["session_token"]
        assert h["x-amz-server-side-encryption"] == "AES256"
        assert h["content-type"] == "application/gzip"
        assert gzip.decompress(r.body).count(b"\n") == (2 if "-3-5." in r.path else 1)


# -- end to end, against moto -------------------------------------------------------------


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


def s3_settings(moto: MotoS3, bucket: str, **more: Any) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "endpoint": moto.url,
        "access_key_id": moto.keys.access_key_id,
        "secret_access_key": moto.keys.secret_access_key,
        **more,
    }


def messages(source: str, n: int) -> list[dict[str, Any]]:
    """``n`` calls from ``source``, every type in turn, each with a messageId of its own."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = TYPES[i % len(TYPES)]
        m: dict[str, Any] = {
            "type": kind,
            "messageId": f"{source}-{i:04d}-{os.urandom(4).hex()}",
            "userId": f"user-{i % 17}",
            "anonymousId": f"anon-{i % 23}",
            "context": {"library": {"name": "test", "version": "1"}, "n": i},
        }
        if kind == "track":
            m["event"] = "Order Completed"
            m["properties"] = {"revenue": i / 4, "currency": "EUR", "note": "café ☕"}
        elif kind in ("page", "screen"):
            m["name"] = f"Screen {i % 5}"
        elif kind == "identify":
            m["traits"] = {"email": f"u{i}@example.com", "plan": "pro"}
        elif kind == "group":
            m["groupId"] = f"acme-{i % 3}"
            m["traits"] = {"tier": "gold"}
        else:
            m["previousId"] = m["anonymousId"]
        out.append(m)
    return out


def post(ev: EventdProcess, source: str, batch: list[dict[str, Any]]) -> None:
    for start in range(0, len(batch), 100):
        chunk = batch[start : start + 100]
        status, body = ev.post("/v1/batch", {"batch": chunk}, key=SOURCES[source])
        assert (status, body) == (200, {"success": True})


def sources() -> dict[str, Any]:
    return {name: {"write_key": key} for name, key in SOURCES.items()}


@dataclass
class Stored:
    seq: int
    source: str
    received_at: int
    body: bytes

    @property
    def message_id(self) -> str:
        return str(json.loads(self.body)["messageId"])


def stored(ev: EventdProcess) -> dict[str, Stored]:
    """messageId -> the event as eventd stored it."""
    rows = ev.query("SELECT seq, source, received_at, body FROM events ORDER BY seq")
    events = [Stored(seq, source, at, bytes(body)) for seq, source, at, body in rows]
    return {e.message_id: e for e in events}


def move_back_one_day(db: Path, last_seq: int) -> None:
    """Events up to ``last_seq`` as if received a day earlier (eventd stopped)."""
    conn = sqlite3.connect(db)
    with conn:
        rows = list(
            conn.execute("SELECT seq, received_at, body FROM events WHERE seq <= ?", (last_seq,))
        )
        for seq, received_at, body in rows:
            message = json.loads(body)
            at = datetime.fromisoformat(message["receivedAt"])
            assert message["receivedAt"] == at.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            )
            message["receivedAt"] = (
                (at - timedelta(days=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
            conn.execute(
                "UPDATE events SET received_at = ?, body = ? WHERE seq = ?",
                (
                    received_at - DAY_MS,
                    json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode(),
                    seq,
                ),
            )
    conn.close()


def key_parts(key: str) -> dict[str, str]:
    match = KEY.match(key)
    assert match, key
    return match.groupdict()


def lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def check_layout(objects: dict[str, bytes], events: dict[str, Stored]) -> Counter[str]:
    """Every object named and filled as documented; returns messageId -> times archived."""
    seen: Counter[str] = Counter()
    for key, data in objects.items():
        match = KEY.match(key)
        assert match, key
        inside = [events[json.loads(line)["messageId"]] for line in lines(data)]
        assert lines(data) == [e.body for e in inside]  # as stored, byte for byte
        assert [e.seq for e in inside] == sorted(e.seq for e in inside)
        assert {e.source for e in inside} == {match["source"]}
        assert {day(e.received_at) for e in inside} == {match["day"]}
        assert (int(match["ms"]), int(match["first"]), int(match["last"])) == (
            inside[0].received_at,
            inside[0].seq,
            inside[-1].seq,
        )
        seen.update(e.message_id for e in inside)
    return seen


def expected_keys(events: dict[str, Stored], page: int) -> set[str]:
    """The keys a replay from seq 1 in pages of ``page`` events writes."""
    keys = set()
    ordered = sorted(events.values(), key=lambda e: e.seq)
    for start in range(0, len(ordered), page):
        batch = [ev(e.seq, e.source, e.received_at, e.body) for e in ordered[start : start + page]]
        keys |= {g.key("segment-logs", True) for g in group(batch)}
    return keys


PER_SOURCE = 300
BATCH = 250


@dataclass
class Archive:
    ev: EventdProcess
    bucket: str
    sent: set[str]


@pytest.fixture(scope="module")
def archive(moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """600 events from two sources over two received days, archived by a replay."""
    tmp = tmp_path_factory.mktemp("archive")
    bucket = moto.bucket("eventd-archive")
    first = EventdProcess(tmp, {"sources": sources()}).start()
    sent: set[str] = set()
    try:
        web, ios = messages("web", PER_SOURCE), messages("ios", PER_SOURCE)
        for i in range(0, PER_SOURCE, 100):  # the sources interleaved, as live traffic is
            post(first, "web", web[i : i + 100])
            post(first, "ios", ios[i : i + 100])
        sent = {m["messageId"] for m in web + ios}
    finally:
        assert first.stop() == 0
    move_back_one_day(first.db_path, PER_SOURCE)
    config = {
        "sources": sources(),
        "destinations": {"archive": destination("s3", s3_settings(moto, bucket), batch_size=BATCH)},
    }
    ev = EventdProcess(tmp, config).start()
    try:
        replayed = ev.cli("replay", "archive", "--since", "3d")
        assert replayed.returncode == 0, replayed.stderr
        assert f"replaying {2 * PER_SOURCE} events" in replayed.stdout
        ev.drain()
        yield Archive(ev, bucket, sent)
    finally:
        ev.kill()


def test_every_event_of_two_sources_over_two_days_is_archived_once_as_stored(
    archive: Archive, moto: MotoS3
) -> None:
    events = stored(archive.ev)
    assert set(events) == archive.sent and len(events) == 2 * PER_SOURCE
    objects = moto.objects(archive.bucket)
    seen = check_layout(objects, events)
    assert seen == Counter(dict.fromkeys(archive.sent, 1))
    # One object per (source, day) of each replayed page of 250 events: the sources
    # were posted in turns of 100 (web 1-100, ios 101-200, ...) and day one is seq
    # 1-300, so pages 1-250, 251-500 and 501-600 make 2 + 3 + 1 objects.
    assert set(objects) == expected_keys(events, BATCH)
    assert len(objects) == 6, sorted(objects)
    named = [key_parts(k) for k in objects]
    assert len({p["day"] for p in named}) == 2
    assert {p["source"] for p in named} == {"web", "ios"}
    types = Counter(json.loads(b)["type"] for data in objects.values() for b in lines(data))
    assert types == Counter(dict.fromkeys(TYPES, 2 * PER_SOURCE // len(TYPES)))
    assert dead_letters(archive.ev, "archive") == {}


def test_a_replay_rewrites_the_same_keys_without_duplicating_an_event(
    archive: Archive, moto: MotoS3
) -> None:
    before = moto.objects(archive.bucket)
    [status] = archive.ev.admin("GET", "/admin/destinations")
    answer = archive.ev.admin("POST", "/admin/replay", {"destination": "archive", "since": "3d"})
    assert answer["events"] == 2 * PER_SOURCE
    archive.ev.drain()
    [again] = archive.ev.admin("GET", "/admin/destinations")
    assert again["delivered"] - status["delivered"] == 2 * PER_SOURCE  # rewritten, not skipped
    after = moto.objects(archive.bucket)
    assert after == before  # same keys, same bytes
    seen = check_layout(after, stored(archive.ev))
    assert max(seen.values()) == 1 and set(seen) == archive.sent


def test_a_missing_bucket_or_bad_credentials_dead_letter_without_the_secret(
    eventd: Start, moto: MotoS3
) -> None:
    bucket = moto.bucket("eventd-creds")
    wrong_secret = "Wr0ngSecretThatMustNeverBeShown" + moto.keys.secret_access_key[:8]
    unknown_secret = "An0therSecretNeverToBeShown0123456789abcd"
    nobody = moto.user_without_policy("nobody")
    dests = {
        "nobucket": s3_settings(moto, "eventd-no-such-bucket"),
        "badsecret": s3_settings(moto, bucket, secret_access_key=wrong_secret),
        "badkey": s3_settings(
            moto, bucket, access_key_id="AKIA0000000000UNKNOWN", secret_access_key=unknown_secret
        ),
        "denied": s3_settings(
            moto,
            bucket,
            access_key_id=nobody.access_key_id,
            secret_access_key=nobody.secret_access_key,
        ),
    }
    ev = eventd(
        {
            "sources": sources(),
            "destinations": {n: destination("s3", s, batch_size=50) for n, s in dests.items()},
        }
    )
    batch = messages("web", 60)
    post(ev, "web", batch)
    ev.drain()
    ids = {m["messageId"] for m in batch}
    expected = {
        "nobucket": "NoSuchBucket",
        "badsecret": "SignatureDoesNotMatch",
        "badkey": "InvalidAccessKeyId",
        "denied": "AccessDenied",
    }
    secrets = [wrong_secret, unknown_secret, nobody.secret_access_key, moto.keys.secret_access_key]
    for name, code in expected.items():
        dead = dead_letters(ev, name)
        assert set(dead) == ids, name
        for reason in set(dead.values()):
            assert code in reason, reason
            assert f"destinations.{name}.settings" in reason, reason
            assert not any(s in reason for s in secrets), reason
    assert "eventd-no-such-bucket" in next(iter(dead_letters(ev, "nobucket").values()))
    assert "s3:PutObject" in next(iter(dead_letters(ev, "denied").values()))
    log = ev.log()
    assert "dead-lettered" in log
    assert not any(s in log for s in secrets)
    assert moto.objects(bucket) == {}


def chain_env(monkeypatch: pytest.MonkeyPatch, tmp: Path, **env: str) -> None:
    """eventd's environment (a subprocess inherits it): only the given AWS variables, no
    shared files, no instance metadata service."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_without_keys_in_the_settings_the_aws_credential_chain_signs(
    eventd: Start, moto: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bucket = moto.bucket("eventd-chain")
    chain_env(
        monkeypatch,
        tmp_path,
        AWS_ACCESS_KEY_ID=moto.keys.access_key_id,
        AWS_SECRET_ACCESS_KEY=moto.keys.secret_access_key,
    )
    settings = {"bucket": bucket, "endpoint": moto.url}  # no keys: the chain's
    ev = eventd({"sources": sources(), "destinations": {"archive": destination("s3", settings)}})
    batch = messages("ios", 30)
    post(ev, "ios", batch)
    ev.drain()
    seen = check_layout(moto.objects(bucket), stored(ev))
    assert seen == Counter(m["messageId"] for m in batch)


def test_when_the_chain_has_no_credentials_events_are_dead_lettered_saying_so(
    eventd: Start, moto: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chain_env(monkeypatch, tmp_path)
    settings = {"bucket": moto.bucket("eventd-nochain"), "endpoint": moto.url}
    ev = eventd({"sources": sources(), "destinations": {"archive": destination("s3", settings)}})
    post(ev, "web", messages("web", 5))
    ev.drain()
    reasons = set(dead_letters(ev, "archive").values())
    assert len(dead_letters(ev, "archive")) == 5
    assert len(reasons) == 1 and "no AWS credentials" in reasons.pop()


def test_while_s3_does_not_answer_events_are_retried_then_archived_once(
    eventd: Start, tmp_path: Path
) -> None:
    s3 = MotoS3(tmp_path / "moto.log", auth=False).start()
    try:
        bucket = s3.bucket("eventd-outage")
        s3.pause()  # S3 stops answering: requests are accepted, never answered
        settings = {**s3_settings(s3, bucket), "timeout": 0.5}
        ev = eventd(
            {
                "sources": sources(),
                "destinations": {"archive": destination("s3", settings, batch_size=100)},
            }
        )
        web, ios = messages("web", 200), messages("ios", 200)
        post(ev, "web", web)
        post(ev, "ios", ios)
        deadline = time.monotonic() + 30
        while not any(
            labels["destination"] == "archive" and n >= 400
            for labels, n in counters(ev, "eventd_retried_events")
        ):
            assert time.monotonic() < deadline, "eventd never retried"
            time.sleep(0.05)  # polling the retry counter: the signal itself
        [status] = ev.admin("GET", "/admin/destinations")
        assert status["delivered"] == 0 and "no response within 0.5s" in status["last_error"]
        s3.resume()
        ev.drain()
        events = stored(ev)
        sent = {m["messageId"] for m in web + ios}
        assert set(events) == sent
        # Requests that timed out may still reach S3 when it wakes up: they wrote the keys
        # the retries wrote again, so no event is archived twice.
        seen = check_layout(s3.objects(bucket), events)
        assert seen == Counter(dict.fromkeys(sent, 1))
        assert dead_letters(ev, "archive") == {}
    finally:
        s3.resume()
        s3.stop()


# -- settings -----------------------------------------------------------------------------


def check(
    tmp: Path, settings: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[int, str]:
    """``eventd check`` of a config with one s3 destination: (exit code, output)."""
    tmp.mkdir(parents=True, exist_ok=True)
    proc = EventdProcess(tmp, {"destinations": {"archive": {"type": "s3", "settings": settings}}})
    done = subprocess.run(
        [sys.executable, "-m", "eventd.cli", "check", "--config", str(proc.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout + done.stderr


SECRET = "TopSecretValue/ThatMustNotBePrinted0123"
BAD_SETTINGS: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"bucket": "My_Bucket"},
        ["destinations.archive.settings.bucket = 'My_Bucket'", "lowercase letters"],
    ),
    ({"bucket": "ab"}, ["settings.bucket = 'ab'"]),
    ({"bucket": "logs..eventd"}, ["settings.bucket = 'logs..eventd'", "expected an S3 bucket"]),
    ({"bucket": "192.168.1.10"}, ["settings.bucket = '192.168.1.10'", "IP address"]),
    ({"bucket": "b-1", "region": "mars"}, ["settings.region = 'mars'", "an AWS region"]),
    ({"bucket": "b-1", "region": "Auto", "endpoint": "https://r2.example"}, ["region = 'Auto'"]),
    ({"bucket": "b-1", "prefix": "/logs/"}, ["settings.prefix = '/logs/'", "leading or trail"]),
    ({"bucket": "b-1", "prefix": "a/../b"}, ["settings.prefix = 'a/../b'"]),
    ({"bucket": "b-1", "gzip": "yes"}, ["settings.gzip = 'yes'"]),
    ({"bucket": "b-1", "server_side_encryption": "rot13"}, ["server_side_encryption = 'rot13'"]),
    ({"bucket": "b-1", "endpoint": "ftp://s3.local"}, ["settings.endpoint = 'ftp://s3.local'"]),
    ({"bucket": "b-1", "timeout": 0}, ["settings.timeout = 0"]),
    ({"bucket": "b-1", "max_batch_events": 0}, ["settings.max_batch_events = 0"]),
    ({"bucket": "b-1", "max_batch_bytes": 10**12}, ["max_batch_bytes = 1000000000000"]),
    ({"bucket": "b-1", "bukket": "x"}, ["destinations.archive.settings", "'bukket'"]),
    (
        {"bucket": "b-1", "access_key_id": "AKIAEXAMPLE"},
        ["settings.secret_access_key: missing", "go together"],
    ),
    (
        {"bucket": "b-1", "secret_access_key": SECRET},
        ["settings.access_key_id: missing", "go together"],
    ),
    ({"bucket": "b-1", "session_token": SECRET}, ["settings.session_token = ***"]),
    (
        {"bucket": "b-1", "access_key_id": "AKIAEXAMPLE", "secret_access_key": 42},
        ["settings.secret_access_key = ***"],
    ),
    ({"secret_access_key": SECRET, "access_key_id": "AKIAEXAMPLE"}, ["'bucket'"]),
]


def rejected(settings: dict[str, Any]) -> str:
    """What eventd says of these settings at ``eventd check`` and at start."""
    with pytest.raises(ConfigError) as raised:
        S3.validate_settings("archive", settings)
    return str(raised.value)


@pytest.mark.parametrize(("settings", "wanted"), BAD_SETTINGS)
def test_bad_settings_are_refused_naming_the_key_and_value(
    settings: dict[str, Any], wanted: list[str]
) -> None:
    said = rejected(settings)
    assert all(text in said for text in wanted), said
    assert SECRET not in said


def test_an_s3_compatible_store_may_have_a_region_of_its_own() -> None:
    for region in ("auto", "nyc3", "garage"):
        S3.validate_settings("archive", {"bucket": "b-1", "region": region, "endpoint": "http://x"})


def test_eventd_check_names_the_key_and_value_and_never_prints_a_secret(tmp_path: Path) -> None:
    # The same validation through the CLI, a few cases in parallel subprocesses.
    cases = [
        c
        for c in BAD_SETTINGS
        if c[0].get("bucket") in ("My_Bucket", "logs..eventd") or "secret_access_key" in c[0]
    ]
    assert len(cases) == 5
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda c: check(tmp_path / str(c[0]), c[1][0]), enumerate(cases)))
    for (settings, wanted), (code, out) in zip(cases, results, strict=True):
        assert code == 1, (settings, out)
        assert all(text in out for text in wanted), (settings, out)
        assert SECRET not in out, out


def test_good_settings_pass_eventd_check(tmp_path: Path) -> None:
    code, out = check(
        tmp_path,
        {
            "bucket": "acme.events-archive",
            "region": "eu-west-1",
            "prefix": "segment-logs/prod",
            "gzip": False,
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": SECRET,
            "session_token": SECRET + "tok",
            "server_side_encryption": "aws:kms",
            "max_batch_events": 5000,
            "max_batch_bytes": 4_000_000,
            "endpoint": "https://s3.internal.example",
            "timeout": 30,
        },
    )
    assert code == 0 and ": ok (" in out, out


def test_without_botocore_eventd_runs_other_destinations_and_s3_says_what_to_install(
    tmp_path: Path,
) -> None:
    # A botocore package that cannot be imported, ahead of the installed one.
    fake = tmp_path / "no-botocore" / "botocore"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'botocore'\")\n")
    env = {"PYTHONPATH": str(fake.parent)}
    code, out = check(tmp_path / "s3", {"bucket": "b-1"}, env)
    assert code == 1 and "destinations.archive" in out and "pip install 'eventd[s3]'" in out, out
    (tmp_path / "hook").mkdir()
    webhook = {"type": "webhook", "settings": {"url": "http://127.0.0.1:9/"}}
    hook = EventdProcess(tmp_path / "hook", {"destinations": {"hook": webhook}})
    done = subprocess.run(
        [sys.executable, "-m", "eventd.cli", "check", "--config", str(hook.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr


def test_the_plugin_module_imports_without_botocore(tmp_path: Path) -> None:
    fake = tmp_path / "botocore"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'botocore'\")\n")
    script = (
        "import eventd_plugins.s3 as m\n"
        "try:\n"
        "    m.S3.validate_settings('archive', {'bucket': 'b-1'})\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ConfigError destinations.archive:"), done.stdout
