"""One function per measurement; each starts what it needs and stops it, whatever happens.

Every process runs on loopback and is pinned: the server under test (eventd, or
a ceiling) on the server core, the load generator and the sink on the load
core. Each function returns a flat ``{metric: value}`` dict; a check that fails
(a non-2xx, an event acknowledged but never delivered) is raised as
:class:`BenchError`, never folded into a figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import events, loadgen, prefill, wrk
from bench.machine import Cores, RssSampler, cpu_seconds, pinned, rss_bytes
from tests.harness import EventdProcess, free_port

Metrics = dict[str, float]


class BenchError(Exception):
    """A run did something wrong (errors, lost events): its figures mean nothing."""


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark run (full, or the few-second smoke)."""

    smoke: bool
    duration: float  # seconds of each measured load window
    warmup: float  # seconds of load before it, not counted
    track_conns: int = 64
    batch_conns: int = 16
    batch_events: int = 100
    ceiling_rows: int = 200_000
    ceiling_txn: int = 10_000
    delivery_events: int = 200_000
    delivery_fanout: int = 4
    e2e_duration: float = 10.0
    e2e_share: float = 0.5  # of eventd's max single-event load
    backlog_events: int = 1_000_000
    prefilled_events: int = 10_000_000  # the store the "as the store grows" row starts from
    backlog_seconds: float = 5.0  # RSS watched while the backlog cannot be delivered
    drain_timeout: float = 300.0

    @classmethod
    def full(cls, duration: float = 5.0) -> Plan:
        return cls(smoke=False, duration=duration, warmup=1.0)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            smoke=True,
            duration=1.0,
            warmup=0.0,
            ceiling_rows=5_000,
            ceiling_txn=1_000,
            delivery_events=2_000,
            e2e_duration=1.0,
            backlog_events=5_000,
            prefilled_events=5_000,
            backlog_seconds=0.5,
            drain_timeout=30.0,
        )


@dataclass
class Context:
    plan: Plan
    cores: Cores
    work: Path  # a temp directory of this run
    use_wrk: bool
    template: Path | None = None  # prefilled outbox of plan.delivery_events
    counter: int = 0
    # eventd also runs the embedded default's duckdb destination (issue 16: ingest and
    # delivery with and without it, in one run)
    analytics: bool = False
    identity: bool = True  # the identity graph ([identity] enabled, the default)
    prefill_cache: Path | None = None  # where the prefilled row keeps its store (--prefill-cache)

    def tmp(self, name: str) -> Path:
        """A fresh directory for one scenario run."""
        self.counter += 1
        d = self.work / f"{self.counter:03d}-{name}"
        d.mkdir(parents=True)
        return d

    def tag(self, name: str) -> str:
        """A messageId prefix unique in this run."""
        self.counter += 1
        return f"{name}{self.counter}x{os.getpid()}"


# -- processes ---------------------------------------------------------------------------


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def _post(url: str, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


@contextlib.contextmanager
def service(module: str, cpus: frozenset[int] | None, probe: str) -> Iterator[str]:
    """``python -m MODULE PORT`` on ``cpus``; yields its base URL once ``probe`` answers."""
    with service_process(module, cpus, probe) as (url, _):
        yield url


@contextlib.contextmanager
def service_process(
    module: str, cpus: frozenset[int] | None, probe: str
) -> Iterator[tuple[str, int]]:
    """:func:`service`, yielding its process id beside its URL."""
    port = free_port()
    with pinned(cpus):
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise BenchError(f"{module} exited with {proc.returncode}: {err[-2000:]}")
            try:
                _get(url + probe, timeout=1)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise BenchError(f"{module} did not answer {probe} in 30 s") from None
                time.sleep(0.05)  # polling the readiness probe itself
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def webhook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A batching webhook destination posting to the sink at ``/name``."""
    return {
        name: {
            "type": "webhook",
            "batch_size": 100,
            "max_in_flight": 4,
            **extra,
            "settings": {"url": f"{url}/{name}", "batch": True},
        }
    }


@contextlib.contextmanager
def eventd(
    ctx: Context, name: str, *, db: Path | None = None, destinations: dict[str, Any] | None = None
) -> Iterator[EventdProcess]:
    """``eventd serve`` on the server core: durable acks, the bench source, no access log."""
    d = ctx.tmp(name)
    destinations = dict(destinations or {})
    if ctx.analytics:  # as eventd.config.default_analytics has it
        destinations["analytics"] = {
            "type": "duckdb",
            "batch_size": 5000,
            "settings": {"path": str(d / "data" / "analytics.duckdb")},
        }
    config: dict[str, Any] = {
        "storage": {"path": str(db or d / "data" / "eventd.db"), "synchronous": "full"},
        "sources": {events.SOURCE: {"write_key": events.WRITE_KEY}},
        "destinations": destinations,
    }
    if not ctx.identity:
        config["identity"] = {"enabled": False}
    proc = EventdProcess(d, config)
    with pinned(ctx.cores.server):
        proc.start(timeout=120)
    try:
        yield proc
    finally:
        code = proc.stop()
        if code != 0:
            raise BenchError(f"eventd ({name}) exited with {code}:\n{proc.log()[-3000:]}")


def _run_json(argv: list[str], cpus: frozenset[int] | None, timeout: float) -> dict[str, Any]:
    with pinned(cpus):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def _loadgen(ctx: Context, mode: str, port: int, **opts: Any) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", mode, "--port", str(port)]
    for key, value in opts.items():
        if value is False:  # a flag left off
            continue
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return _run_json(argv, ctx.cores.load, timeout=300)


def _single_event_load(
    ctx: Context, url: str, name: str, server_pid: int | None = None
) -> dict[str, Any]:
    """``/v1/track`` at 64 keep-alive connections: wrk if installed, else the Python generator.
    With ``server_pid`` and wrk, also ``per_cpu_s``: the measured window's requests over
    the CPU seconds that process used in it."""
    plan = ctx.plan
    if not ctx.use_wrk:
        port = int(url.rsplit(":", 1)[1])
        return _loadgen(
            ctx,
            "closed",
            port,
            conns=plan.track_conns,
            duration=plan.duration,
            warmup=plan.warmup,
            tag=ctx.tag(name),
        )
    result: dict[str, Any] = {}
    for seconds in (plan.warmup, plan.duration):
        if seconds <= 0:
            continue
        lua = wrk.script(ctx.tmp(name) / "track.lua", ctx.tag(name))
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        with pinned(ctx.cores.load):
            result = wrk.run(url + "/v1/track", lua, conns=plan.track_conns, duration=seconds)
        if server_pid and (cpu := cpu_seconds(server_pid) - cpu0) > 0:
            result["per_cpu_s"] = result["requests"] / cpu
    return result


def _check(result: dict[str, Any], what: str) -> None:
    if result.get("errors"):
        raise BenchError(f"{what}: {result['errors']} requests failed (non-2xx or socket errors)")


# -- scenarios ---------------------------------------------------------------------------


def ceiling_a(ctx: Context) -> Metrics:
    """A bare aiohttp server, same POSTs, fixed 200."""
    with service_process("bench.ceiling", ctx.cores.server, "/health") as (url, pid):
        r = _single_event_load(ctx, url, "ceiling", pid)
    _check(r, "ceiling A")
    return {
        "ceiling_a_rps": r["requests_per_s"],
        "ceiling_a_p50": r["p50_ms"],
        "ceiling_a_p99": r["p99_ms"],
        **({"ceiling_a_cpu": r["per_cpu_s"]} if "per_cpu_s" in r else {}),
    }


def ceiling_b(ctx: Context) -> Metrics:
    """Raw SQLite inserts of the same rows, large transactions, synchronous=full."""
    plan = ctx.plan
    r = _run_json(
        [
            sys.executable,
            "-m",
            "bench.sqlite_ceiling",
            str(ctx.tmp("sqlite")),
            "--rows",
            str(plan.ceiling_rows),
            "--txn",
            str(plan.ceiling_txn),
            "--synchronous",
            "full",
        ],
        ctx.cores.server,
        timeout=300,
    )
    return {f"ceiling_b_{schema}": rate for schema, rate in r.items()}


def _per_cpu_second(proc: EventdProcess, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``load`` and add ``per_cpu_s``: the events eventd stored meanwhile (warm-up
    included) over the CPU seconds its process used (every thread: the writer too).
    On a machine others share, wall-clock rates move with their load; this does less."""
    assert proc.proc is not None
    pid = proc.proc.pid
    last_seq = "SELECT coalesce(max(seq), 0) FROM events"
    seq0, cpu0 = proc.query(last_seq)[0][0], cpu_seconds(pid)
    result = load()
    cpu, stored = cpu_seconds(pid) - cpu0, proc.query(last_seq)[0][0] - seq0
    return {**result, "per_cpu_s": stored / cpu if cpu > 0 else 0.0}


def _batch_load(ctx: Context, proc: EventdProcess, *, uuids: bool) -> dict[str, Any]:
    plan = ctx.plan
    return _per_cpu_second(
        proc,
        lambda: _loadgen(
            ctx,
            "closed",
            proc.port,
            conns=plan.batch_conns,
            events=plan.batch_events,
            duration=plan.duration,
            warmup=plan.warmup,
            tag=ctx.tag("batch"),
            uuids=uuids,
        ),
    )


def with_analytics(ctx: Context, step: Callable[[], Metrics]) -> Metrics:
    """``step`` run with the duckdb destination beside it, its figures named ``*_duckdb``."""
    ctx.analytics = True
    try:
        return {f"{k}_duckdb": v for k, v in step().items()}
    finally:
        ctx.analytics = False


def ingest(ctx: Context, *, batch: bool = True) -> Metrics:
    """eventd alone (no destinations; the duckdb one with ``ctx.analytics``): /v1/track
    at 64 connections, then /v1/batch."""
    plan = ctx.plan
    with eventd(ctx, "ingest") as proc:
        rss_start = rss_bytes(proc.proc.pid) if proc.proc else 0
        track = _per_cpu_second(proc, lambda: _single_event_load(ctx, proc.url, "track"))
        _check(track, "eventd /v1/track")
        if not batch:
            return {"track_rps": track["requests_per_s"]}
        batches = _batch_load(ctx, proc, uuids=False)
        _check(batches, "eventd /v1/batch")
        uuid_batches = _batch_load(ctx, proc, uuids=True)
        _check(uuid_batches, "eventd /v1/batch, UUID messageIds")
    stored = proc.query("SELECT count(*) FROM events")[0][0]
    acked = track["requests"] + (batches["requests"] + uuid_batches["requests"]) * plan.batch_events
    if stored < acked:
        raise BenchError(f"ingest: {acked} events acknowledged but only {stored} stored")
    return {
        "track_rps": track["requests_per_s"],
        "track_p50": track["p50_ms"],
        "track_p99": track["p99_ms"],
        "batch_eps": batches["events_per_s"],
        "batch_p50": batches["p50_ms"],
        "batch_p99": batches["p99_ms"],
        "batch_uuid_eps": uuid_batches["events_per_s"],
        "track_cpu": track["per_cpu_s"],
        "batch_cpu": batches["per_cpu_s"],
        "batch_uuid_cpu": uuid_batches["per_cpu_s"],
        "rss_empty": rss_start / 2**20,
    }


def prefilled(ctx: Context) -> Metrics:
    """UUID batches into a store that already holds ``plan.prefilled_events`` events with
    UUID messageIds (all inside the dedup window): the cost must not grow with the store.

    The same load into a fresh store just before and just after (their mean) gives the
    ratio at the same moment of a shared machine, where the wall-clock rates alone
    move with the others' load."""
    plan = ctx.plan
    fresh_before = _fresh_uuid_batches(ctx)
    db = ctx.tmp("prefilled") / "eventd.db"
    # The identity graph caught up, as on a store that grew while eventd ran: otherwise
    # it reads the prefilled log while ingest is measured, on the same CPU.
    if ctx.prefill_cache is None:
        prefill.prefill(
            db, plan.prefilled_events, prefix="prefilled", uuids=True, caught_up=["identity"]
        )
    else:
        template = prefill.cached(
            ctx.prefill_cache, plan.prefilled_events, uuids=True, caught_up=["identity"]
        )
        prefill.copy_with_cursors(template, db, [])
    with eventd(ctx, "prefilled", db=db) as proc:
        r = _batch_load(ctx, proc, uuids=True)
        _check(r, "eventd /v1/batch, UUID messageIds, prefilled store")
    fresh_after = _fresh_uuid_batches(ctx)
    fresh_eps = (fresh_before["events_per_s"] + fresh_after["events_per_s"]) / 2
    fresh_cpu = (fresh_before["per_cpu_s"] + fresh_after["per_cpu_s"]) / 2
    return {
        "prefilled_uuid_eps": r["events_per_s"],
        "prefilled_uuid_cpu": r["per_cpu_s"],
        "prefilled_fresh_eps": fresh_eps,
        "prefilled_fresh_cpu": fresh_cpu,
    }


def _fresh_uuid_batches(ctx: Context) -> dict[str, Any]:
    """UUID batches into a new, empty store: the prefilled row's same-moment reference."""
    with eventd(ctx, "prefilled-fresh") as proc:
        r = _batch_load(ctx, proc, uuids=True)
        _check(r, "eventd /v1/batch, UUID messageIds, fresh store")
    return r


def _wait_delivered(sink: str, expected: int, timeout: float) -> dict[str, Any]:
    """Poll the sink until it has counted ``expected`` events; fail on a stall."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = _get(sink + "/_stats")
        if stats["events"] >= expected:
            return stats
        if time.monotonic() > deadline:
            raise BenchError(f"sink got {stats['events']} of {expected} events in {timeout:g} s")
        time.sleep(0.05)


def delivery(ctx: Context, fanout: int, ordered: bool = False) -> Metrics:
    """A prefilled outbox drained to ``fanout`` batching webhooks on one sink
    (``ordered``: with ``ordered = true``, one batch in flight at a time)."""
    plan = ctx.plan
    assert ctx.template is not None
    names = [f"hook{i}" for i in range(1, fanout + 1)]
    d = ctx.tmp(f"delivery{fanout}{'-ordered' if ordered else ''}")
    db = d / "eventd.db"
    prefill.copy_with_cursors(ctx.template, db, names)
    expected = plan.delivery_events * fanout
    with service("bench.sink", ctx.cores.load, "/_stats") as sink:
        dests: dict[str, Any] = {}
        for name in names:
            dests.update(webhook(name, sink, **({"ordered": True} if ordered else {})))
        with eventd(ctx, f"delivery{fanout}", db=db, destinations=dests) as proc:
            assert proc.proc is not None
            cpu0 = cpu_seconds(proc.proc.pid)
            stats = _wait_delivered(sink, expected, plan.drain_timeout)
            # eventd's own process (not the identity writer's): what delivery costs it
            cpu = cpu_seconds(proc.proc.pid) - cpu0
            proc.drain(timeout=60)
            stats = _get(sink + "/_stats")
    if stats["events"] != expected or stats["refused"]:
        raise BenchError(f"delivery: sink counted {stats['events']} events, expected {expected}")
    seconds = stats["last"] - stats["first"]
    key = ("delivery_1" if fanout == 1 else "delivery_n") + ("_ordered" if ordered else "")
    out = {key: expected / seconds, f"{key}_cpu": expected / cpu if cpu > 0 else 0.0}
    if fanout > 1:
        out["delivery_n_each"] = plan.delivery_events / seconds
    return out


def e2e(ctx: Context, max_rps: float) -> Metrics:
    """Single events at a share of eventd's max load; 200 to sink arrival, per messageId."""
    plan = ctx.plan
    rate = max(10.0, max_rps * plan.e2e_share)
    d = ctx.tmp("e2e")
    acks_path = d / "acks.json"
    with service("bench.sink", ctx.cores.load, "/_stats") as sink:
        _post(sink + "/_control?record=1")
        with eventd(ctx, "e2e", destinations=webhook("hook", sink)) as proc:
            r = _loadgen(
                ctx,
                "paced",
                proc.port,
                conns=plan.track_conns,
                rate=f"{rate:.1f}",
                duration=plan.e2e_duration,
                tag=ctx.tag("e2e"),
                acks=acks_path,
            )
            _check(r, "e2e load")
            proc.drain(timeout=60)
            arrivals: dict[str, float] = _get(sink + "/_arrivals", timeout=60)
    acks: dict[str, float] = orjson.loads(acks_path.read_bytes())
    missing = [m for m in acks if m not in arrivals]
    if missing:
        raise BenchError(f"e2e: {len(missing)} acknowledged events never reached the sink")
    skip = plan.warmup  # the first second warms connections and caches
    start = min(acks.values(), default=0.0) + skip
    latencies = [(arrivals[m] - t) for m, t in acks.items() if t >= start]
    pct = loadgen.percentiles(latencies)
    return {
        "e2e_rate": r["acked_per_s"],
        "e2e_offered": r["offered_per_s"],
        "e2e_p50": (pct["p50"] or 0) * 1000,
        "e2e_p99": (pct["p99"] or 0) * 1000,
        "e2e_ack_p99": r["p99_ms"],
    }


def backlog_rss(ctx: Context) -> Metrics:
    """RSS with a large undelivered backlog (the sink refuses: 503), then while draining it."""
    plan = ctx.plan
    d = ctx.tmp("backlog")
    db = d / "eventd.db"
    prefill.prefill(db, plan.backlog_events, prefix="backlog", destinations=["hook"])
    retry = {"retry_backoff": "0.2s", "retry_backoff_max": "0.5s"}
    with service("bench.sink", ctx.cores.load, "/_stats") as sink:
        _post(sink + "/_control?status=503")
        with eventd(ctx, "backlog", db=db, destinations=webhook("hook", sink, **retry)) as proc:
            assert proc.proc is not None
            pid = proc.proc.pid
            with RssSampler(pid) as held:
                time.sleep(plan.backlog_seconds)
            refused = _get(sink + "/_stats")["refused"]
            if not refused:
                raise BenchError("backlog: eventd never tried the refusing sink")
            with RssSampler(pid) as draining:
                _post(sink + "/_control?status=200")
                stats = _wait_delivered(sink, plan.backlog_events, plan.drain_timeout)
            proc.drain(timeout=60)
    if stats["events"] != plan.backlog_events:
        raise BenchError(f"backlog: sink counted {stats['events']} of {plan.backlog_events}")
    return {
        "rss_backlog": held.peak() / 2**20,
        "rss_draining": draining.peak() / 2**20,
        "drain_backlog": plan.backlog_events / (stats["last"] - stats["first"]),
    }


def prepare(ctx: Context) -> None:
    """The prefilled outbox every delivery run copies."""
    ctx.template = ctx.work / "template.db"
    # The graph caught up, as in eventd that kept up with ingest: delivery of a backlog is
    # measured, not the graph applying it beside delivery on the same core.
    prefill.prefill(ctx.template, ctx.plan.delivery_events, prefix="pre", caught_up=["identity"])
