"""A destination's ``max_in_flight`` and ``rate_limit`` hold for the cluster as a whole.

Two ``eventd serve`` nodes on a real 3-server NATS JetStream cluster share each
destination's consumer; each node takes its part of the limits (``limit_share``,
eventd/delivery/share.py). A local sink records when each request arrived and how
many were open at once:

- ``slow`` (max_in_flight = 2, every answer held 100 ms): never more than 2 requests
  open at once across both nodes, though both nodes delivered (each had 1); after one
  node is killed, the other alone reaches 2 (it re-read the live nodes);
- ``rated`` (rate_limit = 20 events/s, one event per request): the events arrive no
  faster than the limit allows for the whole cluster (two nodes at 20/s each would
  take half the time);
- ``POST /admin/drain`` on one node answers once both destinations passed what
  either node acknowledged.

Waiting is on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.harness import EventdProcess, Sink, running
from tests.nats_cluster import NatsCluster
from tests.test_cluster_serve import admin_post, node_config, send_batch, wait_until

pytestmark = pytest.mark.slow

HOLD = 0.1  # seconds the sink holds each answer to /slow
RATE = 20.0  # events/s for /rated, for the cluster as a whole
ARRIVAL_JITTER = 0.1  # s: how much later than it was sent a request may reach the sink


class TimingSink(Sink):
    """A Sink that holds answers to /slow for HOLD s, and records per path each
    request's arrival (monotonic s) and the most requests open at once."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.open = 0
        self.most_open = 0
        self.arrivals: dict[str, list[float]] = {"/slow": [], "/rated": []}

    def reset_most_open(self) -> None:
        with self.lock:
            self.most_open = self.open

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            self.arrivals.setdefault(request.path, []).append(time.monotonic())
            if request.path == "/slow":
                self.open += 1
                self.most_open = max(self.most_open, self.open)
        try:
            if request.path == "/slow":
                await asyncio.sleep(HOLD)  # the destination's latency
            return await super()._handle(request)
        finally:
            if request.path == "/slow":
                with self.lock:
                    self.open -= 1


def webhooks_config(
    tmp: Path, cluster: NatsCluster, sink: Sink, destinations: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A node's config (test_cluster_serve's) with one webhook per name, posting to
    ``sink``'s ``/<name>``, each with its own extra keys."""
    c = node_config(tmp, cluster, sink)
    c["destinations"] = {
        name: {
            "type": "webhook",
            "retry_backoff": "100ms",
            **extra,
            "settings": {"url": f"{sink.url}/{name}", **extra.get("settings", {})},
        }
        for name, extra in destinations.items()
    }
    return c


@contextmanager
def two_nodes(
    tmp: Path, cluster: NatsCluster, sink: Sink, config: Callable[..., dict[str, Any]]
) -> Iterator[list[EventdProcess]]:
    """Nodes a and b, ``config(node_dir, cluster, sink)`` each, started in turn (a
    first: it runs every dedup stage until b bids); killed at the end."""
    nodes: list[EventdProcess] = []
    try:
        for name in ("a", "b"):
            (tmp / name).mkdir()
            nodes.append(EventdProcess(tmp / name, config(tmp / name, cluster, sink)))
        for node in nodes:
            node.start(timeout=90)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def config(tmp: Path, cluster: NatsCluster, sink: Sink) -> dict[str, Any]:
    return webhooks_config(
        tmp,
        cluster,
        sink,
        {
            "slow": {"batch_size": 1, "max_in_flight": 2},
            "rated": {"batch_size": 1, "rate_limit": RATE},
        },
    )


def test_limits_hold_for_the_destination_across_two_nodes(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster(3)
    sink = TimingSink()
    with running(sink), two_nodes(tmp_path, cluster, sink, config) as nodes:
        a, b = nodes
        # Each node counts both before the load (a read the heartbeats within 2 s).
        for node in nodes:
            wait_until(lambda n=node: '"nodes":2' in n.log(), 30, "both nodes counted")

        # 120 events, sent as 60 requests alternating over the nodes: each a log
        # message or two, so both nodes' fetches find work.
        sent = [f"lim-{i}" for i in range(120)]
        for i in range(0, len(sent), 2):
            assert send_batch(nodes[i // 2 % 2], sent[i : i + 2]) == 200
        # POST /admin/drain on one node answers once both destinations passed
        # everything either node acknowledged (the cluster's consumers, not the
        # node's own position): the sink has it all when the answer comes.
        status_code, drained = admin_post(a, "/admin/drain?timeout=180", {}, timeout=200)
        assert status_code == 200, drained
        assert {d["name"]: d["lag_events"] for d in drained} == {"rated": 0, "slow": 0}
        assert sink.message_ids() == dict.fromkeys(sent, 2)

        status = {n: {d["name"]: d for d in n.admin("GET", "/admin/destinations")} for n in nodes}
        split = {d: [status[n][d]["delivered"] for n in nodes] for d in ("slow", "rated")}
        assert all(sum(s) == len(sent) for s in split.values()), split
        # Both nodes worked on each destination, so per-node limits would show.
        assert all(min(s) > 0 for s in split.values()), split
        rated = sorted(sink.arrivals["/rated"])
        # GCRA per node: at most 1 + (RATE / 2) * t events in any t s on each node, so
        # the nodes' sends span at least (len - 2) / RATE s. The sink sees arrivals:
        # each send plus its own latency, so the first may come later than it left by
        # more than the last did (measured: 5.898 s against a 5.900 s span of sends).
        # ARRIVAL_JITTER allows for that; a limit per node would span half (2.95 s).
        span = rated[-1] - rated[0]
        assert span >= (len(rated) - 2) / RATE - ARRIVAL_JITTER, (split, span)
        assert sink.most_open == 2, "the whole max_in_flight used, never more"

        # b dies: a's part grows to the whole limit once b's heartbeat expired.
        b.kill()
        wait_until(lambda: '"nodes":1' in a.log(), 60, "a counts itself alone")
        sink.reset_most_open()
        more = [f"alone-{i}" for i in range(40)]
        assert send_batch(a, more) == 200
        wait_until(lambda: set(sink.message_ids()) >= set(more), 180, "delivered by a alone")
        assert sink.most_open == 2, "a alone uses the whole max_in_flight"
