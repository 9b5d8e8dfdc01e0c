"""``python -m bench.stop_reopen --pause S``: a node's stop during a quorum loss and its
start right after it (issue 14's fourth trial).

On demand, not in CI. Three nats-servers, two ``eventd serve`` nodes (identity on,
``shutdown_timeout`` 4 s) under load from both: tests/test_cluster_stop.py's steps,
on tests/test_cluster_serve.py's harness. Two servers are SIGSTOPped; once a batch
is refused, the node whose identity writer holds the lease gets SIGTERM; the
servers get SIGCONT ``--pause`` seconds after the SIGSTOP and the stopped node is
started again at once. Printed: seconds from SIGTERM to exit, seconds from SIGCONT
until the node answers ``/health`` (its store open), then the node's log lines of
that start (a ``cluster not ready; asking again`` names what the open waited on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.nats_cluster import NatsCluster
from tests.test_cluster_serve import Load, two_nodes
from tests.test_cluster_stop import identity_on, lose_quorum, sigterm, writer_node


def run(pause: float) -> None:
    root = Path(tempfile.mkdtemp(prefix="stop-reopen-"))
    cluster = NatsCluster(root / "nats").start()
    try:
        with two_nodes(root, cluster, identity_on) as (_, nodes):
            leader = writer_node(nodes)
            load = Load(nodes, "r").start()
            try:
                began = time.monotonic()
                lose_quorum(cluster, load)
                _, took = sigterm(leader)
                print(f"exit {took:.1f} s after SIGTERM", flush=True)
                # The loss lasts --pause seconds: a wait by design, not for a condition.
                time.sleep(max(0.0, pause - (time.monotonic() - began)))
                cluster.resume(1)
                cluster.resume(2)
                resumed = time.monotonic()
                leader.log_path.write_text("")  # this start's lines only
                leader.start(timeout=120)
                print(f"open {time.monotonic() - resumed:.1f} s after SIGCONT", flush=True)
            finally:
                load.finish()
            for line in leader.log().splitlines():
                if line.startswith("{"):
                    entry = json.loads(line)
                    rest = {k: v for k, v in entry.items() if k not in ("event", "timestamp")}
                    print(entry.get("timestamp", "")[11:23], entry.get("event"), rest)
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=55.0, help="seconds of the loss")
    run(parser.parse_args().pause)


if __name__ == "__main__":
    main()
