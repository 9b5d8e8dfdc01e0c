"""Every line ``eventd serve`` writes under the JSON log format is one JSON object,
on a cluster node with the identity graph on (issue 14's newcomer trial): the
identity writer's process (a spawned BackgroundWorker) logged its lease line in
structlog's console format. Counts named like keys (``rebuilt_keys``) are shown, not
masked. (Libraries' stdlib logging as JSON: tests/test_operations.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EventdProcess, Sink, running
from tests.nats_cluster import NatsCluster
from tests.test_cluster_serve import node_config, send_batch, wait_until

pytestmark = pytest.mark.slow


def lines(node: EventdProcess) -> list[dict[str, Any]]:
    """The node's log, each line parsed (a line that is not JSON fails the test)."""
    parsed = []
    for n, line in enumerate(node.log().splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line!r}") from None
    return parsed


def test_every_line_of_a_cluster_node_with_identity_is_json(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster(3)
    sink = Sink()
    with running(sink):
        (tmp_path / "a").mkdir()
        config = node_config(tmp_path / "a", cluster, sink)
        del config["identity"]  # on: the default (its writer runs in a process of its own)
        node = EventdProcess(tmp_path / "a", config).start(timeout=90)
        try:
            assert send_batch(node, [f"j{i}" for i in range(20)]) == 200

            def writer_leads() -> bool:
                return any(r["event"] == "identity writer lease taken" for r in lines(node))

            wait_until(writer_leads, 120, "the identity writer's lease line")
            assert node.stop() == 0
        finally:
            node.kill()
    records = lines(node)
    stages = [r for r in records if r["event"] == "dedup stage started"]
    assert stages and all(isinstance(r["rebuilt_keys"], int) for r in stages), stages
    assert all({"event", "level", "timestamp"} <= r.keys() for r in records)
