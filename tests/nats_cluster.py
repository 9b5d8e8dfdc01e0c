"""A real NATS JetStream cluster for tests: N ``nats-server`` processes on loopback.

Each server gets free client, route and monitoring ports and a store directory of
its own; the cluster is ready when every server's monitoring ``/healthz`` answers
200, which nats-server (2.9) only does once JetStream is up and the meta group has
a leader this server is current with: a readiness signal, not a sleep. Servers can
be killed (SIGKILL), paused (SIGSTOP, a partition as the others see it), resumed
and restarted on the same ports and store, so tests can lose and regain a node.
Teardown kills every process it started, by PID, even when a test fails.

Debian ships the server (``apt-get install nats-server``, 2.9.10 at
/usr/sbin/nats-server); ``.ci/nats-setup.sh`` installs it on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import free_port

NATS_SERVER_PATHS = ("/usr/sbin/nats-server", "/usr/bin/nats-server")


def nats_server_binary() -> str | None:
    """The nats-server executable on this machine, or None."""
    found = shutil.which("nats-server")
    if found:
        return found
    return next((p for p in NATS_SERVER_PATHS if os.access(p, os.X_OK)), None)


@dataclass
class NatsServer:
    """One cluster member; ports and store survive a restart."""

    name: str
    store: Path
    binary: str
    port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store.parent / f"{self.name}.log"

    def command(self, cluster: str, routes: list[str]) -> list[str]:
        return [
            self.binary,
            "-n",
            self.name,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            str(self.store),
            "--cluster_name",
            cluster,
            "--cluster",
            f"nats://127.0.0.1:{self.route_port}",
            "--routes",
            ",".join(routes),
        ]

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.monitor_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsCluster:
    """``size`` nats-servers forming one JetStream cluster named ``name``."""

    def __init__(self, root: Path, size: int = 3, name: str = "eventd") -> None:
        binary = nats_server_binary()
        if binary is None:
            raise FileNotFoundError("nats-server is not installed (bash .ci/nats-setup.sh)")
        self.name = name
        self.root = root
        self.servers = [
            NatsServer(f"n{i}", root / f"n{i}" / "jetstream", binary) for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Every server's client URL: what ``storage.servers`` lists."""
        return [s.url for s in self.servers]

    def _routes(self, server: NatsServer) -> list[str]:
        return [f"nats://127.0.0.1:{s.route_port}" for s in self.servers if s is not server]

    def start(self, timeout: float = 30.0, attempts: int = 3) -> NatsCluster:
        """Start every server; when one could not bind a port (``free_port`` found it
        free, then another test's process took it first: seen with several suites
        running at once), start them all again on fresh ports, up to ``attempts``."""
        for attempt in range(attempts):
            for server in self.servers:
                self._spawn(server)
            try:
                self.wait_healthy(timeout=timeout)
                return self
            except RuntimeError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
            for server in self.servers:
                server.port, server.route_port = free_port(), free_port()
                server.monitor_port = free_port()
        raise AssertionError("unreachable")

    def _spawn(self, server: NatsServer) -> None:
        server.store.mkdir(parents=True, exist_ok=True)
        with open(server.log_path, "ab") as log:
            server.proc = subprocess.Popen(
                server.command(self.name, self._routes(server)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, servers: list[NatsServer] | None = None, timeout: float = 30.0) -> None:
        """Block until each of ``servers`` (default: all running) answers /healthz 200."""
        waiting = [s for s in (servers or self.servers) if s.running()]
        deadline = time.monotonic() + timeout
        while waiting:
            for server in list(waiting):
                if server.proc is not None and server.proc.poll() is not None:
                    raise RuntimeError(f"{server.name} exited:\n{server.log()}")
                if server.healthy():
                    waiting.remove(server)
            if waiting and time.monotonic() > deadline:
                logs = "\n".join(f"--- {s.name}\n{s.log()[-3000:]}" for s in waiting)
                raise RuntimeError(f"nats-servers not healthy in {timeout}s:\n{logs}")
            if waiting:
                time.sleep(0.05)  # polling /healthz: the readiness signal itself

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` (a crash: no clean leave from the cluster)."""
        server = self.servers[i]
        if server.proc is not None:
            if server.proc.poll() is None:
                # A paused process takes SIGKILL too, but resume first so it is reaped now.
                server.proc.send_signal(signal.SIGCONT)
                server.proc.kill()
            server.proc.wait()
            server.proc = None

    def pause(self, i: int) -> None:
        """SIGSTOP server ``i``: to the others and its clients it is partitioned away."""
        proc = self.servers[i].proc
        assert proc is not None, f"n{i} is not running"
        proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.servers[i].proc
        assert proc is not None, f"n{i} is not running"
        proc.send_signal(signal.SIGCONT)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start server ``i`` again on its ports and store; returns once it is healthy."""
        self.kill(i)
        self._spawn(self.servers[i])
        self.wait_healthy([self.servers[i]], timeout=timeout)

    def stop(self) -> None:
        for i in range(len(self.servers)):
            self.kill(i)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
