"""Storage: the :class:`Store` protocol and its backends.

``base.py`` defines the contract, ``sqlite.py`` the SQLite outbox (with
``schema.py``, its migrations), ``memory.py`` an in-memory store for unit tests.
``backends.open_store`` picks the backend a config names; a new backend is
added there and passes the conformance suite in ``tests/store/``.
"""

from __future__ import annotations

from eventd.store.base import (
    MAX_ERROR_CHARS,
    DeadLetter,
    EventRow,
    NewDeadLetter,
    Replay,
    SeqRange,
    StorageUnavailable,
    Store,
    StoreStats,
    Suppression,
    iso_ms,
    now_ms,
    service_cursor,
)
from eventd.store.memory import MemoryStore
from eventd.store.sqlite import SqliteStore

__all__ = [
    "MAX_ERROR_CHARS",
    "DeadLetter",
    "EventRow",
    "MemoryStore",
    "NewDeadLetter",
    "Replay",
    "SeqRange",
    "SqliteStore",
    "StorageUnavailable",
    "Store",
    "StoreStats",
    "Suppression",
    "iso_ms",
    "now_ms",
    "service_cursor",
]
