"""Per-user order on the cluster, through ``eventd serve`` (issue 14, "Ordering").

Three real nats-servers, two ``eventd serve`` nodes (tests/test_cluster_serve.py's
``two_nodes``) with one webhook destination, ``ordered = true``; each node posts to
its own path of the sink (``/ordered-a``, ``/ordered-b``), so the sink knows which
node delivered what. Users' events are sent through both nodes, each user's one
after another (each acknowledged, a 200, before the next is sent; a request a node
did not answer is sent again, same messageId, to the other node). Node a, started
first, holds every dedup stage and every partition of the ordered destination;
mid-stream it is killed with SIGKILL, and b takes its partitions over.

What is asserted, per user, counted by messageId in the sink's arrival order:
- every acknowledged event arrives;
- each node delivered that user's events in acknowledgement order, each once;
- the first arrivals, both nodes together, are in acknowledgement order (no
  inversion, counted as in tests/test_ordered.py);
- the one documented exception, a repeat: an event a delivered and had not had
  acknowledged to the consumer when it died is sent again by b, which takes the
  partition over by resending, before anything newer, the partition's log
  messages from the consumer's ack floor through the last one handed to a
  (eventd/store/cluster.py, ``ClusterFeed``). So a repeat arrives exactly twice,
  first from a, then from b.

And an ordered destination's fetchers share their node's part of
``max_in_flight`` (eventd/delivery/share.py): with ``max_in_flight = 2`` over two
nodes, a sink holding each answer 100 ms never sees more than 2 requests open,
though a node holds several partitions, each with a batch to send.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from eventd.store.cluster_admin import EVENT_BITS
from tests.harness import EventdProcess, Received, Sink, running
from tests.nats_cluster import NatsCluster
from tests.test_cluster_limits import TimingSink, webhooks_config
from tests.test_cluster_limits import two_nodes as limits_two_nodes
from tests.test_cluster_serve import WRITE_KEY, admin_post, send_batch, two_nodes, wait_until
from tests.test_ordered import index, inversions

pytestmark = pytest.mark.slow

USERS = [f"u{i}" for i in range(12)]
PER_USER = 40


def ordered_destination(config: dict[str, Any]) -> None:
    """One ordered webhook, posting to the node's own path of the sink."""
    node = Path(config["storage"]["path"]).parent.parent.name  # <tmp>/<node>/data/...
    url = config["destinations"]["hook"]["settings"]["url"].rsplit("/", 1)[0]
    config["destinations"] = {
        "ordered": {
            "type": "webhook",
            "ordered": True,
            "batch_size": 5,
            "retry_backoff": "100ms",
            "settings": {"url": f"{url}/ordered-{node}", "batch": True},
        }
    }


class Streams:
    """One thread per user, sending its events one after another over HTTP."""

    def __init__(self, nodes: list[EventdProcess]) -> None:
        self.nodes = nodes
        self.lock = threading.Lock()
        self.acked: dict[str, int] = dict.fromkeys(USERS, 0)  # events acknowledged
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(u,), daemon=True) for u in USERS]

    def _run(self, user: str) -> None:
        for i in range(PER_USER):
            event = {"userId": user, "event": "Step", "messageId": f"{user}-{i}"}
            deadline = time.monotonic() + 120
            k = i
            while True:  # the same event until a node acknowledged it
                node = self.nodes[k % 2]
                k += 1
                try:
                    status, _ = node.post("/v1/track", event, key=WRITE_KEY)
                except OSError:  # the node is gone: the other one
                    status = None
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    with self.lock:
                        self.errors.append(f"{user}-{i} not acknowledged: {status}")
                    return
            with self.lock:
                self.acked[user] = i + 1

    def start(self) -> Streams:
        for t in self.threads:
            t.start()
        return self

    def total(self) -> int:
        with self.lock:
            return sum(self.acked.values())

    def join(self) -> None:
        for t in self.threads:
            t.join(300)


def by_node(received: list[Received]) -> list[tuple[str, str, int]]:
    """(node, user, index) of every event the sink took, in arrival order."""
    out = []
    for r in received:
        node = r.path.rsplit("-", 1)[1]
        for event in r.json():
            user, i = index(event["messageId"])
            out.append((node, user, i))
    return out


def test_an_ordered_destination_keeps_each_users_order_when_a_node_dies(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster(3)
    with two_nodes(tmp_path, cluster, ordered_destination) as (sink, (a, b)):
        streams = Streams([a, b]).start()
        total = len(USERS) * PER_USER
        # Kill a mid-stream, once it has delivered part of what was acknowledged.
        wait_until(
            lambda: streams.total() >= total // 3 and len(sink.message_ids()) >= total // 6,
            120,
            "a third acknowledged, a sixth delivered",
        )
        a.kill()
        streams.join()
        assert not streams.errors, streams.errors
        assert streams.total() == total
        sent = {f"{u}-{i}" for u in USERS for i in range(PER_USER)}
        wait_until(lambda: set(sink.message_ids()) >= sent, 180, "every acknowledged event")
        assert "ordered partition taken" in a.log() and "ordered partition taken" in b.log()
        with sink.cond:
            arrivals = by_node(list(sink.received))

    assert {f"{u}-{i}" for _, u, i in arrivals} == sent
    for user in USERS:
        mine = [(node, i) for node, u, i in arrivals if u == user]
        from_a = [i for node, i in mine if node == "a"]
        from_b = [i for node, i in mine if node == "b"]
        # Each node: this user's events in acknowledgement order, each once.
        assert from_a == sorted(set(from_a)), (user, from_a)
        assert from_b == sorted(set(from_b)), (user, from_b)
        # Both together, first arrivals: no inversion.
        assert inversions([i for _, i in mine]) == 0, (user, mine)
        # Repeats: what a had delivered, sent again by b when it took the partition
        # over; b's list therefore starts with them, then goes on in order.
        repeated = set(from_a) & set(from_b)
        assert from_b[: len(repeated)] == sorted(repeated), (user, mine)
    repeats = sum(1 for _ in arrivals) - len(sent)
    print(f"{len(sent)} events, {repeats} repeats (sent again by b after a's kill)")


def slow_ordered(tmp: Path, cluster: NatsCluster, sink: Sink) -> dict[str, Any]:
    return webhooks_config(
        tmp, cluster, sink, {"slow": {"ordered": True, "batch_size": 1, "max_in_flight": 2}}
    )


async def last_log_sequence(cluster: NatsCluster, stream: str) -> int:
    nc = await nats.connect(servers=cluster.urls)
    try:
        return int((await nc.jetstream(timeout=10).stream_info(stream)).state.last_seq)
    finally:
        await nc.close()


def test_an_ordered_destinations_fetchers_share_max_in_flight(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster(3)
    sink = TimingSink()
    with running(sink), limits_two_nodes(tmp_path, cluster, sink, slow_ordered) as nodes:
        a, _ = nodes
        for node in nodes:
            wait_until(lambda n=node: '"nodes":2' in n.log(), 30, "both nodes counted")
        # 60 events of ~30 users (send_batch's), two per request, alternating nodes:
        # every partition has batches waiting while the sink holds each answer.
        sent = [f"ord-{i}" for i in range(60)]
        for i in range(0, len(sent), 2):
            assert send_batch(nodes[i // 2 % 2], sent[i : i + 2]) == 200
        status_code, drained = admin_post(a, "/admin/drain?timeout=180", {})
        assert status_code == 200, drained
        assert sink.message_ids() == dict.fromkeys(sent, 1)
        # Drained, each node's status gives the cluster's cursor: every event of the
        # log's last message passed (it was 0: the worker's own feed never fetches).
        last = asyncio.run(last_log_sequence(cluster, a.config["storage"]["stream"]))
        for node in nodes:
            statuses = {d["name"]: d for d in node.admin("GET", "/admin/destinations")}
            assert statuses["slow"]["cursor"] == ((last + 1) << EVENT_BITS) - 1, statuses
        # The four partitions' fetchers, on whichever nodes hold them, took their
        # batches from each node's part (1 of 2): without it, one node holding every
        # partition would have 4 open.
        assert 1 <= sink.most_open <= 2, sink.most_open
        with sink.cond:
            received = list(sink.received)
    by_user: dict[int, list[int]] = {}
    for r in received:
        body = r.json()  # batch_size 1, no `batch` setting: one event per request
        for event in body if isinstance(body, list) else [body]:
            by_user.setdefault(zlib.crc32(event["messageId"].encode()) % 37, []).append(
                int(event["messageId"].split("-")[1])
            )
    assert all(order == sorted(order) for order in by_user.values()), by_user
