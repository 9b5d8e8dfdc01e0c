"""What every Store must do (eventd/store/base.py), run against each backend in
``conftest.BACKENDS``: durable append through a crash, dedup inside its window,
cursors across a restart, dead letters and redrive, replay ranges, suppressions
and erasure, retention deletes, stats. Values are computed here, independently."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from eventd.store import (
    EventRow,
    NewDeadLetter,
    StorageUnavailable,
    Store,
    service_cursor,
)
from tests.store.conftest import Backend

T0 = 1_700_000_000_000  # a received_at, unix ms


def row(mid: str, *, user: str | None = "u", at: int = T0, source: str = "web") -> EventRow:
    body = orjson.dumps({"type": "track", "event": "E", "messageId": mid, "userId": user})
    return (source, mid, "track", "E", user, None, at, body)


def ids(events: list[object]) -> list[str]:
    return [orjson.loads(e.body)["messageId"] for e in events]  # type: ignore[attr-defined]


def letter(seq: int, mid: str, user: str = "u") -> NewDeadLetter:
    body = orjson.dumps({"type": "track", "messageId": mid, "userId": user})
    return NewDeadLetter(seq, "web", mid, T0, body, f"HTTP 400: {mid}")


# -- the log ----------------------------------------------------------------------


async def test_append_then_read_after_a_position_in_order(store: Store) -> None:
    assert store.last_seq == 0 and await store.read(0, 10) == []
    assert await store.append([row("a"), row("b"), row("c")]) == 3
    assert await store.append([row("d")]) == 1
    events = await store.read(0, 10)
    assert ids(events) == ["a", "b", "c", "d"]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and store.last_seq == seqs[-1]
    assert ids(await store.read(seqs[1], 10)) == ["c", "d"]
    assert ids(await store.read(seqs[0], 2)) == ["b", "c"]
    assert ids(await store.read_range(seqs[1], seqs[2], 10)) == ["b", "c"]
    assert ids(await store.read_range(seqs[1], seqs[3], 1)) == ["b"]
    first = events[0]
    assert (first.source, first.received_at, first.user_id) == ("web", T0, "u")


async def test_find_event_gives_the_newest_stored_with_that_source_and_message_id(
    backend: Backend,
) -> None:
    store = backend.store(dedup_window=1.0)
    await store.open()
    try:
        await store.append([row("a"), row("b"), row("a", source="ios")])
        await store.append([row("a", at=T0 + 5000)])  # past the window: stored again
        seqs = [e.seq for e in await store.read(0, 10)]
        found = await store.find_event("web", "a")
        assert found is not None and (found.seq, found.received_at) == (seqs[3], T0 + 5000)
        assert ids([found]) == ["a"] and (found.source, found.user_id) == ("web", "u")
        ios = await store.find_event("ios", "a")
        assert ios is not None and ios.seq == seqs[2]
        assert await store.find_event("web", "c") is None
        assert await store.find_event("android", "a") is None
    finally:
        await store.close()


async def test_events_are_read_back_by_seq(store: Store) -> None:
    await store.append([row(m) for m in "abcde"])
    seqs = [e.seq for e in await store.read(0, 10)]
    assert await store.read_seqs([]) == []
    # any order, repeats once, in seq order; a seq never stored (or deleted) is absent
    got = await store.read_seqs([seqs[3], seqs[0], seqs[3], seqs[-1] + 100])
    assert ids(got) == ["a", "d"] and [e.seq for e in got] == [seqs[0], seqs[3]]
    assert got[0].source == "web" and got[0].received_at == T0 and got[0].user_id == "u"
    await store.suppress("u", erase=True)
    await store.erase_user("u", seqs[2])  # a and b
    assert ids(await store.read_seqs(seqs)) == ["c", "d", "e"]


async def test_an_acknowledged_append_survives_a_crash(backend: Backend) -> None:
    acked = await backend.append_then_crash()
    store = backend.store()
    await store.open()
    try:
        stored = set(ids(await store.read(0, 1_000_000)))
    finally:
        await store.close()
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    assert len(stored) == len(await _all_seqs(backend)), "no event stored twice"


async def test_after_a_crash_every_acknowledged_event_is_still_a_repeat(
    backend: Backend,
) -> None:
    """Dedup state survives a crash: each acknowledged messageId sent again (with the
    stored copy's received_at) is acknowledged and not stored twice, and nothing
    else was lost or stored twice."""
    acked = await backend.append_then_crash()
    store = backend.store()
    await store.open()
    try:
        before = await store.read(0, 1_000_000)
        at = {m: e.received_at for e, m in zip(before, ids(before), strict=True)}
        assert await store.append([row(m, at=at[m]) for m in sorted(acked)]) == 0
        after = await store.read(0, 1_000_000)
        assert sorted(ids(after)) == sorted(ids(before)) and len(set(ids(after))) == len(after)
    finally:
        await store.close()


async def _all_seqs(backend: Backend) -> list[int]:
    store = backend.store()
    await store.open()
    try:
        return [e.seq for e in await store.read(0, 1_000_000)]
    finally:
        await store.close()


async def test_a_repeat_inside_the_dedup_window_is_not_stored_again(backend: Backend) -> None:
    store = backend.store(dedup_window=60.0)
    await store.open()
    try:
        assert await store.append([row("a"), row("b")]) == 2
        # the same (source, messageId) 59 s later: dropped; from another source: kept
        assert await store.append([row("a", at=T0 + 59_000), row("a", source="ios")]) == 1
        # inside one append too
        assert await store.append([row("c"), row("c")]) == 1
        # past the window: stored again
        assert await store.append([row("b", at=T0 + 61_000)]) == 1
        events = await store.read(0, 100)
        assert [(e.source, m) for e, m in zip(events, ids(events), strict=True)] == [
            ("web", "a"),
            ("web", "b"),
            ("ios", "a"),
            ("web", "c"),
            ("web", "b"),
        ]
    finally:
        await store.close()


async def test_subscribers_are_woken_by_new_events_only(store: Store) -> None:
    wake = store.subscribe()
    await store.append([row("a")])
    assert wake.is_set()
    wake.clear()
    await store.append([row("a")])  # a duplicate: nothing new
    assert not wake.is_set()
    await store.save_cursor("x", 1)
    assert not wake.is_set()


async def test_times_and_ranges(store: Store) -> None:
    await store.append([row(f"m{i}", at=T0 + i * 1000) for i in range(5)])
    seqs = [e.seq for e in await store.read(0, 10)]
    assert await store.received_at_after(0) == T0
    assert await store.received_at_after(seqs[2]) == T0 + 3000
    assert await store.received_at_after(seqs[-1]) is None
    found = await store.seq_range(T0 + 1000, T0 + 3000)
    assert found is not None and (found.first, found.last, found.count) == (seqs[1], seqs[3], 3)
    assert await store.seq_range(T0 + 10_000, T0 + 20_000) is None


async def test_appends_are_refused_whole_at_max_size(backend: Backend) -> None:
    store = backend.store(max_size=200_000)
    await store.open()
    pad = "x" * 1000
    try:
        stored = 0
        with pytest.raises(StorageUnavailable, match="max_size"):
            for batch in range(50):  # 5 MB: well past the limit
                rows = [
                    ("web", f"m{batch}-{i}", "track", "E", "u", None, T0, pad.encode())
                    for i in range(100)
                ]
                await store.append(rows)
                stored += 100
        assert 0 < stored < 5000
        assert len(await store.read(0, 100_000)) == stored  # nothing of the refused one
        stats = store.stats()
        assert stats.max_size == 200_000 and stats.last_seq == store.last_seq
        assert stats.size >= 200_000 - 100 * 1000
        assert store.pending_events == 0
    finally:
        await store.close()


async def test_pending_events_counts_appends_not_yet_durable(store: Store) -> None:
    append = asyncio.ensure_future(store.append([row("a"), row("b")]))
    await asyncio.sleep(0)  # the append has started and waits for its commit
    assert store.pending_events == 2
    await append
    assert store.pending_events == 0 and store.writable


# -- cursors ----------------------------------------------------------------------


async def test_cursors_survive_a_restart(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.append([row("a"), row("b")])
    assert await store.cursor("hooks") is None
    await store.save_cursor("hooks", 1)
    await store.save_cursor("hooks", 2)
    await store.save_cursor(service_cursor("identity"), 1)
    await store.close()

    again = backend.store()
    await again.open()
    try:
        assert await again.cursor("hooks") == 2
        assert await again.cursor("service:identity") == 1
        assert await again.cursors() == {"hooks": 2, "service:identity": 1}
        assert again.last_seq == 2
    finally:
        await again.close()


# -- dead letters -----------------------------------------------------------------


async def test_dead_letters_list_show_count_purge(store: Store) -> None:
    await store.add_dead_letters("hooks", [letter(1, "a"), letter(2, "b")], attempts=3)
    await store.add_dead_letters("mix", [letter(1, "a")], attempts=1)
    listed = await store.dead_letters()
    assert [(d.destination, d.message_id, d.attempts, d.state) for d in listed] == [
        ("hooks", "a", 3, "dead"),
        ("hooks", "b", 3, "dead"),
        ("mix", "a", 1, "dead"),
    ]
    assert [d.message_id for d in await store.dead_letters(destination="mix")] == ["a"]
    assert len(await store.dead_letters(limit=2)) == 2
    assert await store.dead_letters(limit=0) == []
    newest = max(d.failed_at for d in listed)
    assert len(await store.dead_letters(since=newest + 1)) == 0
    assert len(await store.dead_letters(since=newest - 60_000)) == 3
    one = await store.dead_letter(listed[1].id)
    assert one is not None and one.error == "HTTP 400: b" and one.received_at == T0
    assert orjson.loads(one.body)["messageId"] == "b" and one.seq == 2
    assert await store.dead_letter(10**30) is None
    assert await store.dead_letter_counts() == {"hooks": 2, "mix": 1}

    long_error = NewDeadLetter(3, "web", "c", T0, b"{}", "x" * 5000)
    await store.add_dead_letters("mix", [long_error], attempts=1)
    assert len((await store.dead_letters(destination="mix"))[-1].error) == 1000

    assert await store.purge_dead_letters("mix") == 2
    assert await store.purge_dead_letters(before=newest - 60_000) == 0
    assert await store.purge_dead_letters() == 2
    assert await store.dead_letters() == []


async def test_redrive_marks_hands_back_and_settles(store: Store) -> None:
    await store.add_dead_letters("hooks", [letter(i, f"m{i}") for i in range(1, 5)], attempts=2)
    await store.add_dead_letters("mix", [letter(1, "x")], attempts=2)
    d = {x.message_id: x.id for x in await store.dead_letters()}
    assert await store.redrive_batch("hooks", 10) == []
    assert await store.request_redrive("hooks", [d["m1"], d["m2"], d["x"]]) == 2
    assert await store.request_redrive("hooks", [d["m1"]]) == 0  # already asked
    assert await store.dead_letter_counts() == {"hooks": 2, "mix": 1}
    batch = await store.redrive_batch("hooks", 10)
    assert [x.message_id for x in batch] == ["m1", "m2"]
    assert [x.message_id for x in await store.redrive_batch("hooks", 1)] == ["m1"]

    await store.settle_redrive([d["m1"]], [(d["m2"], 3, "HTTP 500: again")])
    left = {x.message_id: x for x in await store.dead_letters(destination="hooks")}
    assert sorted(left) == ["m2", "m3", "m4"]
    assert (left["m2"].state, left["m2"].attempts, left["m2"].error) == (
        "dead",
        5,
        "HTTP 500: again",
    )
    assert await store.redrive_batch("hooks", 10) == []

    assert await store.request_redrive(None) == 4  # every destination's
    assert [x.message_id for x in await store.redrive_batch("mix", 10)] == ["x"]


# -- replay -----------------------------------------------------------------------


async def test_replay_requests_are_kept_in_order_and_advanced(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.append([row(f"m{i}") for i in range(10)])
    seqs = [e.seq for e in await store.read(0, 100)]
    assert await store.next_replay("hooks") is None
    await store.request_replay("hooks", seqs[2], seqs[5])
    await store.request_replay("hooks", seqs[0], seqs[0])
    await store.request_replay("mix", seqs[0], seqs[9])
    r = await store.next_replay("hooks")
    assert r is not None and (r.destination, r.next_seq, r.until_seq) == ("hooks", seqs[2], seqs[5])
    page = await store.read_range(r.next_seq, r.until_seq, 3)
    assert ids(page) == ["m2", "m3", "m4"]
    await store.advance_replay(r.id, page[-1].seq + 1)
    await store.close()

    store = backend.store()  # a replay under way survives a restart
    await store.open()
    try:
        r2 = await store.next_replay("hooks")
        assert r2 is not None and r2.id == r.id and r2.next_seq == seqs[5]
        assert ids(await store.read_range(r2.next_seq, r2.until_seq, 3)) == ["m5"]
        await store.finish_replay(r2.id)
        r3 = await store.next_replay("hooks")
        assert r3 is not None and (r3.next_seq, r3.until_seq) == (seqs[0], seqs[0])
        m = await store.next_replay("mix")
        assert m is not None and m.until_seq == seqs[9]
    finally:
        await store.close()


# -- suppressions -----------------------------------------------------------------


async def test_suppressions_add_update_remove(store: Store) -> None:
    assert await store.suppressions() == [] and await store.suppression("gina") is None
    await store.suppress("gina", erase=False)
    await store.suppress("hal", erase=True)
    s = await store.suppression("gina")
    assert s is not None and (s.erase, s.erased_events, s.erased_at) == (False, 0, None)
    await store.suppress("gina", erase=True)  # erase can be turned on ...
    await store.suppress("hal", erase=False)  # ... never off
    got = {x.user_id: x.erase for x in await store.suppressions()}
    assert got == {"gina": True, "hal": True}
    assert sorted(await store.pending_erasures()) == ["gina", "hal"]
    assert await store.unsuppress("gina") is True
    assert await store.unsuppress("gina") is False
    assert [x.user_id for x in await store.suppressions()] == ["hal"]


async def test_erasure_deletes_events_below_a_seq_and_dead_letters(store: Store) -> None:
    await store.append([row("g1", user="gina"), row("h1", user="hal"), row("g2", user="gina")])
    seqs = [e.seq for e in await store.read(0, 10)]
    await store.add_dead_letters("hooks", [letter(1, "g1", "gina"), letter(2, "h1", "hal")], 1)
    await store.suppress("gina", erase=True)

    # the newest event (gina's g2) is kept: below_seq is the newest seq
    assert await store.erase_user("gina", seqs[-1]) == (1, 1, False)
    assert ids(await store.read(0, 10)) == ["h1", "g2"]
    assert [d.message_id for d in await store.dead_letters()] == ["h1"]
    s = await store.suppression("gina")
    assert s is not None and s.erased_events == 1 and s.erased_at is None
    assert await store.pending_erasures() == ["gina"]

    await store.append([row("h2", user="hal")])
    assert await store.erase_user("gina", store.last_seq) == (1, 0, True)
    s = await store.suppression("gina")
    assert s is not None and s.erased_events == 2 and s.erased_at is not None
    assert await store.pending_erasures() == []
    assert ids(await store.read(0, 10)) == ["h1", "h2"]


async def test_erasure_deletes_the_seqs_a_feature_found_too(store: Store) -> None:
    # a1, a2: the user's anonymous events (no userId), found by a feature (identity)
    await store.append(
        [row("a1", user=None), row("g1", user="gina"), row("x", user=None), row("a2", user=None)]
    )
    seqs = {ids([e])[0]: e.seq for e in await store.read(0, 10)}
    await store.suppress("gina", erase=True)

    # the newest event (a2) is kept, and the erasure is unfinished: it is one of theirs
    also = [seqs["a1"], seqs["a2"], seqs["g1"]]  # g1 twice: counted once
    assert await store.erase_user("gina", seqs["a2"], also) == (2, 0, False)
    assert ids(await store.read(0, 10)) == ["x", "a2"]
    await store.append([row("h", user="hal")])
    assert await store.erase_user("gina", store.last_seq, [seqs["a2"]]) == (1, 0, True)
    assert ids(await store.read(0, 10)) == ["x", "h"]
    s = await store.suppression("gina")
    assert s is not None and s.erased_events == 3 and s.erased_at is not None


# -- retention --------------------------------------------------------------------


async def test_retention_deletes_in_batches_within_the_bounds(store: Store) -> None:
    await store.append([row(f"m{i}", at=T0 + i) for i in range(10)])
    seqs = [e.seq for e in await store.read(0, 100)]
    # passed up to seqs[7], received before T0 + 6: m0..m5 qualify, 4 at a time
    assert await store.delete_events(upto_seq=seqs[7], received_before=T0 + 6, limit=4) == 4
    assert await store.delete_events(upto_seq=seqs[7], received_before=T0 + 6, limit=4) == 2
    assert await store.delete_events(upto_seq=seqs[7], received_before=T0 + 6, limit=4) == 0
    assert ids(await store.read(0, 100)) == [f"m{i}" for i in range(6, 10)]
    # the passed bound holds even when everything is old
    assert await store.delete_events(upto_seq=seqs[7], received_before=T0 + 100, limit=100) == 2
    assert ids(await store.read(0, 100)) == ["m8", "m9"]

    await store.add_dead_letters("hooks", [letter(i, f"d{i}") for i in range(5)], 1)
    failed = (await store.dead_letters())[0].failed_at
    assert await store.delete_dead_letters(failed_before=failed, limit=10) == 0
    assert await store.delete_dead_letters(failed_before=failed + 1, limit=3) == 3
    assert await store.delete_dead_letters(failed_before=failed + 1, limit=3) == 2
    await store.compact()
