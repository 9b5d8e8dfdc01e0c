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
from eventd.delivery.dispatcher import lag
from eventd.delivery.worker import Worker
from eventd.metrics import Metrics
from eventd.store import EventRow, MemoryStore, now_ms


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
