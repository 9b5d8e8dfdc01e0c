"""eventd.delivery.settle: the retry policy, as pure functions (no clock, no sleep)."""

from __future__ import annotations

import pytest

from eventd.delivery.settle import MAX_RETRY_AFTER, backoff, judge, outcome_label, outcomes_of
from eventd.destination import OK, Permanent, Retry, Skip
from eventd.event import Event

HOUR_MS = 3_600_000


def ev(seq: int, received_at: int = 0) -> Event:
    return Event(seq, "web", received_at, body=b"{}")


def test_each_outcome_sorts_its_event() -> None:
    events = [ev(1), ev(2), ev(3), ev(4), ev(5)]
    outcomes = [OK, Skip("no page"), Permanent("HTTP 400"), Retry("HTTP 503", 2.0), Retry("x")]
    v = judge(events, outcomes, now=1000, born=lambda e: e.received_at, max_age_ms=HOUR_MS)
    assert [e.seq for e in v.ok] == [1]
    assert [(e.seq, r) for e, r in v.skipped] == [(2, "no page")]
    assert [(e.seq, r) for e, r in v.dead] == [(3, "HTTP 400")]
    assert [e.seq for e in v.retry] == [4, 5]
    assert v.after == 2.0 and v.last_error == "x"


def test_a_retry_past_the_max_age_is_dead_lettered_with_the_last_reason() -> None:
    events = [ev(1, received_at=0), ev(2, received_at=HOUR_MS - 1)]
    v = judge(
        events,
        [Retry("HTTP 503"), Retry("HTTP 503")],
        now=HOUR_MS,
        born=lambda e: e.received_at,
        max_age_ms=HOUR_MS,
    )
    assert [(e.seq, r) for e, r in v.dead] == [(1, "retry_max_age passed; last: HTTP 503")]
    assert [e.seq for e in v.retry] == [2]
    # a redrive's clock starts when it was taken, not at receipt
    v = judge(events, [Retry("x"), Retry("x")], now=HOUR_MS, born=lambda e: 10, max_age_ms=HOUR_MS)
    assert v.dead == [] and len(v.retry) == 2


def test_the_largest_retry_after_wins() -> None:
    v = judge(
        [ev(1), ev(2), ev(3)],
        [Retry("a", 5.0), Retry("b", 30.0), Retry("c")],
        now=0,
        born=lambda e: 0,
        max_age_ms=HOUR_MS,
    )
    assert v.after == 30.0


def test_backoff_doubles_with_jitter_up_to_the_ceiling() -> None:
    lowest = [backoff(a, None, 1.0, 300.0, jitter=lambda lo, hi: lo) for a in range(1, 12)]
    highest = [backoff(a, None, 1.0, 300.0, jitter=lambda lo, hi: hi) for a in range(1, 12)]
    assert highest == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert lowest == [h / 2 for h in highest]


def test_retry_after_is_honoured_up_to_an_hour() -> None:
    assert backoff(1, 12.5, 1.0, 300.0) == 12.5
    assert backoff(9, 0.0, 1.0, 300.0) == 0.0
    assert backoff(1, 86400.0, 1.0, 300.0) == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("result", "count", "expected"),
    [
        (OK, 3, [OK, OK, OK]),
        ([OK, Skip("s")], 2, [OK, Skip("s")]),
        ([OK], 2, [Retry("plugin returned 1 outcomes for 2")] * 2),
    ],
)
def test_outcomes_of_a_plugins_answer(result: object, count: int, expected: list[object]) -> None:
    assert outcomes_of(result, count) == expected  # type: ignore[arg-type]


def test_outcome_label() -> None:
    assert outcome_label([OK, OK]) == "ok"
    assert outcome_label([Retry("x")]) == "retry"
    assert outcome_label([OK, Permanent("p")]) == "mixed"
