"""What ``POST /admin/drain`` waits for on the cluster (``JetStreamStore.drained``,
through ``ClusterFeed.passed``), on a real 3-server nats-server cluster, step by
step: an acknowledged group still in the ingest queue, then pending in a
destination's consumer, then fetched by a node and not settled, each keeps the
destination from being drained; each destination is drained on its own.

tests/test_cluster_limits.py drains through ``eventd serve`` on two nodes.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.msg import Msg

from eventd.store.jetstream import JetStreamStore, LogEvent
from tests.test_jetstream_store import Nodes, drain, nodes, row, until

__all__ = ["nodes"]  # the fixture: stores as separate nodes hold them

pytestmark = pytest.mark.timeout(180)


async def test_drained_waits_for_the_ingest_queue_the_consumer_and_what_a_node_holds(
    nodes: Nodes,
) -> None:
    destinations = ("hook", "crm")
    # An ingest-only node: what it acknowledges waits in the ingest queue.
    front = JetStreamStore(nodes.cfg, nodes.tmp / "front", node_id="front")
    await front.open(destinations, run_dedup=False)
    nodes.open.append(front)
    assert await front.drained("hook") and await front.drained("crm")  # nothing yet
    await front.append([row(f"d{i}", user=f"u{i % 5}") for i in range(40)])
    ingest = await front.js.stream_info(front.names.ingest)
    assert ingest.state.messages > 0
    assert not await front.drained("hook") and not await front.drained("crm")

    # A node with dedup stages forwards the groups to the log: pending there.
    a = await nodes.start("a", destinations=destinations)
    await until(lambda: a.forwarded == 40)

    deadline = time.monotonic() + 30
    while await a.ingest_waiting():  # acked after forwarding
        assert time.monotonic() < deadline, "the ingest stream's groups never all acked"
        await asyncio.sleep(0.05)  # polling the server's count, bounded by the deadline
    assert not await a.drained("hook") and not await a.drained("crm")

    # hook: fetched by a node, not settled (in flight): not drained.
    reader = await a.reader("hook")
    held: list[tuple[Msg, list[LogEvent]]] = []
    while sum(len(events) for _, events in held) < 40:
        held += await reader.fetch(64)
    assert not await front.drained("hook")
    for msg, _ in held:
        await reader.settle(msg)
    # Settled: drained, from any node; crm is still pending on its own.
    assert await front.drained("hook") and await a.drained("hook")
    assert not await front.drained("crm")
    await drain(await a.reader("crm"), 40)
    assert await front.drained("crm")
