"""What a store that keeps forwarded erasures must do (``DeletionStore`` in
eventd/store/base.py), run against every backend in ``conftest.BACKENDS`` that
implements it: a person's events found by userId, requests recorded once per
destination, only a failed one asked again, states saved and kept across a
restart. Values are computed here, independently."""

from __future__ import annotations

import orjson
import pytest

from eventd.store import (
    DONE,
    FAILED,
    MAX_ERROR_CHARS,
    REQUESTED,
    UNSUPPORTED,
    DeletionStore,
    EventRow,
    Store,
    UserEvent,
)
from tests.store.conftest import Backend

T0 = 1_700_000_000_000


def row(mid: str, user: str | None, anon: str | None, at: int, source: str = "web") -> EventRow:
    body = orjson.dumps({"type": "track", "messageId": mid, "userId": user, "anonymousId": anon})
    return (source, mid, "track", "E", user, anon, at, body)


def keeping(store: Store) -> DeletionStore:
    if not isinstance(store, DeletionStore):
        pytest.skip(f"{type(store).__name__} keeps no forwarded erasures")
    return store


async def test_user_events_are_every_stored_event_of_the_ids_in_seq_order(store: Store) -> None:
    deletions = keeping(store)
    await store.append(
        [
            row("a", "ann", "x1", T0),
            row("b", "bob", "x2", T0 + 1),
            row("c", "ann", None, T0 + 2, source="app"),
            row("d", "al", "x3", T0 + 3),
            row("e", None, "x1", T0 + 4),  # anonymous only: not found by userId
        ]
    )
    events = await store.read(0, 10)
    seq = {orjson.loads(e.body)["messageId"]: e.seq for e in events}
    found = await deletions.user_events(["ann", "al"])
    assert found == [
        UserEvent(seq["a"], "web", T0, "x1"),
        UserEvent(seq["c"], "app", T0 + 2, None),
        UserEvent(seq["d"], "web", T0 + 3, "x3"),
    ]
    assert await deletions.user_events(["nobody"]) == []


async def test_requests_states_and_only_a_failed_one_asked_again(store: Store) -> None:
    deletions = keeping(store)
    targets = [("mp", "mixpanel"), ("amp", "amplitude"), ("hook", "webhook"), ("lake", "s3")]
    await deletions.request_deletions("ann", targets, b'{"first": 1}')
    await deletions.request_deletions("bob", [("mp", "mixpanel")], b'{"bob": 1}')
    rows = await deletions.deletions("ann")
    assert [(d.destination, d.type, d.state, d.attempts) for d in rows] == [
        ("amp", "amplitude", REQUESTED, 0),
        ("hook", "webhook", REQUESTED, 0),
        ("lake", "s3", REQUESTED, 0),
        ("mp", "mixpanel", REQUESTED, 0),
    ]
    assert all(d.erasure == b'{"first": 1}' and d.reason is None for d in rows)
    assert all(d.next_attempt_at is None and d.requested_at == d.updated_at for d in rows)

    await deletions.save_deletion("ann", "mp", DONE, 1, None)
    await deletions.save_deletion("ann", "amp", FAILED, 3, "x" * (MAX_ERROR_CHARS + 50))
    await deletions.save_deletion("ann", "lake", UNSUPPORTED, 1, "delete s3://b/k by hand")
    await deletions.save_deletion("ann", "hook", REQUESTED, 2, "HTTP 503", T0 + 9000)
    state = {d.destination: d for d in await deletions.deletions("ann")}
    assert (state["mp"].state, state["mp"].attempts, state["mp"].reason) == (DONE, 1, None)
    assert (state["amp"].state, state["amp"].reason) == (FAILED, "x" * MAX_ERROR_CHARS)
    assert (state["lake"].state, state["lake"].reason) == (UNSUPPORTED, "delete s3://b/k by hand")
    hook = state["hook"]
    assert (hook.state, hook.attempts, hook.reason, hook.next_attempt_at) == (
        REQUESTED,
        2,
        "HTTP 503",
        T0 + 9000,
    )
    pending = await deletions.pending_deletions()
    assert {(d.user_id, d.destination) for d in pending} == {("ann", "hook"), ("bob", "mp")}

    # Asked again: only the failed one starts over, with the new erasure.
    await deletions.request_deletions("ann", targets, b'{"again": 1}')
    again = {d.destination: d for d in await deletions.deletions("ann")}
    assert (again["amp"].state, again["amp"].attempts, again["amp"].reason) == (REQUESTED, 0, None)
    assert again["amp"].erasure == b'{"again": 1}'
    for name in ("mp", "lake", "hook"):
        assert again[name] == state[name], name
    assert [d.user_id for d in await deletions.deletions("bob")] == ["bob"]
    assert await deletions.deletions("nobody") == []


async def test_deletions_survive_a_restart(backend: Backend) -> None:
    first = backend.store()
    await first.open()
    deletions = keeping(first)
    await deletions.request_deletions("ann", [("mp", "mixpanel"), ("amp", "amplitude")], b"{}")
    await deletions.save_deletion("ann", "mp", DONE, 1, None)
    saved = await deletions.deletions("ann")
    await first.close()
    again = backend.store()
    await again.open()
    try:
        assert await keeping(again).deletions("ann") == saved
        assert [d.destination for d in await keeping(again).pending_deletions()] == ["amp"]
    finally:
        await again.close()
