"""``python -m bench.cluster_identity``: the identity graph's writer on the cluster.

The same event mix as ``bench.identity`` (10 events a person: anonymous tracks, an
identify, tracks with both ids, 1 in 10 back on a second device), applied in pages
of 5,000 through the graph to :class:`~eventd.store.cluster_identity.ClusterIdentityStore`
on a 3-server nats-server cluster on loopback (tests/nats_cluster.py), R1 and R3.
The writer's own calls (eventd/identity/writer.py ``apply_page``), in this process,
no log read: what the shared graph's writes cost. Then ``GET``-like reads: a
profile by userId (``find``), one at a time.

Prints one JSON object per replicas setting: events/s wall-clock, the writer's
CPU seconds and the three servers' (bench.machine.cpu_seconds), lookup p50/p99 ms.
The servers share this machine's cores with the writer: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench.identity import _row, mixed
from bench.machine import cpu_seconds
from eventd.config import JetStreamConfig
from eventd.identity import writer
from eventd.identity.graph import DEFAULT_BLOCKED_VALUES, DEFAULT_MAX_ANONYMOUS_IDS, USER
from eventd.store.cluster_identity import ClusterIdentityStore
from tests.nats_cluster import NatsCluster

PAGE = 5000


def run(cluster: NatsCluster, replicas: int, people: int, lookups: int) -> dict[str, object]:
    cfg = JetStreamConfig(
        servers=tuple(cluster.urls), stream=f"BID{replicas}x{os.getpid()}", replicas=replicas
    )
    rows = [(seq, _row(seq, msg)[7]) for seq, msg in enumerate(mixed(people), start=1)]
    store = ClusterIdentityStore(cfg)
    writer.start(store, DEFAULT_BLOCKED_VALUES, DEFAULT_MAX_ANONYMOUS_IDS)
    writer.cursor()  # connected and leading before the clock
    servers = [s.proc.pid for s in cluster.servers if s.proc is not None]
    me = os.getpid()
    cpu0 = (cpu_seconds(me), sum(cpu_seconds(p) for p in servers))
    t0 = time.perf_counter()
    for i in range(0, len(rows), PAGE):
        writer.apply_page(rows[i : i + PAGE])
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(me) - cpu0[0], sum(cpu_seconds(p) for p in servers) - cpu0[1])
    writer.stop()

    async def read() -> list[float]:
        reader = ClusterIdentityStore(cfg)
        await reader.open_reader()
        took = []
        try:
            for _ in range(lookups):
                user = f"user-{random.randrange(people):012d}"
                s = time.perf_counter()
                assert await reader.read(reader.find, USER, user) is not None
                took.append((time.perf_counter() - s) * 1000)
        finally:
            await reader.close_reader()
        return took

    took = asyncio.run(read())
    q = statistics.quantiles(took, n=100)
    return {
        "replicas": replicas,
        "events": len(rows),
        "events_per_s": round(len(rows) / wall),
        "writer_cpu_s": round(cpu[0], 2),
        "events_per_writer_cpu_s": round(len(rows) / cpu[0]),
        "servers_cpu_s": round(cpu[1], 2),
        "find_p50_ms": round(q[49], 2),
        "find_p99_ms": round(q[98], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster_identity", description=__doc__)
    p.add_argument("--people", type=int, default=2000, help="10 events each")
    p.add_argument("--lookups", type=int, default=1000)
    args = p.parse_args(argv)
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp, NatsCluster(Path(tmp) / "nats") as cluster:
        for replicas in (1, 3):
            print(orjson.dumps(run(cluster, replicas, args.people, args.lookups)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
