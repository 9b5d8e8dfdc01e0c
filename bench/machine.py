"""The machine: its facts for the report, core pinning, and RSS sampling.

Pinning is ``sched_setaffinity`` (the system call ``taskset`` makes): a child
inherits the affinity of the thread that starts it, so a process started inside
:func:`pinned` runs, with every thread it ever makes, on those cores only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata


@dataclass(frozen=True)
class Cores:
    """Which cores the server under test and the load side (generator, sink) get."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    def describe(self) -> str:
        if self.server is None or self.load is None:
            return "not pinned (fewer than 2 cores available)"
        load = _cores(self.load)
        shared = " (shared)" if self.server & self.load else ""
        return f"server on core {_cores(self.server)}, load generator and sink on {load}{shared}"


def _cores(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def plan_cores(server: int = 1) -> Cores:
    """Server on the first ``server`` available cores, everything else on the rest; when
    that leaves none, the load side shares the last one (say so when reporting)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return Cores(None, None)
    load = available[server:] or available[-1:]
    return Cores(frozenset(available[:server]), frozenset(load))


@contextlib.contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpus`` (this thread's affinity is restored after)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user + system, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval`` seconds on a thread."""

    pid: int
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            self._stop.wait(self.interval)

    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)

    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def wrk_version() -> str | None:
    path = shutil.which("wrk")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    words = (out.stdout + out.stderr).split()
    return words[1] if len(words) > 1 else "present"


def facts(cores: Cores) -> list[tuple[str, str]]:
    """What the report states about the machine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return [
        ("cpu", f"{os.cpu_count()} cores, {_cpu_model()}"),
        ("memory", f"{mem / 2**30:.1f} GiB"),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", sys.version.split()[0]),
        ("sqlite", sqlite3.sqlite_version),
        ("aiohttp", _version("aiohttp")),
        ("orjson", _version("orjson")),
        ("wrk", wrk_version() or "not installed (Python load generator used instead)"),
        ("pinning", cores.describe()),
    ]
