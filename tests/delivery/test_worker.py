"""eventd.delivery.worker over the in-memory store: orchestration only (the policy
has its own tests), checked by messageId: delivered, dead-lettered, cursor saved,
redrive and replay through their own loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import orjson
import pytest

from eventd import OK, Destination, Event, Outcome, Permanent, Retry
from eventd.config import DestinationConfig
from eventd.delivery.worker import Worker
from eventd.metrics import Metrics
from eventd.store import EventRow, MemoryStore, now_ms
from eventd.store.cursor_feed import lag


class Scripted(Destination):
    """Refuses messageIds starting with ``bad`` (permanent) and answers Retry to each
    event's first attempt; remembers what it took."""

    type_name = "scripted"
    max_batch_events = 3

    def __init__(self, name: str, settings: dict[str, object], s: aiohttp.ClientSession) -> None:
        super().__init__(name, settings, s)
        self.tried: set[str] = set()
        self.took: list[str] = []
        self.refuse = True

    async def deliver(self, batch: Sequence[Event]) -> list[Outcome]:
        out: list[Outcome] = []
        for e in batch:
            mid = e.message["messageId"]
            if mid.startswith("bad") and self.refuse:
                out.append(Permanent(f"refused {mid}"))
            elif mid not in self.tried:
                self.tried.add(mid)
                out.append(Retry("first try fails"))
            else:
                self.took.append(mid)
                out.append(OK)
        return out


def rows(*mids: str) -> list[EventRow]:
    return [
        ("web", m, "track", "E", "u", None, now_ms(), orjson.dumps({"messageId": m})) for m in mids
    ]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def until_idle(worker: Worker) -> None:
    worker.wake()
    await asyncio.wait_for(worker.idle.wait(), 10)


async def test_retries_dead_letters_advances_and_saves_the_cursor(
    session: aiohttp.ClientSession,
) -> None:
    store = MemoryStore()
    await store.open()
    await store.append(rows("old"))  # before the destination existed: not sent
    dest = Scripted("s", {}, session)
    config = DestinationConfig(name="s", type="scripted", retry_backoff=0.001)
    worker = Worker(config, dest, store, Metrics())
    await worker.start()
    assert await store.cursor("s") == 1
    run = asyncio.create_task(worker.run())
    try:
        await store.append(rows("a", "bad1", "b", "c", "bad2"))
        await until_idle(worker)
        assert sorted(dest.took) == ["a", "b", "c"]
        dead = await store.dead_letters(destination="s")
        # batches run concurrently (max_in_flight): the order of dead letters is theirs
        assert sorted((d.message_id, d.error) for d in dead) == [
            ("bad1", "refused bad1"),
            ("bad2", "refused bad2"),
        ]
        assert worker.cursor == store.last_seq == 6

        # redrive: the destination takes them now, through the redrive loop
        dest.refuse = False
        assert await store.request_redrive("s") == 2
        await until_idle(worker)
        assert await store.dead_letters() == []
        assert sorted(dest.took) == ["a", "b", "bad1", "bad2", "c"]

        # replay: a stored range again, "old" included
        dest.took.clear()
        await store.request_replay("s", 1, 3)
        await until_idle(worker)
        assert await store.next_replay("s") is None
        assert sorted(dest.took) == ["a", "bad1", "old"]
    finally:
        await worker.stop(0)
        run.cancel()
    assert await store.cursor("s") == 6  # saved at stop
    assert worker.delivered == 3 + 2 + 3


def test_lag_is_events_after_the_cursor_and_the_age_of_the_oldest() -> None:
    assert lag(10, 10, None, 5000) == (0, 0.0)
    assert lag(10, 4, 1000, 3500) == (6, 2.5)
    assert lag(10, 12, None, 0) == (0, 0.0)  # a cursor ahead (retention reused seqs)


class Recording(Destination):
    """Refuses messageIds starting with ``bad``; remembers (messageId, userId) it took."""

    type_name = "recording"

    def __init__(self, name: str, settings: dict[str, object], s: aiohttp.ClientSession) -> None:
        super().__init__(name, settings, s)
        self.took: list[tuple[str, str | None]] = []

    async def deliver(self, batch: Sequence[Event]) -> list[Outcome]:
        out: list[Outcome] = []
        for e in batch:
            mid = e.message["messageId"]
            if mid.startswith("bad"):
                out.append(Permanent(f"refused {mid}"))
            else:
                self.took.append((mid, e.message.get("userId")))
                out.append(OK)
        return out


async def test_a_stitched_batch_is_delivered_stitched_and_settled_as_stored(
    session: aiohttp.ClientSession,
) -> None:
    """stitch (identity's resolve_identity) runs first: suppression sees the resolved
    userId, the destination gets the stitched events, dead letters keep the stored ones;
    a stitch that cannot answer (None) leaves the batch unfinished."""
    store = MemoryStore()
    await store.open()
    anonymous = [
        ("web", m, "track", "E", None, "anon", now_ms(), orjson.dumps({"messageId": m}))
        for m in ("a", "bad1", "hidden", "b")
    ]
    await store.append(anonymous)
    batch = await store.read(0, 10)
    ready = False

    async def stitch(config: DestinationConfig, events: list[Event]) -> list[Event] | None:
        if not ready:
            return None  # the identity graph stopped before it got there
        out = []
        for e in events:
            user = "gone" if e.message["messageId"] == "hidden" else "u1"
            msg = {**e.message, "userId": user}
            out.append(Event(e.seq, e.source, e.received_at, msg, user_id=user))
        return out

    dest = Recording("r", {}, session)
    config = DestinationConfig(name="r", type="recording", resolve_identity=True)
    worker = Worker(config, dest, store, Metrics(), suppressed={"gone"}, stitch=stitch)

    settled = await worker.settle(batch, lambda e: e.received_at)
    assert not settled.finished and dest.took == [] and settled.ok == []

    ready = True
    settled = await worker.settle(batch, lambda e: e.received_at)
    assert settled.finished
    assert dest.took == [("a", "u1"), ("b", "u1")]
    assert settled.skipped == 1  # "hidden": its resolved user is suppressed
    assert sorted(e.message["messageId"] for e in settled.ok) == ["a", "b", "hidden"]
    assert [(e.message, why) for e, why in settled.dead] == [
        ({"messageId": "bad1"}, "refused bad1")  # the stored event, not the stitched one
    ]
    assert all(e.user_id is None and "userId" not in e.message for e in settled.ok)
