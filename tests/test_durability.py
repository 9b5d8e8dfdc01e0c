"""Nothing acknowledged is lost: kill -9 mid-stream, and a disk that fills up.

Counts by messageId: every event that got a 200 must be in the outbox afterwards.
"""

from __future__ import annotations

import collections
import http.client
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.contract.fixtures import counters
from tests.harness import EventdProcess, admin_get, basic, fill_disk


class Sender(threading.Thread):
    """Posts batches over one keep-alive connection until told to stop or the server dies."""

    def __init__(self, ev: EventdProcess, batch: int = 20, payload: int = 100) -> None:
        super().__init__(daemon=True)
        self.ev, self.batch, self.payload = ev, batch, payload
        self.acked: set[str] = set()
        self.refused: set[str] = set()  # answered, but not 200
        self.statuses: list[tuple[int, Any]] = []
        self.stop = threading.Event()
        self.progress = threading.Condition()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.ev.port, timeout=30)
        headers = {"Authorization": basic(self.ev.write_key), "Content-Type": "application/json"}
        while not self.stop.is_set():
            ids = [str(uuid.uuid4()) for _ in range(self.batch)]
            body = json.dumps(
                {
                    "batch": [
                        {
                            "type": "track",
                            "userId": "u",
                            "event": "E",
                            "messageId": i,
                            "properties": {"pad": "x" * self.payload},
                        }
                        for i in ids
                    ]
                }
            )
            try:
                conn.request("POST", "/v1/batch", body, headers)
                resp = conn.getresponse()
                answer = json.loads(resp.read() or b"{}")
            except (OSError, http.client.HTTPException):
                return  # the server went away: whatever was not answered was not acked
            with self.progress:
                self.statuses.append((resp.status, answer))
                (self.acked if resp.status == 200 else self.refused).update(ids)
                self.progress.notify_all()

    def wait_until(self, predicate: Callable[[Sender], bool], timeout: float = 60) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: predicate(self), timeout), "no progress"


def stored_ids(ev: EventdProcess) -> set[str]:
    return {m for (m,) in ev.query("SELECT message_id FROM events")}


def test_kill_9_while_clients_send_loses_no_acknowledged_event(
    eventd: Callable[..., EventdProcess],
) -> None:
    ev = eventd({"storage": {"synchronous": "full"}})
    senders = [Sender(ev) for _ in range(8)]
    for s in senders:
        s.start()
    for s in senders:
        s.wait_until(lambda s: len(s.acked) >= 400)
    ev.kill()
    for s in senders:
        s.stop.set()
        s.join(30)
    acked = set().union(*(s.acked for s in senders))
    assert len(acked) >= 8 * 400

    ev.start()  # same config, same database file
    stored = stored_ids(ev)
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    assert len(ev.query("SELECT 1 FROM events")) == len(stored), "no duplicates"


def children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone while we looked
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_kill_9_of_eventd_ends_the_identity_writer_too(
    eventd: Callable[..., EventdProcess],
) -> None:
    """The identity writer ignores SIGTERM (only its parent stops it), so it must end by
    itself when that parent is killed: an orphan would hold identity.db's write lock
    against the restarted eventd, and its memory, for good."""
    ev = eventd()
    assert ev.proc is not None
    assert ev.post("/v1/identify", {"userId": "u", "anonymousId": "a"}, key=ev.write_key)[0] == 200
    poll(lambda: metric(ev, "eventd_identity_running"), lambda v: v == 1, within=60)
    writers = poll(lambda: children(ev.proc.pid), bool, within=60)  # type: ignore[union-attr]
    ev.kill()
    poll(lambda: {p for p in writers if Path(f"/proc/{p}").exists()}, lambda v: not v, 30)

    ev.start()  # the restarted graph opens identity.db: no orphan holds it
    poll(lambda: metric(ev, "eventd_identity_running"), lambda v: v == 1, within=60)


def test_full_disk_answers_503_loses_nothing_and_recovers(
    eventd: Callable[..., EventdProcess], tiny_disk: Path
) -> None:
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))  # space we give back later
    # The identity graph is on (the default): identity.db shares the small disk.
    ev = eventd({"storage": {"path": str(tiny_disk / "eventd.db"), "synchronous": "full"}})
    sender = Sender(ev, batch=20, payload=400)
    sender.start()
    sender.wait_until(lambda s: any(st == 503 for st, _ in s.statuses))
    sender.stop.set()
    sender.join(30)

    refusals = [answer for status, answer in sender.statuses if status != 200]
    assert refusals and all(a["code"] == "storage_unavailable" for a in refusals)
    assert "full" in refusals[0]["message"]
    assert sender.acked and stored_ids(ev) >= sender.acked
    assert not (stored_ids(ev) & sender.refused), "a refused request stored nothing"

    filler.unlink()  # the operator frees space; eventd recovers by itself
    again = Sender(ev, batch=20, payload=400)
    again.start()
    again.wait_until(lambda s: len(s.acked) >= 200)
    again.stop.set()
    again.join(30)
    assert ev.post("/v1/track", {"userId": "u", "event": "after"}, key=ev.write_key)[0] == 200

    assert ev.stop() == 0  # a clean SIGTERM exit even after the disk was full
    ev.start()
    stored = stored_ids(ev)
    assert sender.acked <= stored and again.acked <= stored


def metric(ev: EventdProcess, sample: str) -> float | None:
    """One sample's value from /metrics (``name{labels}`` as Prometheus prints it)."""
    req = urllib.request.Request(
        ev.url + "/metrics", headers={"Authorization": f"Bearer {ev.admin_token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
    return None


def poll(ask: Callable[[], Any], done: Callable[[Any], bool], within: float) -> Any:
    """Ask until the answer is done (a condition eventd reaches by itself, e.g. after a
    retry's backoff); returns the answer, or fails with the last one."""
    deadline = time.monotonic() + within
    while True:
        answer = ask()
        if done(answer):
            return answer
        assert time.monotonic() < deadline, f"not reached in {within} s: {answer!r}"
        time.sleep(0.1)  # polling eventd's own answer: the signal itself


def test_restarted_on_a_full_disk_it_serves_and_the_identity_graph_catches_up(
    eventd: Callable[..., EventdProcess], tiny_disk: Path
) -> None:
    """The identity graph never holds the front door: eventd restarted on a disk with
    no byte free answers /health, acknowledges nothing it cannot store, says why the
    graph is not running; once space is back the graph catches up from its cursor, and
    the profile counts every stored event exactly once."""
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))
    ev = eventd({"storage": {"path": str(tiny_disk / "eventd.db"), "synchronous": "full"}})
    before = [
        ("/v1/track", {"anonymousId": "visitor", "event": "Viewed Cars"}),
        ("/v1/identify", {"anonymousId": "visitor", "userId": "u", "traits": {"make": "Volvo"}}),
    ]
    for path, body in before:
        assert ev.post(path, body, key=ev.write_key)[0] == 200
    sender = Sender(ev, batch=20, payload=400)
    sender.start()
    sender.wait_until(lambda s: any(st == 503 for st, _ in s.statuses))
    sender.stop.set()
    sender.join(30)
    assert ev.stop() == 0

    fill_disk(tiny_disk / "filler2")  # not a byte left for eventd.db or identity.db
    ev.start()  # returns once /health answers
    full = Sender(ev, batch=20, payload=400)
    full.start()
    full.wait_until(lambda s: any(st == 503 for st, _ in s.statuses))
    full.stop.set()
    full.join(30)
    assert all(a["code"] == "storage_unavailable" for st, a in full.statuses if st != 200)
    poll(lambda: metric(ev, 'eventd_identity_failures_total{reason="disk_full"}'),
         lambda n: n is not None and n >= 1, 60)  # fmt: skip
    assert metric(ev, "eventd_identity_running") == 0
    status, answer = admin_get(ev.url + "/admin/profiles/u", ev.admin_token)
    assert (status, answer["code"]) == (503, "identity_unavailable")
    assert "full" in answer["message"]

    filler.unlink()  # the operator frees space
    (tiny_disk / "filler2").unlink()
    again = Sender(ev, batch=20, payload=400)
    again.start()
    again.wait_until(lambda s: len(s.acked) >= 100)
    again.stop.set()
    again.join(30)

    acked = sender.acked | full.acked | again.acked
    refused = sender.refused | full.refused | again.refused
    stored = ev.stored()
    ids = {m["messageId"] for m in stored}
    assert acked <= ids, f"{len(acked - ids)} acknowledged events lost"
    assert not (ids & refused), "a refused request stored nothing"
    # The profile, computed from the log itself: every stored event is u's (the
    # visitor's track merged in by the identify), counted once.
    by_type = collections.Counter(m["type"] for m in stored)
    status, profile = poll(
        lambda: admin_get(ev.url + "/admin/profiles/u", ev.admin_token),
        lambda a: a[0] == 200 and a[1]["event_count"] >= len(stored),
        90,  # the retry's backoff (at most 30 s) and the catch-up
    )
    assert (profile["user_ids"], profile["anonymous_ids"]) == (["u"], ["visitor"])
    assert (profile["event_count"], profile["events_by_type"]) == (len(stored), dict(by_type))
    assert profile["traits"] == {"make": "Volvo"}
    assert metric(ev, "eventd_identity_running") == 1
    assert ev.stop() == 0


def test_overload_answers_429_stores_nothing_of_it_and_recovers(tmp_path: Path) -> None:
    """A store that cannot keep up (here: another process holds SQLite's write lock)
    makes ingest shed load with 429 + Retry-After once server.max_pending_events wait,
    instead of queueing without bound; the waiting events are committed afterwards."""

    def batch(n: int) -> tuple[list[str], dict[str, Any]]:
        ids = [str(uuid.uuid4()) for _ in range(n)]
        items = [{"type": "track", "event": "E", "userId": "u", "messageId": i} for i in ids]
        return ids, {"batch": items}

    def pending(ev: EventdProcess) -> float:
        req = urllib.request.Request(
            ev.url + "/metrics", headers={"Authorization": f"Bearer {ev.admin_token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("eventd_pending_events "):
                    return float(line.split()[1])
        raise AssertionError("no eventd_pending_events gauge")

    with EventdProcess(tmp_path, {"server": {"max_pending_events": 150}}) as ev:
        first_ids, first = batch(100)
        lock = sqlite3.connect(ev.db_path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # eventd's writer now waits (busy_timeout 5 s)
        answers: list[int] = []
        waiting = threading.Thread(
            target=lambda: answers.append(ev.post("/v1/batch", first, key=ev.write_key)[0])
        )
        waiting.start()
        deadline = time.monotonic() + 4
        while pending(ev) < 100:  # the gauge is the signal that the writer is stuck
            assert time.monotonic() < deadline, "the first batch never queued"
        shed_ids, shed = batch(100)
        req = urllib.request.Request(
            ev.url + "/v1/batch",
            data=json.dumps(shed).encode(),
            headers={"Authorization": basic(ev.write_key), "Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("expected 429")
        except urllib.error.HTTPError as exc:
            assert exc.code == 429 and exc.headers["Retry-After"] == "1"
            assert json.loads(exc.read())["code"] == "overloaded"
        lock.execute("ROLLBACK")
        lock.close()
        waiting.join(30)
        assert answers == [200]

        stored = {m["messageId"] for m in ev.stored()}
        assert stored == set(first_ids)  # the shed batch stored nothing
        assert ev.post("/v1/batch", shed, key=ev.write_key)[0] == 200  # the client's retry
        assert {m["messageId"] for m in ev.stored()} == {*first_ids, *shed_ids}
        rejected = {labels["reason"]: v for labels, v in counters(ev, "eventd_rejected_events")}
        assert rejected == {"overloaded": 1.0}
        assert pending(ev) == 0
