"""``python -m bench.identity_instructions``: the identity writer's instructions per event.

Wall-clock and per-CPU-second figures move with whatever else the machine runs;
instruction counts do not. This runs the writer's own loop (``writer.apply_log`` in
pages of 5,000, identity.db at ``synchronous=normal``) over bench.identity's mix
under ``valgrind --tool=callgrind``, twice: over ``--people`` people and over 10,
and reports the difference per event (so interpreter start-up, imports and opening
the files cancel out; a first run without valgrind compiles the imports' bytecode, which
would not). Needs valgrind; takes a few minutes.

``--apply DIR`` is the measured half: apply DIR/eventd.db's log to DIR/identity.db.
``--keep DIR`` leaves the callgrind output files there (for callgrind_annotate).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.identity import mixed, prefill

PAGE = 5000
SMALL = 10  # people in the start-up run


def apply(data: Path) -> int:
    """The writer's loop over ``data``'s log, as the identity service drives it."""
    from eventd.identity import writer
    from eventd.identity.graph import DEFAULT_BLOCKED_VALUES, DEFAULT_MAX_ANONYMOUS_IDS
    from eventd.store.identity import IdentityStore
    from eventd.store.log_reader import SqliteLogSource

    writer.start_process(
        IdentityStore(data / "identity.db", "normal"),
        DEFAULT_BLOCKED_VALUES,
        DEFAULT_MAX_ANONYMOUS_IDS,
        SqliteLogSource(str(data / "eventd.db")),
    )
    after, events = writer.cursor(), 0
    while True:
        page = writer.apply_log(after, 2**62, PAGE)
        if not page.events:
            break
        after, events = page.last, events + page.events
    writer.stop()
    return events


def instructions(data: Path, out: Path) -> int:
    """Instructions (Ir) of ``--apply data`` under callgrind."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.identity_instructions",
            "--apply",
            str(data),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total in: {run.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.identity_instructions", description=__doc__.split("\n")[0]
    )
    p.add_argument("--people", type=int, default=5000, help="people in the mix (x10 events)")
    p.add_argument("--apply", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--keep", type=Path, help="keep the callgrind.out files in this directory")
    args = p.parse_args(argv)
    if args.apply is not None:
        print(f"applied {apply(args.apply)} events")
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    work = Path(tempfile.mkdtemp(prefix="eventd-bench-identity-ir-"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    try:
        # Once without valgrind first: the imports' bytecode compiled and cached, so that
        # neither measured run pays for compiling (it would not cancel out).
        warm = work / "warm"
        warm.mkdir()
        prefill(warm / "eventd.db", mixed(SMALL))
        subprocess.run(
            [sys.executable, "-m", "bench.identity_instructions", "--apply", str(warm)],
            capture_output=True,
            check=True,
        )
        counts = {}
        for people in (args.people, SMALL):
            data = work / str(people)
            data.mkdir()
            events = prefill(data / "eventd.db", mixed(people))
            counts[people] = (events, instructions(data, keep / f"callgrind.out.{people}"))
        (big_n, big_ir), (small_n, small_ir) = counts[args.people], counts[SMALL]
        per_event = (big_ir - small_ir) / (big_n - small_n)
        print(
            f"identity writer, mix of {args.people:,} people ({big_n:,} events):"
            f" {per_event:,.0f} instructions per event"
            f" ({big_ir:,} - {small_ir:,} for {small_n} events of start-up)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
