"""eventd.delivery.routing: sources, integrations{} and filters, as pure functions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from eventd.config import DestinationConfig
from eventd.delivery.routing import (
    Route,
    batches,
    filtered_out,
    integration_enabled,
    route,
    routes,
)
from eventd.event import Event


def event(seq: int = 1, source: str = "web", size_pad: int = 0, **msg: Any) -> Event:
    body = orjson.dumps({"type": "track", "event": "E", **msg, "pad": "x" * size_pad})
    return Event(seq, source, 0, body=body)


def hooks(**config: Any) -> Route:
    return Route("hooks", "Webhooks", DestinationConfig(name="hooks", type="webhook", **config))


@pytest.mark.parametrize(
    ("integrations", "expected"),
    [
        (None, True),
        ({}, True),
        ("not an object", True),
        ({"All": False}, False),
        ({"All": True}, True),
        ({"Mixpanel": False}, True),  # someone else's key
        ({"Webhooks": False}, False),
        ({"hooks": False}, False),  # the config name works too
        ({"Webhooks": True}, True),
        ({"All": False, "Webhooks": True}, True),
        ({"All": False, "hooks": True}, True),
        # an options object means "send it there", as analytics.js reads it (issue 12)
        ({"Webhooks": {}}, True),
        ({"All": False, "Webhooks": {}}, True),
        ({"All": False, "Webhooks": {"option": 1}}, True),
        ({"hooks": {}, "All": True}, True),
        # only false disables
        ({"All": False, "Webhooks": 0}, True),
        ({"Webhooks": None}, True),
    ],
)
def test_integrations_as_segment_reads_them(integrations: object, expected: bool) -> None:
    assert integration_enabled(integrations, ("hooks", "Webhooks")) is expected
    assert routes(hooks(), event(integrations=integrations)) is expected


def test_sources_come_before_integrations() -> None:
    only_web = hooks(sources=("web",))
    assert routes(only_web, event(source="web"))
    assert not routes(only_web, event(source="ios", integrations={"Webhooks": True}))


def test_a_destination_without_an_integration_name_answers_to_its_config_name() -> None:
    r = Route("lake", None, DestinationConfig(name="lake", type="jsonl"))
    assert routes(r, event(integrations={"All": False, "lake": True}))
    assert not routes(r, event(integrations={"All": False, "Webhooks": True}))


def test_filters_name_why_they_keep_an_event_out() -> None:
    c = DestinationConfig(
        name="h",
        type="webhook",
        types=(
            "track",
            "identify",
        ),
        events=(
            "Signed Up",
            "Paid",
        ),
        exclude_events=("Paid",),
    )
    assert filtered_out(c, event(type="page")) == "filtered: type"
    assert filtered_out(c, event(type="identify")) is None  # events apply to tracks only
    assert filtered_out(c, event(event="Other")) == "filtered: event not in events"
    assert filtered_out(c, event(event="Paid")) == "filtered: event in exclude_events"
    assert filtered_out(c, event(event="Signed Up")) is None


def test_route_keeps_splits_and_drops() -> None:
    r = hooks(exclude_events=("Noise",))
    evs = [
        event(1, event="A"),
        event(2, event="Noise"),
        event(3, event="B", integrations={"Webhooks": False}),
        event(4, event="C"),
    ]
    kept, filtered = route(r, evs)
    assert [e.seq for e in kept] == [1, 4]
    assert [(e.seq, why) for e, why in filtered] == [(2, "filtered: event in exclude_events")]


def test_batches_are_cut_by_count_and_bytes_in_order() -> None:
    evs = [event(i, size_pad=100) for i in range(1, 11)]
    size = evs[0].size
    by_count = list(batches(evs, 4, 10**6))
    assert [[e.seq for e in b] for b in by_count] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    by_bytes = list(batches(evs, 100, 3 * size))
    assert [len(b) for b in by_bytes] == [3, 3, 3, 1]
    # an event larger than the byte limit goes alone, never dropped
    assert [len(b) for b in batches(evs[:3], 100, size - 1)] == [1, 1, 1]
    assert list(batches([], 4, 100)) == []
