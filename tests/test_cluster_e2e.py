"""Issue 14's end-to-end test: two ``eventd serve`` nodes, three nats-servers, load
from the real SDK (segment-analytics-python) against both nodes, crashes mid-load.

1. A destination down (its sink answers 503) while the load runs holds back only
   itself: the other destination delivers what both nodes acknowledged meanwhile.
2. ``kill -9`` one eventd node mid-load, then ``kill -9`` the nats-server leading
   the ingest stream mid-load: the load goes on through the other node and the
   two remaining servers.
3. The down destination comes back and the killed node restarts: it rejoins (it
   delivers again, and takes events from the SDK).

Counted by messageId, once ``POST /admin/drain`` on the surviving node answered:
every event the SDK had acknowledged (a batch it
did not report through ``on_error``) reached both destinations at least once;
nothing reached them that was never sent; duplicates are counted and printed (at
least once: a killed node's unsettled batches go to the other node after the
consumer's ack_wait). Waiting is on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EventdProcess, Received, Sink, running
from tests.nats_cluster import NatsCluster
from tests.test_cluster_limits import two_nodes, webhooks_config
from tests.test_cluster_serve import WRITE_KEY, admin_post, ready, wait_until

pytestmark = pytest.mark.slow

CHUNK = 40  # track calls per SDK flush


class SdkLoad:
    """A segment-analytics-python Client per node, fed on its own thread in chunks of
    CHUNK track calls, each chunk flushed (answered, or given up and reported through
    ``on_error``) before the next; a sender stops once its node is gone (an error)."""

    def __init__(self, nodes: list[EventdProcess], prefix: str) -> None:
        from segment.analytics import Client

        self.lock = threading.Lock()
        self.enqueued: set[str] = set()
        self.failed: set[str] = set()
        self.stop = threading.Event()
        self.clients = [
            Client(
                WRITE_KEY,
                host=node.url,
                on_error=self._on_error,
                max_queue_size=10 * CHUNK,
                gzip=False,
                max_retries=3,  # a dead node: given up after ~2 s, then reported
                upload_interval=0.05,
            )
            for node in nodes
        ]
        self.threads = [
            threading.Thread(target=self._run, args=(c, f"{prefix}{k}-"), daemon=True)
            for k, c in enumerate(self.clients)
        ]

    def _on_error(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            self.failed.update(m["messageId"] for m in batch)

    def _run(self, client: Any, prefix: str) -> None:
        n = 0
        while not self.stop.is_set():
            for _ in range(CHUNK):
                mid = f"{prefix}{n}-{uuid.uuid4().hex[:8]}"
                n += 1
                ok, _msg = client.track(
                    user_id=f"u{n % 37}", event="Order", properties={"n": n}, message_id=mid
                )
                if ok:
                    with self.lock:
                        self.enqueued.add(mid)
            client.flush()
            with self.lock:
                if any(m.startswith(prefix) for m in self.failed):
                    return  # its node is gone

    def start(self) -> SdkLoad:
        for t in self.threads:
            t.start()
        return self

    @property
    def acked(self) -> set[str]:
        """What the SDK sent and did not report as failed."""
        with self.lock:
            return self.enqueued - self.failed

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        for c in self.clients:
            c.join()


class TwoPathSink(Sink):
    """One server, two destinations: ``/hook`` always 200; ``/flaky`` 503 while
    ``down`` is set. ``ids(path)`` counts messageIds received (2xx) per path."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.handler = self._answer

    def _answer(self, r: Received) -> Any:
        return 503 if r.path == "/flaky" and self.down.is_set() else 200

    def ids(self, path: str) -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        with self.cond:
            for r in self.received:
                if r.path == path:
                    body = r.json()
                    for event in body if isinstance(body, list) else [body]:
                        counts[event["messageId"]] += 1
        return counts

    def flaky_attempts(self) -> int:
        with self.cond:
            return sum(1 for r in self.attempts if r.path == "/flaky")


def config(tmp: Path, cluster: NatsCluster, sink: Sink) -> dict[str, Any]:
    each = {"batch_size": 50, "retry_backoff_max": "1s", "settings": {"batch": True}}
    return webhooks_config(tmp, cluster, sink, {"hook": each, "flaky": each})


def stream_leader(cluster: NatsCluster, stream: str) -> int:
    """The index of the server leading ``stream`` (its monitoring endpoint's /jsz)."""
    for server in cluster.servers:
        if not server.running():
            continue
        url = f"http://127.0.0.1:{server.monitor_port}/jsz?accounts=true&streams=true"
        with urllib.request.urlopen(url, timeout=10) as r:
            jsz = json.loads(r.read())
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                leader = (detail.get("cluster") or {}).get("leader")
                if detail["name"] == stream and leader:
                    return [s.name for s in cluster.servers].index(leader)
    raise AssertionError(f"no server leads {stream}")


def flaky(node: EventdProcess) -> dict[str, Any]:
    """The flaky destination's status as ``node`` reports it (its own counts)."""
    (status,) = [d for d in node.admin("GET", "/admin/destinations") if d["name"] == "flaky"]
    return status


def test_sdk_load_through_node_and_server_crashes_loses_nothing_acknowledged(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster(3)
    sink = TwoPathSink()
    sink.down.set()  # flaky is down from the start
    load: SdkLoad | None = None
    with running(sink), two_nodes(tmp_path, cluster, sink, config) as (a, b):
        try:
            # 1. flaky down, load on both: hook delivers what both nodes acknowledged.
            load = SdkLoad([a, b], "e2e").start()
            wait_until(lambda: len(load.acked) >= 20 * CHUNK, 120, "load acknowledged")
            first = load.acked
            wait_until(lambda: set(sink.ids("/hook")) >= first, 120, "hook delivers meanwhile")
            assert sink.flaky_attempts() > 0 and not sink.ids("/flaky"), "flaky is held back"

            # 2. kill -9 node a mid-load; the load goes on through b.
            a.kill()
            at = len(load.acked)
            wait_until(lambda: len(load.acked) >= at + 10 * CHUNK, 120, "b acks after a's kill")
            # kill -9 the nats-server leading the ingest stream mid-load: publishing
            # stalls until the other two elect a leader (503 + Retry-After, or the
            # node's own retry of the same message id), then goes on.
            dead = stream_leader(cluster, "E2E_IN")
            cluster.kill(dead)
            at = len(load.acked)
            wait_until(lambda: len(load.acked) >= at + 10 * CHUNK, 120, "acks after a server died")
            load.finish()
            acked = load.acked
            # Only the killed node's sender gave up: b's 503s (the leader's election)
            # carried Retry-After, which the SDK waits out and sends again.
            assert all(m.startswith("e2e0-") for m in load.failed), len(load.failed)

            # 3. The server comes back; a restarts and rejoins: it takes part of
            # flaky's backlog (b holds only what its share of max_in_flight lets it
            # fetch) and, once flaky is back, delivers it.
            cluster.restart(dead)
            a.start(timeout=90)
            wait_until(lambda: ready(a), 60, "a ready again")
            wait_until(lambda: flaky(a)["last_error"] is not None, 120, "a holds flaky's work")
            sink.down.clear()
            wait_until(lambda: flaky(a)["delivered"] > 0, 120, "the restarted node delivers")
            rejoin = SdkLoad([a], "rejoin").start()
            wait_until(lambda: len(rejoin.acked) >= 2 * CHUNK, 120, "a takes events again")
            rejoin.finish()
            acked |= rejoin.acked
            assert not rejoin.failed

            # POST /admin/drain on b answers once both destinations passed everything
            # either node acknowledged, a's batches held when it died included (they
            # come back after the consumer's ack_wait): the sink has them all then.
            status, drained = admin_post(b, "/admin/drain?timeout=240", {}, timeout=260)
            assert status == 200, drained
            assert all(d["lag_events"] == 0 for d in drained), drained
            attempted = load.enqueued | rejoin.enqueued
            report = []
            for path in ("/hook", "/flaky"):
                counts = sink.ids(path)
                assert acked <= set(counts)
                assert set(counts) <= attempted, "nothing that was never sent"
                dups = sum(c - 1 for c in counts.values())
                report.append(f"{path}: {len(counts)} received, {dups} duplicates")
            print(
                f"acked {len(acked)}, sdk-reported failures {len(load.failed)}, "
                f"nats-server {dead} (the ingest stream's leader) killed; " + "; ".join(report)
            )
        finally:
            if load is not None:
                load.stop.set()
