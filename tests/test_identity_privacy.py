"""Erasure with the identity graph (eventd suppressions add USER --erase), and eventd with
identity off, through a real eventd subprocess."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.contract.fixtures import destination
from tests.harness import EventdProcess, Sink, admin_get

Start = Callable[..., EventdProcess]


def send(ev: EventdProcess, *messages: dict[str, Any]) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in messages]
    batch = [{"messageId": i, **m} for i, m in zip(ids, messages, strict=True)]
    status, _ = ev.post("/v1/batch", {"batch": batch}, key=ev.write_key)
    assert status == 200
    return ids


def get(ev: EventdProcess, path: str) -> tuple[int, Any]:
    return admin_get(ev.url + path, ev.admin_token)


def test_erase_deletes_the_profile_its_identities_and_its_anonymous_events(eventd: Start) -> None:
    ev = eventd()
    t = iter(f"2026-11-01T10:00:{s:02d}.000Z" for s in range(60))
    alice_anon = send(
        ev,
        {"type": "track", "event": "Viewed", "anonymousId": "laptop", "timestamp": next(t)},
        {"type": "track", "event": "Viewed", "anonymousId": "phone", "timestamp": next(t)},
    )
    send(
        ev,
        {"type": "identify", "userId": "alice", "anonymousId": "laptop", "timestamp": next(t)},
        {"type": "identify", "userId": "alice", "anonymousId": "phone", "timestamp": next(t)},
    )
    alice_anon += send(
        ev, {"type": "track", "event": "Chose", "anonymousId": "laptop", "timestamp": next(t)}
    )
    send(ev, {"type": "identify", "userId": "bob", "anonymousId": "laptop", "timestamp": next(t)})
    bob = send(
        ev,
        {"type": "track", "event": "Chose", "anonymousId": "laptop", "timestamp": next(t)},
        {"type": "track", "event": "Last", "userId": "bob", "timestamp": next(t)},
    )
    erased = subprocess.run(
        [sys.executable, "-m", "eventd.cli", "suppressions", "add", "alice", "--erase",
         "--config", str(ev.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert erased.returncode == 0, erased.stderr
    assert "erased events: 5, erasure done" in erased.stdout  # 2 identifies + 3 anonymous
    left = {m["messageId"] for m in ev.stored()}
    assert not left & set(alice_anon)
    assert set(bob) <= left
    for id in ("alice", "phone"):
        status, body = get(ev, f"/admin/profiles/{id}")
        assert (status, body["code"]) == (404, "not_found")
    status, found = get(ev, "/admin/profiles/laptop")
    assert (found["user_ids"], found["anonymous_ids"]) == (["bob"], ["laptop"])
    # alice's links are gone from identity.db, bob's stay
    conn = sqlite3.connect(ev.db_path.parent / "identity.db")
    try:
        rows = sorted(conn.execute("SELECT anonymous_id, user_id FROM links"))
    finally:
        conn.close()
    assert rows == [("", "bob"), ("laptop", "bob")]


def test_an_erasure_forwards_every_identity_of_the_profile(eventd: Start, sink: Sink) -> None:
    """The profile's other userId and its anonymousId are in no event of the erased
    userId: only the identity graph knows them (the erasure reads the profile once the
    graph has applied every stored event, before erasing it), and the deletion request
    carries them."""
    hook = destination("webhook", {"url": sink.url + "/hook", "forward_deletions": True})
    ev = eventd({"destinations": {"hook": hook}})
    send(
        ev,
        {"type": "identify", "userId": "carol-old", "anonymousId": "tablet"},
        {"type": "alias", "previousId": "carol-old", "userId": "carol"},  # merges the two
        {"type": "track", "event": "Chose", "userId": "carol"},
        {"type": "identify", "userId": "dave", "anonymousId": "desk"},
    )
    added = ev.cli("suppressions", "add", "carol", "--erase")
    assert added.returncode == 0, added.stderr
    shown = ev.cli("suppressions", "show", "carol", "--wait", "60", "--json")
    assert shown.returncode == 0, shown.stderr
    [deletion] = json.loads(shown.stdout)["deletions"]
    assert deletion["state"] == "done", deletion
    assert (deletion["user_ids"], deletion["anonymous_ids"]) == (["carol", "carol-old"], ["tablet"])
    deletes = [r.json() for r in sink.received if r.json().get("type") == "delete"]
    assert [(d["userId"], d["anonymousIds"]) for d in deletes] == [
        ("carol", ["tablet"]),
        ("carol-old", ["tablet"]),
    ]
    # and the profile was read before the identity graph erased it
    status, body = get(ev, "/admin/profiles/carol")
    assert (status, body["code"]) == (404, "not_found")


@pytest.mark.parametrize("path", ["/admin/profiles/u1", "/admin/profiles/u1/events"])
def test_with_identity_off_the_profile_api_says_so(eventd: Start, path: str) -> None:
    ev = eventd({"identity": {"enabled": False}})
    send(ev, {"type": "identify", "userId": "u1", "anonymousId": "a1"})
    assert get(ev, path) == (
        404,
        {"code": "identity_disabled", "message": "the identity graph is off: set identity.enabled"},
    )
    assert not (ev.db_path.parent / "identity.db").exists()


def test_bad_profile_requests_are_clear_4xx(eventd: Start) -> None:
    ev = eventd()
    for query, message in (
        ("?limit=0", "limit='0': expected an integer from 1 to 1000"),
        ("?limit=x", "limit='x': expected an integer"),
        ("?before=-1", "before='-1': expected an integer from 1"),
        ("?kind=email", "kind='email': expected 'user_id' or 'anonymous_id'"),
    ):
        status, body = get(ev, f"/admin/profiles/u1/events{query}")
        assert (status, body["code"]) == (400, "bad_request"), query
        assert body["message"].startswith(message), body


def test_sigterm_to_the_whole_process_group_is_a_clean_exit(tmp_path: Path) -> None:
    """systemd (KillMode=control-group), `timeout` and a terminal's Ctrl-C signal every
    process of the group: the identity writer must outlive that signal until eventd has
    stopped it, or shut-down dies with a traceback and a non-zero exit."""
    ev = EventdProcess(tmp_path, {"identity": {"enabled": True}}).start(new_session=True)
    assert ev.proc is not None
    ev.post("/v1/identify", {"userId": "u1", "anonymousId": "a1"})
    os.killpg(ev.proc.pid, signal.SIGTERM)
    code = ev.proc.wait(30)
    ev.proc = None
    log = ev.log()
    assert code == 0, log
    assert "Traceback" not in log and "identity graph stopped" in log
