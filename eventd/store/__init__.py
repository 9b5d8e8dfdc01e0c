"""Storage: the :class:`Store` protocol and its backends.

``base.py`` defines the contract (and ``DeletionStore``, the optional part the
privacy feature needs), ``sqlite.py`` the SQLite outbox (with
``schema.py``, its migrations), ``memory.py`` an in-memory store for unit tests.
``backends.open_store`` picks the backend a config names; a new backend is
added there and passes the conformance suite in ``tests/store/``.
"""

from __future__ import annotations

from eventd.store.base import (
    DONE,
    FAILED,
    MAX_ERROR_CHARS,
    REQUESTED,
    UNSUPPORTED,
    Conflict,
    DeadLetter,
    Deletion,
    DeletionStore,
    EventRow,
    Feed,
    LogReader,
    LogSource,
    NewDeadLetter,
    NotLeader,
    NotSupported,
    Replay,
    SeqRange,
    SharedDeletionStore,
    StorageUnavailable,
    Store,
    StoreStats,
    Suppression,
    UserEvent,
    iso_ms,
    now_ms,
    service_cursor,
)
from eventd.store.memory import MemoryStore
from eventd.store.sqlite import SqliteStore

__all__ = [
    "DONE",
    "FAILED",
    "MAX_ERROR_CHARS",
    "REQUESTED",
    "UNSUPPORTED",
    "Conflict",
    "DeadLetter",
    "Deletion",
    "DeletionStore",
    "EventRow",
    "Feed",
    "LogReader",
    "LogSource",
    "MemoryStore",
    "NewDeadLetter",
    "NotLeader",
    "NotSupported",
    "Replay",
    "SeqRange",
    "SharedDeletionStore",
    "SqliteStore",
    "StorageUnavailable",
    "Store",
    "StoreStats",
    "Suppression",
    "UserEvent",
    "iso_ms",
    "now_ms",
    "service_cursor",
]
