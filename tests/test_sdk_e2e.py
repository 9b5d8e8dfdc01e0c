"""Real SDKs into a real eventd: segment-analytics-python and rudder-sdk-python.

Each sends 1,200 mixed calls through its own batching, retrying consumer
thread; afterwards every messageId is in the outbox exactly once and each
stored timestamp is the skew-corrected one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.harness import EventdProcess

N = 1200


def _send_mixed(client: Any, n: int) -> dict[str, tuple[str, datetime]]:
    """Call every method in turn; returns messageId -> (type, the timestamp we gave)."""
    sent: dict[str, tuple[str, datetime]] = {}
    # Events that happened an hour ago (a backlog the app flushes now).
    base = datetime.now(UTC) - timedelta(hours=1)
    for i in range(n):
        mid = str(uuid.uuid4())
        ts = base + timedelta(milliseconds=i)
        user = f"user-{i % 37}"
        kind = ("track", "identify", "page", "screen", "group", "alias")[i % 6]
        common = {"timestamp": ts, "message_id": mid, "context": {"test": "sdk"}}
        if kind == "track":
            client.track(user_id=user, event="Order Completed", properties={"n": i}, **common)
        elif kind == "identify":
            client.identify(user_id=user, traits={"plan": "pro", "n": i}, **common)
        elif kind == "page":
            client.page(anonymous_id=f"anon-{i}", name="Home", category="Docs", **common)
        elif kind == "screen":
            client.screen(user_id=user, name="Settings", **common)
        elif kind == "group":
            client.group(user_id=user, group_id=f"acct-{i % 5}", traits={"n": i}, **common)
        else:
            client.alias(previous_id=f"anon-{i}", user_id=user, **common)
        sent[mid] = (kind, ts)
    client.flush()
    client.join()
    return sent


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _assert_stored_exactly_once(ev: EventdProcess, sent: dict[str, tuple[str, datetime]]) -> None:
    stored = ev.stored()
    counts = Counter(m["messageId"] for m in stored)
    assert set(counts) == set(sent), "every messageId the SDK sent, and nothing else"
    assert max(counts.values()) == 1, "stored exactly once"
    for msg in stored:
        kind, given = sent[msg["messageId"]]
        assert msg["type"] == kind
        assert msg["context"]["test"] == "sdk" and msg["context"]["library"]["name"]
        original = _iso(msg["originalTimestamp"])
        assert abs(original - given) < timedelta(milliseconds=1)
        # timestamp = receivedAt - (sentAt - originalTimestamp), to the millisecond
        expected = _iso(msg["receivedAt"]) - (_iso(msg["sentAt"]) - original)
        assert abs(_iso(msg["timestamp"]) - expected) <= timedelta(milliseconds=1)
        # client and server share this machine's clock, so correction moves little
        assert abs(_iso(msg["timestamp"]) - original) < timedelta(seconds=5)


def test_segment_analytics_python(eventd: Callable[..., EventdProcess]) -> None:
    from segment.analytics import Client

    ev = eventd()
    errors: list[Any] = []
    client = Client(
        ev.write_key,
        host=ev.url,
        on_error=lambda e, batch: errors.append(e),
        max_queue_size=N * 2,
        gzip=False,
    )
    sent = _send_mixed(client, N)
    assert errors == []
    _assert_stored_exactly_once(ev, sent)


def test_segment_analytics_python_gzip(eventd: Callable[..., EventdProcess]) -> None:
    from segment.analytics import Client

    ev = eventd()
    errors: list[Any] = []
    client = Client(
        ev.write_key,
        host=ev.url,
        on_error=lambda e, batch: errors.append(e),
        max_queue_size=600,
        gzip=True,
    )
    sent = _send_mixed(client, 300)
    assert errors == []
    _assert_stored_exactly_once(ev, sent)


def test_rudder_sdk_python(eventd: Callable[..., EventdProcess]) -> None:
    from rudderstack.analytics.client import Client

    ev = eventd()
    errors: list[Any] = []
    # gzip and Basic auth are its defaults: eventd must take both
    client = Client(
        ev.write_key, host=ev.url, on_error=lambda e, batch: errors.append(e), max_queue_size=N * 2
    )
    sent = _send_mixed(client, N)
    assert errors == []
    _assert_stored_exactly_once(ev, sent)


@pytest.mark.parametrize("sdk", ["segment", "rudder"])
def test_a_wrong_write_key_is_refused_and_reported_to_the_sdk(
    eventd: Callable[..., EventdProcess], sdk: str
) -> None:
    ev = eventd()
    errors: list[Any] = []
    if sdk == "segment":
        from segment.analytics import Client as SegmentClient

        client: Any = SegmentClient(
            "wk_wrong", host=ev.url, max_retries=1, on_error=lambda e, b: errors.append(e)
        )
    else:
        from rudderstack.analytics.client import Client as RudderClient

        client = RudderClient(
            "wk_wrong", host=ev.url, max_retries=1, on_error=lambda e, b: errors.append(e)
        )
    client.track(user_id="u", event="E")
    client.flush()
    client.join()
    assert len(errors) == 1 and "401" in str(getattr(errors[0], "status", errors[0]))
    assert ev.stored() == []
