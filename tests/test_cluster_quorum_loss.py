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
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from eventd.admin.scrape import SCRAPE_WAIT
from eventd.config import JetStreamConfig, StorageConfig
from eventd.store.cluster import HEALTH_EVERY, ClusterStore
from eventd.store.jetstream import PEER_SILENT, READY_TIMEOUT
from tests.harness import EventdProcess, Sink, running
from tests.nats_cluster import NatsCluster
from tests.test_cluster_ingest_stream import until_async
from tests.test_cluster_serve import BATCH, node_config, send_batch, wait_until
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


def scrape(node: EventdProcess) -> tuple[int, float, dict[str, float]]:
    """GET /metrics with the admin token: (status, seconds it took, {sample: value})
    where a sample is the exposition's ``name{labels}``."""
    req = urllib.request.Request(
        node.url + "/metrics", headers={"Authorization": f"Bearer {node.admin_token}"}
    )
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text = int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), time.monotonic() - began, {}
    took = time.monotonic() - began
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return status, took, samples


LAG = 'eventd_lag_events{destination="hook"}'
INGESTED = 'eventd_ingested_events_total{source="app",type="track"}'


def test_metrics_answer_in_bounded_time_during_and_after_a_loss_with_the_last_good_lag(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    """The fourth trial's /metrics: 503 for the whole loss, and a scrape right after
    SIGCONT hung over 30 s. Now every scrape answers 200 within SCRAPE_WAIT (+2 s for
    the rest) with the node's own counters, the lag gauge at its last good reading
    and ``eventd_lag_reading_ok`` 0, ``eventd_lag_reading_age_seconds`` growing; once
    the cluster answers again, a fresh reading. All three servers are stopped, so no
    server can answer from a stale view (the lone leader of the other test).
    Fails on the old code (a 503 during the loss)."""
    cluster = make_nats_cluster(3)
    sink = Sink(default=503)  # the destination is down: the 20 events stay in its lag
    with running(sink):
        node = EventdProcess(tmp_path, node_config(tmp_path, cluster, sink))
        try:
            node.start(timeout=90)
            assert send_batch(node, [f"m-{j}" for j in range(BATCH)]) == 200
            wait_until(lambda: scrape(node)[2].get(LAG) == BATCH, 60, "the lag read")
            status, _, before = scrape(node)
            assert before["eventd_lag_reading_ok"] == 1
            assert before["eventd_lag_reading_age_seconds"] < SCRAPE_WAIT + 1
            try:
                for i in range(3):
                    cluster.pause(i)
                during = [scrape(node) for _ in range(3)]
                shown = node.cli("status")  # what an operator sees meanwhile
            finally:
                for i in range(3):
                    cluster.resume(i)
            after = scrape(node)
            for status, took, samples in [*during, after]:
                assert status == 200
                assert took < SCRAPE_WAIT + 2.0, took  # Prometheus waits 10 s
                assert samples[INGESTED] == BATCH  # the node's own figures
                assert samples[LAG] == BATCH  # the last good reading's (nothing moved)
            for _, _, samples in during:
                assert samples["eventd_lag_reading_ok"] == 0
            # `eventd status`: the 503, then the node's last reading (the lag it held).
            assert shown.returncode == 1, shown
            assert "GET /admin/destinations: HTTP 503" in shown.stderr, shown.stderr
            assert "this node's last lag reading" in shown.stdout, shown.stdout
            table = [line.split() for line in shown.stdout.splitlines()[1:]]
            assert table[0][:2] == ["NAME", "LAG_EVENTS"], shown.stdout
            assert [row[:2] for row in table[1:]] == [["hook", str(BATCH)]], shown.stdout
            ages = [samples["eventd_lag_reading_age_seconds"] for _, _, samples in during]
            assert ages == sorted(ages) and ages[0] >= SCRAPE_WAIT, ages
            print(shown.stderr + shown.stdout)
            print("scrapes took", [round(took, 2) for _, took, _ in [*during, after]])
            wait_until(lambda: scrape(node)[2]["eventd_lag_reading_ok"] == 1, 90, "a fresh reading")
            assert scrape(node)[2][LAG] == BATCH
        finally:
            node.kill()
