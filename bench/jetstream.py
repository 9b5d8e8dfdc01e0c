"""Ingest and delivery per node: the jetstream store (R1, R3) against the SQLite store.

Store level, one process, no HTTP: what the storage costs a node, not what aiohttp
does. A 3-server nats-server cluster is started on loopback (tests/nats_cluster.py).
For each store:

``ingest``     ``--clients`` concurrent appenders for ``--duration`` s, each appending
               ``--batch`` events per call (1: a /v1/track request; 100: a /v1/batch),
               every call awaited to its acknowledgement: acknowledged events/s.
``forwarded``  jetstream only: events/s through the dedup stages into the log (from
               the first append to the last event forwarded).
``delivery``   one reader taking every stored event and settling it (SQLite:
               ``read`` + ``save_cursor`` per 100; jetstream: fetch + ack on the
               destination's consumer): events/s a node's delivery side can read.

Beside each rate, events per CPU-second (bench.machine.cpu_seconds): of this
process (the node: ``*_per_cpu_s``) and of this process plus the three
nats-servers (``*_per_cpu_s_with_servers``; on SQLite the same as the node's),
since wall-clock figures on a shared machine move with the other jobs.

Run: ``python -m bench.jetstream [--duration 3] [--clients 64]``; prints one JSON
object per (store, batch). Figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import orjson

from bench.machine import cpu_seconds
from eventd.config import JetStreamConfig
from eventd.store.base import EventRow
from eventd.store.jetstream import JetStreamStore
from eventd.store.sqlite import SqliteStore
from tests.nats_cluster import NatsCluster

Append = Callable[[Sequence[EventRow]], Awaitable[int]]


def _rows(n: int) -> list[EventRow]:
    out: list[EventRow] = []
    now = int(time.time() * 1000)
    for _ in range(n):
        mid = str(uuid.uuid4())
        user = f"user-{mid[:4]}"
        body = orjson.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "messageId": mid,
                "userId": user,
                "properties": {"revenue": 42.5, "currency": "EUR", "sku": "SKU-12345"},
                "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
                "timestamp": "2026-11-29T12:00:00.000Z",
            }
        )
        out.append(("web", mid, "track", "Order Completed", user, None, now, body))
    return out


class CpuClock:
    """CPU seconds used by this process and by the cluster's servers, by phase."""

    def __init__(self, cluster: NatsCluster | None) -> None:
        self.pids = [s.proc.pid for s in cluster.servers if s.proc] if cluster else []
        self.start = self._now()

    def _now(self) -> tuple[float, float]:
        return cpu_seconds(os.getpid()), sum(cpu_seconds(pid) for pid in self.pids)

    def lap(self, events: int, phase: str) -> dict[str, int]:
        """Events per CPU-second since the last lap: of this process, and with the servers."""
        now = self._now()
        own, servers = (now[0] - self.start[0]), (now[1] - self.start[1])
        self.start = now
        return {
            f"{phase}_events_per_cpu_s": round(events / max(own, 1e-9)),
            f"{phase}_events_per_cpu_s_with_servers": round(events / max(own + servers, 1e-9)),
        }


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a counter the store's own tasks move (they have no event to wait on)."""
    while not condition():  # noqa: ASYNC110 - a counter, not an event
        await asyncio.sleep(0.01)


async def _ingest(append: Append, clients: int, batch: int, duration: float) -> int:
    acked = 0
    stop = time.monotonic() + duration

    async def client() -> None:
        nonlocal acked
        while time.monotonic() < stop:
            n = await append(_rows(batch))  # not `acked += await ...`: that reads acked first
            acked += n

    await asyncio.gather(*(client() for _ in range(clients)))
    return acked


async def sqlite_run(root: Path, clients: int, batch: int, duration: float) -> dict[str, object]:
    store = SqliteStore(root / f"sqlite-{batch}.db", synchronous="full")
    await store.open()
    cpu = CpuClock(None)
    started = time.monotonic()
    acked = await _ingest(store.append, clients, batch, duration)
    ingest_s = time.monotonic() - started
    ingest_cpu = cpu.lap(acked, "ingest")
    started = time.monotonic()
    cursor = read = 0
    while read < acked:
        events = await store.read(cursor, 100)
        read += len(events)
        cursor = events[-1].seq
        await store.save_cursor("bench", cursor)
    delivery_s = time.monotonic() - started
    delivery_cpu = cpu.lap(read, "delivery")
    await store.close()
    return {
        "store": "sqlite (synchronous=full)",
        "batch": batch,
        "ingest_events_per_s": round(acked / ingest_s),
        **ingest_cpu,
        "delivery_events_per_s": round(read / delivery_s),
        **delivery_cpu,
    }


async def jetstream_run(
    cluster: NatsCluster, root: Path, replicas: int, clients: int, batch: int, duration: float
) -> dict[str, object]:
    cfg = JetStreamConfig(
        servers=tuple(cluster.urls), stream=f"B{replicas}x{batch}", replicas=replicas
    )
    store = JetStreamStore(cfg, root / f"js-{replicas}-{batch}", node_id="bench", lease_ttl=2.0)
    await store.open(["bench"])
    await _until(lambda: len(store.held_partitions()) == cfg.partitions)
    cpu = CpuClock(cluster)
    started = time.monotonic()
    acked = await _ingest(store.append, clients, batch, duration)
    ingest_s = time.monotonic() - started
    await _until(lambda: store.forwarded + store.duplicates >= acked)
    forward_s = time.monotonic() - started
    # ingest's CPU includes the dedup stages forwarding it: both are the node's work
    ingest_cpu = cpu.lap(acked, "ingest")
    reader = await store.reader("bench")
    started = time.monotonic()
    read = 0
    while read < acked:
        for msg, events in await reader.fetch(256):
            read += len(events)
            await reader.settle(msg)
    delivery_s = time.monotonic() - started
    delivery_cpu = cpu.lap(read, "delivery")
    await store.close()
    return {
        "store": f"jetstream R{replicas}",
        "batch": batch,
        "ingest_events_per_s": round(acked / ingest_s),
        "forwarded_events_per_s": round(acked / forward_s),
        **ingest_cpu,
        "delivery_events_per_s": round(read / delivery_s),
        **delivery_cpu,
    }


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="eventd-bench-js-") as tmp:
        root = Path(tmp)
        with NatsCluster(root / "nats") as cluster:
            for batch in args.batches:
                rows = [await sqlite_run(root, args.clients, batch, args.duration)]
                for replicas in (1, 3):
                    rows.append(
                        await jetstream_run(
                            cluster, root, replicas, args.clients, batch, args.duration
                        )
                    )
                for row in rows:
                    print(orjson.dumps(row).decode(), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.jetstream", description=__doc__.splitlines()[0]
    )
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--batches", type=lambda v: [int(x) for x in v.split(",")], default=[1, 100])
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
