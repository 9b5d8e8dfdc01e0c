"""The identity store's contract (issue 15, item 8), once per backend in ``BACKENDS``.

The graph's state (profiles, identifiers, links, the stitched timeline, the graph's
cursor and the warehouse feeds' positions) lives behind the Store seam: each Store
hands out its :class:`~eventd.store.base.IdentityBackend` (``Store.identity_store``):
SQLite's identity.db, the memory store's structures. These tests pin what any
backend must keep, through the backend's own methods only, so a cluster backend
(a JetStream KV bucket, say) runs the same suite: add a ``<name>`` branch to
``identity_store`` and its name to ``BACKENDS``.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventd.config import JetStreamConfig, StorageConfig
from eventd.identity.graph import ANONYMOUS, USER, Changes, Graph, Link, profile_id_for
from eventd.identity.links import IdentityLink
from eventd.store import MemoryStore, SqliteStore
from eventd.store.base import IdentityBackend
from eventd.store.cluster import ClusterStore
from eventd.store.memory import MemoryData

BACKENDS = ["sqlite", "memory", "jetstream"]
TS = "2026-11-01T10:00:00.000Z"
_streams = itertools.count()

Opener = Callable[[], IdentityBackend]


@pytest.fixture(params=BACKENDS)
async def identity_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store over the same place each call (a second call after close: a restart),
    as its event Store hands it out. ``jetstream``: a real 3-server cluster (one per
    module), the test's own stream name, R3."""
    opened: list[IdentityBackend] = []
    memory = MemoryData()  # the memory store's "disk", kept across its restarts
    cluster = None
    if request.param == "jetstream":
        cluster = StorageConfig(
            backend="jetstream",
            jetstream=JetStreamConfig(
                servers=tuple(request.getfixturevalue("nats_cluster").urls),
                stream=f"IDC{next(_streams)}",
            ),
        )

    def open_store() -> IdentityBackend:
        path = tmp_path / "identity.db"
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "eventd.db").identity_store(path, "normal")
        elif request.param == "jetstream":
            assert cluster is not None
            store = ClusterStore(cluster).identity_store(path, "normal")
        else:
            assert request.param == "memory"
            store = MemoryStore(memory).identity_store(path, "normal")
        store.open_writer()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close_reader()
        store.close()


def page(store: IdentityBackend, events: list[tuple[int, dict[str, str]]]) -> Changes:
    """The changes the graph makes for ``events`` (seq, message) over ``store``."""
    graph = Graph(backing=store)
    for seq, msg in events:
        graph.apply(seq, {"timestamp": TS, **msg})
    return graph.take_changes()


ANA = [
    (1, {"type": "track", "anonymousId": "a1"}),
    (2, {"type": "identify", "anonymousId": "a1", "userId": "ana"}),
    (3, {"type": "track", "userId": "ana"}),
]


async def test_a_page_and_the_cursor_past_it_survive_a_restart(identity_store: Opener) -> None:
    store = identity_store()
    assert store.cursor() == 0
    store.apply(page(store, ANA), 3)
    store.close()

    again = identity_store()
    pid = profile_id_for(USER, "ana")
    assert again.cursor() == 3
    assert (again.profile_of(USER, "ana"), again.profile_of(ANONYMOUS, "a1")) == (pid, pid)
    profile = again.profile(pid)
    assert profile is not None
    assert (profile.user_ids, profile.anonymous_ids, profile.event_count) == (["ana"], ["a1"], 3)
    assert again.links_of("a1") == [Link("a1", "ana", TS, 2)]
    assert again.profile(profile_id_for(ANONYMOUS, "a1")) is None  # merged away
    await again.open_reader()
    found = await again.read(again.find, ANONYMOUS, "a1")
    assert found is not None and found.profile_id == pid
    assert await again.read(again.timeline, found, 2**63 - 1, 10) == [3, 2, 1]


async def test_a_page_that_fails_keeps_nothing_of_it(identity_store: Opener) -> None:
    store = identity_store()
    store.apply(page(store, ANA[:1]), 1)
    changes = page(store, ANA[1:])
    broken = Changes(**{**vars(changes), "links": [*changes.links, Link("a9", None, TS, 3)]})  # type: ignore[arg-type]
    with pytest.raises((sqlite3.IntegrityError, ValueError)):  # SQLite's NOT NULL; memory's check
        store.apply(broken, 3)
    assert store.cursor() == 1
    assert store.profile_of(USER, "ana") is None
    assert store.links_of("a1") == []
    store.apply(changes, 3)  # the same page again, whole
    assert store.cursor() == 3
    assert store.profile_of(ANONYMOUS, "a1") == profile_id_for(USER, "ana")


async def test_links_come_after_a_position_in_order_and_positions_survive(
    identity_store: Opener,
) -> None:
    store = identity_store()
    store.apply(page(store, ANA), 3)
    bob = [(4, {"type": "identify", "anonymousId": "b1", "userId": "bob"})]
    store.apply(page(store, bob), 4)
    await store.open_reader()
    links = await store.read(store.links_after, 0, 100)
    at = datetime(2026, 11, 1, 10, tzinfo=UTC)
    ana, bobs = profile_id_for(USER, "ana"), profile_id_for(USER, "bob")
    assert [link for _, link in links] == [
        IdentityLink(None, "ana", ana, at),
        IdentityLink("a1", "ana", ana, at),
        IdentityLink(None, "bob", bobs, at),
        IdentityLink("b1", "bob", bobs, at),
    ]
    versions = [v for v, _ in links]
    assert versions == sorted(set(versions))
    assert await store.read(store.links_after, versions[1], 100) == links[2:]
    store.save_position("warehouse", versions[1])
    await store.close_reader()
    store.close()

    again = identity_store()
    await again.open_reader()
    assert await again.read(again.position, "warehouse") == versions[1]
    assert await again.read(again.position, "other") == 0


async def test_erase_deletes_the_profile_and_returns_its_anonymous_events(
    identity_store: Opener,
) -> None:
    store = identity_store()
    store.apply(page(store, ANA), 3)
    assert store.erase("ana") == [1]  # its anonymous event; 2 and 3 carry the userId
    assert (store.profile_of(USER, "ana"), store.profile_of(ANONYMOUS, "a1")) == (None, None)
    assert store.profile(profile_id_for(USER, "ana")) is None
    assert store.links_of("a1") == []
    assert store.erase("ana") == []


async def test_merges_resend_links_and_timelines_follow_shared_devices(
    identity_store: Opener,
) -> None:
    """A shared laptop (two users sign in on it), then an alias merging bob into ana:
    each profile's timeline has the laptop's events of its own ranges only, and the
    merged user's links come again after the merge, with the profile they belong to."""
    store = identity_store()
    log = [
        (1, {"type": "track", "anonymousId": "laptop"}),
        (2, {"type": "identify", "anonymousId": "laptop", "userId": "ana"}),
        (3, {"type": "track", "anonymousId": "laptop"}),
        (4, {"type": "identify", "anonymousId": "laptop", "userId": "cy"}),
        (5, {"type": "track", "anonymousId": "laptop"}),
        (6, {"type": "identify", "anonymousId": "phone", "userId": "bob"}),
    ]
    store.apply(page(store, log), 6)
    await store.open_reader()
    ana, cy = store.profile(profile_id_for(USER, "ana")), store.profile(profile_id_for(USER, "cy"))
    assert ana is not None and cy is not None
    assert await store.read(store.timeline, ana, 2**63 - 1, 10) == [3, 2, 1]
    assert await store.read(store.timeline, cy, 2**63 - 1, 10) == [5, 4]
    assert await store.read(store.timeline, ana, 3, 1) == [2]  # below 3, newest first
    assert store.profile_of(ANONYMOUS, "laptop") == cy.profile_id  # its new events: cy's
    before = await store.read(store.links_after, 0, 100)
    top = before[-1][0]

    store.apply(page(store, [(7, {"type": "alias", "previousId": "bob", "userId": "ana"})]), 7)
    again = await store.read(store.links_after, top, 100)
    assert {(x.anonymous_id, x.user_id, x.profile_id) for _, x in again} == {
        (None, "bob", ana.profile_id),
        ("phone", "bob", ana.profile_id),
    }
    assert all(v > top for v, _ in again)
    found = await store.read(store.find_many, [(USER, "bob"), (ANONYMOUS, "phone"), (USER, "x")])
    assert {k: p.profile_id for k, p in found.items()} == {
        (USER, "bob"): ana.profile_id,
        (ANONYMOUS, "phone"): ana.profile_id,
    }
    assert await store.read(store.counts) == {"profiles": 2, "identifiers": 5, "links": 6}

    # Erasing ana: her profile (bob's ids with it) and her laptop events; cy keeps his.
    assert store.erase("ana") == [1, 3]
    assert store.profile_of(ANONYMOUS, "laptop") == cy.profile_id
    assert await store.read(store.timeline, cy, 2**63 - 1, 10) == [5, 4]
    assert await store.read(store.counts) == {"profiles": 1, "identifiers": 2, "links": 2}


async def test_timelines_span_pages_newest_first_below_any_seq(identity_store: Opener) -> None:
    """Events of the same ids over several pages (a store may file them per page): every
    (before, limit) gives the profile's seqs below ``before``, newest first, as computed
    from the log; erasing ana removes her anonymous events in every page, bo's stay."""
    store = identity_store()
    log: list[tuple[int, dict[str, str]]] = []
    for seq in range(1, 41):
        if seq % 3 == 0:
            log.append((seq, {"type": "track", "anonymousId": "bo-phone"}))
        elif seq == 14:
            log.append((seq, {"type": "identify", "anonymousId": "a1", "userId": "ana"}))
        elif seq % 3 == 1 or seq < 14:
            log.append((seq, {"type": "track", "anonymousId": "a1"}))
        else:
            log.append((seq, {"type": "track", "userId": "ana", "anonymousId": "a1"}))
    for first in range(0, 40, 7):  # pages of 7 events
        events = log[first : first + 7]
        store.apply(page(store, events), events[-1][0])
    ana_seqs = [s for s, m in log if m.get("anonymousId") == "a1" or m.get("userId") == "ana"]
    bo_seqs = [s for s, m in log if m.get("anonymousId") == "bo-phone"]
    await store.open_reader()
    ana = store.profile(profile_id_for(USER, "ana"))
    bo = store.profile(profile_id_for(ANONYMOUS, "bo-phone"))
    assert ana is not None and bo is not None
    for before in (1, 2, 14, 15, 22, 29, 40, 41, 2**63 - 1):
        for limit in (1, 3, 7, 8, 100):
            expected = sorted((s for s in ana_seqs if s < before), reverse=True)[:limit]
            assert await store.read(store.timeline, ana, before, limit) == expected
    anonymous_only = [s for s, m in log if m.get("anonymousId") == "a1" and "userId" not in m]
    assert store.erase("ana") == anonymous_only
    assert await store.read(store.timeline, bo, 2**63 - 1, 100) == bo_seqs[::-1]
    assert await store.read(store.timeline, bo, 20, 2) == [18, 15]
