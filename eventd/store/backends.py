"""The backend a config names: ``[storage] backend`` (``sqlite``, the default).

``jetstream`` is the cluster store (eventd/store/cluster.py over
eventd/store/jetstream.py), built from its own ``[storage]`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventd.config import StorageConfig
from eventd.metrics import Metrics
from eventd.store.base import Store
from eventd.store.sqlite import SqliteStore


def open_store(
    config: StorageConfig,
    metrics: Metrics,
    destinations: Sequence[str] = (),
    ordered: Sequence[str] = (),
    local: Sequence[str] = (),
) -> Store:
    """The store ``[storage]`` configures (not yet opened: the app opens it at start).
    ``destinations``: the enabled destinations' names (a cluster creates a durable
    consumer for each when it opens); ``ordered``: those of them with ``ordered =
    true`` (a cluster creates one consumer per partition for each instead);
    ``local``: the node-local ones (``Destination.node_local``: on a cluster, a
    consumer per node, which wins over ``ordered``)."""
    if config.backend == "jetstream":
        # Imported here: nats-py is the optional `jetstream` extra.
        from eventd.store.cluster import ClusterStore

        return ClusterStore(config, destinations, ordered, local, metrics=metrics)
    return SqliteStore(
        config.path,
        synchronous=config.synchronous,
        dedup_window=config.dedup_window,
        max_size=config.max_size,
        metrics=metrics,
    )
