"""Background work's CPU priority: work that must yield its core to ingest and delivery.

The analytics load (the duckdb destination) and the identity graph's writer are
background work: under contention the front door keeps its CPU and they lag,
catching up when the box is idle, rather than slowing every request (bench rows
``ingest-duckdb`` and ``delivery`` with and without ``--no-identity``).
"""

from __future__ import annotations

import os
import threading

import structlog

log = structlog.get_logger("eventd.priority")

# Linux's CFS weight of nice 10 is ~1/10 of nice 0's (sched(7)): under contention
# nice-0 work gets ~90 % of a shared core, and an idle core runs background work at
# full speed.
BACKGROUND_NICE = 10


def background_priority(what: str, tid: int | None = None) -> bool:
    """Run a thread, and every thread it starts from now on, at nice
    :data:`BACKGROUND_NICE` (never raising a priority already lower): the calling
    thread, or ``tid`` (a thread id, or a process id for that process's main thread).

    On Linux nice is a per-thread attribute (setpriority(2) on the thread's id) that
    new threads and processes inherit. Returns False, logged at warning with
    ``what``, where it is not permitted or not supported: the work then runs at
    eventd's priority."""
    try:
        if tid is None:
            tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, BACKGROUND_NICE))
    except OSError as exc:
        log.warning(
            "could not lower the CPU priority of background work", what=what, error=str(exc)
        )
        return False
    return True
