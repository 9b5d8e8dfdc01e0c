"""eventd.destination's base class: how a destination reports the events it adjusted,
and how eventd turns those reports into ``eventd_adjusted_events_total``."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventd import OK, Destination, Event, Outcome
from eventd.config import DestinationConfig
from eventd.delivery.worker import Worker
from eventd.metrics import Metrics
from eventd.store import MemoryStore, NewDeadLetter, SqliteStore


class Fixer(Destination):
    """Reports one adjustment per event it is given."""

    type_name = "fixer"

    async def deliver(self, batch: Sequence[Event]) -> Outcome:
        self.count_adjusted({"name_changed": len(batch), "value_truncated": 0})
        return OK


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def adjusted(metrics: Metrics) -> dict[tuple[str, str], float]:
    """(destination, reason) -> count, read from the exposition a scraper gets."""
    return {
        (s.labels["destination"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
        if s.name == "eventd_adjusted_events_total"
    }


def one_event(seq: int = 1) -> list[Event]:
    return [Event(seq, "app", 0, {"type": "track", "event": "E"})]


async def test_count_adjusted_reports_each_reason_with_events(
    session: aiohttp.ClientSession,
) -> None:
    dest = Fixer("fix", {}, session)
    seen: list[tuple[str, int]] = []
    dest.on_adjusted = lambda reason, events: seen.append((reason, events))
    dest.count_adjusted(collections.Counter({"name_changed": 2, "param_dropped": 1}))
    dest.count_adjusted({"value_truncated": 0})  # nothing to report
    assert seen == [("name_changed", 2), ("param_dropped", 1)]


async def test_outside_eventd_the_reports_go_nowhere(session: aiohttp.ClientSession) -> None:
    assert await Fixer("fix", {}, session).deliver(one_event()) == OK  # no dispatcher, no error


def test_the_counter_is_per_destination_and_reason() -> None:
    metrics = Metrics()
    assert adjusted(metrics) == {}
    ga4, other = metrics.adjusted_counter("ga4"), metrics.adjusted_counter("other")
    ga4("name_changed", 2)
    ga4("name_changed", 1)
    ga4("value_truncated", 4)
    other("name_changed", 5)
    assert adjusted(metrics) == {
        ("ga4", "name_changed"): 3.0,
        ("ga4", "value_truncated"): 4.0,
        ("other", "name_changed"): 5.0,
    }


async def test_a_worker_points_its_destination_at_the_counter(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    metrics = Metrics()
    dest = Fixer("fix", {}, session)
    Worker(DestinationConfig(name="fix", type="fixer"), dest, MemoryStore(), metrics)
    await dest.deliver(one_event(1))
    await dest.deliver(one_event(2))
    assert adjusted(metrics) == {("fix", "name_changed"): 2.0}


class Recorder(Destination):
    """Takes batches of at most 2,000 bytes and remembers each one."""

    type_name = "recorder"
    max_batch_bytes = 2000

    def __init__(self, name: str, settings: dict[str, object], s: aiohttp.ClientSession) -> None:
        super().__init__(name, settings, s)
        self.batches: list[list[str]] = []

    async def deliver(self, batch: Sequence[Event]) -> Outcome:
        assert sum(e.size for e in batch) <= self.max_batch_bytes
        self.batches.append([e.message["messageId"] for e in batch])
        return OK


async def test_replay_and_redrive_keep_to_the_plugins_byte_limit(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Events taken out of the log's order are cut to the plugin's limits like the log's."""
    outbox = SqliteStore(tmp_path / "db")
    await outbox.open()
    body = {"type": "track", "event": "E", "userId": "u", "properties": {"pad": "x" * 500}}
    rows = [
        ("web", f"m{i}", "track", "E", "u", None, i, orjson.dumps({**body, "messageId": f"m{i}"}))
        for i in range(30)
    ]
    await outbox.append(rows)
    dead = [(f"d{i}", orjson.dumps({**body, "messageId": f"d{i}"})) for i in range(12)]
    await outbox.add_dead_letters(
        "rec",
        [NewDeadLetter(100 + i, "web", mid, 0, b, "x") for i, (mid, b) in enumerate(dead)],
        1,
    )
    assert await outbox.request_redrive("rec") == 12
    await outbox.request_replay("rec", 1, 30)
    dest = Recorder("rec", {}, session)
    worker = Worker(DestinationConfig(name="rec", type="recorder"), dest, outbox, Metrics())
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.idle.wait(), 30)
        while await outbox.next_replay("rec") or await outbox.dead_letters():
            worker.wake()
            await asyncio.wait_for(worker.idle.wait(), 30)
    finally:
        await worker.stop(0)
        run.cancel()
        await outbox.close()
    delivered = [m for b in dest.batches for m in b]
    assert sorted(delivered) == sorted([f"m{i}" for i in range(30)] + [f"d{i}" for i in range(12)])
    assert len(dest.batches) >= (30 + 12) * 560 // 2000  # cut by bytes, not one big batch
