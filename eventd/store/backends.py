"""The backend a config names: ``[storage] backend`` (``sqlite``, the default).

A new backend (``jetstream``) is constructed here from its own ``[storage]`` keys
and passes the conformance suite in ``tests/store/``.
"""

from __future__ import annotations

from eventd.config import ConfigError, StorageConfig
from eventd.metrics import Metrics
from eventd.store.base import Store
from eventd.store.sqlite import SqliteStore


def open_store(config: StorageConfig, metrics: Metrics) -> Store:
    """The store ``[storage]`` configures (not yet opened: the app opens it at start).

    A new backend (``storage.backend = "jetstream"``) is constructed here from its
    own keys of ``[storage]``."""
    if config.backend == "jetstream":
        # Refused rather than quietly served from SQLite: the cluster store exists
        # (eventd/store/jetstream.py) but the dispatcher cannot yet read through
        # consumers shared by nodes (docs/scaling.md, "What is left").
        raise ConfigError(
            "storage.backend = 'jetstream': not yet served by `eventd serve` (the cluster"
            " store is built, its dispatcher wiring is not: docs/scaling.md); use 'sqlite'"
        )
    return SqliteStore(
        config.path,
        synchronous=config.synchronous,
        dedup_window=config.dedup_window,
        max_size=config.max_size,
        metrics=metrics,
    )
