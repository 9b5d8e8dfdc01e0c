"""A lease bucket whose writes stall while the rest of the cluster answers (issue 14).

The third quorum-loss trial (nats-server 2.9.10) found every stream answering after
SIGCONT but ``KV_<S>_LEASES``: its leader logged ``has high message lag``, every
lease write timed out, no dedup stage ran, and nothing was delivered for 3.5
minutes until a server was restarted. eventd now asks that stream's leader to step
down once its writes (the heartbeat probes them every lease round) have timed out
for STALL_TTLS lease TTLs while ``S_IN`` answers (eventd/store/jetstream.py,
``_unstick_leases``).

The servers' fault happens in about one round in three of bench/lease_stall.py (a
minute each: too slow and too rare for a test; docs/scaling.md has the figures,
where the stepdown did not shorten it): this test makes its symptom. The node's
lease bucket is wrapped so that every write times out while the stream's leader
is the one it had (a leader that answers infos and no writes); the cluster is
real, and so is the stepdown: once another server leads, the writes go through.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from eventd.config import StorageConfig
from eventd.metrics import Metrics
from eventd.store.cluster import ClusterStore
from eventd.store.jetstream import STALL_TTLS
from tests.nats_cluster import NatsCluster
from tests.test_cluster_ingest_stream import until_async
from tests.test_jetstream_store import Nodes, drain, row, until

pytestmark = pytest.mark.timeout(180)

TTL = 2.0  # the lease TTL of these nodes, seconds: the bound is STALL_TTLS of them


@pytest.fixture
async def nodes(tmp_path: Path, nats_cluster: NatsCluster) -> AsyncIterator[Nodes]:
    n = Nodes(tmp_path, nats_cluster)
    yield n
    await n.close()


class StuckLeader:
    """A lease bucket whose writes (put, create, update) time out while its stream's
    leader is ``stuck``; reads and deletes, and every write once another server
    leads, go to the real bucket. ``refused``: the writes that timed out."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, stream: str, stuck: str) -> None:
        self.kv = kv
        self.js = js
        self.stream = stream
        self.stuck = stuck
        self.refused = 0

    async def _write(self, name: str, *args: Any, **kw: Any) -> Any:
        info = await self.js.stream_info(self.stream)
        if info.cluster is not None and info.cluster.leader == self.stuck:
            self.refused += 1
            raise NatsTimeout
        return await getattr(self.kv, name)(*args, **kw)

    async def put(self, *args: Any, **kw: Any) -> Any:
        return await self._write("put", *args, **kw)

    async def create(self, *args: Any, **kw: Any) -> Any:
        return await self._write("create", *args, **kw)

    async def update(self, *args: Any, **kw: Any) -> Any:
        return await self._write("update", *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


async def test_a_lease_bucket_whose_leader_takes_no_writes_is_stepped_down_and_stages_run_again(
    nodes: Nodes,
) -> None:
    a = await nodes.start("a", lease_ttl=TTL)
    await until(lambda: a.held_partitions() == list(range(nodes.cfg.partitions)))
    # The metric as a node's ClusterStore wires it (eventd_cluster_stepdowns_total).
    storage = StorageConfig(backend="jetstream", jetstream=nodes.cfg, path=nodes.tmp / "x.db")
    metrics = Metrics()
    counted = ClusterStore(storage, ["hook"], metrics=metrics).js.on_stepdown
    asked: list[tuple[str, str, float]] = []

    def stepdown(stream: str, reason: str) -> None:
        asked.append((stream, reason, time.monotonic()))
        counted(stream, reason)

    a.on_stepdown = stepdown
    stream = f"KV_{a.names.leases}"
    before = (await a.js.stream_info(stream)).cluster
    assert before is not None and before.leader
    assert a.leases is not None
    stuck = StuckLeader(a.leases, a.js, stream, before.leader)
    stalled_at = time.monotonic()
    a.leases = cast(KeyValue, stuck)
    # The stages stop at their leases' local deadlines; what is appended meanwhile
    # waits in S_IN (the trial: acknowledged, nothing delivered).
    await until(lambda: a.held_partitions() == [])
    sent = [row(f"s{i}", user=f"u{i}") for i in range(40)]
    await a.append(sent)
    assert a.forwarded == 0
    await until(lambda: bool(asked), within=STALL_TTLS * TTL + 30)
    assert stuck.refused > 0
    # Not before the bound: the first write timed out after stalled_at.
    assert asked[0][2] - stalled_at >= STALL_TTLS * TTL

    async def moved() -> bool:
        cluster = (await a.js.stream_info(stream)).cluster
        return cluster is not None and bool(cluster.leader) and cluster.leader != before.leader

    await until_async(moved)
    got = await drain(await a.reader("hook"), len(sent), within=60)
    assert Counter(e.message_id for e in got) == Counter(r[1] for r in sent)
    await until(lambda: a.held_partitions() == list(range(nodes.cfg.partitions)))
    # Asked once: the writes went through after it.
    assert [(s, r) for s, r, _ in asked] == [(stream, "lease_timeouts")]
    assert a.stepdowns == 1
    assert (
        metrics.registry.get_sample_value(
            "eventd_cluster_stepdowns_total", {"stream": stream, "reason": "lease_timeouts"}
        )
        == 1.0
    )


async def test_a_lease_write_to_a_cluster_that_does_not_answer_gives_up_within_its_bound(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    """A lease round waits for every write it sent; a write bounded by the management
    timeout (30 s) held each round that long after the servers came back, so in
    bench/quorum_loss.py no dedup stage started again for 30 s after SIGCONT. Now a
    write gives up after ``lease_write_timeout`` (half the TTL, at most
    publish_timeout)."""
    cluster = make_nats_cluster()
    nodes = Nodes(tmp_path, cluster)
    try:
        a = await nodes.start("a", lease_ttl=4.0)
        assert a.lease_write_timeout == 2.0
        assert a.leases is not None
        for i in range(3):
            cluster.pause(i)
        try:
            started = time.monotonic()
            with pytest.raises((NatsTimeout, TimeoutError)):
                await a.leases.put("probe", b"x")
            took = time.monotonic() - started
        finally:
            for i in range(3):
                cluster.resume(i)
        assert a.lease_write_timeout <= took < a.lease_write_timeout + 1.0
    finally:
        await nodes.close()
