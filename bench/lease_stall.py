"""``python -m bench.lease_stall --rounds N``: the lease bucket after a quorum loss.

On demand, not in CI. Issue 14's third trial: after SIGCONT of two of three
nats-servers (2.9.10), the lease bucket's stream (``KV_<S>_LEASES``) took no writes
for 3.5 minutes (its leader logged ``has high message lag``) and no dedup stage ran
until a server was restarted. This tries to make that: two stores as two eventd
nodes hold them (dedup stages on both) under the load of bench/quorum_loss.py; each
round SIGSTOPs the bucket's stream leader and one other server for ``--stop``
seconds, SIGCONTs them and measures how long until every dedup partition is held
again (bounded by ``--wait``). Printed per round: the servers stopped, that time,
how many ``high message lag`` lines each server logged so far, and the stepdowns
each node asked for (eventd/store/jetstream.py, ``_unstick_leases``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.quorum_loss import Load, two_nodes
from eventd.config import JetStreamConfig
from eventd.store.jetstream import JetStreamStore
from tests.nats_cluster import NatsCluster

PARTITIONS = 8


async def leader_of(store: JetStreamStore, stream: str) -> str:
    """The stream's leader's server name, asked until one answers."""
    while True:
        try:
            cluster = (await store.js.stream_info(stream)).cluster
            if cluster is not None and cluster.leader:
                return cluster.leader
        except Exception:  # an election: ask again
            pass
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, cluster: NatsCluster, tmp: Path) -> None:
    cfg = JetStreamConfig(servers=tuple(cluster.urls), stream="LS", partitions=PARTITIONS)
    nodes = await two_nodes(cfg, tmp)
    load = Load(nodes, args.rate)
    workers = [asyncio.create_task(load.run(w)) for w in range(4)]
    names = [server.name for server in cluster.servers]
    for r in range(1, args.rounds + 1):
        await asyncio.sleep(args.settle)
        leader = await leader_of(nodes[0], f"KV_{nodes[0].names.leases}")
        stopped = [names.index(leader), (names.index(leader) + 1) % len(names)]
        for i in stopped:
            cluster.pause(i)
        await asyncio.sleep(args.stop)
        for i in stopped:
            cluster.resume(i)
        started = time.monotonic()
        while time.monotonic() - started < args.wait:
            if sum(len(node.held_partitions()) for node in nodes) == PARTITIONS:
                break
            await asyncio.sleep(0.5)
        held = time.monotonic() - started
        lag_lines = {s.name: s.log().count("high message lag") for s in cluster.servers}
        print(
            f"round {r}: stopped {[names[i] for i in stopped]} (the bucket's leader first)"
            f" {args.stop:g}s; every partition held {held:.1f}s after SIGCONT;"
            f" 'high message lag' lines {lag_lines}; stepdowns {[n.stepdowns for n in nodes]}",
            flush=True,
        )
    load.stop.set()
    await asyncio.gather(*workers)
    for node in nodes:
        await node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stop", type=float, default=40.0, help="s the two servers stay stopped")
    parser.add_argument("--settle", type=float, default=10.0, help="s of load before a stop")
    parser.add_argument("--wait", type=float, default=240.0, help="s to wait for the stages")
    parser.add_argument("--rate", type=float, default=10.0, help="appends/s per task (0: flat out)")
    args = parser.parse_args()
    # SIGTERM (a timeout) ends through the context managers: the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory() as tmp, NatsCluster(Path(tmp) / "nats") as cluster:
        asyncio.run(run(args, cluster, Path(tmp)))


if __name__ == "__main__":
    main()
