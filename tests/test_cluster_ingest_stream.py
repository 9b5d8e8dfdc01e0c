"""The cluster's ingest stream ``S_IN`` and its dedup consumers (eventd/store/jetstream.py),
on a real 3-server nats-server cluster: the fault of issue 14's quorum-loss trial.

After nats-server 2.9.10 reset a replica's state (``stream store EOF``), dedup
consumers stood past messages they never delivered, and acknowledged groups were
never forwarded. These tests make that state on purpose: a dedup consumer created
again with a start sequence past the groups waiting for it (the servers clamp it to
the stream's last sequence: its delivered position is then past every one of them,
as after the reset). The stage must find those groups stranded, recreate its
consumer and forward them: every acknowledged messageId reaches the log once.
Also: ``S_IN`` has limits retention and the stage purges what it acked; an older
eventd's work-queue ``S_IN`` is kept while it holds messages and recreated once
empty; the groups waiting in ``S_IN`` count in the lag, the same from every node.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from eventd.config import StorageConfig
from eventd.metrics import Metrics
from eventd.store import jetstream
from eventd.store.cluster import ClusterStore
from eventd.store.jetstream import JetStreamStore, encode_rows, user_partition
from tests.nats_cluster import NatsCluster
from tests.test_jetstream_store import Nodes, drain, row, until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def nodes(tmp_path: Path, nats_cluster: NatsCluster) -> AsyncIterator[Nodes]:
    n = Nodes(tmp_path, nats_cluster)
    yield n
    await n.close()


async def front_node(nodes: Nodes, name: str = "front") -> JetStreamStore:
    """A node that acknowledges events and runs no dedup stage: they wait in S_IN."""
    front = JetStreamStore(nodes.cfg, nodes.tmp / name, node_id=name)
    await front.open(("hook",), run_dedup=False)
    nodes.open.append(front)
    return front


async def test_a_dedup_consumer_past_groups_it_never_delivered_is_recreated_and_loses_none(
    nodes: Nodes,
) -> None:
    front = await front_node(nodes)
    first = [row(f"s{i}", user=f"u{i % 7}") for i in range(40)]
    await front.append(first)
    n, js = front.names, front.js
    last = (await js.stream_info(n.ingest)).state.last_seq
    # The fault: each dedup consumer made again with its start past everything
    # waiting; its delivered position is then the stream's last sequence.
    for p in range(nodes.cfg.partitions):
        await js.delete_consumer(n.ingest, n.dedup_consumer(p))
        await js.add_consumer(
            n.ingest,
            ConsumerConfig(
                durable_name=n.dedup_consumer(p),
                filter_subject=n.in_subject(p),
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=last + 100,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=1_000,
            ),
        )
        info = await js.consumer_info(n.ingest, n.dedup_consumer(p))
        assert info.num_pending == 0 and info.delivered.stream_seq == last
    # Acknowledged after the fault: sequences past the consumers' position.
    later = [row(f"t{i}", user=f"u{i % 7}") for i in range(20)]
    await front.append(later)
    faults: list[tuple[str, str]] = []
    a = await nodes.start("a")
    a.on_fault = lambda consumer, reason: faults.append((consumer, reason))

    got = await drain(await a.reader("hook"), {r[1] for r in first + later}, within=60)
    assert Counter(e.message_id for e in got) == Counter(r[1] for r in first + later)
    stranded = {user_partition(r, nodes.cfg.partitions) for r in first}
    assert {c for c, _ in faults} == {n.dedup_consumer(p) for p in stranded}
    assert {reason for _, reason in faults} == {"stranded"}
    # One group per partition (one append), each forwarded from the stream leader's
    # copy; no consumer made again (the sixth trial's loop of recreations).
    assert len(faults) == len(stranded) and a.consumers_healed == 0

    # Nothing waits now (the stage acks a group just after its log publish, which
    # the drain may have seen first), and the stage purged the groups it forwarded.
    async def nothing_waits() -> bool:
        return await a.ingest_waiting() == 0 and await front.ingest_waiting() == 0

    await until_async(nothing_waits)

    async def purged() -> bool:
        return (await js.stream_info(n.ingest)).state.messages == 0

    await until_async(purged)
    assert (await js.stream_info(n.ingest)).config.retention == RetentionPolicy.LIMITS


async def until_async(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Wait until ``check()`` (a read of the servers' state) answers True (polled, bounded)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def test_the_groups_waiting_in_the_ingest_stream_count_the_same_from_every_node(
    nodes: Nodes,
) -> None:
    front = await front_node(nodes)
    other = await front_node(nodes, "other")
    assert await front.ingest_waiting() == 0
    await front.append([row(f"w{i}", user=f"u{i}") for i in range(12)])
    await other.append([row(f"v{i}", user=f"u{i}") for i in range(3)])
    groups = (await front.js.stream_info(front.names.ingest)).state.messages
    assert groups > 0
    # A consumer's leader counts a message a moment after the stream stored it.

    async def counted() -> bool:
        return await front.ingest_waiting() == groups

    await until_async(counted)
    assert await other.ingest_waiting() == groups
    assert not await front.drained("hook")
    a = await nodes.start("a")
    await drain(await a.reader("hook"), 15)
    assert await other.ingest_waiting() == 0


async def test_an_older_work_queue_ingest_stream_is_kept_until_empty_then_recreated(
    nodes: Nodes, nats_cluster: NatsCluster
) -> None:
    n = JetStreamStore(nodes.cfg, nodes.tmp / "names").names
    # An older eventd's S_IN: a work queue, one group still in it.
    nc = await nats.connect(nats_cluster.urls[0])
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=n.ingest,
                subjects=[f"{nodes.cfg.stream}.in.*"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=nodes.cfg.replicas,
                duplicate_window=nodes.cfg.publish_dedup_window,
            )
        )
        old = row("old1", user="u1")
        await js.publish(
            n.in_subject(user_partition(old, nodes.cfg.partitions)), encode_rows([old])
        )
        a = await nodes.start("a")
        assert a.ingest_work_queue
        assert (await js.stream_info(n.ingest)).config.retention == RetentionPolicy.WORK_QUEUE
        await a.append([row("new1", user="u2")])
        got = await drain(await a.reader("hook"), {"old1", "new1"})
        assert Counter(e.message_id for e in got) == Counter(["old1", "new1"])
        await until(lambda: a.forwarded == 2)
        await a.close()
        nodes.open.remove(a)
        # Empty now (a work queue drops what is acked): the next start recreates it.
        b = await nodes.start("b")
        assert not b.ingest_work_queue
        assert (await js.stream_info(n.ingest)).config.retention == RetentionPolicy.LIMITS
        await b.append([row("new2", user="u3")])
        got = await drain(await b.reader("hook"), {"new2"})
        assert [e.message_id for e in got] == ["new2"]
    finally:
        await nc.close()


async def test_a_destinations_lag_counts_events_and_the_age_of_the_oldest_from_every_node(
    nodes: Nodes,
) -> None:
    """``eventd status``, ``/admin/destinations`` and ``/metrics`` take a destination's
    lag from its feed: events (not the groups holding them: the third trial read
    2,541 groups against 12,147 events) and the seconds since the oldest of them was
    received (always 0.0 on the cluster before), while they wait in S_IN for their
    dedup stage and then in the log for the destination, the same from two nodes;
    the per-partition age of the oldest waiting group is on /metrics."""
    fronts = [await front_node(nodes, name) for name in ("front", "other")]
    now = int(time.time() * 1000)
    # Three groups (three appends, one after another), received 90, 60 and 30 s ago.
    sent = [
        [row(f"l{i}", user=f"u{i}", at=now - 90_000) for i in range(12)],
        [row(f"m{i}", user=f"u{i}", at=now - 60_000) for i in range(5)],
        [row(f"n{i}", user=f"v{i}", at=now - 30_000) for i in range(7)],
    ]
    for i, rows in enumerate(sent):
        await fronts[i % 2].append(rows)
    events = sum(len(rows) for rows in sent)  # 24
    partitions = nodes.cfg.partitions
    # Per partition, the oldest waiting event's age: groups of the first append span
    # the partitions of u0..u11; the others' are younger.
    oldest_at: dict[int, int] = {}
    for rows in sent:
        for r in rows:
            p = user_partition(r, partitions)
            oldest_at[p] = min(oldest_at.get(p, r[6]), r[6])
    feeds = []
    for front in fronts:  # each as a node's ClusterStore would read it
        storage = StorageConfig(backend="jetstream", jetstream=nodes.cfg, path=nodes.tmp / "x.db")
        store = ClusterStore(storage, ["hook"], metrics=Metrics())
        store.js = front
        feeds.append((store, store.feed("hook")))

    async def lags() -> list[tuple[int, float, bool]]:
        return [tuple(await feed.lag(now)) for _, feed in feeds]  # type: ignore[misc]

    async def counted() -> bool:
        return await lags() == [(events, 90.0, False)] * 2

    await until_async(counted)
    for store, _ in feeds:
        assert store.metrics is not None
        waiting = {
            p: store.metrics.registry.get_sample_value(
                "eventd_dedup_waiting_seconds", {"partition": str(p)}
            )
            for p in range(partitions)
        }
        assert waiting == {
            p: (now - oldest_at[p]) / 1000 if p in oldest_at else 0.0 for p in range(partitions)
        }
    # Forwarded: the same events, now in log messages the destination has not passed.
    a = await nodes.start("a")
    await until(lambda: a.forwarded == events)
    await until_async(counted)
    # Passed: nothing left, no age.
    await drain(await a.reader("hook"), events)

    async def passed() -> bool:
        return await lags() == [(0, 0.0, False)] * 2

    await until_async(passed)


async def test_a_long_backlog_is_read_a_part_at_a_time_and_the_rest_estimated(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reading reads at most COUNT_READS messages a consumer has not passed; the
    rest counts at the mean of those read, and the next readings read on from where
    the last stopped: exact once all were read."""
    monkeypatch.setattr(jetstream, "COUNT_READS", 1)
    front = await front_node(nodes)
    sizes = [1, 2, 6]  # three groups of one user: one partition, in this order
    for g, size in enumerate(sizes):
        await front.append([row(f"g{g}-{i}", user="u1") for i in range(size)])
    p = user_partition(row("x", user="u1"), nodes.cfg.partitions)

    async def counted() -> bool:
        return await front.ingest_waiting() == len(sizes)

    await until_async(counted)
    readings = [(await front.ingest_backlog())[p] for _ in range(4)]
    # read 1 of 3 (1 event): 1 + 2 x 1; 2 of 3 (3): 3 + 1 x 1.5 rounded; then all: 9
    assert [(b.events, b.exact) for b in readings] == [(3, False), (5, False), (9, True), (9, True)]
    # The same a part at a time when the reading's time is up (READ_BUDGET): one
    # message per consumer per reading at least, so a mean exists.
    monkeypatch.setattr(jetstream, "COUNT_READS", 2000)
    timed = await front_node(nodes, "timed")
    readings = [(await timed.ingest_backlog(until=0.0))[p] for _ in range(4)]
    assert [(b.events, b.exact) for b in readings] == [(3, False), (5, False), (9, True), (9, True)]
    # Readings at once (a scrape beside a status) on a node that read nothing yet:
    # each message counted once.
    second = await front_node(nodes, "second")
    together = await asyncio.gather(*(second.ingest_backlog() for _ in range(3)))
    assert [backlog[p][0] for backlog in together] == [9, 9, 9]
    assert (await second.ingest_backlog())[p][0] == 9


async def test_a_group_handed_out_and_never_handed_out_again_is_forwarded(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fifth trial: a dedup consumer held 3 groups unacked for 7 minutes and
    never handed them out again (its leader's replica of ``S_IN`` was behind), while
    the stage forwarded every later group. Made here: the stage's first delivery is
    lost on the way (as a fetch that never got it), and the consumer's ack_wait is
    an hour. The stage recreates its consumer once its ack floor stood
    UNACKED_AFTER with messages unacked, and the group is forwarded."""
    monkeypatch.setattr(jetstream, "ACK_WAIT", 3600)
    monkeypatch.setattr(jetstream, "UNACKED_AFTER", 3.0)
    a = await nodes.start("a")
    faults: list[tuple[str, str]] = []
    a.on_fault = lambda consumer, reason: faults.append((consumer, reason))
    forward = a._forward_acked
    lost: list[int] = []

    async def first_lost(p: int, msg: nats.aio.msg.Msg, dedup: jetstream.DedupSet) -> None:
        if not lost:  # handed out, never received: neither forwarded nor acked
            lost.append(p)
            return
        await forward(p, msg, dedup)

    a._forward_acked = first_lost  # type: ignore[method-assign]
    rows = [row(f"w{i}", user=f"u{i % 5}") for i in range(10)]
    await a.append(rows[:1])
    await until(lambda: bool(lost))
    await a.append(rows[1:])
    got = await drain(await a.reader("hook"), {r[1] for r in rows}, within=60)
    assert Counter(e.message_id for e in got) == Counter(r[1] for r in rows)
    await until(lambda: bool(faults))  # counted as the consumer is made again, after
    assert faults == [(a.names.dedup_consumer(lost[0]), "unacked")]  # the group's forward


async def test_each_partition_s_stage_shows_on_the_one_node_that_runs_it(nodes: Nodes) -> None:
    """``eventd_dedup_stage_running{partition}``: 1 on the node whose stage runs, 0
    elsewhere (the fifth trial had no way to see which node held a partition that
    waited). Two nodes: every partition on exactly one of them."""
    partitions = nodes.cfg.partitions
    a = await nodes.start("a")
    b = await nodes.start("b")
    scraped = []
    for name, front in (("a", a), ("b", b)):
        storage = StorageConfig(
            backend="jetstream", jetstream=nodes.cfg, path=nodes.tmp / f"{name}.db"
        )
        store = ClusterStore(storage, ["hook"], metrics=Metrics())
        store.js = front
        scraped.append(store.metrics)

    def running() -> list[set[int]]:
        on = []
        for metrics in scraped:
            assert metrics is not None
            metrics.exposition()
            on.append(
                {
                    p
                    for p in range(partitions)
                    if metrics.registry.get_sample_value(
                        "eventd_dedup_stage_running", {"partition": str(p)}
                    )
                    == 1.0
                }
            )
        return on

    await until(lambda: set().union(*running()) == set(range(partitions)))
    on_a, on_b = running()
    assert not on_a & on_b
    assert on_a == {p for p, r in enumerate(a.stages_running()) if r}
