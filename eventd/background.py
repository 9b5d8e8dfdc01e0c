"""Background work in a worker of its own: one process (or thread), one call at a time,
at background CPU priority.

The identity graph's writer and the duckdb destination's loader are Python work that,
in eventd's process, would hold the GIL the event loop serves ingest with. Each runs
in a :class:`BackgroundWorker`: a spawned process (spawn, not fork: eventd's process
has threads, SQLite's and the executors', not to copy) that

- runs at nice :data:`~eventd.priority.BACKGROUND_NICE` from the moment it exists: its
  parent lowers it before its start-up (a Python importing eventd again, 0.5-1
  CPU-second), and the child lowers itself again before any thread starts, so the
  threads it starts (DuckDB's) inherit it;
- ignores SIGTERM and SIGINT: only its parent ends it, after its last call, since a
  signal sent to the whole process group (systemd's control group, ``timeout``, a
  terminal) would kill it under the parent first;
- logs as its parent does (``eventd.logs.settings()``: JSON lines under ``serve``'s
  default, not structlog's console default);
- exits when its parent dies (kill -9, out of memory): nothing else would, since it
  ignores SIGTERM, and an orphan would hold its file's lock and memory for good.
  Exiting at any point is safe for both users: a call is one transaction, and the
  parent redoes what was not committed.

``process=False`` runs the same calls on one thread of eventd's process (tests that
patch the worker's state), also at background priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, TypeVar

from eventd import logs
from eventd.priority import background_priority

T = TypeVar("T")


class _LoweredProcess(SpawnProcess):
    """A spawned process lowered to background priority by its parent as soon as it exists."""

    def start(self) -> None:
        super().start()
        assert self.pid is not None  # set by start()
        # The child's only thread yet: what it starts inherits the priority.
        background_priority("a background process's start-up", self.pid)


class LoweredSpawn(SpawnContext):
    """multiprocessing's spawn context whose processes start at background priority;
    it keeps those it made (:attr:`made`), for :meth:`BackgroundWorker.kill`."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[SpawnProcess] = []

    def Process(self, *args: Any, **kwargs: Any) -> SpawnProcess:  # type: ignore[override]
        """What ProcessPoolExecutor calls for each worker process (multiprocessing's name)."""
        process = _LoweredProcess(*args, **kwargs)
        self.made.append(process)
        return process


def _start_process(
    what: str,
    setup: Callable[..., object] | None,
    args: tuple[Any, ...],
    log: tuple[str, str] | None = None,
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if log is not None:  # a spawned process starts with structlog's defaults (console)
        logs.configure(*log)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    background_priority(what)  # before any thread starts
    parent = multiprocessing.parent_process()
    if parent is not None:
        sentinel = parent.sentinel  # ready when the parent is gone
        threading.Thread(
            target=lambda: (multiprocessing.connection.wait([sentinel]), os._exit(0)),
            name="eventd-parent-watch",
            daemon=True,
        ).start()
    if setup is not None:
        setup(*args)


def _start_thread(
    what: str,
    setup: Callable[..., object] | None,
    args: tuple[Any, ...],
    log: tuple[str, str] | None = None,
) -> None:
    background_priority(what)
    if setup is not None:
        setup(*args)


class BackgroundWorker:
    """One worker for background work (see the module docstring), started on first use.

    ``setup(*args)`` runs once in the worker before its first call, ``teardown()`` at
    :meth:`close` (module-level functions, or partials of them: a process gets them
    pickled by reference); ``what`` names the work in the log line said when its
    priority cannot be lowered.
    """

    def __init__(
        self,
        what: str,
        setup: Callable[..., object] | None = None,
        args: tuple[Any, ...] = (),
        *,
        teardown: Callable[[], object] | None = None,
        process: bool = True,
    ):
        self.what = what
        self.teardown = teardown
        self.initargs = (what, setup, args, logs.settings())
        self.process = process
        self._pool: Executor | None = None
        self._context: LoweredSpawn | None = None  # the process pool's: its processes

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _new_pool(self) -> Executor:
        if self.process:
            self._context = LoweredSpawn()
            return ProcessPoolExecutor(
                1, self._context, initializer=_start_process, initargs=self.initargs
            )
        return ThreadPoolExecutor(
            1,
            thread_name_prefix="eventd-background",
            initializer=_start_thread,
            initargs=self.initargs,
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker (a module-level function in a process).

        Raises what ``fn`` raised, or ``concurrent.futures.BrokenExecutor`` when the
        worker died (killed, out of memory): the next call starts another, and the
        caller retries what failed."""
        if self._pool is None:
            self._pool = self._new_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BrokenExecutor:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise

    async def close(self) -> None:
        """Run ``teardown()`` in the worker (closing its files), then end it; a later call
        starts another. A worker that is already dead is left as it is: its files hold
        their last commit. Waits for the call in hand first (one at a time): a caller
        that cannot wait cuts this short and calls :meth:`kill`."""
        if self._pool is None:
            return
        pool = self._pool
        if self.teardown is not None:
            try:
                await self.call(self.teardown)
            except BrokenExecutor:
                return
        pool.shutdown(wait=True)
        self._pool = None

    def kill(self) -> None:
        """End the worker now, in whatever call it is (SIGKILL: it ignores SIGTERM),
        without waiting; a later call starts another. Safe for both users (the module
        docstring): what the call in hand had not committed is redone. Issue 14: a
        stop during a quorum loss waited for the identity writer's call in hand, 60 s
        on a cluster that answers nothing, and for the interpreter's exit, which joins
        the pool. A thread (``process=False``) cannot be killed: it is left to end its
        call, and the interpreter's exit waits for it."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._context is not None:
            for process in self._context.made:
                if process.pid is not None and process.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                        os.kill(process.pid, signal.SIGKILL)
        # Not waiting: the pool's manager thread sees the worker gone and ends, and the
        # calls waiting on it raise BrokenExecutor (or are cancelled, when queued).
        pool.shutdown(wait=False, cancel_futures=True)
