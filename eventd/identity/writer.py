"""The identity graph's writer: identity.db's write connection and the merge rules, in a
process of its own.

Applying a page (parsing events, the graph's rules, writing identity.db) is Python
work; in eventd's process it would take the GIL from the event loop that serves
ingest. In a process of its own it runs on another core, and at a lower CPU
priority (:func:`eventd.priority.background_priority`), so where it shares a core
with eventd, ingest and delivery keep it and the graph lags, catching up when the
box is idle. Where the store offers a log source (SQLite: a read-only connection,
:mod:`eventd.store.log_reader`) the writer reads its pages itself and eventd's
process only says up to which seq the log is stored; otherwise (the memory store)
the parent reads pages and hands them over, pickled. Either way it gets back what
the page refused and whether links changed.

The functions below run in the writer (one at a time); :class:`Writer` is the
parent's handle. ``process=False`` runs them on a thread instead (tests that patch
the writer's state).

identity.db is opened by the first call that needs it, not by the process's
initializer: when it cannot be opened (a full disk), that call raises the real error
(``sqlite3.OperationalError: database or disk is full``) to the parent, which retries
later, and the writer stays up; an initializer that raised would break the pool
and lose the reason.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, TypeVar

from eventd.identity.graph import ANONYMOUS, USER, Graph, Rules
from eventd.identity.message import Message, parse_page
from eventd.priority import background_priority
from eventd.store.base import IdentityBackend, LogReader, LogSource

T = TypeVar("T")
# (seq, body: the stored event's JSON). A plain tuple, not a NamedTuple: pages are
# pickled to the writer, and a NamedTuple costs 3 us per row more to build and pickle
# (measured: 0.3 vs 2.3 us to pickle).
LogRow = tuple[int, bytes]

_args: tuple[IdentityBackend, tuple[str, ...], int, LogSource | None] | None = None  # start()'s
# Profiles the graph keeps cached across pages (hot profiles need no read; a few KB each).
CACHED_PROFILES = 20_000
_store: IdentityBackend | None = None
_graph: Graph | None = None
_log: LogReader | None = None


@dataclass
class PageResult:
    refused: dict[str, int] = field(default_factory=dict)  # reason -> links refused
    links_changed: bool = False  # new links, or links whose profile_id changed
    events: int = 0  # events in the page
    last: int = 0  # the last seq applied (0: the page was empty)


def start_process(*args: Any) -> None:
    """:func:`start` in the writer's own process, with its garbage collector tuned: a page
    allocates a dict per event and frees it, so young objects are collected less often
    (measured: +40 % events per CPU-second), and what start-up loaded is never scanned.
    It ignores SIGTERM and SIGINT: only its parent ends it, or the parent's death. It
    runs at nice 10 (background work, see the module docstring)."""
    # The parent stops the writer (stop(), then shutdown) once it has saved its cursor;
    # a SIGTERM or Ctrl-C sent to the whole process group (systemd's control group,
    # `timeout`, a terminal) must not kill it under the parent first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    background_priority("the identity graph's writer")  # before any thread starts
    _exit_with_parent()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    start(*args)


def _exit_with_parent() -> None:
    """End this process when its parent dies (kill -9, out of memory): nothing else would,
    since it ignores SIGTERM, and an orphaned writer would hold identity.db's write lock
    and its memory for good (the test suite's kill -9 tests left hundreds). Exiting at
    any point is safe: a page is one SQLite transaction, and the next writer redoes what
    was not committed from the graph's cursor."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # ready when the parent is gone
        os._exit(0)

    threading.Thread(target=watch, name="eventd-identity-parent-watch", daemon=True).start()


def start(
    backend: IdentityBackend,
    blocked_values: tuple[str, ...],
    max_ids: int,
    source: LogSource | None = None,
) -> None:
    """Keep the settings; identity.db (and the log, when read here) opens on first use."""
    global _args, _store, _graph, _log
    _args = (backend, blocked_values, max_ids, source)
    _store = _graph = _log = None


def _state() -> tuple[IdentityBackend, Graph]:
    """The open store and graph, opening identity.db first when it is not open yet.
    Raises what opening raised (sqlite3.OperationalError: disk full, I/O error)."""
    global _store, _graph
    if _store is None or _graph is None:
        assert _args is not None, "identity writer not started"
        store, blocked_values, max_ids, _ = _args
        store.open_writer()
        _store, _graph = store, Graph(Rules.of(blocked_values, max_ids), backing=store)
    return _store, _graph


def cursor() -> int:
    return _state()[0].cursor()


def apply_log(after: int, upto: int, limit: int) -> PageResult:
    """Read the page after ``after`` (at most ``limit`` events, none past ``upto``) from
    the log and apply it (:func:`apply_page`). Raises what reading raised
    (sqlite3.Error), with the log's reader closed so the next call opens it again."""
    global _log
    if _log is None:
        assert _args is not None and _args[3] is not None, "identity writer has no log source"
        _log = _args[3].open()
    try:
        rows = _log.page(after, upto, limit)
    except BaseException:
        _log.close()
        _log = None
        raise
    return apply_page(rows) if rows else PageResult()


def apply_page(rows: list[LogRow]) -> PageResult:
    """A page through the graph, written with the cursor past it in one transaction."""
    store, graph = _state()
    usable, known = graph.rules.usable, graph.cached_ids()
    wanted: list[tuple[str, str]] = []
    linking: list[str] = []
    page: list[tuple[int, Message, str | None, str | None]] = []
    last: tuple[object, object] | None = None
    user: str | None = None
    anon: str | None = None
    for (seq, _), msg in zip(rows, parse_page([body for _, body in rows]), strict=True):
        sent = (msg.userId, msg.anonymousId)
        if sent == last:  # the same ids as the event before (most of a visit): known
            page.append((seq, msg, user, anon))
            continue
        last = sent
        user, anon = usable(msg.userId), usable(msg.anonymousId)
        page.append((seq, msg, user, anon))
        if user is not None and (USER, user) not in known:
            wanted.append((USER, user))
        if anon is not None:
            if (ANONYMOUS, anon) not in known:
                wanted.append((ANONYMOUS, anon))
            if user is not None:
                linking.append(anon)
    store.prefetch(graph, wanted, linking)
    try:
        for seq, msg, user, anon in page:
            graph.apply_parsed(seq, msg, user, anon)
        changes = graph.take_changes()
        store.apply(changes, rows[-1][0])
    except BaseException:
        graph.forget()  # what a failed page left half-applied in memory
        raise
    graph.trim(CACHED_PROFILES)
    return PageResult(
        dict(changes.refused),
        bool(changes.links or changes.resend_users),
        len(rows),
        rows[-1][0],
    )


def erase(user_id: str) -> list[int]:
    store, graph = _state()
    graph.forget()  # the cache must not bring back what the store deletes
    return store.erase(user_id)


def save_position(destination: str, version: int) -> None:
    _state()[0].save_position(destination, version)


def stop() -> None:
    global _store, _graph, _log
    if _store is not None:
        _store.close()
    if _log is not None:
        _log.close()
    _store = _graph = _log = None


class _BackgroundProcess(SpawnProcess):
    """A spawned process lowered to nice :data:`~eventd.priority.BACKGROUND_NICE` by its
    parent as soon as it exists, before its start-up: a spawned Python imports eventd
    again (~0.5 CPU-seconds) before :func:`start_process` runs, and at eventd's priority
    that start-up took eventd's core from delivery (where the two share one, as in bench)."""

    def start(self) -> None:
        super().start()
        assert self.pid is not None  # set by start()
        # The child's only thread yet: the threads it starts inherit the priority (and
        # start_process() tries again in the child).
        background_priority("the identity writer's start-up", self.pid)


class _BackgroundSpawn(SpawnContext):
    Process = _BackgroundProcess


class Writer:
    """The parent's handle on the writer: :meth:`call` runs one of this module's functions."""

    def __init__(
        self,
        backend: IdentityBackend,
        rules: Rules,
        *,
        process: bool = True,
        source: LogSource | None = None,
    ):
        self.args = (
            backend,
            tuple(rules.blocked_values),
            rules.max_anonymous_ids,
            source,
        )
        self.process = process
        self._pool: Executor | None = None

    def _new_pool(self) -> Executor:
        if self.process:
            # spawn, not fork: eventd's process has threads (SQLite, executors) to not copy.
            return ProcessPoolExecutor(
                1, _BackgroundSpawn(), initializer=start_process, initargs=self.args
            )
        return ThreadPoolExecutor(
            1, "eventd-identity-writer", initializer=start, initargs=self.args
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = self._new_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BrokenExecutor:
            # The writer died (killed, out of memory): the next call starts another, which
            # reopens identity.db at its last commit; the caller retries what failed.
            self._pool.shutdown(wait=False)
            self._pool = None
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool = self._pool
            try:
                await self.call(stop)
            except BrokenExecutor:
                # Killed already (SIGKILL, out of memory): identity.db holds its last
                # commit and the graph's cursor with it; nothing is left to stop.
                return
            pool.shutdown(wait=True)
            self._pool = None
