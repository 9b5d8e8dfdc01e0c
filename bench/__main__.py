"""``python -m bench``: eventd against this machine's ceilings, printed as a table.

Run from the repository root (it imports ``tests.harness``). ``--smoke`` is the
few-second version CI runs so the harness cannot rot; its figures mean nothing.
Exit status 1 when a run went wrong (failed requests, lost events), not when a
target is missed.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bench import report, scenarios, wrk
from bench.machine import facts, plan_cores
from bench.scenarios import BenchError, Context, Plan


def _max_rps(ctx: Context) -> float:
    """eventd's /v1/track max, for e2e when the ingest step is not in this run."""
    return scenarios.ingest(ctx, batch=False)["track_rps"]


def _e2e(ctx: Context, r: report.Round) -> scenarios.Metrics:
    """e2e at half of this round's /v1/track max (measured now if ingest did not run)."""
    return scenarios.e2e(ctx, r.get("track_rps") or _max_rps(ctx))


# Order within a round: each ceiling right beside what it bounds.
# ingest-duckdb and delivery-duckdb: the same with the embedded default's duckdb
# destination also running (issue 16); delivery-ordered: the delivery row with
# ordered = true (issue 14). Not run unless named in --only.
STEPS = (
    "ceiling-a",
    "ingest",
    "ingest-duckdb",
    "ceiling-b",
    "delivery",
    "delivery-duckdb",
    "delivery-ordered",
    "fanout",
    "e2e",
    "backlog",
    "prefilled",
)
OPT_IN = {"ingest-duckdb", "delivery-duckdb", "delivery-ordered"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds, tiny sizes (CI)")
    p.add_argument("--runs", type=int, help="rounds of every measurement (default 3; smoke 1)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load window")
    p.add_argument("--no-wrk", action="store_true", help="Python load generator even with wrk")
    p.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=None,
        help=f"comma-separated subset of: {', '.join(STEPS)}",
    )
    p.add_argument("--json", type=Path, help="also write every round's raw figures here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, files)")
    p.add_argument(
        "--no-identity", action="store_true", help="eventd with [identity] enabled = false"
    )
    p.add_argument(
        "--prefill-cache",
        type=Path,
        help="keep the prefilled row's store here and reuse it while its events are under"
        " 12 h old (10 M events take minutes to write, a copy about one)",
    )
    p.add_argument(
        "--server-cores",
        type=int,
        default=1,
        help="cores eventd (and each ceiling) may use (default 1); the load side gets the"
        " rest, or shares the last when none is left",
    )
    args = p.parse_args(argv)
    if args.server_cores < 1:
        p.error("--server-cores: expected 1 or more")
    if args.only and not args.only <= set(STEPS):
        p.error(f"--only: unknown step(s) {', '.join(sorted(args.only - set(STEPS)))}")

    plan = Plan.quick() if args.smoke else Plan.full(args.duration)
    runs = args.runs or (1 if args.smoke else 3)
    cores = plan_cores(args.server_cores)
    work = Path(tempfile.mkdtemp(prefix="eventd-bench-"))
    ctx = Context(plan, cores, work, use_wrk=wrk.available() and not args.no_wrk)
    ctx.identity = not args.no_identity
    ctx.prefill_cache = args.prefill_cache
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    rounds: list[report.Round] = []
    failed: list[str] = []
    try:
        wanted = args.only or set(STEPS) - OPT_IN
        ingest = functools.partial(scenarios.ingest, ctx)
        delivery = functools.partial(scenarios.delivery, ctx, 1)
        if wanted & {"delivery", "delivery-duckdb", "delivery-ordered", "fanout"}:
            say(f"work directory {work}; preparing a {plan.delivery_events:,}-event outbox")
            scenarios.prepare(ctx)
        for i in range(1, runs + 1):
            r: report.Round = {}
            steps: list[tuple[str, Callable[[], scenarios.Metrics]]] = [
                ("ceiling-a", lambda: scenarios.ceiling_a(ctx)),
                ("ingest", lambda: scenarios.ingest(ctx)),
                ("ingest-duckdb", lambda: scenarios.with_analytics(ctx, ingest)),
                # again: the mean of the two brackets eventd's run on a noisy machine
                ("ceiling-a", lambda: scenarios.ceiling_a(ctx)),
                ("ceiling-b", lambda: scenarios.ceiling_b(ctx)),
                ("delivery", lambda: scenarios.delivery(ctx, 1)),
                ("delivery-duckdb", lambda: scenarios.with_analytics(ctx, delivery)),
                ("delivery-ordered", lambda: scenarios.delivery(ctx, 1, ordered=True)),
                ("fanout", lambda: scenarios.delivery(ctx, plan.delivery_fanout)),
                ("e2e", functools.partial(_e2e, ctx, r)),
                ("backlog", lambda: scenarios.backlog_rss(ctx)),
                ("prefilled", lambda: scenarios.prefilled(ctx)),
            ]
            seen: dict[str, int] = {}
            for name, step in steps:
                # once: each needs a large store of its own
                if name not in wanted or (name in ("backlog", "prefilled") and i > 1):
                    continue
                say(f"round {i}/{runs}: {name}")
                try:
                    for key, value in step().items():
                        n = seen[key] = seen.get(key, 0) + 1
                        r[key] = value if n == 1 else r[key] + (value - r[key]) / n
                except BenchError as exc:
                    failed.append(f"round {i}, {name}: {exc}")
                    say(f"FAILED: {exc}")
            rounds.append(report.add_ratios(r))
    finally:
        if args.keep or failed:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    title = "smoke run: tiny sizes, figures mean nothing" if args.smoke else "benchmark"
    print(f"## eventd {title}: {runs} round(s), median/min/max\n")
    print("| machine | |\n|---|---|")
    for k, v in facts(cores):
        print(f"| {k} | {v} |")
    print(f"| load generator | {'wrk (Lua, unique messageIds)' if ctx.use_wrk else 'Python'} |")
    print(f"| wall time | {time.monotonic() - started:.0f} s |\n")
    print(report.table(rounds, plan.backlog_events, plan.delivery_events, plan.prefilled_events))
    text, _ = report.targets(rounds)
    print("\n" + text)
    if args.json:
        args.json.write_bytes(orjson.dumps({"plan": plan.__dict__, "rounds": rounds}))
    if failed:
        print("\nFAILED:\n" + "\n".join(f"- {f}" for f in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
