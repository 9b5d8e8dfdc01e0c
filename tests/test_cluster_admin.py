"""The cluster store's shared administrative state (eventd/store/cluster_admin.py) on a
real 3-server NATS JetStream cluster, seen from two nodes (two ClusterStores on one
stream, as two ``eventd serve`` processes have): a suppression written on one node
skips the user's events in the other node's deliveries; a redrive asked on one node
is done by one node at a time; a replay from a time resends exactly the events
received since then; an erasure deletes the user's log messages and publishes the
rest of a group again. The Store conformance suite (tests/store/) runs on the
cluster too (its ``jetstream`` backend). Counted by messageId; waits are on
conditions with deadlines."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp
import orjson
import pytest
from nats.js.api import ConsumerInfo, KeyValueConfig
from nats.js.errors import NotFoundError

from eventd import OK, Destination, Event, Outcome
from eventd.config import DestinationConfig, IdentityConfig, JetStreamConfig, StorageConfig
from eventd.delivery.worker import Worker
from eventd.identity.service import IdentityService
from eventd.metrics import Metrics
from eventd.store import DONE, REQUESTED, Conflict, Deletion, EventRow, NewDeadLetter, now_ms
from eventd.store.cluster import ClusterStore
from eventd.store.cluster_admin import EVENT_BITS
from eventd.suppressions import Suppressions
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.slow

_streams = itertools.count(1)
DEADLINE = 60.0


class Recording(Destination):
    """Takes everything; remembers the messageIds it took, in order."""

    type_name = "recording"

    def __init__(self, name: str, settings: dict[str, object], s: aiohttp.ClientSession) -> None:
        super().__init__(name, settings, s)
        self.took: list[str] = []

    async def deliver(self, batch: Sequence[Event]) -> list[Outcome]:
        self.took.extend(e.message["messageId"] for e in batch)
        return [OK] * len(batch)


class LocalRecording(Recording):
    """A node-local destination (as duckdb): each node's copy takes every event."""

    node_local = True


def rows(user: str, *mids: str, at: int | None = None) -> list[EventRow]:
    return [
        (
            "web",
            m,
            "track",
            "E",
            user,
            None,
            now_ms() if at is None else at,
            orjson.dumps({"type": "track", "messageId": m, "userId": user}),
        )
        for m in mids
    ]


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait for ``check()`` (state another task or node changes), bounded."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        await asyncio.sleep(0.01)  # polled: the condition has no signal of its own


class Nodes:
    """ClusterStores on one stream of the cluster, each with a data directory."""

    def __init__(self, cluster: NatsCluster, tmp: Path, partitions: int = 2) -> None:
        self.cfg = JetStreamConfig(
            servers=tuple(cluster.urls), stream=f"A{next(_streams)}", partitions=partitions
        )
        self.tmp = tmp
        self.open: list[ClusterStore] = []

    async def start(
        self, name: str, destinations: Sequence[str] = ("r",), local: Sequence[str] = ()
    ) -> ClusterStore:
        storage = StorageConfig(
            backend="jetstream", jetstream=self.cfg, path=self.tmp / name / "eventd.db"
        )
        store = ClusterStore(storage, destinations, local=local)
        await store.open()
        self.open.append(store)
        return store

    async def forwarded(self, n: int) -> None:
        """Until the nodes' dedup stages have forwarded ``n`` events in all."""
        await until(lambda: sum(s.js.forwarded for s in self.open) >= n, f"{n} forwarded")

    async def close(self) -> None:
        for store in self.open:
            await store.close()


@pytest.fixture
async def nodes(nats_cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[Nodes]:
    found = Nodes(nats_cluster, tmp_path)
    yield found
    await found.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_node_has_one_id_its_leases_heartbeat_and_records_all_show(
    nodes: Nodes,
) -> None:
    """Issue 14's trial: a suppression record's ``nodes`` showed the node-id file's
    id while the leases showed ``<host>-<pid>``, and a user could not tell which
    node was which. The leases' values, the heartbeat, the node-local consumer and
    the deletion record's copy all name the ``node-id`` file's id."""
    a = await nodes.start("a", destinations=("dl", "r"), local=("dl",))
    plain = await nodes.start("b")  # no node-local destination: an id all the same
    ids = {
        "a": (nodes.tmp / "a" / "node-id").read_text().strip(),
        "b": (nodes.tmp / "b" / "node-id").read_text().strip(),
    }
    assert ids["a"] != ids["b"]
    leases = a.js.leases
    assert leases is not None

    async def holders() -> dict[str, str]:
        found = {}
        for key in await leases.keys():
            if key.startswith("dedup-"):
                entry = await leases.get(key)
                assert entry.value is not None
                found[key] = entry.value.decode()
        return found

    deadline = time.monotonic() + 30
    while len(await holders()) < nodes.cfg.partitions:
        assert time.monotonic() < deadline, "dedup leases not taken"
        await asyncio.sleep(0.1)
    assert set((await holders()).values()) <= set(ids.values())
    beats = {k.removeprefix("node-") for k in await leases.keys() if k.startswith("node-")}
    assert beats == set(ids.values())
    assert (a.js.node_id, plain.js.node_id) == (ids["a"], ids["b"])
    await a.request_deletions("lia", [("dl", "duckdb")], b'{"x": 1}')
    [deletion] = await a.deletions("lia")
    assert [n.node for n in deletion.nodes] == [ids["a"]]
    consumers = {c.name async for c in _consumers(a)}
    assert f"dest-dl@{ids['a']}" in consumers


async def _consumers(store: ClusterStore) -> AsyncIterator[ConsumerInfo]:
    for info in await store.js.js.consumers_info(store.js.names.stream):
        yield info


async def test_a_suppression_written_on_one_node_skips_the_users_events_on_another(
    nodes: Nodes, session: aiohttp.ClientSession
) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    on_a, on_b = Suppressions(a), Suppressions(b)
    await on_a.load()
    await on_b.load()

    await on_a.suppress("gone", erase=False)
    await asyncio.wait_for(on_b.changed.wait(), DEADLINE)
    assert on_b.user_ids == {"gone"}
    assert [s["user_id"] for s in await on_b.list()] == ["gone"]

    # Events stored before ingest could check (acknowledged before the suppression),
    # delivered by b alone: b skips gone's.
    dest = Recording("r", {}, session)
    config = DestinationConfig(name="r", type="recording")
    worker = Worker(config, dest, b, Metrics(), (), on_b.user_ids)
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        await a.append(rows("gone", "g1", "g2") + rows("kept", "k1", "k2", "k3"))
        await until(lambda: worker.delivered + worker.skipped == 5, "5 settled on b")
        assert sorted(dest.took) == ["k1", "k2", "k3"] and worker.skipped == 2

        # Removed on b: a takes gone's events again.
        on_a.changed.clear()
        assert await on_b.unsuppress("gone") is True
        await asyncio.wait_for(on_a.changed.wait(), DEADLINE)
        assert on_a.user_ids == set() and await a.suppressions() == []
        await a.append(rows("gone", "g3"))
        await until(lambda: "g3" in dest.took, "g3 delivered")
    finally:
        worker.stopping.set()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await worker.feed.close()


async def test_a_redrive_asked_on_one_node_is_done_by_one_node_at_a_time(nodes: Nodes) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    body = orjson.dumps({"type": "track", "messageId": "d1", "userId": "u"})
    letters = [NewDeadLetter(i << EVENT_BITS, "web", f"d{i}", 1, body, "HTTP 400") for i in (1, 2)]
    await a.add_dead_letters("r", letters, attempts=3)
    ids = [d.id for d in await b.dead_letters()]
    assert len(ids) == 2

    assert await b.request_redrive("r") == 2
    assert await a.request_redrive("r") == 0  # already asked, whichever node asks
    assert {d.state for d in await a.dead_letters()} == {"redrive"}
    assert await a.dead_letter_counts() == {}

    batch = await a.redrive_batch("r", 10)  # a takes the destination's redrives ...
    assert [d.id for d in batch] == ids
    assert await b.redrive_batch("r", 10) == []  # ... and b does not meanwhile
    await a.settle_redrive([ids[0]], [(ids[1], 1, "HTTP 500")])
    left = await b.dead_letters()
    assert [(d.message_id, d.state, d.attempts, d.error) for d in left] == [
        ("d2", "dead", 4, "HTTP 500")
    ]
    assert await b.dead_letter(ids[0]) is None
    assert await a.redrive_batch("r", 10) == [] and await a.next_replay("r") is None
    # Nothing left: a gave the destination back, so b can take the next one.
    assert await a.request_redrive("r") == 1
    assert [d.message_id for d in await b.redrive_batch("r", 10)] == ["d2"]
    assert await b.purge_dead_letters("r") == 1
    assert await a.dead_letters() == [] and await a.dead_letter_counts() == {}

    # storage.dead_letter_retention, from any node, a few at a time
    # (other events: a copy of the same event within the stream's 2 min message-id
    # window is taken for a publish retry and dropped)
    more = [NewDeadLetter(i << EVENT_BITS, "web", f"d{i}", 1, body, "HTTP 400") for i in (3, 4)]
    await a.add_dead_letters("r", more, attempts=1)
    failed = max(d.failed_at for d in await b.dead_letters())
    assert await b.delete_dead_letters(failed_before=failed - 60_000, limit=10) == 0
    assert await b.delete_dead_letters(failed_before=failed + 1, limit=1) == 1
    assert await a.delete_dead_letters(failed_before=failed + 1, limit=10) == 1
    assert await a.dead_letters() == []


def letter(message_id: str, seq: int) -> NewDeadLetter:
    body = orjson.dumps({"type": "track", "messageId": message_id, "userId": "u"})
    return NewDeadLetter(seq << EVENT_BITS, "web", message_id, 1, body, "HTTP 400")


class Running:
    """Workers for ``dl`` (node-local) and ``r`` (shared) on each of some nodes, each
    into a Recording of its own (a node's file, a node's share of a webhook)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.dests: dict[tuple[str, str], Recording] = {}
        self.workers: list[Worker] = []
        self.runs: list[asyncio.Task[None]] = []

    async def start(self, node: str, store: ClusterStore) -> None:
        for name, kind in (("dl", LocalRecording), ("r", Recording)):
            dest = kind(name, {}, self.session)
            worker = Worker(DestinationConfig(name=name, type="recording"), dest, store, Metrics())
            await worker.start()
            self.dests[node, name] = dest
            self.workers.append(worker)
            self.runs.append(asyncio.create_task(worker.run()))

    def took(self, node: str, name: str) -> list[str]:
        return self.dests[node, name].took

    def wake(self) -> None:  # as the Dispatcher does after a redrive or replay request
        for worker in self.workers:
            worker.wake()

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stopping.set()
        for run in self.runs:
            run.cancel()
        await asyncio.gather(*self.runs, return_exceptions=True)
        for worker in self.workers:
            await worker.feed.close()


async def test_a_node_local_destinations_redrive_and_replay_go_into_each_nodes_own_copy(
    nodes: Nodes, session: aiohttp.ClientSession
) -> None:
    """A node-local destination's dead letter names the node whose copy refused it;
    its redrive is resent by that node alone, into its own copy; a replay is resent
    by every node into its own; a shared destination's redrive still by one node."""
    both = {"destinations": ("dl", "r"), "local": ("dl",)}
    a, b = await nodes.start("a", **both), await nodes.start("b", **both)  # type: ignore[arg-type]
    assert a.node_id and b.node_id and a.node_id != b.node_id
    await a.add_dead_letters("dl", [letter("xa", 1)], attempts=3)
    await b.add_dead_letters("dl", [letter("xb", 2)], attempts=3)
    await a.add_dead_letters("r", [letter("s1", 3)], attempts=3)
    listed = {d.message_id: d.node for d in await b.dead_letters()}
    assert listed == {"xa": a.node_id, "xb": b.node_id, "s1": None}

    since = now_ms() - 1
    await a.append(rows("u1", "e1", "e2") + rows("u2", "e3"))
    await nodes.forwarded(3)
    logged = ["e1", "e2", "e3"]
    running = Running(session)
    try:
        await running.start("a", a)
        await running.start("b", b)
        for node in ("a", "b"):  # each node's own copy gets every event of the log
            await until(lambda n=node: len(running.took(n, "dl")) == 3, f"{node}'s copy")  # type: ignore[misc]
            assert sorted(running.took(node, "dl")) == logged
        await until(lambda: len(running.took("a", "r") + running.took("b", "r")) == 3, "r")

        # Asked on b: a's letter is resent by a into a's copy, b's by b into b's.
        assert await b.request_redrive("dl") == 2
        running.wake()
        await until(lambda: len(running.took("a", "dl")) == 4, "a's letter resent")
        await until(lambda: len(running.took("b", "dl")) == 4, "b's letter resent")

        async def no_dead(destination: str) -> None:
            """Until the destination's letters are deleted (settled after it took them)."""
            deadline = time.monotonic() + DEADLINE
            while await a.dead_letters(destination=destination):
                assert time.monotonic() < deadline, f"{destination}'s letters not settled"
                await asyncio.sleep(0.2)  # polled: the cluster has no signal for it

        await no_dead("dl")
        assert running.took("a", "dl")[3:] == ["xa"] and running.took("b", "dl")[3:] == ["xb"]

        # A shared destination's letter: resent once, by whichever node took the lease.
        assert await a.request_redrive("r") == 1
        running.wake()
        await until(lambda: "s1" in running.took("a", "r") + running.took("b", "r"), "s1")
        await no_dead("r")
        shared = running.took("a", "r") + running.took("b", "r")
        assert sorted(shared) == ["e1", "e2", "e3", "s1"]

        # A replay asked on a: resent by every node into its own copy.
        found = await a.seq_range(since, now_ms())
        assert found is not None and found.count == 3
        await a.request_replay("dl", found.first, found.last)
        running.wake()
        for node in ("a", "b"):
            await until(lambda n=node: len(running.took(n, "dl")) == 7, f"{node}'s replay")  # type: ignore[misc]
            assert sorted(running.took(node, "dl")[4:]) == logged
        await until(lambda: all(w.aside.is_idle for w in running.workers), "replays finished")
        assert await a.next_replay("dl") is None and await b.next_replay("dl") is None
        assert sorted(running.took("a", "r") + running.took("b", "r")) == sorted(shared)
    finally:
        await running.stop()


async def test_a_letter_of_a_node_gone_for_good_is_listed_refused_by_id_and_purged(
    nodes: Nodes,
) -> None:
    """A node gone longer than storage.retention has no consumer left (the servers
    removed it): nobody can resend into its file. Its letters stay listed; a redrive
    by id answers Conflict (409) naming the node and marks nothing; a redrive of
    everything skips them; a purge removes them; its queued replays are dropped."""
    both = {"destinations": ("dl",), "local": ("dl",)}
    a, b = await nodes.start("a", **both), await nodes.start("b", **both)  # type: ignore[arg-type]
    await a.add_dead_letters("dl", [letter("xa", 1)], attempts=1)
    await b.add_dead_letters("dl", [letter("xb", 2)], attempts=1)
    await a.request_replay("dl", 1 << EVENT_BITS, 1 << EVENT_BITS)
    gone = b.node_id
    await b.close()
    nodes.open.remove(b)
    await a.js.js.delete_consumer(a.js.names.stream, a.js.names.local_consumer("dl", gone))

    ids = {d.message_id: d.id for d in await a.dead_letters()}
    with pytest.raises(Conflict, match=gone):
        await a.request_redrive("dl", [ids["xb"], ids["xa"]])
    assert {d.state for d in await a.dead_letters()} == {"dead"}  # nothing marked
    assert await a.request_redrive("dl") == 1  # a's own only
    assert [d.message_id for d in await a.redrive_batch("dl", 10)] == ["xa"]
    assert {d.message_id: d.state for d in await a.dead_letters()} == {
        "xa": "redrive",
        "xb": "dead",
    }
    # a's replay is a's to do; b's is dropped (no node can do it).
    replay = await a.next_replay("dl")
    assert replay is not None
    await a.finish_replay(replay.id)
    assert await a.next_replay("dl") is None
    assert await a._entries("replay.dl.*") == {}
    assert await a.purge_dead_letters("dl") == 2 and await a.dead_letters() == []


async def test_replay_from_a_time_resends_what_was_received_since_then(
    nodes: Nodes, session: aiohttp.ClientSession
) -> None:
    a, b = await nodes.start("a"), await nodes.start("b")
    # Received 10 s ago, stored now: the consumer starting at `since` reads their
    # messages too, and their received_at keeps them out of the range.
    since = now_ms() - 5_000
    old = since - 5_000
    await a.append(rows("u1", "old1", "old2", at=old) + rows("u2", "old3", at=old))
    await nodes.forwarded(3)
    await b.append(rows("u1", "new1") + rows("u3", "new2", "new3"))
    await nodes.forwarded(6)

    found = await b.seq_range(since, now_ms())
    assert found is not None and found.count == 3
    replayed = await a.read_range(found.first, found.last, 100)
    assert sorted(orjson.loads(e.body)["messageId"] for e in replayed) == ["new1", "new2", "new3"]

    # Through a worker on b, asked on a: the log once, then the replay.
    dest = Recording("r", {}, session)
    worker = Worker(DestinationConfig(name="r", type="recording", batch_size=2), dest, b, Metrics())
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        await until(lambda: len(dest.took) == 6, "the log delivered")
        await a.request_replay("r", found.first, found.last)
        worker.wake()
        await until(lambda: len(dest.took) == 9, "the replay delivered")
        assert sorted(dest.took[6:]) == ["new1", "new2", "new3"]
        await until(lambda: worker.aside.is_idle, "replay finished")
        assert await a.next_replay("r") is None
    finally:
        worker.stopping.set()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await worker.feed.close()


async def test_an_erasure_deletes_the_users_messages_and_publishes_the_rest_again(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    nodes = Nodes(nats_cluster, tmp_path, partitions=1)  # one group holds both users
    try:
        a = await nodes.start("a")
        b = await nodes.start("b")
        await a.append(rows("gina", "g1") + rows("hal", "h1") + rows("gina", "g2"))
        await a.append(rows("gina", "g3"))
        await nodes.forwarded(4)
        g1 = await b.find_event("web", "g1")
        g3 = await b.find_event("web", "g3")
        assert g1 is not None and g3 is not None
        mixed, alone = g1.seq >> EVENT_BITS, g3.seq >> EVENT_BITS
        body = orjson.dumps({"type": "track", "messageId": "g1", "userId": "gina"})
        await a.add_dead_letters("r", [NewDeadLetter(g1.seq, "web", "g1", 1, body, "x")], 1)

        await b.suppress("gina", erase=True)
        assert await b.erase_user("gina", 2**62) == (3, 1, True)
        for seq in (mixed, alone):  # the messages are gone from the stream
            with pytest.raises(NotFoundError):
                await a.js.js.get_msg(a.js.names.stream, seq=seq)
        assert await a.find_event("web", "g1") is None and await a.dead_letters() == []
        h1 = await a.find_event("web", "h1")  # published again, after the others
        assert h1 is not None and h1.seq >> EVENT_BITS > alone
        assert [orjson.loads(e.body)["messageId"] for e in await a.read(0, 10)] == ["h1"]
        s = await a.suppression("gina")
        assert s is not None and (s.erased_events, s.erased_at is not None) == (3, True)
        assert await a.pending_erasures() == []
    finally:
        await nodes.close()


async def test_an_erasure_below_all_a_node_has_seen_reaches_the_logs_end(
    nodes: Nodes,
) -> None:
    """``suppressions add --erase`` erases below the store's ``last_seq``. On SQLite
    that keeps the newest event (its seq would be handed out again); on the cluster
    it is the newest this node fetched, which another node's fetch can leave behind
    the log, and the log never hands a sequence out again: everything goes (CI saw
    ``erased events: 4, erasure pending`` for a user with 5)."""
    a, b = await nodes.start("a"), await nodes.start("b")
    await a.append(rows("zed", "z1", "z2") + rows("kit", "k1"))
    await a.append(rows("zed", "z3"))
    await nodes.forwarded(4)
    await b.suppress("zed", erase=True)
    assert await b.erase_user("zed", b.last_seq) == (3, 0, True)
    left = [orjson.loads(e.body)["messageId"] for e in await b.read(0, 10)]
    assert left == ["k1"]


async def test_two_nodes_finishing_one_erasure_at_once_count_each_event_once(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Both nodes erase ivy at the same moment: each has read the log, and neither
    deletes before the other has read it (their first message deletes wait for each
    other). Each message's delete succeeds on one node, so ``erased_events`` is the
    number of ivy's events, not twice some of them; both calls see the erasure done."""
    nodes = Nodes(nats_cluster, tmp_path, partitions=1)
    try:
        a = await nodes.start("a")
        b = await nodes.start("b")
        await a.append(rows("ivy", "i1", "i2") + rows("jo", "j1"))
        await a.append(rows("ivy", "i3"))
        await a.append(rows("jo", "j2") + rows("ivy", "i4", "i5"))
        await nodes.forwarded(7)
        together = asyncio.Barrier(2)

        def counted(store: ClusterStore) -> int | None:
            """ivy's erased_events in this node's copy of the suppressions."""
            held = store._suppressed.get("ivy")
            return held[1].erased_events if held and held[1] else None

        def gated(store: ClusterStore) -> None:
            delete = store.js.js.delete_msg
            first = True

            async def delete_msg(stream: str, seq: int) -> bool:
                nonlocal first
                if first:  # both nodes have read the message this one deletes
                    first = False
                    await asyncio.wait_for(together.wait(), DEADLINE)
                return await delete(stream, seq)

            store.js.js.delete_msg = delete_msg  # type: ignore[method-assign]

        gated(a)
        gated(b)
        await a.suppress("ivy", erase=True)
        (gone_a, _, done_a), (gone_b, _, done_b) = await asyncio.gather(
            a.erase_user("ivy", 2**62), b.erase_user("ivy", 2**62)
        )
        assert gone_a + gone_b == 5 and done_a and done_b
        # Each node's copy follows the bucket: the other node's write comes by its watch.
        for store in (a, b):
            await until(lambda store=store: counted(store) == 5, "the last count")
            s = await store.suppression("ivy")
            assert s is not None and s.erased_at is not None
        left = [orjson.loads(e.body)["messageId"] for e in await b.read(0, 10)]
        assert sorted(left) == ["j1", "j2"]  # jo's, published again once
    finally:
        await nodes.close()


async def test_a_deletion_is_claimed_by_one_node_at_a_time_and_seen_by_both(
    nodes: Nodes,
) -> None:
    """Forwarded erasures on the cluster (eventd/store/cluster_deletions.py): a request
    recorded on a is pending on b too, and b hears of each of a's changes; one node
    at a time holds a (user, destination)'s claim; once released, the other takes it."""
    a, b = await nodes.start("a"), await nodes.start("b")
    heard: list[str] = []
    b.on_deletion(heard.append)
    await a.request_deletions("lia", [("hook", "webhook"), ("mp", "mixpanel")], b'{"x": 1}')
    await until(lambda: heard.count("lia") >= 2, "b heard of both requests")
    pending = await b.pending_deletions()
    assert sorted((d.user_id, d.destination) for d in pending) == [("lia", "hook"), ("lia", "mp")]

    assert await a.claim_deletion("lia", "hook") is True
    assert await a.claim_deletion("lia", "hook") is True  # held: kept
    assert await b.claim_deletion("lia", "hook") is False
    assert await b.claim_deletion("lia", "mp") is True  # another destination's: free
    await a.save_deletion("lia", "hook", DONE, 1, None)
    await until(lambda: heard.count("lia") >= 3, "b heard it done")
    await a.release_deletion("lia", "hook")
    assert await b.claim_deletion("lia", "hook") is True
    assert [d.destination for d in await b.pending_deletions()] == ["mp"]
    (hook,) = [d for d in await b.deletions("lia") if d.destination == "hook"]
    assert (hook.state, hook.attempts, hook.erasure) == (DONE, 1, b'{"x": 1}')


async def test_a_node_local_destinations_deletion_is_run_by_each_node_on_its_own_copy(
    nodes: Nodes,
) -> None:
    """A node-local destination's erasure has a copy per node with a consumer: each
    node runs its own (its own claim), and the destination's state sums them up,
    done once every copy is. A node gone for good (its consumer removed) is marked
    gone by another node's look and no longer waited for; back with its id after
    all (its old file still holds the person), it runs its copy again."""
    both = {"destinations": ("dl", "r"), "local": ("dl",)}
    a, b = await nodes.start("a", **both), await nodes.start("b", **both)  # type: ignore[arg-type]
    heard: list[str] = []
    b.on_deletion(heard.append)
    await a.request_deletions("lia", [("dl", "duckdb"), ("r", "webhook")], b'{"x": 1}')
    await until(lambda: heard.count("lia") >= 2, "b heard of both requests")

    def mine(found: Sequence[Deletion]) -> list[tuple[str, str, int]]:
        return sorted((d.destination, d.state, d.attempts) for d in found)

    # Each node has its own copy of dl to run, under its own claim; r is shared.
    for node in (a, b):
        assert mine(await node.pending_deletions()) == [("dl", REQUESTED, 0), ("r", REQUESTED, 0)]
        assert await node.claim_deletion("lia", "dl") is True
    assert await a.claim_deletion("lia", "r") is True
    assert await b.claim_deletion("lia", "r") is False

    def copies(d: Deletion) -> list[tuple[str, str, int]]:
        return [(n.node, n.state, n.attempts) for n in d.nodes]

    ids = sorted([a.node_id, b.node_id])
    await a.save_deletion("lia", "dl", DONE, 1, None)
    (dl, r) = await b.deletions("lia")
    assert (dl.state, r.state, r.nodes) == (REQUESTED, REQUESTED, ())
    assert copies(dl) == sorted([(a.node_id, DONE, 1), (b.node_id, REQUESTED, 0)])
    assert mine(await a.pending_deletions()) == [("r", REQUESTED, 0)]  # a's copy is done
    await b.save_deletion("lia", "dl", REQUESTED, 1, "busy", 123)
    (dl, _) = await a.deletions("lia")
    assert (dl.state, dl.attempts, dl.reason) == (REQUESTED, 2, f"node {b.node_id}: busy")
    assert dl.next_attempt_at == 123
    here = await b.deletion_here("lia", "dl")
    assert here is not None and (here.state, here.attempts, here.reason) == (REQUESTED, 1, "busy")
    await b.save_deletion("lia", "dl", DONE, 2, None)
    (dl, _) = await a.deletions("lia")
    assert (dl.state, dl.attempts, dl.reason, dl.next_attempt_at) == (DONE, 3, None, None)
    assert copies(dl) == sorted([(a.node_id, DONE, 1), (b.node_id, DONE, 2)])
    assert [n.node for n in dl.nodes] == ids

    # b goes for good: its consumer is removed (storage.retention without pulls).
    await a.request_deletions("max", [("dl", "duckdb")], b'{"x": 2}')
    gone = b.node_id
    await b.close()
    nodes.open.remove(b)
    await a.save_deletion("max", "dl", DONE, 1, None)
    assert [d.state for d in await a.deletions("max")] == [REQUESTED]  # b is not gone yet
    # (lia's r, shared, is still pending: only max's dl is looked at below.)
    assert [d.user_id for d in await a.pending_deletions()] == ["lia"]
    assert [d.state for d in await a.deletions("max")] == [REQUESTED]  # its consumer is kept
    await a.js.js.delete_consumer(a.js.names.stream, a.js.names.local_consumer("dl", gone))
    assert [d.user_id for d in await a.pending_deletions()] == ["lia"]  # marks b gone
    (dl,) = await a.deletions("max")
    assert dl.state == DONE
    assert copies(dl) == sorted([(a.node_id, DONE, 1), (gone, "gone", 0)])

    # b comes back with its id (and its old file): it runs its gone copy.
    b = await nodes.start("b", **both)  # type: ignore[arg-type]
    assert b.node_id == gone
    back = [(d.user_id, d.destination, d.state) for d in await b.pending_deletions()]
    assert back == [("lia", "r", REQUESTED), ("max", "dl", REQUESTED)]
    await b.save_deletion("max", "dl", DONE, 1, None)
    (dl,) = await a.deletions("max")
    assert (dl.state, copies(dl)) == (DONE, sorted([(a.node_id, DONE, 1), (gone, DONE, 1)]))


async def test_retention_keeps_what_the_identity_graph_has_not_applied(nodes: Nodes) -> None:
    """The cluster's sweep keeps the log from the shared graph's cursor on, on a node
    that runs the graph (SQLite's rule: a service's cursor holds retention); a node
    without the graph sweeps by its destinations alone."""
    a, b = await nodes.start("a", destinations=()), await nodes.start("b", destinations=())
    for n in (1, 2, 3):  # each its own log message: the stage forwards one at a time
        await a.append(rows("u", f"m{n}"))
        await nodes.forwarded(n)
    stream = a.js.names.stream
    state = (await a.js.js.stream_info(stream)).state
    assert state.messages == 3
    first = state.first_seq
    later = now_ms() + 30 * 86_400_000  # every event past storage.retention by then

    a.identity_store(nodes.tmp / "a" / "identity.db", "normal")  # the graph runs on a
    # Its bucket not made yet (no writer ran): nothing applied, nothing may go.
    await a.delete_events(upto_seq=2**62, received_before=later, limit=100)
    assert (await a.js.js.stream_info(stream)).state.messages == 3

    # The graph applied the second message (its cursor on that message's last event).
    graph = await a.js.js.create_key_value(KeyValueConfig(bucket=f"{stream}_ID", history=1))
    await graph.put("s.cursor", orjson.dumps((first + 1) << EVENT_BITS))
    await a.delete_events(upto_seq=2**62, received_before=later, limit=100)
    state = (await a.js.js.stream_info(stream)).state
    assert (state.first_seq, state.messages) == (first + 2, 1)

    await b.delete_events(upto_seq=2**62, received_before=later, limit=100)
    assert (await b.js.js.stream_info(stream)).state.messages == 0


async def test_the_identity_lag_counts_the_clusters_log_not_what_this_node_fetched(
    nodes: Nodes, tmp_path: Path
) -> None:
    """``eventd_identity_lag_events`` on a node that fetched nothing itself (no
    destination): the log messages past the graph's cursor, read from the stream's
    last sequence. The old rule (this node's newest fetched event less the cursor)
    gave 0 here, and a difference of seqs, not a count, elsewhere."""
    a = await nodes.start("a")
    b = await nodes.start("b", destinations=())
    for k in range(3):  # one log message each: one user, one append at a time
        await a.append(rows("u1", f"lag-{k}"))
    await nodes.forwarded(3)
    assert await b.js.ready()  # the health round's read (every 2 s in serve)
    service = IdentityService(IdentityConfig(), b, tmp_path / "identity.db", Metrics())
    assert b.last_seq == 0
    assert service.status()["lag_events"] == 3
    first, last = b.js.log_bounds
    assert last - first == 2
    service.cursor = (last - 1) << EVENT_BITS  # the graph in the second message
    assert service.lag() == 1
    service.cursor = last << EVENT_BITS | 0  # a one-event message: its last event
    assert service.lag() == 0
