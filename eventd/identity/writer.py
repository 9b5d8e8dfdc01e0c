"""The identity graph's writer: identity.db's write connection and the merge rules, in a
process of its own.

Applying a page (parsing events, the graph's rules, writing identity.db) is Python
work; in eventd's process it would take the GIL from the event loop that serves
ingest. In a process of its own (:class:`eventd.background.BackgroundWorker`) it runs
on another core, and at a lower CPU priority, so where it shares a core
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

import gc
from dataclasses import dataclass, field
from typing import Any

from eventd.background import BackgroundWorker
from eventd.identity.graph import ANONYMOUS, USER, Graph, Rules, runs
from eventd.identity.message import Message, parse_lines, parse_page
from eventd.store.base import IdentityBackend, LogReader, LogSource

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
    """:func:`start` in the writer's own process (a :class:`~eventd.background.BackgroundWorker`:
    nice 10, signals left to its parent, its parent's death followed), with its garbage
    collector tuned: a page allocates a dict per event and frees it, so young objects
    are collected less often (measured: +40 % events per CPU-second; 500,000 rather
    than 50,000: -0.6 % instructions per event, callgrind, and no memory held longer,
    as what the writer makes forms no cycles for a collection to free), and what
    start-up loaded is never scanned."""
    gc.freeze()
    gc.set_threshold(500_000, 50, 100)
    start(*args)


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
    """The store's cursor, with the graph's cache dropped: a shared store's writer asks
    it when it takes the lease, after another node's writer may have changed profiles."""
    store, graph = _state()
    graph.forget()
    return store.cursor()


def apply_log(after: int, upto: int, limit: int) -> PageResult:
    """Read the page after ``after`` (at most ``limit`` events, none past ``upto``) from
    the log and apply it (:func:`apply_page`). Raises what reading raised
    (sqlite3.Error), with the log's reader closed so the next call opens it again."""
    global _log
    if _log is None:
        assert _args is not None and _args[3] is not None, "identity writer has no log source"
        _log = _args[3].open()
    try:
        # The page in one buffer, decoded in one call; row by row (each body parsed on
        # its own) when a body is not as expected or the seqs do not ascend.
        seqs, joined = _log.lines(after, upto, limit)
        msgs = parse_lines(joined, len(seqs)) if seqs == sorted(seqs) else None
        if msgs is None:
            rows = _log.page(after, upto, limit)
            seqs, msgs = [seq for seq, _ in rows], parse_page([body for _, body in rows])
    except BaseException:
        _log.close()
        _log = None
        raise
    return _apply(seqs, msgs) if seqs else PageResult()


def apply_page(rows: list[LogRow]) -> PageResult:
    """A page through the graph, written with the cursor past it in one transaction."""
    return _apply([seq for seq, _ in rows], parse_page([body for _, body in rows]))


def _apply(seqs: list[int], msgs: list[Message]) -> PageResult:
    store, graph = _state()
    known = graph.cached_ids()
    wanted: list[tuple[str, str]] = []
    linking: list[str] = []
    page = runs(seqs, msgs, graph.rules)
    for _, _, user, anon in page:
        if user is not None and (USER, user) not in known:
            wanted.append((USER, user))
        if anon is not None:
            if (ANONYMOUS, anon) not in known:
                wanted.append((ANONYMOUS, anon))
            if user is not None:
                linking.append(anon)
    store.prefetch(graph, wanted, linking)
    try:
        for run in page:
            graph.apply_run(*run)
        changes = graph.take_changes()
        store.apply(changes, seqs[-1])
    except BaseException:
        graph.forget()  # what a failed page left half-applied in memory
        raise
    graph.trim(CACHED_PROFILES)
    return PageResult(
        dict(changes.refused),
        bool(changes.links or changes.resend_users),
        len(seqs),
        seqs[-1],
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
    elif _args is not None:  # opened but not leading (a shared store): its connection
        _args[0].close()
    if _log is not None:
        _log.close()
    _store = _graph = _log = None


class Writer(BackgroundWorker):
    """The parent's handle on the writer: :meth:`call` runs one of this module's functions
    in it. When the writer dies (killed, out of memory) a call raises BrokenExecutor and
    the next starts another, which reopens identity.db at its last commit."""

    def __init__(
        self,
        backend: IdentityBackend,
        rules: Rules,
        *,
        process: bool = True,
        source: LogSource | None = None,
    ):
        args = (backend, tuple(rules.blocked_values), rules.max_anonymous_ids, source)
        setup = start_process if process else start
        super().__init__("the identity graph's writer", setup, args, teardown=stop, process=process)
