"""The stop's backstop (eventd/server.py ``_exit_by``): a process whose stop cannot
end (here a main thread blocked for ever, as issue 14's fourth trial's exit waited on
the identity writer's call) is ended with exit code 1 and an error logged once the
bound passes; a process that ends in time exits with its own code at once, the
timer not waited for. Real processes; the waits are bounded process waits."""

from __future__ import annotations

import subprocess
import sys
import time

SCRIPT = """
import sys, threading
from eventd.server import _exit_by
_exit_by(float(sys.argv[1]))
if sys.argv[2] == "stuck":
    threading.Event().wait()  # never set: the stop never ends by itself
"""


def run(bound: float, how: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bound), how],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_stop_that_cannot_end_is_ended_at_its_bound_with_exit_code_1() -> None:
    code, output, took = run(0.5, "stuck")
    assert code == 1, output
    assert "stop outlasted its bound; exiting now" in output, output
    assert took >= 0.5


def test_a_stop_that_ends_in_time_exits_with_its_own_code_without_waiting() -> None:
    code, output, took = run(50.0, "ends")
    assert code == 0, output
    assert "outlasted" not in output
    assert took < 50.0  # the timer is a daemon: not waited for
