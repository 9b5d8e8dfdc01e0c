"""What a node says about itself during and after a quorum loss (issue 14, the fourth trial).

Real 3-server clusters (tests/nats_cluster.py), two servers stopped with SIGSTOP:

- ``writable`` (``/ready``) turns false within a bound though the server the node
  talks to led the log's stream and goes on answering stream infos as its leader
  for ~20 s (nats-server 2.9.10), and true again once the quorum is back;
- ``/metrics`` answers within a bound during the loss and right after it, with the
  node's own figures and the last good lag reading, marked by its age;
- a lag reading of a long backlog is bounded in time and says when it estimates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from eventd.config import JetStreamConfig, StorageConfig
from eventd.store.cluster import HEALTH_EVERY, ClusterStore
from eventd.store.jetstream import PEER_SILENT, READY_TIMEOUT
from tests.nats_cluster import NatsCluster
from tests.test_cluster_ingest_stream import until_async
from tests.test_jetstream_store import until

pytestmark = pytest.mark.timeout(240)


# /ready false at most this long after the quorum is lost: a replica unheard for
# PEER_SILENT, then the next health round and its stream info.
READY_BOUND = PEER_SILENT + HEALTH_EVERY + READY_TIMEOUT + 1.0


async def lead_log_from(store: ClusterStore, server: str, within: float = 60.0) -> None:
    """Ask the log stream's leader to step down until ``server`` leads it."""
    js, stream = store.js.js, store.js.names.stream
    deadline = time.monotonic() + within
    while True:
        cluster = (await js.stream_info(stream)).cluster
        assert cluster is not None
        if cluster.leader == server:
            return
        assert time.monotonic() < deadline, f"{server} never led {stream}"
        if cluster.leader:
            assert store.js.nc is not None
            await store.js.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)

        async def elected(before: str | None = cluster.leader) -> bool:
            c = (await js.stream_info(stream)).cluster
            return c is not None and bool(c.leader) and c.leader != before

        await until_async(elected)


async def test_ready_turns_false_when_the_server_alone_still_claims_to_lead_and_true_after(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    """The fourth trial's `/ready` true while one server was alone: the node asked
    that server, which led the log's stream and kept answering as its leader (for
    ~19 s here) after its followers stopped. The check now counts the replicas the
    leader heard from within PEER_SILENT. Fails on the old code (true for ~19 s)."""
    cluster = make_nats_cluster(3)
    cfg = JetStreamConfig(servers=(cluster.urls[0],), stream="Q", partitions=2)
    store = ClusterStore(
        StorageConfig(backend="jetstream", jetstream=cfg, path=tmp_path / "a" / "x.db"), ["hook"]
    )
    await store.open()
    try:
        await until(lambda: store.writable)
        await lead_log_from(store, "n0")
        lost = time.monotonic()
        cluster.pause(1)
        cluster.pause(2)
        try:
            await until(lambda: not store.writable, within=READY_BOUND)
            took_false = time.monotonic() - lost
            # The old check's question, answered now: n0 still says it leads.
            info = await store.js.js.stream_info(cfg.stream)
            assert info.cluster is not None and info.cluster.leader == "n0"
        finally:
            cluster.resume(1)
            cluster.resume(2)
        back = time.monotonic()
        await until(lambda: store.writable, within=30)
        took_true = time.monotonic() - back
        print(f"ready false {took_false:.1f}s after the loss, true {took_true:.1f}s after it")
    finally:
        await store.close()


def test_a_leader_counts_only_the_replicas_it_heard_from_lately() -> None:
    """quorum_heard on the answers measured (nats-server 2.9.10, R3): a replica's
    ``active`` (ns since last heard) grows from the moment it stopped."""
    from nats.js.api import ClusterInfo, PeerInfo

    from eventd.store.jetstream import quorum_heard

    def peer(name: str, active_s: float, offline: bool | None = None) -> PeerInfo:
        return PeerInfo(name=name, current=True, offline=offline, active=int(active_s * 1e9))

    fresh, stale = PEER_SILENT - 0.1, PEER_SILENT + 0.1
    assert quorum_heard(None)
    assert quorum_heard(ClusterInfo(leader="n0", replicas=[peer("n1", 0.99), peer("n2", fresh)]))
    assert quorum_heard(ClusterInfo(leader="n0", replicas=[peer("n1", 0.5), peer("n2", stale)]))
    assert not quorum_heard(ClusterInfo(leader="n0", replicas=[peer("n1", stale), peer("n2", 9)]))
    assert not quorum_heard(
        ClusterInfo(leader="n0", replicas=[peer("n1", 0.1, offline=True), peer("n2", stale)])
    )
    assert not quorum_heard(ClusterInfo(leader=None, replicas=[peer("n1", 0.1)]))
    assert quorum_heard(ClusterInfo(leader="n0", replicas=[]))  # R1
