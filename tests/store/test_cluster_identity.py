"""What the cluster's identity backend keeps beyond the conformance suite
(tests/store/test_identity_conformance.py runs it there too): one writer at a time
under the lease, a page written ahead and left unfinished by a crashed writer is
finished by the next one (once), and a writer whose lease another took writes
nothing. A real 3-server cluster, R3; each test its own stream name."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from eventd.config import JetStreamConfig
from eventd.identity.graph import ANONYMOUS, USER, profile_id_for
from eventd.store import NotLeader
from eventd.store.cluster_identity import LEASE_KEY, ClusterIdentityStore, enc, page_record
from tests.nats_cluster import NatsCluster
from tests.store.test_identity_conformance import ANA, page

_streams = itertools.count()


@pytest.fixture
def stores(nats_cluster: NatsCluster) -> Iterator[Callable[[], ClusterIdentityStore]]:
    """New writers (each a node's) over the same buckets; all closed at the end."""
    cfg = JetStreamConfig(servers=tuple(nats_cluster.urls), stream=f"IDL{next(_streams)}")
    made: list[ClusterIdentityStore] = []

    def make() -> ClusterIdentityStore:
        made.append(ClusterIdentityStore(cfg))
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_one_writer_at_a_time_and_the_next_takes_over_on_close(
    stores: Callable[[], ClusterIdentityStore],
) -> None:
    a, b = stores(), stores()
    a.open_writer()
    with pytest.raises(NotLeader, match="another node's identity writer holds the lease"):
        b.open_writer()
    a.apply(page(a, ANA[:2]), 2)
    a.close()  # a clean stop lets the lease go
    b.open_writer()
    assert b.cursor() == 2
    b.apply(page(b, ANA[2:]), 3)
    profile = b.profile(profile_id_for(USER, "ana"))
    assert profile is not None and profile.event_count == 3


def test_a_page_a_crashed_writer_left_is_finished_once_by_the_next(
    stores: Callable[[], ClusterIdentityStore],
) -> None:
    a = stores()
    a.open_writer()
    a.apply(page(a, ANA[:1]), 1)
    # a writes the page ahead, then dies before writing any of it.
    record = page_record(page(a, ANA[1:]), 3)
    a.w.run(a._log_page(record))
    a.close()

    b = stores()
    b.open_writer()  # takes the lease: finishes a's page
    assert b.cursor() == 3
    pid = profile_id_for(USER, "ana")
    assert (b.profile_of(USER, "ana"), b.profile_of(ANONYMOUS, "a1")) == (pid, pid)
    profile = b.profile(pid)
    assert profile is not None
    assert (profile.event_count, profile.events_by_type) == (3, {"track": 2, "identify": 1})
    b.close()
    c = stores()
    c.open_writer()  # the page is finished: not applied again
    profile = c.profile(pid)
    assert profile is not None and profile.event_count == 3


def test_a_writer_whose_lease_another_took_writes_nothing(
    stores: Callable[[], ClusterIdentityStore],
) -> None:
    a, b = stores(), stores()
    a.open_writer()
    a.apply(page(a, ANA[:1]), 1)
    changes = page(a, ANA[1:])
    # a stalls past its lease (its deadline passes, its key lapses) and b takes over.
    a.lease._held_until[LEASE_KEY] = 0.0
    a.w.run(a.w.purge(a.w.leases, LEASE_KEY))
    b.open_writer()
    with pytest.raises(NotLeader, match="another node's identity writer holds the lease"):
        a.apply(changes, 3)
    assert b.cursor() == 1
    assert b.profile_of(USER, "ana") is None
    # Once b lets go, a takes the lease again, and says so once (its graph reloads).
    b.close()
    with pytest.raises(NotLeader, match="lapsed and was taken again"):
        a.cursor()
    assert a.cursor() == 1
    a.apply(page(a, ANA[1:]), 3)
    assert a.profile_of(ANONYMOUS, "a1") == profile_id_for(USER, "ana")


async def test_a_node_that_does_not_write_follows_the_cursor(
    stores: Callable[[], ClusterIdentityStore],
) -> None:
    """What stitched delivery on a node waits on: the cursor any node's writer writes,
    seen on this node's reader (now, then after each page), in order."""
    writer_node, reader_node = stores(), stores()
    writer_node.open_writer()
    writer_node.apply(page(writer_node, ANA[:1]), 1)
    await reader_node.open_reader()
    seen: list[int] = []
    changed = threading.Condition()

    def saw(cursor: int) -> None:
        with changed:
            seen.append(cursor)
            changed.notify_all()

    reader_node.watch_cursor(saw)
    try:
        with changed:
            assert changed.wait_for(lambda: seen == [1], 30), seen
        writer_node.apply(page(writer_node, ANA[1:]), 3)
        with changed:
            assert changed.wait_for(lambda: seen == [1, 3], 30), seen
    finally:
        await reader_node.close_reader()


async def test_a_users_membership_row_is_kept_in_the_users_index_alone(
    stores: Callable[[], ClusterIdentityStore],
) -> None:
    """A userId's membership link (anonymousId "") is new once, known afterwards from the
    user's own index: no anonymousIds' index under "" (one value listing every user, read
    and put whole by each page, past a message's 1 MB at ~19,000 users). An erasure
    still takes the user out of such a value a writer made before."""
    w = stores()
    w.open_writer()
    w.apply(page(w, [(1, {"type": "identify", "anonymousId": "a1", "userId": "ana"}),
                     (2, {"type": "track", "userId": "bob"})]), 2)  # fmt: skip
    w.apply(page(w, [(3, {"type": "identify", "anonymousId": "a2", "userId": "ana"}),
                     (4, {"type": "track", "userId": "bob"})]), 4)  # fmt: skip
    side = w.w
    assert side.run(side.get("la._")) is None
    assert side.run(side.get_json(f"lu.{enc('ana')}", None)) == ["", "a1", "a2"]
    await w.open_reader()
    try:
        links = [(x.anonymous_id, x.user_id) for _, x in await w.read(w.links_after, 0, 100)]
        assert links == [(None, "ana"), ("a1", "ana"), (None, "bob"), ("a2", "ana")]
        # A value under "" as the writer before this one kept it: erasing ana empties it.
        side.run(side.state.put("la._", b'[["ana","2026-11-01T10:00:00.000Z",1]]'))
        assert w.erase("ana") == []
        assert side.run(side.get("la._")) is None
        assert [x.user_id for _, x in await w.read(w.links_after, 0, 100)] == ["bob"]
    finally:
        await w.close_reader()


async def test_an_aborted_reader_ends_its_read_in_flight_at_once(
    stores: Callable[[], ClusterIdentityStore],
) -> None:
    """Issue 14's fourth trial: a stop cut short drops the reader's connection
    (``abort_reader``). A read in flight on the reader thread, waiting on a cluster
    that never answers (here: an await nothing ends), ends at once rather than after
    CALL_TIMEOUT (60 s), and the thread ends with it: the interpreter's exit joins it."""
    r = stores()
    await r.open_reader()
    asked = threading.Event()

    async def never() -> None:  # a server that takes the request and never answers
        asked.set()
        await asyncio.Event().wait()

    def read() -> str:  # on the reader thread, as find_many and the others read
        try:
            r.r.run(never())
        except BaseException as exc:
            return type(exc).__name__
        return "answered"

    reading = asyncio.ensure_future(r.read(read))
    assert await asyncio.to_thread(asked.wait, 30)
    threads = {t for t in threading.enumerate() if t.name.startswith("eventd-identity-reader_")}
    assert len(threads) == 1
    bridge = r.r.bridge
    began = time.monotonic()
    r.abort_reader()
    assert await reading == "CancelledError"
    await asyncio.to_thread(lambda: [t.join(30) for t in threads])
    took = time.monotonic() - began
    assert not any(t.is_alive() for t in threads)
    assert took < 1.0, took  # on the code before: the 60 s of CALL_TIMEOUT
    with pytest.raises(RuntimeError, match="dropped"):  # nothing waits on its stopped loop
        bridge.run(never())
