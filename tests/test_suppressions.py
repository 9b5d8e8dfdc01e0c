"""Suppressed users and erasure, end to end through real eventd subprocesses and sinks,
plus the pending-erasure rule on a real SQLite store."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventd.store import MemoryStore, SqliteStore, StorageUnavailable, now_ms
from eventd.suppressions import Suppressions
from tests.contract.fixtures import counters, skipped
from tests.harness import EventdProcess, Sink

Start = Callable[..., EventdProcess]
MakeSink = Callable[..., Sink]


def hook(sink: Sink, **extra: Any) -> dict[str, Any]:
    return {
        "type": "webhook",
        "retry_backoff": "50ms",
        "retry_backoff_max": "200ms",
        "settings": {"url": sink.url + "/hook", "batch": True},
        **extra,
    }


def send(ev: EventdProcess, user_id: str, n: int, **fields: Any) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    batch = [
        {"type": "identify", "userId": user_id, "messageId": i, "traits": {"n": k}, **fields}
        for k, i in enumerate(ids)
    ]
    status, _ = ev.post("/v1/batch", {"batch": batch}, key=ev.write_key)
    assert status == 200
    return ids


def stored_users(ev: EventdProcess) -> dict[str, int]:
    return dict(ev.query("SELECT user_id, count(*) FROM events GROUP BY user_id"))


def test_a_suppressed_user_is_acknowledged_not_stored_until_unsuppressed(
    eventd: Start, sink: Sink
) -> None:
    ev = eventd({"destinations": {"hook": hook(sink)}})
    added = ev.cli("suppressions", "add", "alice")
    assert added.returncode == 0 and "suppressed: alice" in added.stdout

    alice = send(ev, "alice", 5)  # 200: an SDK must not retry these
    bob = send(ev, "bob", 3)
    ev.drain()
    assert stored_users(ev) == {"bob": 3}
    assert set(sink.message_ids()) == set(bob)
    assert counters(ev, "eventd_suppressed_events") == [({"source": "app"}, 5.0)]

    listed = ev.cli("suppressions", "list")
    assert listed.returncode == 0 and "alice" in listed.stdout

    # Kept across a restart.
    ev.stop()
    ev.start()
    send(ev, "alice", 2)
    assert stored_users(ev) == {"bob": 3}

    removed = ev.cli("suppressions", "remove", "alice")
    assert removed.returncode == 0 and "no longer suppressed: alice" in removed.stdout
    again = send(ev, "alice", 4)
    ev.drain()
    assert stored_users(ev) == {"bob": 3, "alice": 4}
    assert set(sink.message_ids()) == {*bob, *again}
    assert not set(alice) & set(sink.message_ids())
    assert ev.cli("suppressions", "list").stdout.strip() == "no suppressed users"


def test_waiting_and_retried_events_of_a_suppressed_user_are_not_delivered(
    eventd: Start, sink: Sink
) -> None:
    sink.default = 503  # the destination is down: everything waits or retries
    ev = eventd({"destinations": {"hook": hook(sink, batch_size=10, max_in_flight=1)}})
    carol = send(ev, "carol", 25)
    dave = send(ev, "dave", 5)
    sink.wait_for(lambda s: len(s.attempts) >= 2)  # a batch is being retried

    ev.admin("POST", "/admin/suppressions", {"user_id": "carol"})
    sink.default = 200
    ev.drain()
    assert set(sink.message_ids()) == set(dave)
    assert skipped(ev, "hook") == {"suppressed user": 25}
    # Suppression without erase keeps what is stored.
    assert stored_users(ev) == {"carol": 25, "dave": 5}
    assert not set(carol) & set(sink.message_ids())


def test_erase_deletes_events_and_dead_letters_down_to_the_file_bytes(
    eventd: Start, make_sink: MakeSink
) -> None:
    ok, refusing = make_sink(), make_sink(default=400)
    ev = eventd({"destinations": {"ok": hook(ok), "refusing": hook(refusing)}})
    marker = f"erin-{uuid.uuid4().hex}@example.com"
    erin = send(ev, "erin", 20, context={"traits": {"email": marker}})
    frank = send(ev, "frank", 5)
    ev.drain()
    assert len(ev.admin("GET", "/admin/dead-letters?destination=refusing")) == 25

    erased = ev.cli("suppressions", "add", "erin", "--erase")
    assert erased.returncode == 0, erased.stderr
    assert "erased events: 20, erasure done" in erased.stdout
    [record] = ev.admin("GET", "/admin/suppressions")
    assert record["user_id"] == "erin" and record["erase"] is True
    assert record["erased_events"] == 20 and record["erased_at"] is not None

    assert stored_users(ev) == {"frank": 5}
    dead = ev.admin("GET", "/admin/dead-letters?destination=refusing")
    assert {d["message_id"] for d in dead} == set(frank)
    # Nothing of erin is left in the database file or its WAL.
    files = [ev.db_path, ev.db_path.with_name(ev.db_path.name + "-wal")]
    assert all(marker.encode() not in f.read_bytes() for f in files if f.exists())
    assert set(ok.message_ids()) == {*erin, *frank}  # delivered before: theirs to delete
    assert "erin" not in ev.log()  # a userId is personal data: not logged


def test_admin_answers_bad_requests_clearly(eventd: Start) -> None:
    ev = eventd()
    for body, message in (
        ({}, "user_id: expected the userId, a non-empty string"),
        ({"user_id": ""}, "user_id: expected the userId, a non-empty string"),
        ({"user_id": 5}, "user_id: expected the userId, a non-empty string"),
        ({"user_id": "x", "erase": "yes"}, "erase: expected true or false"),
    ):
        status, answer = ev.post(
            "/admin/suppressions",
            body,
            headers={"Authorization": f"Bearer {ev.admin_token}"},
        )
        assert status == 400 and answer["message"] == message
    assert ev.admin("GET", "/admin/suppressions") == []
    assert ev.admin("POST", "/admin/suppressions/remove", {"user_id": "nobody"}) == {
        "removed": False
    }


@pytest.fixture
async def outbox(tmp_path: Path) -> Any:
    box = SqliteStore(tmp_path / "eventd.db")
    await box.open()
    yield box
    await box.close()


def row(seq_hint: int, user_id: str) -> tuple[str, str, str, None, str, None, int, bytes]:
    msg = {"type": "identify", "userId": user_id, "messageId": f"m{seq_hint}"}
    return ("web", f"m{seq_hint}", "identify", None, user_id, None, now_ms(), orjson.dumps(msg))


async def test_the_newest_event_waits_so_its_seq_is_never_handed_out_again(
    outbox: SqliteStore,
) -> None:
    sup = Suppressions(outbox)
    await sup.load()
    await outbox.append([row(1, "gina"), row(2, "hal"), row(3, "gina")])
    record = await sup.suppress("gina", erase=True)
    # seq 3 is the newest: deleting it would let SQLite give seq 3 to the next event.
    assert record["erased_events"] == 1 and record["erased_at"] is None
    assert await sup.erase_pending() == 0

    await outbox.append([row(4, "hal")])
    assert await sup.erase_pending() == 1
    record = await sup.get("gina")
    assert record is not None and record["erased_events"] == 2 and record["erased_at"]
    left = await outbox.read(0, 10)
    assert [(e.seq, e.user_id) for e in left] == [(2, "hal"), (4, "hal")]
    await sup.close()


async def test_a_suppression_the_store_refuses_leaves_the_user_delivered() -> None:
    """A suppression the store did not keep (refused: StorageUnavailable, or a backend
    without suppressions) was answered as an error, so it must not go on skipping
    the user's events in memory; one already kept stays."""

    class Refusing(MemoryStore):
        async def suppress(self, user_id: str, erase: bool) -> None:
            raise StorageUnavailable("disk full")

    store = Refusing()
    await store.open()
    sup = Suppressions(store)
    await sup.load()
    sup.user_ids.add("kept")  # as if suppressed before
    for user_id in ("new", "kept"):
        with pytest.raises(StorageUnavailable):
            await sup.suppress(user_id, erase=False)
    assert sup.user_ids == {"kept"}
    await store.close()
