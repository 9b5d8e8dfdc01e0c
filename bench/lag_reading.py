"""Where a lag reading's time goes with a long backlog on a down destination (issue 14).

The fourth trial's `eventd status` took 8-23 s with 342 K events waiting for a down
destination. This starts a 3-server cluster, appends ``--groups`` requests of
``--events`` events (one user each), ``--together`` at a time, with the
dedup stages running and nobody reading the destination, then takes ``--readings``
lag readings in a row as ``/admin/destinations`` does (``ClusterFeed.lag``), and
prints per reading: wall seconds, this process's CPU seconds, direct gets (one per
message read), stream/consumer infos, the events counted and whether estimated.
``--budget``: the reading's READ_BUDGET in seconds (0: none, the code before it).

    python -m bench.lag_reading --groups 6000 --budget 1
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from eventd.config import JetStreamConfig, StorageConfig
from eventd.metrics import Metrics
from eventd.store import cluster as cluster_module
from eventd.store.base import EventRow
from eventd.store.cluster import ClusterStore
from eventd.store.jetstream import JetStreamStore
from tests.nats_cluster import NatsCluster


def rows(g: int, events: int) -> list[EventRow]:
    """``events`` track events of user u<g> (one partition: one log message)."""
    now = int(time.time() * 1000)
    user = f"u{g}"
    body = b'{"type":"track","userId":"%s"}' % user.encode()
    return [("app", f"g{g}-{i}", "track", "E", user, None, now, body) for i in range(events)]


class Calls:
    """Counts the JetStream context's calls by name (direct gets, infos)."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.counts: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.js, name)
        if name in ("get_msg", "stream_info", "consumer_info"):

            async def counted(*a: Any, **kw: Any) -> Any:
                self.counts[name] += 1
                return await attr(*a, **kw)

            return counted
        return attr


async def run(args: argparse.Namespace, cluster: NatsCluster, tmp: Path) -> None:
    cfg = JetStreamConfig(servers=tuple(cluster.urls), stream="LR", partitions=8)
    node = JetStreamStore(cfg, tmp / "a", node_id="a")
    await node.open(("hook",))
    try:
        began = time.monotonic()
        # Few appends at once: appends in flight together are one message per partition.
        for start in range(0, args.groups, args.together):
            end = min(start + args.together, args.groups)
            await asyncio.gather(*(node.append(rows(g, args.events)) for g in range(start, end)))
        while node.forwarded < args.groups * args.events:  # noqa: ASYNC110 (the stages' count)
            await asyncio.sleep(0.2)
        took = time.monotonic() - began
        print(f"{args.groups} groups of {args.events} appended and forwarded in {took:.1f}s")
        store = ClusterStore(
            StorageConfig(backend="jetstream", jetstream=cfg, path=tmp / "x.db"),
            ["hook"],
            metrics=Metrics(),
        )
        store.js = node
        calls = Calls(node._js)
        node._js = calls  # type: ignore[assignment]
        cluster_module.READ_BUDGET = args.budget if args.budget > 0 else 1000000000.0  # type: ignore[attr-defined]
        feed = store.feed("hook")
        print("reading  wall_s  cpu_s  direct_gets  infos  events  estimated")
        for k in range(args.readings):
            calls.counts.clear()
            wall, cpu = time.monotonic(), time.process_time()
            lag = await feed.lag(int(time.time() * 1000))
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            infos = calls.counts["stream_info"] + calls.counts["consumer_info"]
            print(
                f"{k:7d}  {wall:6.2f}  {cpu:5.2f}  {calls.counts['get_msg']:11d}  {infos:5d}"
                f"  {lag.events:6d}  {lag.estimated}"
            )
    finally:
        await node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=6000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--together", type=int, default=4, help="appends in flight at once")
    parser.add_argument("--readings", type=int, default=6)
    parser.add_argument("--budget", type=float, default=1.0)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="lag-reading-") as tmp,
        NatsCluster(Path(tmp) / "nats") as cluster,
    ):
        asyncio.run(run(args, cluster, Path(tmp)))


if __name__ == "__main__":
    main()
