"""The identity store's contract (issue 15, item 8), once per backend in ``BACKENDS``.

The graph's state (profiles, identifiers, links, the stitched timeline, the graph's
cursor and the warehouse feeds' positions) lives in an :class:`IdentityStore`, beside
the event Store and not behind it: today only SQLite's identity.db implements it, so
a cluster backend does not share the graph yet. These tests pin what any backend
must keep, through the store's own methods only, so a second one (a JetStream KV
bucket, say) runs the same suite: add a ``<name>`` branch to ``identity_store`` and
its name to ``BACKENDS``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventd.identity.graph import ANONYMOUS, USER, Changes, Graph, Link, profile_id_for
from eventd.identity.links import IdentityLink
from eventd.store.identity import IdentityStore

BACKENDS = ["sqlite"]
TS = "2026-11-01T10:00:00.000Z"

Opener = Callable[[], IdentityStore]


@pytest.fixture(params=BACKENDS)
async def identity_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store over the same place each call (a second call after close: a restart)."""
    opened: list[IdentityStore] = []

    def open_store() -> IdentityStore:
        assert request.param == "sqlite"
        store = IdentityStore(tmp_path / "identity.db", "normal")
        store.open_writer()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close_reader()
        store.close()


def page(store: IdentityStore, events: list[tuple[int, dict[str, str]]]) -> Changes:
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
    with pytest.raises(sqlite3.IntegrityError):
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
