"""systemd integration: the unit file (systemd/eventd.service) and the notify protocol.

The unit is checked with ``systemd-analyze verify`` and ``systemd-analyze security
--offline`` (no running systemd needed). The notify protocol is checked end to end:
a real ``eventd serve`` talks to a unix datagram socket standing in for systemd's
``$NOTIFY_SOCKET``, and every datagram is read with the sender's credentials, as
systemd reads them (``NotifyAccess=main`` drops datagrams from any other pid).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventd.app import EXIT_MARGIN
from eventd.config import ServerConfig
from eventd.sdnotify import Notifier
from tests.harness import EventdProcess

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "eventd.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


# -- the unit file ------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values in order (systemd keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def eventd_script() -> Path:
    """The ``eventd`` console script of the Python running the tests."""
    beside = Path(sys.executable).parent / "eventd"
    found = beside if beside.exists() else shutil.which("eventd")
    if found is None:
        pytest.skip("no eventd console script installed (pip install -e .)")
    return Path(found)


def installable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the installed script (verify checks it exists)."""
    text = UNIT.read_text()
    copied, n = re.subn(
        r"^ExecStart=\S+", f"ExecStart={eventd_script()}", text, count=1, flags=re.M
    )
    assert n == 1, "no ExecStart= line in the unit"
    path = tmp_path / "eventd.service"
    path.write_text(copied)
    return path


def test_unit_declares_the_service_contract() -> None:
    s = unit_settings(UNIT.read_text())
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30"],
        "Service.Restart": ["on-failure"],
        "Service.KillSignal": ["SIGTERM"],
        "Service.DynamicUser": ["yes"],
        "Service.StateDirectory": ["eventd"],
        "Service.ConfigurationDirectory": ["eventd"],
        "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["yes"],
        "Service.PrivateTmp": ["yes"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.ProtectKernelTunables": ["yes"],
        "Service.ProtectKernelModules": ["yes"],
        "Service.ProtectKernelLogs": ["yes"],
        "Service.RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "Service.LockPersonality": ["yes"],
        "Service.MemoryDenyWriteExecute": ["yes"],
        "Service.CapabilityBoundingSet": [""],
        "Install.WantedBy": ["multi-user.target"],
    }
    assert {k: s.get(k) for k in expected} == expected
    assert "@system-service" in s["Service.SystemCallFilter"]
    assert s["Service.ExecStart"] == ["/usr/local/bin/eventd serve --config ${EVENTD_CONFIG}"]
    assert "EVENTD_CONFIG=%d/eventd.toml" in s["Service.Environment"]
    assert s["Service.LoadCredential"] == ["eventd.toml:/etc/eventd/eventd.toml"]
    # A stop has exited by shutdown_timeout + EXIT_MARGIN (eventd/server.py ends it
    # then): systemd must not SIGKILL it before that.
    assert float(s["Service.TimeoutStopSec"][0]) > ServerConfig.shutdown_timeout + EXIT_MARGIN
    assert '"/var/lib/eventd/eventd.db"' in UNIT.read_text()  # the storage path it documents


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(installable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_unit_as_shipped_fails_verify_only_for_its_missing_binary(tmp_path: Path) -> None:
    """What verify says of the file itself when /usr/local/bin/eventd is absent (as here)."""
    if Path("/usr/local/bin/eventd").exists():
        pytest.skip("/usr/local/bin/eventd exists: test_unit_verifies covers the file as is")
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems == [
        "eventd.service: Command /usr/local/bin/eventd is not executable: No such file or directory"
    ]


@needs_systemd_analyze
def test_unit_sandbox_exposure_stays_low(tmp_path: Path) -> None:
    """systemd's own score of the sandbox: 0 (locked down) to 10 (exposed). Now ~1.4."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=true",
            "--threshold=20",  # fail above an exposure of 2.0
            str(installable_copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


# -- the notify protocol, end to end ----------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    fields: tuple[str, ...]
    pid: int  # the sender, from SCM_CREDENTIALS

    def has(self, field: str) -> bool:
        return field in self.fields

    def status(self) -> str | None:
        return next(
            (f.removeprefix("STATUS=") for f in self.fields if f.startswith("STATUS=")), None
        )


class NotifySocket:
    """A stand-in for systemd's notify socket: receives datagrams with their sender's pid."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.seen: list[Datagram] = []

    def receive(self, timeout: float) -> Datagram | None:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", value[:12])[0]
        datagram = Datagram(tuple(data.decode().split("\n")), pid)
        self.seen.append(datagram)
        return datagram

    def wait_for(
        self,
        predicate: Callable[[Datagram], bool],
        timeout: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> Datagram:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            # Short receives so a process that died is noticed at once.
            datagram = self.receive(min(left, 0.5))
            if datagram is not None and predicate(datagram):
                return datagram
            if datagram is None and not alive():
                break
        raise AssertionError(f"no matching notify datagram; received: {self.seen}")

    def rest(self) -> list[Datagram]:
        """Whatever is still queued, without waiting."""
        out = []
        while (d := self.receive(0.001)) is not None:
            out.append(d)
        return out

    def close(self) -> None:
        self.sock.close()


class NotifiedEventd(EventdProcess):
    """``eventd serve`` started the way systemd starts a Type=notify service.

    ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` are set; WATCHDOG_PID
    is the service's own pid (a shell sets it to ``$$`` and then execs eventd, which
    keeps the pid), as systemd sets it to the main pid.
    """

    def spawn(self, notify_socket: str, watchdog_usec: int | None) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        env["NOTIFY_SOCKET"] = notify_socket
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "/bin/sh",
                    "-c",
                    'WATCHDOG_PID=$$ exec "$0" "$@"',
                    sys.executable,
                    "-m",
                    "eventd.cli",
                    "serve",
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env=env,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short path of its own: unix socket paths are limited to 108 bytes.
    directory = tempfile.mkdtemp(prefix="eventd-notify-")
    sock = NotifySocket(os.path.join(directory, "notify"))
    yield sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def get(url: str) -> tuple[int, dict[str, object]]:
    """One GET, no retries: the point is that it answers now."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read())


def test_ready_watchdog_and_stopping(notify_socket: NotifySocket, tmp_path: Path) -> None:
    ev = NotifiedEventd(tmp_path)
    ev.spawn(notify_socket.address, watchdog_usec=200_000)  # a ping every 0.1 s
    assert ev.proc is not None
    pid = ev.proc.pid
    try:
        ready = notify_socket.wait_for(lambda d: d.has("READY=1"), 30, ev.alive)
        # Ready means ready: storage open and the listener bound, so these answer now.
        assert get(ev.url + "/health") == (200, {"status": "ok"})
        assert get(ev.url + "/ready") == (
            200,
            {"ready": True, "storage_writable": True, "dispatcher_running": True},
        )
        assert ready.status() == f"listening on {ev.url}"
        assert not any(d.has("WATCHDOG=1") for d in notify_socket.seen[:-1])

        # Watchdog pings keep coming, from the event loop: their STATUS follows the store.
        for _ in range(3):
            notify_socket.wait_for(lambda d: d.has("WATCHDOG=1"), 10, ev.alive)
        assert notify_socket.seen[-1].status() == "last_seq=0 writable=True"
        status, _ = ev.post("/v1/track", {"userId": "u", "event": "e"}, key=ev.write_key)
        assert status == 200
        notify_socket.wait_for(
            lambda d: d.has("WATCHDOG=1") and d.status() == "last_seq=1 writable=True",
            10,
            ev.alive,
        )

        ev.proc.send_signal(signal.SIGTERM)
        stopping = notify_socket.wait_for(lambda d: d.has("STOPPING=1"), 30, ev.alive)
        assert stopping.status() == "stopping: finishing requests and deliveries"
        assert ev.proc.wait(30) == 0
        after = notify_socket.rest()
        assert not any(d.has("WATCHDOG=1") for d in after), after
    finally:
        ev.kill()

    # systemd (NotifyAccess=main) accepts datagrams only from the main pid.
    assert {d.pid for d in notify_socket.seen} == {pid}
    assert "Traceback" not in ev.log()


def test_no_watchdog_pings_without_watchdog_usec(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """Without WatchdogSec= there is no WATCHDOG_USEC: READY and STOPPING, nothing else."""
    ev = NotifiedEventd(tmp_path)
    ev.spawn(notify_socket.address, watchdog_usec=None)
    assert ev.proc is not None
    try:
        notify_socket.wait_for(lambda d: d.has("READY=1"), 30, ev.alive)
        assert get(ev.url + "/health")[0] == 200
        ev.proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for(lambda d: d.has("STOPPING=1"), 30, ev.alive)
        assert ev.proc.wait(30) == 0
        notify_socket.rest()
    finally:
        ev.kill()
    assert [d.fields[0] for d in notify_socket.seen] == ["READY=1", "STOPPING=1"]


def test_sigterm_the_moment_ready_arrives_is_a_clean_stop(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """systemd may stop a service as soon as it is up (``systemctl start x; systemctl
    stop x``). The SIGTERM handler must be in place before READY=1 is sent, else the
    signal's default action kills eventd: exit -15, no STOPPING=1, no clean shutdown."""
    ev = NotifiedEventd(tmp_path)
    ev.spawn(notify_socket.address, watchdog_usec=None)
    assert ev.proc is not None
    try:
        notify_socket.wait_for(lambda d: d.has("READY=1"), 30, ev.alive)
        ev.proc.send_signal(signal.SIGTERM)
        assert ev.proc.wait(30) == 0
        assert any(d.has("STOPPING=1") for d in notify_socket.rest())
    finally:
        ev.kill()
    assert '"event":"eventd stopped"' in ev.log()


# -- sdnotify.Notifier ---------------------------------------------------------------------------


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notifier_abstract_namespace_address() -> None:
    name = f"eventd-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = receiver("\0" + name)  # what '@name' means in $NOTIFY_SOCKET
    notifier = Notifier("@" + name)
    try:
        assert notifier.enabled
        assert notifier.notify("READY=1", "STATUS=up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        assert notifier.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        notifier.close()
        sock.close()
    assert not notifier.notify("STOPPING=1")  # closed: a no-op


def test_notifier_path_address_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tempfile.mkdtemp(prefix="eventd-notify-")
    path = os.path.join(directory, "notify")
    sock = receiver(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    try:
        assert notifier.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        notifier.close()
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_notifier_without_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.notify("READY=1")
    notifier.close()


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    """systemd gone (or the socket removed): notify reports failure, never raises."""
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.enabled
    assert not notifier.notify("WATCHDOG=1")
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),  # WatchdogSec=30: ping every 15 s
        ("30000000", "self", 15.0),
        ("30000000", "1", None),  # another process is the one watched
        (None, None, None),  # no WatchdogSec=
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert Notifier("@unused").watchdog_interval() == expected
