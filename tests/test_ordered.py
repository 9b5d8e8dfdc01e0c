"""Per-user order through ``eventd serve`` on SQLite (``destinations.NAME.ordered``).

One real ``eventd serve`` process, two webhook destinations fed the same events: one
``ordered = true``, one not. Each user's events are sent one after another over
HTTP, each acknowledged before the next, so acknowledgement order is the index in
the messageId. In the middle of user u0's stream, the batch holding ``u0-10`` is
refused with 503 at both destinations: at the unordered one until a later event of
u0 has arrived there (so its reordering is shown, not assumed), at the ordered one
four times (after which a later event would have arrived, had anything gone past
the held batch). Counted by messageId at the sink, in arrival order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.harness import EventdProcess, Received, Sink

USERS = [f"u{i}" for i in range(4)]
PER_USER = 30
HELD = "u0-10"  # the event whose batch fails in the middle of u0's stream
ORDERED_FAILURES = 4


def index(message_id: str) -> tuple[str, int]:
    user, i = message_id.rsplit("-", 1)
    return user, int(i)


def arrivals(received: list[Received], path: str) -> dict[str, list[int]]:
    """Per user, the event indexes in the order the sink took them (2xx only)."""
    by_user: dict[str, list[int]] = {}
    for r in received:
        if r.path != path:
            continue
        for event in r.json():
            user, i = index(event["messageId"])
            by_user.setdefault(user, []).append(i)
    return by_user


def inversions(order: list[int]) -> int:
    """Events whose first arrival came after the first arrival of a later-sent event
    of the same user (a repeat is not an inversion: only first arrivals count)."""
    seen: set[int] = set()
    highest = -1
    count = 0
    for i in order:
        if i in seen:
            continue
        seen.add(i)
        if i < highest:
            count += 1
        highest = max(highest, i)
    return count


def holding_handler(sink: Sink) -> tuple[Callable[[Received], Any], dict[str, int]]:
    """503 for a request holding HELD, per destination path (see the module
    docstring); the failures answered, by path."""
    failures = {"/ordered": 0, "/unordered": 0}

    def later_arrived(path: str) -> bool:  # called under the sink's lock
        return any(
            index(e["messageId"])[0] == "u0" and index(e["messageId"])[1] > 10
            for r in sink.received
            if r.path == path
            for e in r.json()
        )

    def handle(rec: Received) -> Any:
        if HELD not in {e["messageId"] for e in rec.json()}:
            return 200
        if rec.path == "/ordered":
            if failures["/ordered"] < ORDERED_FAILURES and not later_arrived(rec.path):
                failures["/ordered"] += 1
                return 503
            return 200
        if not later_arrived(rec.path) and failures["/unordered"] < 200:
            failures["/unordered"] += 1
            return 503
        return 200

    return handle, failures


def destination(sink: Sink, path: str, ordered: bool) -> dict[str, Any]:
    return {
        "type": "webhook",
        "ordered": ordered,
        "batch_size": 3,
        "max_in_flight": 4,
        "retry_backoff": "50ms",
        "retry_backoff_max": "200ms",
        "settings": {"url": sink.url + path, "batch": True},
    }


def send_streams(ev: EventdProcess) -> None:
    """Each user's events one after another (each acknowledged before the next),
    the users at once on threads."""
    errors: list[str] = []

    def user_stream(user: str) -> None:
        for i in range(PER_USER):
            status, body = ev.post(
                "/v1/track",
                {"userId": user, "event": "Step", "messageId": f"{user}-{i}"},
                key=ev.write_key,
            )
            if status != 200:
                errors.append(f"{user}-{i}: {status} {body}")
                return

    threads = [threading.Thread(target=user_stream, args=(u,)) for u in USERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_an_ordered_destination_keeps_each_users_order_across_a_failing_batch(
    eventd: Callable[..., EventdProcess], sink: Sink
) -> None:
    handle, failures = holding_handler(sink)
    sink.handler = handle
    ev = eventd(
        {
            "destinations": {
                "ordered": destination(sink, "/ordered", True),
                "unordered": destination(sink, "/unordered", False),
            }
        }
    )
    send_streams(ev)
    ev.drain()

    with sink.cond:
        received = list(sink.received)
    ordered = arrivals(received, "/ordered")
    unordered = arrivals(received, "/unordered")
    every = {u: list(range(PER_USER)) for u in USERS}
    # Ordered: every event once, each user's in acknowledgement order; the held batch
    # was refused the full four times, so nothing of u0 went past it meanwhile.
    assert ordered == every
    assert failures["/ordered"] == ORDERED_FAILURES
    # Unordered, same run: every event too, but u0's later events went out while the
    # held batch waited for its retry (what the ordered destination rules out).
    assert {u: sorted(v) for u, v in unordered.items()} == every
    assert failures["/unordered"] >= 1
    assert inversions(unordered["u0"]) >= 1
    assert sum(inversions(v) for v in ordered.values()) == 0
