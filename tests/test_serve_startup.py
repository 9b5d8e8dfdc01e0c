"""``eventd serve`` refuses to start on what another process holds, and stops when
told to while it starts (issue 14's newcomer trial, fault 2).

Real ``eventd serve`` subprocesses on real ports: a ``server.port`` in use ends the
process (exit 1, naming the key and the value) before its store opens, so on the
cluster nothing joins (no heartbeat in the limit shares, no node-local consumer);
two servers on one data directory: the second is refused by the first's lock (SQLite
and cluster alike), and the lock goes with the first process, even on SIGKILL.
SIGTERM while the cluster is awaited (no quorum) stops the process at once, exit 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.harness import EventdProcess, Sink, running
from tests.nats_cluster import NatsCluster
from tests.test_cluster_serve import node_config, send_batch

START_TIMEOUT = 60.0  # seconds a refused start may take (it takes ~1 s: imports)


def serve(node: EventdProcess) -> subprocess.CompletedProcess[str]:
    """``eventd serve`` in the foreground with ``node``'s config, to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "eventd.cli", "serve", "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        cwd=node.tmp,
    )


def other(tmp: Path, name: str, config: dict[str, Any]) -> EventdProcess:
    (tmp / name).mkdir()
    return EventdProcess(tmp / name, config)


def test_a_port_in_use_ends_the_start_before_the_store_opens(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        node = other(tmp_path, "b", {"server": {"port": port}})
        run = serve(node)
    assert run.returncode == 1, run.stderr
    assert (
        f"cannot listen on server.host = '127.0.0.1', server.port = {port}:"
        " Address already in use" in run.stderr
    ), run.stderr
    assert not node.db_path.parent.exists()  # nothing made


def test_an_unknown_host_names_the_key(tmp_path: Path) -> None:
    node = other(tmp_path, "b", {"server": {"host": "no-such-host.invalid"}})
    run = serve(node)
    assert run.returncode == 1
    assert "cannot listen on server.host = 'no-such-host.invalid'" in run.stderr, run.stderr


def test_a_second_server_on_one_outbox_is_refused_and_the_lock_goes_with_the_first(
    tmp_path: Path,
) -> None:
    sink = Sink()
    with running(sink):
        hook = {"type": "webhook", "settings": {"url": sink.url + "/hook", "batch": True}}
        a = other(tmp_path, "a", {"destinations": {"hook": hook}}).start()
        try:
            # Another port, a's storage.path: refused, and a goes on alone.
            b = other(
                tmp_path, "b", {"storage": {"path": str(a.db_path)}, "destinations": {"hook": hook}}
            )
            run = serve(b)
            assert run.returncode == 1, run.stderr
            assert (
                f"storage.path = '{a.db_path}' is in use by another eventd"
                f" (pid {a.proc.pid if a.proc else None}," in run.stderr
            ), run.stderr
            status, _ = a.post("/v1/track", _track("m1"), key=a.write_key)
            assert status == 200
            sink.wait_for(lambda s: set(s.message_ids()) == {"m1"}, 30)
            a.kill()  # SIGKILL: the kernel lets the lock go with the process
            b.start()
            try:
                status, _ = b.post("/v1/track", _track("m2"), key=b.write_key)
                assert status == 200
                sink.wait_for(lambda s: set(s.message_ids()) == {"m1", "m2"}, 30)
                # m1 may come again (at least once: a was killed before its cursor
                # was saved); m2, sent to b alone, comes once.
                assert sink.message_ids()["m2"] == 1
            finally:
                assert b.stop() == 0
        finally:
            a.kill()


def _track(message_id: str) -> dict[str, Any]:
    return {"userId": "u1", "event": "Order", "messageId": message_id}


# -- on the cluster ----------------------------------------------------------------


async def _joined(cluster: NatsCluster, stream: str) -> tuple[set[str], set[str]]:
    """What nodes left in the cluster: the heartbeats in the leases bucket (the limit
    shares count them) and the log's consumers (node-local ones name their node)."""
    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream(timeout=10)
        kv = await js.key_value(f"{stream}_LEASES")
        beats = {k for k in await kv.keys() if k.startswith("node-")}
        consumers = {c.name for c in await js.consumers_info(stream)}
        return beats, consumers
    finally:
        await nc.close()


@pytest.mark.slow
def test_on_the_cluster_a_refused_node_joins_nothing_and_sigterm_stops_a_waiting_one(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    cluster = make_nats_cluster(3)
    sink = Sink()
    with running(sink):
        config = node_config(tmp_path / "a", cluster, sink)
        config["destinations"]["analytics"] = {  # node-local: a consumer per node
            "type": "duckdb",
            "settings": {"path": str(tmp_path / "a" / "analytics.duckdb")},
        }
        a = other(tmp_path, "a", config).start(timeout=90)
        try:
            assert send_batch(a, ["c1"]) == 200
            node_id = (a.db_path.parent / "node-id").read_text().strip()
            before = asyncio.run(_joined(cluster, "E2E"))
            assert f"dest-analytics@{node_id}" in before[1]
            assert len(before[0]) == 1

            # A port in use (a's), a data directory of its own: refused before it joins.
            own_dir = {**config["storage"], "path": str(tmp_path / "b" / "data" / "eventd.db")}
            b = other(tmp_path, "b", {**config, "server": {"port": a.port}, "storage": own_dir})
            run = serve(b)
            assert run.returncode == 1, run.stderr
            assert f"server.port = {a.port}: Address already in use" in run.stderr
            assert not (tmp_path / "b" / "data").exists()

            # Its own port, a's data directory: refused by a's lock, before it joins.
            c = other(tmp_path, "c", config)
            run = serve(c)
            assert run.returncode == 1, run.stderr
            assert "is in use by another eventd" in run.stderr, run.stderr
            assert asyncio.run(_joined(cluster, "E2E")) == before

            # No quorum: a new node waits for the cluster (up to 60 s) until SIGTERM.
            cluster.kill(1)
            cluster.kill(2)
            d_config = node_config(tmp_path / "d", cluster, sink)
            d = other(tmp_path, "d", d_config)
            with open(d.log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "eventd.cli", "serve", "--config", str(d.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=d.tmp,
                )
            try:
                _wait_listening(d.port, proc)  # bound: start-up is under way
                # Answered at once while it waits, not held in the kernel's queue
                # (the fifth trial: clients hung up to 40 s on a restarting node).
                assert _get(d, "/health") == (503, {"status": "starting"}, None)
                ready = {"ready": False, "storage_writable": False, "dispatcher_running": False}
                assert _get(d, "/ready") == (503, ready, None)
                status, body, retry_after = _get(d, "/v1/batch", b'{"batch": []}')
                assert (status, body["code"], retry_after) == (503, "starting", "5")
                assert proc.poll() is None
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                assert proc.wait(30) == 0, d.log()
                assert time.monotonic() - sent < 10, d.log()
                assert "stopped during start-up" in d.log()
            finally:
                proc.kill()
                proc.wait()
        finally:
            a.kill()


def _get(node: EventdProcess, path: str, body: bytes | None = None) -> tuple[int, Any, str | None]:
    """(status, JSON body, Retry-After) of a GET (a POST with ``body``), within 5 s."""
    req = urllib.request.Request(node.url + path, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read()), r.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("Retry-After")


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "eventd exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # polling the port: the signal that binding is done
    raise AssertionError(f"port {port} not bound in {START_TIMEOUT}s")


@pytest.mark.slow
def test_sigterm_with_every_server_stopped_exits_within_shutdown_timeout(
    tmp_path: Path, make_nats_cluster: Callable[..., NatsCluster]
) -> None:
    """Issue 14's second trial: a SIGTERM during a quorum loss took 19.6-22.5 s to
    exit against ``shutdown_timeout`` 10 s (each close path waited its own bound, one
    after another). The whole stop is bounded by ``server.shutdown_timeout``."""
    cluster = make_nats_cluster(3)
    sink = Sink()
    with running(sink):
        config = node_config(tmp_path / "a", cluster, sink)
        del config["identity"]  # on: its writer's process and connection stop too
        config["server"] = {"shutdown_timeout": "4s"}
        config["destinations"]["analytics"] = {  # node-local: a consumer of its own
            "type": "duckdb",
            "settings": {"path": str(tmp_path / "a" / "analytics.duckdb")},
        }
        a = other(tmp_path, "a", config).start(timeout=90)
        try:
            assert send_batch(a, [f"s{i}" for i in range(20)]) == 200
            sink.wait_for(lambda s: len(s.message_ids()) == 20, 60)
            for i in range(3):
                cluster.pause(i)
            try:
                # At once: the node still takes itself for connected, so each give-back
                # (leases, claims, the heartbeat) waits for an answer that never comes.
                assert a.proc is not None
                a.proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                code = a.proc.wait(60)
                took = time.monotonic() - sent
            finally:
                for i in range(3):
                    cluster.resume(i)
            assert code == 0, a.log()
            assert took < 4 + 2, (took, a.log())
            assert '"eventd stopped"' in a.log(), a.log()
        finally:
            a.kill()
