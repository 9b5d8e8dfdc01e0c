"""A measured prototype of issue 18's second core: ingest fronts feeding one writer.

``python -m bench.second_core [--fronts N] [--duration S]`` measures, at one moment,
UUID batches (``/v1/batch`` x100, 16 connections, synchronous=full) into:

- ``eventd serve`` pinned to one core (the ``ingest`` row's setting);
- ``eventd serve`` given every core (its writer thread can use a second core where
  SQLite, RocksDB and fsync release the GIL);
- the prototype given every core: N front processes listening on one port with
  SO_REUSEPORT (the kernel spreads connections over them), each running eventd's own
  Tracking API (``eventd.ingest.Ingest``: auth, parsing, validation, normalization,
  the stored form) and sending each request's rows over a Unix socket to one writer
  process, which alone owns the outbox (``SqliteStore``: group commit, the RocksDB
  dedup set) and answers once the rows are committed; the front answers 200 then,
  so acks stay durable and dedup exact (one writer decides every repeat).

Each as events/s (wall) and per CPU-second of the processes involved (fronts and
writer; eventd's one process), and every acknowledged event is checked stored.
Not wired into ``eventd serve``: docs/benchmarks.md says what is left to do.
The load generator runs on the load core, so with 2 cores it shares one with the
servers given every core: compare the per CPU-second figures too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web

from bench import events
from bench.machine import Cores, cpu_seconds, pinned, plan_cores
from bench.scenarios import BenchError, Context, Plan, eventd
from eventd.config import Config, parse_config
from eventd.ingest import CLIENT_MAX_SIZE, Ingest
from eventd.live import LiveHub
from eventd.metrics import Metrics
from eventd.store import EventRow, SqliteStore, StorageUnavailable, Store

_LEN = struct.Struct(">I")


def config(db: Path) -> Config:
    """eventd's configuration of the bench: the bench source, durable acks."""
    data = {
        "storage": {"path": str(db), "synchronous": "full"},
        "sources": {events.SOURCE: {"write_key": events.WRITE_KEY}},
    }
    return parse_config(data, "bench.second_core")


async def _frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(size))


def _framed(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


# -- the writer: the one process that owns the outbox --------------------------------


async def writer(sock: Path, db: Path) -> None:
    """Serve appends on ``sock``: each frame (request id, rows) is answered with
    (request id, events stored) once committed, or (request id, error text)."""
    store = SqliteStore(db, synchronous="full")
    await store.open()

    async def serve(reader: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
        async def one(req: int, rows: list[EventRow]) -> None:
            try:
                answer: int | str = await store.append(rows)
            except StorageUnavailable as exc:
                answer = str(exc)
            out.write(_framed((req, answer)))

        tasks: set[asyncio.Task[None]] = set()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                req, rows = await _frame(reader)
                # concurrently: appends queued together are one group commit
                task = asyncio.create_task(one(req, rows))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        out.close()

    server = await asyncio.start_unix_server(serve, path=str(sock))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    await store.close()


# -- a front: eventd's Tracking API, its outbox the writer -------------------------


class RemoteOutbox:
    """What ``Ingest`` uses of a Store (``append``, ``pending_events``), over the
    writer's socket: ``append`` returns once the writer has committed the rows."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.pending_events = 0
        self._next = 0
        self._waiting: dict[int, asyncio.Future[int | str]] = {}
        self._out: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        reader, self._out = await asyncio.open_unix_connection(str(self.sock))
        self._reading = asyncio.create_task(self._answers(reader))

    async def _answers(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                req, answer = await _frame(reader)
                self._waiting.pop(req).set_result(answer)
        for fut in self._waiting.values():  # the writer is gone: nothing is acknowledged
            fut.set_result("the writer closed its socket")

    async def append(self, rows: Sequence[EventRow]) -> int:
        assert self._out is not None
        self._next += 1
        fut: asyncio.Future[int | str] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        self.pending_events += len(rows)
        try:
            self._out.write(_framed((self._next, list(rows))))
            answer = await fut
        finally:
            self.pending_events -= len(rows)
        if isinstance(answer, str):
            raise StorageUnavailable(answer)
        return answer


async def front(sock: Path, port: int) -> None:
    """eventd's ingest routes on ``port`` (SO_REUSEPORT, beside the other fronts)."""
    outbox = RemoteOutbox(sock)
    await outbox.connect()
    cfg = config(Path("unused.db"))
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    Ingest(cfg, cast(Store, outbox), Metrics(), LiveHub()).add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


# -- the measurement -------------------------------------------------------------------


def _spawn(args: list[str], cpus: frozenset[int] | None) -> subprocess.Popen[bytes]:
    with pinned(cpus):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.second_core", *args], stdout=subprocess.PIPE
        )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise BenchError(f"bench.second_core {args[0]} did not start")
    return proc


@contextlib.contextmanager
def prototype(
    work: Path, fronts: int, cpus: frozenset[int] | None
) -> Iterator[tuple[int, list[int], Path]]:
    """The writer and ``fronts`` fronts on ``cpus``: yields (port, pids, outbox path)."""
    sock, db = work / "writer.sock", work / "data" / "eventd.db"
    port = _free_port()
    procs = [_spawn(["writer", str(sock), str(db)], cpus)]
    try:
        procs += [_spawn(["front", str(sock), str(port)], cpus) for _ in range(fronts)]
        yield port, [p.pid for p in procs], db
    finally:
        for p in reversed(procs):  # fronts first: the writer commits what they sent
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load(ctx: Context, port: int, pids: list[int]) -> dict[str, float]:
    """UUID batches for the plan's window: events/s and per CPU-second of ``pids``."""
    plan = ctx.plan
    argv = [sys.executable, "-m", "bench.loadgen", "closed", "--port", str(port)]
    argv += ["--conns", str(plan.batch_conns), "--events", str(plan.batch_events)]
    argv += ["--duration", str(plan.duration), "--warmup", str(plan.warmup)]
    argv += ["--tag", ctx.tag("core2"), "--uuids"]
    cpu0 = [cpu_seconds(p) for p in pids]
    with pinned(ctx.cores.load):
        out = subprocess.run(argv, capture_output=True, check=True, timeout=300)
    cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    r = orjson.loads(out.stdout.splitlines()[-1])
    if r["errors"]:
        raise BenchError(f"{r['errors']} requests failed")
    # the window's events over the CPU of warm-up and window (the rate holds through both)
    events = r["events_per_s"] * (plan.duration + plan.warmup)
    return {
        "eps": r["events_per_s"],
        "per_cpu_s": events / sum(cpu),
        # the first process alone (the prototype's writer): the rate it could take
        # with the parsing on other cores
        "first_per_cpu_s": events / cpu[0],
        "acked": r["requests"] * plan.batch_events,
    }


def _stored(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def measure(ctx: Context, fronts: int) -> dict[str, dict[str, float]]:
    every = frozenset(os.sched_getaffinity(0))
    out: dict[str, dict[str, float]] = {}
    cores = ctx.cores
    for name, cpus in (("eventd, 1 core", cores.server), ("eventd, every core", every)):
        ctx.cores = Cores(cpus, cores.load)  # where eventd() starts it
        try:
            with eventd(ctx, "core2-eventd") as proc:
                assert proc.proc is not None
                out[name] = _load(ctx, proc.port, [proc.proc.pid])
        finally:
            ctx.cores = cores
        if (stored := proc.query("SELECT count(*) FROM events")[0][0]) < out[name]["acked"]:
            raise BenchError(f"{name}: {out[name]['acked']} acknowledged, {stored} stored")
    name = f"{fronts} fronts + 1 writer, every core"
    with prototype(ctx.tmp("core2"), fronts, every) as (port, pids, db):
        out[name] = _load(ctx, port, pids)
    if (stored := _stored(db)) < out[name]["acked"]:
        raise BenchError(f"{name}: {out[name]['acked']} acknowledged, {stored} stored")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.second_core", description=__doc__)
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("writer")
    w.add_argument("sock", type=Path)
    w.add_argument("db", type=Path)
    f = sub.add_parser("front")
    f.add_argument("sock", type=Path)
    f.add_argument("port", type=int)
    p.add_argument("--fronts", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="one short window each (CI)")
    args = p.parse_args(argv)
    if args.cmd == "writer":
        asyncio.run(writer(args.sock, args.db))
        return 0
    if args.cmd == "front":
        asyncio.run(front(args.sock, args.port))
        return 0
    plan = Plan.quick() if args.smoke else Plan.full(args.duration)
    with tempfile.TemporaryDirectory(prefix="eventd-core2-") as tmp:
        ctx = Context(plan, plan_cores(), Path(tmp), use_wrk=False)
        print("| run | setting | events/s | per CPU-second | per CPU-second of the writer |")
        print("|---|---|---:|---:|---:|")
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            for name, r in measure(ctx, args.fronts).items():
                alone = f"{r['first_per_cpu_s']:,.0f}" if "writer" in name else ""
                print(f"| {run} | {name} | {r['eps']:,.0f} | {r['per_cpu_s']:,.0f} | {alone} |")
            print(f"<!-- run {run}: {time.monotonic() - started:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
