"""The retry policy: what each outcome of an attempt means for its event, and how
long to wait before the next attempt. Pure functions: the worker awaits, this decides.

Per event::

    Ok .......... delivered: done
    Skip ........ the destination does not take it: done, counted as skipped by reason
    Permanent ... dead-lettered at once, with the reason
    Retry ....... sent again after a backoff (exponential with jitter, or the API's
                  Retry-After, at most an hour); once the event is older than
                  ``retry_max_age`` (its clock starts at receipt, or when a redrive or
                  replay took it), dead-lettered instead with the last reason

A plugin that raises or returns the wrong number of outcomes has the whole
batch retried (:func:`outcomes_of`), so a plugin bug never loses an event.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventd.destination import Ok, Outcome, Permanent, Retry, Skip
from eventd.event import Event

# The longest Retry-After honoured (an API asking for a day is asking too much).
MAX_RETRY_AFTER = 3600.0


@dataclass
class Verdict:
    """One attempt's outcomes sorted: what is done, dead, or to be sent again."""

    ok: list[Event] = field(default_factory=list)
    skipped: list[tuple[Event, str]] = field(default_factory=list)
    dead: list[tuple[Event, str]] = field(default_factory=list)
    retry: list[Event] = field(default_factory=list)
    after: float | None = None  # the largest Retry-After among the retried, seconds
    last_error: str | None = None  # the last retry's reason


def judge(
    events: Sequence[Event],
    outcomes: Sequence[Outcome],
    *,
    now: int,
    born: Callable[[Event], int],
    max_age_ms: float,
) -> Verdict:
    """Sort ``events`` by their ``outcomes`` (same order); ``born(event)`` (unix ms)
    starts the event's retry clock, ``now`` is the time of the attempt."""
    v = Verdict()
    for event, outcome in zip(events, outcomes, strict=True):
        if isinstance(outcome, Ok):
            v.ok.append(event)
        elif isinstance(outcome, Skip):
            v.skipped.append((event, outcome.reason))
        elif isinstance(outcome, Permanent):
            v.dead.append((event, outcome.reason))
        elif now - born(event) >= max_age_ms:
            v.dead.append((event, f"retry_max_age passed; last: {outcome.reason}"))
        else:
            v.retry.append(event)
            v.last_error = outcome.reason
            if outcome.after is not None:
                v.after = max(v.after or 0.0, outcome.after)
    return v


def backoff(
    attempt: int,
    retry_after: float | None,
    base: float,
    ceiling: float,
    jitter: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait after ``attempt`` (1 = the first) failed: the API's Retry-After
    when it sent one (at most MAX_RETRY_AFTER), else ``base * 2**(attempt-1)`` capped at
    ``ceiling``, times a jitter in [0.5, 1] that spreads a herd of retries."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    return float(min(ceiling, base * 2 ** (attempt - 1)) * jitter(0.5, 1.0))


def outcomes_of(result: Sequence[Outcome] | Outcome, count: int) -> list[Outcome]:
    """A plugin's answer for ``count`` events as one outcome per event; a wrong number
    of outcomes retries them all (a plugin bug must not drop or misattribute events)."""
    if not isinstance(result, Sequence):
        return [result] * count
    if len(result) != count:
        return [Retry(f"plugin returned {len(result)} outcomes for {count}")] * count
    return list(result)


def outcome_label(outcomes: Sequence[Outcome]) -> str:
    """The delivery-latency metric's outcome label: the one kind, or ``mixed``."""
    kinds = {type(o) for o in outcomes}
    return type(outcomes[0]).__name__.lower() if len(kinds) == 1 else "mixed"
