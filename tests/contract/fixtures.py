"""What the end-to-end destination tests share: each contract server as a pytest
fixture (running on its own thread, see ``tests.harness.running``), eventd's config
for a destination pointed at one, and readers of what eventd reports about delivery
(``/metrics`` and the dead-letter table).

Registered for every test through ``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.contract.amplitude_server import AmplitudeServer
from tests.contract.ga4_server import Ga4Server
from tests.contract.intercom_server import IntercomServer
from tests.contract.mixpanel_server import MixpanelServer
from tests.harness import EventdProcess, running

# -- the contract servers ----------------------------------------------------------------


@pytest.fixture
def mixpanel() -> Iterator[MixpanelServer]:
    with running(MixpanelServer()) as server:
        yield server


@pytest.fixture
def amplitude() -> Iterator[AmplitudeServer]:
    with running(AmplitudeServer()) as server:
        yield server


@pytest.fixture
def ga4() -> Iterator[Ga4Server]:
    with running(Ga4Server()) as server:
        yield server


@pytest.fixture
def intercom() -> Iterator[IntercomServer]:
    with running(IntercomServer()) as server:
        yield server


# -- eventd's side -------------------------------------------------------------------------


def destination(type_name: str, settings: dict[str, Any], **options: Any) -> dict[str, Any]:
    """A ``[destinations.NAME]`` table with retries quick enough for tests (50 ms first
    backoff, 1 s at most; a Retry-After from the server still wins)."""
    return {
        "type": type_name,
        "retry_backoff": "50ms",
        "retry_backoff_max": "1s",
        **options,
        "settings": settings,
    }


def post(ev: EventdProcess, messages: Sequence[dict[str, Any]]) -> None:
    """POST the messages to /v1/batch; eventd must have stored them (200)."""
    status, body = ev.post("/v1/batch", {"batch": list(messages)}, key=ev.write_key)
    assert (status, body) == (200, {"success": True})


def send(ev: EventdProcess, messages: Sequence[dict[str, Any]]) -> None:
    """POST the messages, then wait until every destination has passed them."""
    post(ev, messages)
    ev.drain()


def dead_letters(ev: EventdProcess, destination: str) -> dict[str, str]:
    """messageId -> error of the destination's dead letters (read from the SQLite file)."""
    rows = ev.query(
        "SELECT message_id, error FROM dead_letters WHERE destination = ?", (destination,)
    )
    return {message_id: error for message_id, error in rows}


def counters(ev: EventdProcess, family: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every ``<family>_total`` sample in eventd's /metrics."""
    request = urllib.request.Request(
        ev.url + "/metrics", headers={"Authorization": f"Bearer {ev.admin_token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    return [
        (sample.labels, sample.value)
        for found in text_string_to_metric_families(text)
        if found.name == family
        for sample in found.samples
        if sample.name == family + "_total"
    ]


def skipped(ev: EventdProcess, destination: str) -> dict[str, float]:
    """reason -> count, from ``eventd_skipped_events_total{destination=...}``."""
    return {
        labels["reason"]: value
        for labels, value in counters(ev, "eventd_skipped_events")
        if labels["destination"] == destination
    }
