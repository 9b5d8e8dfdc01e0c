"""The Python load generator, run in its own process (pinned to the load core).

Modes (each prints one JSON object on stdout):

``closed``  N keep-alive connections, each sending its next request as soon as
            the last is answered; ``--events 1`` posts single ``/v1/track``
            calls, ``--events K`` posts ``/v1/batch`` bodies of K events. Counts
            responses completed in the measured window, after a warm-up.
``paced``   open loop: single ``/v1/track`` calls issued at ``--rate`` per second
            over up to N connections (a call waits for a free connection, it is
            never dropped); writes when each messageId's 200 arrived to
            ``--acks`` (``time.monotonic()``, comparable with the sink's).

Every event carries a new messageId: ``{tag}-{n}``, or with ``--uuids`` (batches)
a random UUID as the SDKs send.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import events
from bench.client import Connection, PostTemplate


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (nearest rank), in the unit given."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    s = sorted(values)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": s[-1]}


def _bodies(tag: str, per_request: int, *, uuids: bool = False) -> Callable[[], bytes]:
    counter = itertools.count()
    if per_request == 1:
        head, tail = events.track_body()
        return lambda: b"%b%s-%d%b" % (head, tag.encode(), next(counter), tail)
    ihead, itail = events.batch_item()
    prefix = tag.encode()

    def batch() -> bytes:
        if uuids:  # what the SDKs send: random, so each lands on a random index page
            ids = [str(uuid.uuid4()).encode() for _ in range(per_request)]
        else:
            ids = [b"%b-%d" % (prefix, next(counter)) for _ in range(per_request)]
        return events.batch_body(ihead, itail, ids)

    return batch


async def closed(args: argparse.Namespace) -> dict[str, Any]:
    path = "/v1/track" if args.events == 1 else "/v1/batch"
    post = PostTemplate(
        path,
        f"{args.host}:{args.port}",
        {"Authorization": events.AUTHORIZATION, "Content-Type": "application/json"},
    )
    body = _bodies(args.tag, args.events, uuids=args.uuids)
    conns = [await Connection.open(args.host, args.port) for _ in range(args.conns)]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    window_start = start + args.warmup
    window_end = window_start + args.duration

    async def run(conn: Connection) -> None:
        nonlocal errors
        while True:
            data = post(body())
            sent = time.perf_counter()
            status = await conn.request(data)
            done = time.perf_counter()
            if window_start <= done <= window_end:
                if status == 200:
                    latencies.append(done - sent)
                else:
                    errors += 1
            if done >= window_end:
                return

    await asyncio.gather(*(run(c) for c in conns))
    for c in conns:
        await c.close()
    ok = len(latencies)
    pct = percentiles(latencies)
    return {
        "requests_per_s": ok / args.duration,
        "events_per_s": ok * args.events / args.duration,
        "requests": ok,
        "errors": errors,
        "p50_ms": (pct["p50"] or 0) * 1000,
        "p99_ms": (pct["p99"] or 0) * 1000,
    }


async def paced(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    post = PostTemplate(
        "/v1/track",
        f"{args.host}:{args.port}",
        {"Authorization": events.AUTHORIZATION, "Content-Type": "application/json"},
    )
    head, tail = events.track_body()
    idle = deque([await Connection.open(args.host, args.port) for _ in range(args.conns)])
    conns = list(idle)
    waiting: deque[tuple[str, float]] = deque()
    acks: dict[str, float] = {}
    latencies: list[float] = []
    errors = 0
    most_waiting = 0
    in_flight = 0
    finished = loop.create_future()
    stopping = False

    def send(conn: Connection, mid: str, due: float) -> None:
        nonlocal in_flight
        in_flight += 1
        fut = conn.request(post(head + mid.encode() + tail))
        fut.add_done_callback(lambda f: answered(f, conn, mid, due))

    def answered(fut: asyncio.Future[int], conn: Connection, mid: str, due: float) -> None:
        nonlocal errors, in_flight
        in_flight -= 1
        now = time.monotonic()
        if fut.exception() is None and fut.result() == 200:
            acks[mid] = now
            latencies.append(now - due)  # from when it was due: waiting for a connection counts
        else:
            errors += 1
        if waiting:
            send(conn, *waiting.popleft())
        else:
            idle.append(conn)
        if stopping and not in_flight and not finished.done():
            finished.set_result(None)

    counter = itertools.count()
    start = time.monotonic()
    issued = 0
    while (now := time.monotonic()) < start + args.duration:
        due = int((now - start) * args.rate) - issued
        for _ in range(due):
            mid = f"{args.tag}-{next(counter)}"
            if idle:
                send(idle.popleft(), mid, now)
            else:
                waiting.append((mid, now))
        issued += due
        most_waiting = max(most_waiting, len(waiting))
        await asyncio.sleep(0.001)
    stopping = True
    if in_flight:
        await finished
    elapsed = time.monotonic() - start
    for c in conns:
        await c.close()
    if args.acks:
        await asyncio.to_thread(Path(args.acks).write_bytes, orjson.dumps(acks))
    pct = percentiles(latencies)
    return {
        "offered_per_s": issued / args.duration,
        "acked_per_s": len(acks) / elapsed,
        "acked": len(acks),
        "errors": errors,
        "most_waiting": most_waiting,
        "p50_ms": (pct["p50"] or 0) * 1000,
        "p99_ms": (pct["p99"] or 0) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("mode", choices=("closed", "paced"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--events", type=int, default=1, help="events per request (closed)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (paced)")
    p.add_argument("--tag", required=True, help="messageId prefix, unique per run")
    p.add_argument("--acks", help="paced: write {messageId: time of 200} here")
    p.add_argument("--uuids", action="store_true", help="closed batches: UUID messageIds")
    args = p.parse_args(argv)
    result = asyncio.run(closed(args) if args.mode == "closed" else paced(args))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
