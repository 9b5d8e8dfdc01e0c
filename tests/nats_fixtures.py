"""Pytest fixtures for a real NATS JetStream cluster (see tests/nats_cluster.py).

``nats_cluster`` is one 3-server cluster per test module (tests give their streams
unique names, so they do not see each other's data); ``make_nats_cluster`` starts
clusters a test owns alone, for tests that kill, pause or restart servers. Without
nats-server the tests skip, saying how to install it; in CI (``CI`` set) they fail,
since .ci/nats-setup.sh should have installed it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nats_cluster import NatsCluster, nats_server_binary


def _require_nats_server() -> None:
    if nats_server_binary() is not None:
        return
    message = "nats-server is not installed: bash .ci/nats-setup.sh (apt-get install nats-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-server JetStream cluster shared by the tests of one module."""
    _require_nats_server()
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture
def make_nats_cluster(tmp_path: Path) -> Iterator[Callable[..., NatsCluster]]:
    """Start clusters of one's own (``make_nats_cluster(size=3)``); all killed at teardown."""
    _require_nats_server()
    started: list[NatsCluster] = []

    def make(size: int = 3) -> NatsCluster:
        cluster = NatsCluster(tmp_path / f"nats{len(started)}", size=size)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()
