"""The log stream losing its end after forwarding (issue 14's third trial), on a real
3-server nats-server cluster (eventd/store/jetstream.py: ``_tend``, ``_lost_end``,
``_mend_log``, ``_rewind``).

In the trial, nats-server 2.9.10 kept a log message on one replica only: the two
others became the majority without it, and the 19 events in it, acknowledged and
forwarded (their ``S_IN`` copy purged, their keys in the dedup set), were never
delivered. Here the fault is made by hand: a server is paused (its replica of the
log falls behind, so the stage keeps the groups in ``S_IN``) and each partition's
last log message is deleted, as the servers' majority lost it. The stage must find
the loss, forward those events again and rewind the destination consumers that had
delivered past what is left; every acknowledged messageId reaches every
destination. Also: a group stays in ``S_IN`` until every log replica holds its
message.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from eventd.store import jetstream
from eventd.store.jetstream import JetStreamStore, user_partition
from tests.nats_cluster import NatsCluster
from tests.test_cluster_admin import Nodes as AdminNodes
from tests.test_cluster_admin import rows as admin_rows
from tests.test_cluster_ingest_stream import until_async
from tests.test_jetstream_store import Nodes, drain, row

pytestmark = pytest.mark.timeout(180)


async def pause_a_follower(cluster: NatsCluster, node: JetStreamStore) -> int:
    """SIGSTOP a server that carries not the node's connection, after the streams it
    led (the log, ``S_IN``, the buckets: every stream) were moved to the others (a leader's
    step-down): the store works on, with no election to wait out past a publish's
    timeout, and that server's replica of the log falls behind. Returns its index."""
    assert node.nc is not None and node.nc.connected_url is not None
    port = node.nc.connected_url.port
    i = next(i for i, s in enumerate(cluster.servers) if s.port != port)
    name = cluster.servers[i].name
    for stream in [s.config.name for s in await node.js.streams_info()]:
        for _ in range(20):
            info = await node.js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader not in (None, name):
                break
            if info.cluster is not None and info.cluster.leader == name:
                await node.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
            await asyncio.sleep(0.5)  # an election's time: polled, bounded
        else:
            raise AssertionError(f"{stream} still led by {name}")
    cluster.pause(i)
    return i


async def ingest_messages(node: JetStreamStore) -> int:
    return int((await node.js.stream_info(node.names.ingest)).state.messages or 0)


async def until_purged(node: JetStreamStore) -> None:
    """Until ``S_IN`` holds no message (its stages purged every group)."""

    async def purged() -> bool:
        return await ingest_messages(node) == 0

    await until_async(purged, within=60)


async def test_a_group_stays_in_the_ingest_stream_until_every_log_replica_holds_it(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster()
    nodes = Nodes(tmp_path, cluster)
    try:
        a = await nodes.start("a")
        paused = await pause_a_follower(cluster, a)
        rows = [row(f"k{i}", user=f"u{i}") for i in range(24)]
        await a.append(rows)
        groups = await ingest_messages(a)
        assert groups == len({user_partition(r, nodes.cfg.partitions) for r in rows})
        await drain(await a.reader("hook"), {r[1] for r in rows})
        # Forwarded and acked, then two tends each held a group back (the stage
        # tends after its batch, and every 5 s idle): nothing purged meanwhile.
        # (Or S_IN purged: what main's code did at its first tend, failing below.)

        async def tended_twice_or_purged() -> bool:
            held = getattr(a, "purges_held", 0) >= 2 * groups
            return held or await ingest_messages(a) < groups

        await until_async(tended_twice_or_purged, within=60)
        assert await ingest_messages(a) == groups
        cluster.resume(paused)

        await until_purged(a)
    finally:
        await nodes.close()


async def test_a_group_held_back_past_hold_max_is_purged_anyway(
    tmp_path: Path,
    make_nats_cluster: Callable[..., NatsCluster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follower that never catches up (here: paused throughout; under steady load:
    never seen with no lag) must not make S_IN grow without end: the groups held back
    are purged once the stage has held them HOLD_MAX seconds."""
    monkeypatch.setattr(jetstream, "HOLD_MAX", 3.0)
    cluster = make_nats_cluster()
    nodes = Nodes(tmp_path, cluster)
    try:
        a = await nodes.start("a")
        paused = await pause_a_follower(cluster, a)
        rows = [row(f"h{i}", user=f"u{i}") for i in range(24)]
        await a.append(rows)
        await drain(await a.reader("hook"), {r[1] for r in rows})

        await until_purged(a)
        assert a.purges_held > 0  # held back first, while the follower lagged
        cluster.resume(paused)
    finally:
        await nodes.close()


async def test_log_messages_lost_after_forwarding_are_forwarded_again_to_every_destination(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster()
    nodes = Nodes(tmp_path, cluster)
    try:
        a = await nodes.start("a", destinations=("hook", "late"))
        faults: list[tuple[str, str]] = []
        a.on_fault = lambda consumer, reason: faults.append((consumer, reason))
        paused = await pause_a_follower(cluster, a)
        rows = [row(f"m{i}", user=f"u{i}") for i in range(30)]
        await a.append(rows)
        ids = {r[1] for r in rows}
        hook = await a.reader("hook")
        first = await drain(hook, ids)
        assert Counter(e.message_id for e in first) == Counter(ids)
        n, js = a.names, a.js
        # The fault: each partition's last log message gone (here one message per
        # partition, holding all its events), after "hook" delivered and settled it.
        parts = sorted({user_partition(r, nodes.cfg.partitions) for r in rows})
        for p in parts:
            last = await js.get_last_msg(n.stream, n.log_subject(p))
            assert last.seq is not None
            assert await js.delete_msg(n.stream, last.seq)
        # Every acknowledged messageId reaches the destination that had not read
        # them, and again the one whose consumer had delivered them.
        late = await drain(await a.reader("late"), ids, within=60)
        assert {e.message_id for e in late} == ids
        again = await drain(hook, ids, within=60)
        assert {e.message_id for e in again} == ids
        assert a.log_mended == len(rows)
        assert {f for f in faults if f[0].startswith("dedup-")} == {
            (n.dedup_consumer(p), "log_lost") for p in parts
        }
        # "hook" had delivered past what is left: rewound (once per partition's
        # loss at most); "late" too if its first fetch passed the deleted sequences
        # before its stage's rewind.
        rewound = [f for f in faults if not f[0].startswith("dedup-")]
        assert ("dest-hook", "log_lost") in rewound
        assert set(rewound) <= {("dest-hook", "log_lost"), ("dest-late", "log_lost")}
        assert len(rewound) <= 2 * len(parts) and a.consumers_rewound == len(rewound)
        cluster.resume(paused)

        await until_purged(a)
    finally:
        await nodes.close()


async def test_an_erasure_of_the_partitions_last_message_is_not_taken_for_a_loss(
    tmp_path: Path,
    make_nats_cluster: Callable[..., NatsCluster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An erasure that deletes a partition's last log message (all its events the
    erased user's) leaves the partition's last sequence below the stage's watermark,
    as a loss does, while the group may still be held in S_IN (a follower lagging:
    here every follower is taken for lagging, so the stage holds every group): its
    events must not be forwarded again."""
    monkeypatch.setattr(jetstream, "_replicated_through", lambda info, replicas: 0)
    cluster = make_nats_cluster()
    nodes = AdminNodes(cluster, tmp_path, partitions=1)
    try:
        a = await nodes.start("a")
        await a.append(admin_rows("hal", "h1"))
        await a.append(admin_rows("gina", "g1"))  # the partition's last log message
        await nodes.forwarded(2)
        await a.suppress("gina", erase=True)
        assert (await a.erase_user("gina", 2**62))[0] == 1
        held = a.js.purges_held

        async def tended_twice() -> bool:  # each tend holds hal's and gina's groups back
            return a.js.purges_held >= held + 2

        await until_async(tended_twice, within=60)
        assert await ingest_messages(a.js) == 2  # both groups still held in S_IN
        assert a.js.log_mended == 0
        assert await a.find_event("web", "g1") is None
        assert await a.find_event("web", "h1") is not None
    finally:
        await nodes.close()


async def test_a_consumer_seen_ahead_of_its_stream_for_a_moment_is_not_rewound(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    """A stream leader just elected can answer a last sequence its store has not
    caught up with yet: the destination's consumer then looks ahead of its stream
    (the fourth trial: six recreations of ``dest-hook``, each a round of repeats).
    Ahead for one or two readings: left alone. Ahead at every one of LOSS_CHECKS
    readings: recreated from its ack floor (at least once)."""
    cluster = make_nats_cluster()
    nodes = Nodes(tmp_path, cluster)
    try:
        a = await nodes.start("a")
        faults: list[tuple[str, str]] = []
        a.on_fault = lambda consumer, reason: faults.append((consumer, reason))
        rows = [row(f"q{i}", user=f"u{i}") for i in range(12)]
        await a.append(rows)
        hook = await a.reader("hook")
        await drain(hook, {r[1] for r in rows})
        true_last = a._last_seq
        short_answers = 0

        async def behind_for(answers: int) -> int:
            """The log's last sequence, one short for the first ``answers`` readings."""
            nonlocal short_answers
            last = await true_last()
            short_answers += 1
            return last - 1 if short_answers <= answers else last

        a._last_seq = lambda: behind_for(jetstream.LOSS_CHECKS)  # type: ignore[method-assign]
        assert (await a.lag("hook"))["pending"] == 0
        assert faults == [] and a.consumers_rewound == 0

        short_answers = 0
        a._last_seq = lambda: behind_for(2**31)  # type: ignore[method-assign]
        await a.lag("hook")
        assert faults == [("dest-hook", "ahead")] and a.consumers_rewound == 1
    finally:
        await nodes.close()
