"""eventd.destination's base class: how a destination reports the events it adjusted,
and how eventd turns those reports into ``eventd_adjusted_events_total``."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventd import OK, Destination, Event, Outcome
from eventd.config import DestinationConfig
from eventd.dispatcher import Worker
from eventd.metrics import Metrics
from eventd.outbox import Outbox


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
    Worker(DestinationConfig(name="fix", type="fixer"), dest, Outbox(tmp_path / "db"), metrics)
    await dest.deliver(one_event(1))
    await dest.deliver(one_event(2))
    assert adjusted(metrics) == {("fix", "name_changed"): 2.0}
