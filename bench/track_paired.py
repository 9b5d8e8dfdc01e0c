"""``python -m bench.track_paired``: /v1/track per CPU-second, ceiling A and eventd
variants served at the same moment.

On a shared machine one server measured after another meets another moment of the
others' load (ceiling A moved by 30 % between rounds a minute apart): their ratio
moves with it. Here ceiling A and every variant of eventd run at once, all on the
server core, each loaded by its own wrk (64 connections) on the load core, and each
is measured over the same window as requests (eventd: events stored) over the CPU
seconds its own process used. What the others' load does, it does to all of them.

A variant is ``NAME=PATH``: eventd imported from the tree at PATH (``PYTHONPATH``;
e.g. a ``git archive`` of an older commit), or from this checkout when PATH is empty;
a NAME ending in ``+duckdb`` also runs the embedded default config's duckdb destination
(``bench --only ingest-duckdb``'s config); every variant runs the identity graph.
The servers share the core, so each serves a fraction of what it would alone (smaller
group commits): compare the variants with each other, and the ratio to ceiling A as a
lower bound of what ``python -m bench --only ceiling-a,ingest`` reports.

    python -m bench.track_paired --rounds 5 base=/tmp/old-tree now=

Prints a line per round and the medians; needs wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from bench import scenarios, wrk
from bench.machine import cpu_seconds, pinned, plan_cores

LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM events"


@contextlib.contextmanager
def _tree(path: str) -> Iterator[None]:
    """Processes started inside import eventd from ``path`` (this checkout when empty)."""
    before = os.environ.get("PYTHONPATH")
    if path:
        os.environ["PYTHONPATH"] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _wrk(ctx: scenarios.Context, url: str, tag: str, seconds: float) -> subprocess.Popen[str]:
    lua = wrk.script(ctx.tmp("wrk") / "track.lua", ctx.tag(tag))
    with pinned(ctx.cores.load):
        return subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{ctx.plan.track_conns}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(lua),
                url + "/v1/track",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )


def _requests(proc: subprocess.Popen[str]) -> int:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise scenarios.BenchError(f"wrk failed ({proc.returncode})")
    result = orjson.loads(out.strip().splitlines()[-1])
    if result["status_errors"] or result["socket_errors"]:
        raise scenarios.BenchError(f"wrk: requests failed: {result}")
    return int(result["requests"])


def one_round(ctx: scenarios.Context, variants: dict[str, str]) -> dict[str, float]:
    """Per CPU-second of each server over one shared window: ``ceiling`` and each variant."""
    seconds = ctx.plan.duration
    with contextlib.ExitStack() as stack:
        url, ceiling_pid = stack.enter_context(
            scenarios.service_process("bench.ceiling", ctx.cores.server, "/health")
        )
        procs = {}
        for name, path in variants.items():
            # "+duckdb": with the embedded default's duckdb destination, as it ships
            ctx.analytics = name.endswith("+duckdb")
            with _tree(path):
                procs[name] = stack.enter_context(scenarios.eventd(ctx, name))
        ctx.analytics = False
        urls = {"ceiling": url, **{name: p.url for name, p in procs.items()}}
        for warm in [_wrk(ctx, u, name, ctx.plan.warmup) for name, u in urls.items()]:
            _requests(warm)
        seq0 = {name: p.query(LAST_SEQ)[0][0] for name, p in procs.items()}
        pids = {"ceiling": ceiling_pid}
        pids.update({name: p.proc.pid for name, p in procs.items() if p.proc is not None})
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        loads = {name: _wrk(ctx, u, name, seconds) for name, u in urls.items()}
        served = {name: _requests(load) for name, load in loads.items()}
        time.sleep(0.2)  # the last commits of what wrk had in flight
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        for name, p in procs.items():
            served[name] = p.query(LAST_SEQ)[0][0] - seq0[name]  # stored, not answered
        return {name: served[name] / cpu[name] for name in urls if cpu[name] > 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="NAME=PATH (PATH empty: this checkout)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=8.0, help="seconds of each window")
    args = p.parse_args()
    variants = dict(v.partition("=")[::2] for v in args.variants)
    plan = scenarios.Plan.full(duration=args.duration)
    work = Path(tempfile.mkdtemp(prefix="eventd-bench-paired-"))
    ctx = scenarios.Context(plan, plan_cores(), work, use_wrk=True)
    rounds: list[dict[str, float]] = []
    for n in range(args.rounds):
        r = one_round(ctx, variants)
        rounds.append(r)
        cells = [f"ceiling A {r['ceiling']:,.0f}/CPU-s"]
        cells += [f"{v} {r[v]:,.0f}/CPU-s ({100 * r[v] / r['ceiling']:.1f} %)" for v in variants]
        print(f"round {n + 1}: " + " | ".join(cells), flush=True)
    first = next(iter(variants))
    for v in variants:
        ratio = statistics.median(r[v] / r["ceiling"] for r in rounds)
        line = f"{v}: median {statistics.median(r[v] for r in rounds):,.0f}/CPU-s, "
        line += f"{100 * ratio:.1f} % of ceiling A per CPU-second"
        if v != first:
            pairs = [r[v] / r[first] for r in rounds]
            line += f"; {v}/{first} median {statistics.median(pairs):.3f} "
            line += f"({' '.join(f'{x:.3f}' for x in pairs)})"
        print(line)


if __name__ == "__main__":
    main()
