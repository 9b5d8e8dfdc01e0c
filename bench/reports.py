"""``python -m bench.reports``: the duckdb destination's load rate, and a 4-step funnel
and a 14-period retention over millions of events, against the targets of issue 16.

Load: SDK-shaped track events (a dozen properties, the usual context) handed to the
destination's ``deliver`` in batches of 5,000 as the dispatcher does with the default
config; the rate counts only ``deliver`` (no HTTP, no outbox). Reports: ``--events``
rows written straight into the destination's own ``tracks`` table by DuckDB SQL
(200,000 people over 60 days, a third of the events anonymous, half of those linked in
``identities``), then each report's ``run`` timed through the destination's ``query``
as the daemon runs it. ``--smoke`` is a few seconds with tiny sizes. Wall times
come with CPU-seconds of this process and the destination's loader process
(DuckDB's threads included) and the load average, since the machine may be shared.
The loader runs at nice 10 as in the daemon (loading is background work), so on a
busy machine the wall figures suffer more than the CPU-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.machine import cpu_seconds
from eventd import OK, Event
from eventd.reports import REPORTS
from eventd.reports.params import parse
from plugins.duckdb import Duckdb

NAMES = ["Viewed Car", "Booked Test Drive", "Started Checkout", "Order Completed"]
LOAD_TARGET = 100_000.0  # events/s
QUERY_TARGET = 2.0  # seconds


def message(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": NAMES[i % 4],
        "userId": f"user-{i % 50_000}",
        "anonymousId": str(uuid.uuid4()),
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-02T09:00:00.000Z",
        "receivedAt": "2026-11-02T09:00:00.120Z",
        "sentAt": "2026-11-02T09:00:00.050Z",
        "context": {
            "ip": "203.0.113.9",
            "library": {"name": "analytics.js", "version": "2.11.1"},
            "page": {"path": "/cars/42", "url": "https://shop.example/cars/42"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "properties": {
            "car": ["vw", "bmw", "fiat"][i % 3],
            "price": 18000.5 + i % 100,
            "currency": "EUR",
            "revenue": 99.5,
            "quantity": 1 + i % 3,
            "coupon": None if i % 2 else "WINTER",
            "dealer": {"id": f"d{i % 40}", "city": "Oslo"},
            "electric": bool(i % 2),
        },
    }


async def load_rate(path: Path, n: int, batch: int = 5000) -> tuple[float, float, str]:
    """(events per wall second, events per CPU-second of this process, how many
    batches took the vectorized path) of ``deliver`` alone."""
    bodies = [orjson.dumps(message(i)) for i in range(n)]
    events = [Event(i, "app", 0, body=b) for i, b in enumerate(bodies, 1)]
    async with aiohttp.ClientSession() as session:
        store = Duckdb("bench", {"path": str(path), "max_batch_events": batch}, session)
        await store.deliver(events[:batch])  # tables and columns made outside the timing
        before = store.vectorized_batches
        start, cpu = time.perf_counter(), _cpu(await store.loader_pid())
        for k in range(batch, n, batch):
            outcome = await store.deliver(events[k : k + batch])
            assert outcome == OK or outcome == [OK] * len(events[k : k + batch]), outcome
        elapsed, cpu = time.perf_counter() - start, _cpu(await store.loader_pid()) - cpu
        fast = f"{store.vectorized_batches - before} of {len(range(batch, n, batch))}"
        await store.close()
    return (n - batch) / elapsed, (n - batch) / cpu, fast


FILL = """
INSERT INTO app.tracks (id, "timestamp", received_at, user_id, anonymous_id, event, event_text)
SELECT 'e' || i,
       TIMESTAMPTZ '2026-09-01 00:00:00+00' + to_microseconds(
           CAST(((i * 7919) % 60) * 86400000000 + ((i * 104729) % 86400000000) AS BIGINT)),
       TIMESTAMPTZ '2026-09-01 00:00:00+00',
       CASE WHEN i % 3 = 0 THEN NULL ELSE 'u' || ((i * 31) % $people) END,
       'a' || ((i * 31) % $people),
       lower(replace(['Viewed Car','Booked Test Drive','Started Checkout','Order Completed']
             [1 + CAST((i // 7) % 4 AS INTEGER)], ' ', '_')),
       ['Viewed Car','Booked Test Drive','Started Checkout','Order Completed']
             [1 + CAST((i // 7) % 4 AS INTEGER)]
FROM range($n) AS r(i)
"""
LINKS = """
INSERT INTO main.identities
SELECT 'a' || p, 'u' || p, 'p' || (p // 2), TIMESTAMPTZ '2026-09-15 00:00:00+00'
FROM range($people) AS r(p) WHERE p % 2 = 0
"""


async def reports(path: Path, n: int, people: int, runs: int) -> dict[str, list[float]]:
    async with aiohttp.ClientSession() as session:
        store = Duckdb("bench", {"path": str(path)}, session)
        await store.deliver([Event(1, "app", 0, body=orjson.dumps(message(0)))])
        # the bench fills the destination's own file, through its loader
        await store.query(
            "CREATE TABLE IF NOT EXISTS main.identities (anonymous_id TEXT,"
            " user_id TEXT NOT NULL, profile_id TEXT NOT NULL,"
            " linked_at TIMESTAMP WITH TIME ZONE NOT NULL)"
        )
        start = time.perf_counter()
        await store.query(FILL.replace("$people", str(people)).replace("$n", str(n)))
        await store.query(LINKS.replace("$people", str(people)))
        await store.query("CHECKPOINT")
        pid = await store.loader_pid()
        print(f"  filled {n:,} events in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        cases = {
            "funnel (4 steps, 1d)": ("funnel", {"steps": ",".join(NAMES), "within": "1d"}),
            "retention (14 days)": ("retention", {"start": "Viewed Car", "periods": "14"}),
        }
        times: dict[str, list[float]] = {}
        for label, (name, given) in cases.items():
            module = REPORTS[name]
            args = parse(module.PARAMS, given)
            for _ in range(runs):
                start, cpu = time.perf_counter(), _cpu(pid)
                await module.run(store, args)
                times.setdefault(label, []).append(time.perf_counter() - start)
                times.setdefault(f"{label} CPU", []).append(_cpu(pid) - cpu)
        await store.close()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the harness works")
    p.add_argument("--load-events", type=int, default=200_000)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--people", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--batch", type=int, default=5000, help="events per deliver (the default config's)"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.load_events, args.events, args.people, args.runs = 15_000, 20_000, 500, 1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eventd-bench-reports-") as tmp:
        rate, cpu_rate, fast = asyncio.run(
            load_rate(Path(tmp) / "load.duckdb", args.load_events, args.batch)
        )
        load_between = os.getloadavg()
        times = asyncio.run(
            reports(Path(tmp) / "reports.duckdb", args.events, args.people, args.runs)
        )
    # The machine may be shared: the load average says how far wall figures are from an
    # idle machine's; CPU-seconds (this process, DuckDB's threads included) are steadier.
    print(f"cores: {os.cpu_count()}; load average (1, 5, 15 min) before: {_load(load_before)},")
    print(f"after the load: {_load(load_between)}, at the end: {_load(os.getloadavg())}")
    print(f"duckdb load: {fast} batches of {args.batch:,} took the vectorized path\n")
    print("| measure | target | median (wall) | CPU-seconds | met (wall) |")
    print("|---|---|---|---|---|")
    print(
        f"| duckdb load ({args.load_events:,} events) | >= {LOAD_TARGET:,.0f}/s |"
        f" {rate:,.0f}/s | {cpu_rate:,.0f} events per CPU-second |"
        f" {'yes' if rate >= LOAD_TARGET else 'no'} |"
    )
    for label, ts in times.items():
        if label.endswith(" CPU"):
            continue
        med, cpu = statistics.median(ts), statistics.median(times[f"{label} CPU"])
        print(
            f"| {label} over {args.events:,} events | < {QUERY_TARGET:g} s | {med:.2f} s |"
            f" {cpu:.2f} | {'yes' if med < QUERY_TARGET else 'no'} |"
        )
    return 0


def _cpu(loader: int) -> float:
    """CPU-seconds so far of this process and the destination's loader process
    (DuckDB's threads included): the load's and the reports' whole cost."""
    return time.process_time() + (cpu_seconds(loader) if loader != os.getpid() else 0.0)


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{a:.2f}" for a in avg)


if __name__ == "__main__":
    sys.exit(main())
