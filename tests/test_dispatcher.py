"""Delivery end to end: real eventd subprocesses delivering to scripted sinks.

Counts by messageId at the sink; waits on /admin/drain and the sink's condition.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.contract.fixtures import skipped
from tests.harness import EventdProcess, Received, Sink

Start = Callable[..., EventdProcess]
MakeSink = Callable[..., Sink]


def hook(sink: Sink, **extra: Any) -> dict[str, Any]:
    settings = {"url": sink.url + "/hook", **extra.pop("settings", {})}
    return {"type": "webhook", "retry_backoff": "50ms", "settings": settings, **extra}


def send(ev: EventdProcess, n: int, key: str | None = None, **fields: Any) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for start in range(0, n, 500):
        batch = [
            {"type": "track", "userId": "u", "event": "E", "messageId": i, **fields}
            for i in ids[start : start + 500]
        ]
        status, _ = ev.post("/v1/batch", {"batch": batch}, key=key or ev.write_key)
        assert status == 200
    return ids


def test_every_event_reaches_every_routed_destination(eventd: Start, make_sink: MakeSink) -> None:
    a, b, only_ios = make_sink(), make_sink(), make_sink()
    ev = eventd(
        {
            "sources": {"app": {"write_key": "wk_app"}, "ios": {"write_key": "wk_ios"}},
            "destinations": {
                "a": hook(a, settings={"batch": True}),
                "b": hook(b),
                "only_ios": hook(only_ios, sources=["ios"]),
            },
        }
    )
    plain = send(ev, 30, key="wk_app")
    ios = send(ev, 10, key="wk_ios")
    not_b = send(ev, 5, key="wk_app", integrations={"b": False})
    only_a = send(ev, 5, key="wk_app", integrations={"All": False, "a": True})
    none = send(ev, 5, key="wk_app", integrations={"All": False})
    no_webhooks = send(ev, 5, key="wk_app", integrations={"Webhooks": False})
    ev.drain()
    assert set(a.message_ids()) == {*plain, *ios, *not_b, *only_a}
    assert set(b.message_ids()) == {*plain, *ios}
    assert set(only_ios.message_ids()) == set(ios)
    assert max(a.message_ids().values()) == 1 and max(b.message_ids().values()) == 1
    assert not (set(a.message_ids()) & {*none, *no_webhooks})


def test_filters_keep_types_and_events_out_and_count_them(
    eventd: Start, make_sink: MakeSink
) -> None:
    crm, orders, quiet = make_sink(), make_sink(), make_sink()
    ev = eventd(
        {
            "destinations": {
                "crm": hook(crm, types=["identify", "group"]),
                "orders": hook(orders, types=["track"], events=["Order Completed"]),
                "quiet": hook(quiet, exclude_events=["Heartbeat"]),
            }
        }
    )
    identifies = send(ev, 7, type="identify", traits={"plan": "pro"})
    groups = send(ev, 3, type="group", groupId="g1")
    pages = send(ev, 4, type="page", name="Home")
    completed = send(ev, 6, event="Order Completed")
    heartbeats = send(ev, 9, event="Heartbeat")
    ev.drain()
    assert set(crm.message_ids()) == {*identifies, *groups}
    assert set(orders.message_ids()) == set(completed)
    assert set(quiet.message_ids()) == {*identifies, *groups, *pages, *completed}
    assert not set(heartbeats) & {*crm.message_ids(), *orders.message_ids(), *quiet.message_ids()}
    status = {d["name"]: d for d in ev.admin("GET", "/admin/destinations")}
    assert status["crm"]["skipped"] == 4 + 6 + 9 and status["crm"]["delivered"] == 10
    assert status["orders"]["skipped"] == 7 + 3 + 4 + 9 and status["orders"]["delivered"] == 6
    assert status["quiet"]["skipped"] == 9 and status["quiet"]["delivered"] == 20
    assert skipped(ev, "crm") == {"filtered: type": 19}
    assert skipped(ev, "orders") == {
        "filtered: type": 14,
        "filtered: event not in events": 9,
    }
    assert skipped(ev, "quiet") == {"filtered: event in exclude_events": 9}
    # A replay goes through the same filters.
    assert ev.cli("replay", "orders", "--since", "1h").returncode == 0
    orders.wait_for(lambda s: all(c == 2 for c in s.message_ids().values()))
    ev.drain()
    assert set(orders.message_ids()) == set(completed)


def test_scripted_failures_retry_dead_letter_and_redrive(eventd: Start, sink: Sink) -> None:
    sink.script.extend([500, 500, 200, 400, (429, {"Retry-After": "1"}), 200, "drop", 200])
    ev = eventd({"destinations": {"hook": hook(sink, max_in_flight=1)}})
    first = send(ev, 1)  # 500, 500, 200
    ev.drain()
    second = send(ev, 1)  # 400: permanent
    ev.drain()
    t0 = time.monotonic()
    third = send(ev, 1)  # 429 + Retry-After: 1, then 200
    ev.drain()
    assert time.monotonic() - t0 >= 0.9, "Retry-After honoured"
    fourth = send(ev, 1)  # connection dropped, then 200
    ev.drain()
    assert set(sink.message_ids()) == {*first, *third, *fourth}

    [dead] = ev.admin("GET", "/admin/dead-letters?destination=hook")
    assert dead["message_id"] == second[0] and dead["error"].startswith("HTTP 400")
    shown = ev.admin("GET", f"/admin/dead-letters/{dead['id']}")
    assert shown["event"]["messageId"] == second[0]

    listed = ev.cli("dead-letters", "list", "--destination", "hook")
    assert listed.returncode == 0 and second[0] in listed.stdout
    status = ev.cli("status")
    assert status.returncode == 0 and "hook" in status.stdout

    redrive = ev.cli("dead-letters", "redrive", "--destination", "hook")
    assert redrive.returncode == 0 and "redriven: 1" in redrive.stdout
    sink.wait_for(lambda s: second[0] in s.message_ids())
    ev.drain()
    assert ev.admin("GET", "/admin/dead-letters") == []


def test_hang_past_timeout_is_retried(eventd: Start, sink: Sink) -> None:
    sink.script.append("hang")
    ev = eventd({"destinations": {"hook": hook(sink, settings={"timeout": 0.5})}})
    ids = send(ev, 1)
    ev.drain()
    assert sink.message_ids() == {ids[0]: 1} and len(sink.attempts) == 2


def test_retry_max_age_dead_letters_and_purge(eventd: Start, sink: Sink) -> None:
    sink.default = 503
    ev = eventd({"destinations": {"hook": hook(sink, retry_max_age="1s")}})
    ids = send(ev, 3)
    ev.drain()
    dead = ev.admin("GET", "/admin/dead-letters")
    assert {d["message_id"] for d in dead} == set(ids)
    assert all("retry_max_age passed" in d["error"] for d in dead)
    purged = ev.cli("dead-letters", "purge", "--destination", "hook")
    assert "purged: 3" in purged.stdout and ev.admin("GET", "/admin/dead-letters") == []


def test_a_down_destination_does_not_delay_another(eventd: Start, make_sink: MakeSink) -> None:
    def run(b_up: bool) -> tuple[float, Sink, Sink]:
        a, b = make_sink(), make_sink(default=200 if b_up else 500)
        ev = eventd(
            {
                "destinations": {
                    "a": hook(a, settings={"batch": True}),
                    "b": hook(b, settings={"batch": True}),
                }
            },
            subdir=f"b_up_{b_up}",
        )
        t0 = time.monotonic()
        ids = send(ev, 3000)
        a.wait_for(lambda s: len(s.message_ids()) == len(ids))
        return time.monotonic() - t0, a, b

    with_b_up, _, _ = run(True)
    with_b_down, a, b_down = run(False)
    assert len(b_down.received) == 0 and len(b_down.attempts) >= 1
    assert len(a.message_ids()) == 3000
    assert with_b_down < with_b_up * 2 + 1.0, (with_b_up, with_b_down)


def test_rate_limit_holds_within_10_percent(eventd: Start, sink: Sink) -> None:
    ev = eventd(
        {
            "destinations": {
                "hook": hook(sink, rate_limit=100.0, batch_size=10, settings={"batch": True})
            }
        }
    )
    send(ev, 700)
    sink.wait_for(lambda s: sum(len(r.json()) for r in s.received) >= 700, timeout=30)
    times = [t for t, n in _arrivals(sink) for _ in range(n)]
    start = times[0]
    in_window = sum(1 for t in times if t - start < 5.0)
    assert 450 <= in_window <= 550, in_window


def _arrivals(sink: Sink) -> list[tuple[float, int]]:
    return [(r.at, len(r.json())) for r in sink.received]


def test_kill_9_during_delivery_resends_only_in_flight(eventd: Start, sink: Sink) -> None:
    gate: dict[str, Any] = {"n": 0}

    def slow_after_half(rec: Received) -> Any:
        gate["n"] += 1
        return "hang" if gate["n"] > 50 else 200  # stall mid-way, like a slow destination

    sink.handler = slow_after_half
    dest = hook(sink, batch_size=100, max_in_flight=4, settings={"batch": True})
    ev = eventd({"destinations": {"hook": dest}})
    ids = send(ev, 10_000)
    sink.wait_for(lambda s: len(s.attempts) >= 54)  # 50 delivered + 4 hung in flight
    before = set(sink.message_ids())
    ev.kill()
    sink.handler = None
    ev.start()
    ev.drain()
    counts = sink.message_ids()
    assert set(counts) == set(ids), "every event reached the sink"
    duplicates = {m for m, c in counts.items() if c > 1}
    assert duplicates <= before, "only events delivered before the kill repeat"
    assert len(duplicates) <= 4 * 100, "at most the batches in flight"


def test_sigterm_finishes_and_restart_repeats_nothing(eventd: Start, sink: Sink) -> None:
    ev = eventd({"destinations": {"hook": hook(sink, settings={"batch": True})}})
    ids = send(ev, 2000)
    ev.drain()
    assert ev.stop() == 0
    ev.start()
    more = send(ev, 10)
    ev.drain()
    counts = sink.message_ids()
    assert set(counts) == {*ids, *more} and max(counts.values()) == 1


def test_replay_resends_one_destination_only(eventd: Start, make_sink: MakeSink) -> None:
    a, b = make_sink(), make_sink()
    ev = eventd({"destinations": {"a": hook(a), "b": hook(b)}})
    ids = send(ev, 20)
    ev.drain()
    done = ev.cli("replay", "a", "--since", "1h")
    assert done.returncode == 0 and "replaying 20 events" in done.stdout
    a.wait_for(lambda s: all(c == 2 for c in s.message_ids().values()))
    ev.drain()
    assert set(a.message_ids()) == set(ids)
    assert all(c == 1 for c in b.message_ids().values())


@pytest.fixture
def echo_plugin() -> Iterator[None]:
    pkg = Path(__file__).parent / "plugin_pkg"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", str(pkg)], check=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "eventd-echo"], check=False)


def test_third_party_plugin_is_discovered_and_delivers(
    eventd: Start, echo_plugin: None, tmp_path: Path
) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "eventd.cli", "plugins"], capture_output=True, text=True, check=True
    )
    assert "echo  (eventd_echo)" in listed.stdout
    out = tmp_path / "echo.txt"
    ev = eventd({"destinations": {"e": {"type": "echo", "settings": {"path": str(out)}}}})
    ids = send(ev, 25)
    ev.drain()
    assert out.read_text().split() == ids
    assert json.loads(json.dumps(ev.admin("GET", "/admin/destinations")))[0]["delivered"] == 25


def test_transforms_change_drop_and_dead_letter_without_touching_the_store(
    eventd: Start, echo_plugin: None, make_sink: MakeSink
) -> None:
    """First-party (anonymize_ip) and third-party (an installed package's, one async)
    transforms, chained; another destination gets the events as stored."""
    changed, plain = make_sink(), make_sink()
    chain = ["anonymize_ip", "rename_signup", "tag_team"]
    ev = eventd(
        {"destinations": {"changed": hook(changed, transforms=chain), "plain": hook(plain)}}
    )
    ip = {"context": {"ip": "203.0.113.77"}}
    signups = send(ev, 5, event="signup", **ip)
    internal = send(ev, 3, properties={"internal": True})
    boom = send(ev, 2, properties={"boom": True})
    ev.drain()

    got = {m["messageId"]: m for r in changed.received for m in [r.json()]}
    assert set(got) == set(signups)
    for m in got.values():
        assert m["event"] == "Signed Up"
        assert m["properties"]["team"] == "growth"
        assert m["context"]["ip"] == "203.0.113.0"
    assert set(plain.message_ids()) == {*signups, *internal, *boom}
    stored = {m["messageId"]: m for m in ev.stored()}
    assert all(stored[i]["event"] == "signup" for i in signups)
    assert all(stored[i]["context"]["ip"] == "203.0.113.77" for i in signups)

    assert skipped(ev, "changed") == {"dropped by a transform": 3}
    dead = ev.admin("GET", "/admin/dead-letters?destination=changed")
    assert {d["message_id"] for d in dead} == set(boom)
    assert all(
        d["error"] == "transform 'tag_team' raised ValueError: boom is not allowed" for d in dead
    )
    # The dead letter keeps the event as stored, so a redrive transforms it again.
    shown = ev.admin("GET", f"/admin/dead-letters/{dead[0]['id']}")
    assert shown["event"]["properties"] == {"boom": True}

    assert ev.cli("check").returncode == 0
    ev.config["destinations"]["changed"]["transforms"] = ["tag_team", "nope"]
    ev.config_path.write_text(tomli_w.dumps(ev.config))
    refused = ev.cli("check")
    assert refused.returncode == 1
    assert "destinations.changed.transforms = 'nope': expected an installed transform" in (
        refused.stderr
    )
    assert "anonymize_ip" in refused.stderr and "tag_team" in refused.stderr
