"""Real parts for tests: an ``eventd serve`` subprocess and a scriptable HTTP sink.

Both run for real on loopback ports: eventd as a child process with its own
config file and SQLite database, the sink as an aiohttp server on a thread of
its own (so synchronous SDK clients and async tests can both use it).
Waiting is on signals (``/health`` answering, a condition variable the sink
notifies on every request), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def admin_get(url: str, token: str | None) -> tuple[int, Any]:
    """GET an admin route with the bearer token: (status, JSON body), errors included."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def fill_disk(path: Path) -> None:
    """Write ``path`` until its disk (a small tmpfs: conftest.py's ``tiny_disk``) refuses a
    byte more."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            while True:  # the last pages' worth, byte by byte
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


class EventdProcess:
    """``eventd serve`` as a subprocess on a free port, with its own data directory."""

    def __init__(self, tmp: Path, config: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.write_key = "wk_test_" + os.urandom(6).hex()
        self.admin_token = "adm_test_" + os.urandom(6).hex()
        self.db_path = tmp / "data" / "eventd.db"
        base: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, "shutdown_timeout": "5s"},
            "storage": {"path": str(self.db_path), "synchronous": "normal"},
            "admin": {"token": self.admin_token},
            "sources": {"app": {"write_key": self.write_key}},
        }
        for section, values in (config or {}).items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                base[section] = {**base[section], **values}
            else:
                base[section] = values
        self.config = base
        self.db_path = Path(base["storage"]["path"])
        self.config_path = tmp / "eventd.toml"
        self.config_path.write_text(tomli_w.dumps(base))
        self.log_path = tmp / "eventd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, *, new_session: bool = False) -> EventdProcess:
        """Start ``eventd serve``; ``new_session``: in a process group of its own (as a
        systemd unit's control group), so a test can signal the whole group."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventd.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                start_new_session=new_session,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"eventd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)  # polling /health: the readiness signal itself
        raise RuntimeError(f"eventd did not answer /health in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> EventdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGKILL)

    # -- talking to it -------------------------------------------------------------

    def post(
        self, path: str, body: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            hdrs["Authorization"] = basic(key)
        req = urllib.request.Request(self.url + path, data=data, headers=hdrs, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def drain(self, timeout: float = 60.0) -> Any:
        """Block until every destination has passed every stored event."""
        return self.admin("POST", f"/admin/drain?timeout={timeout}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        verb, rest = args[0], args[1:]
        extra = [rest[0]] if verb in ("dead-letters", "suppressions") and rest else []
        tail = list(rest[1:]) if extra else list(rest)
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "eventd.cli",
                verb,
                *extra,
                "--config",
                str(self.config_path),
                *tail,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stored(self) -> list[dict[str, Any]]:
        """Every stored event body, in seq order (read straight from the SQLite file)."""
        conn = sqlite3.connect(self.db_path)
        try:
            return [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
        finally:
            conn.close()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()


# -- the sink -------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sink:
    """A scriptable HTTP server counting what it received.

    ``script`` is consumed one action per request: an int status, a tuple
    ``(status, {headers})``, ``"hang"`` (never answer) or ``"drop"`` (close the
    connection). When the script is empty, ``default`` answers. A request is
    recorded (``received``) only when answered 2xx.
    """

    port: int = field(default_factory=free_port)
    script: collections.deque[Any] = field(default_factory=collections.deque)
    default: Any = 200
    handler: Callable[[Received], Any] | None = None  # computes the action instead of script
    received: list[Received] = field(default_factory=list)
    attempts: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def message_ids(self) -> collections.Counter[str]:
        """messageId -> times received (webhook bodies: one event or a list)."""
        counts: collections.Counter[str] = collections.Counter()
        with self.cond:
            for r in self.received:
                body = r.json()
                for event in body if isinstance(body, list) else [body]:
                    counts[event["messageId"]] += 1
        return counts

    def wait_for(self, predicate: Callable[[Sink], bool], timeout: float = 60.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"sink condition not met in {timeout}s")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = Received(request.path, dict(request.headers), await request.read())
        with self.cond:
            self.attempts.append(rec)
            action = (
                self.handler(rec)
                if self.handler
                else (self.script.popleft() if self.script else self.default)
            )
            self.cond.notify_all()
        if action == "hang":
            await asyncio.sleep(3600)
        if action == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        status, headers = action if isinstance(action, tuple) else (action, {})
        if 200 <= status < 300:
            with self.cond:
                self.received.append(rec)
                self.cond.notify_all()
        return web.Response(status=status, headers=headers, text=json.dumps({"status": status}))


@contextmanager
def running(server: Any, routes: Callable[[web.Application], None] | None = None) -> Iterator[Any]:
    """Run an aiohttp server for ``server`` (a Sink or anything with ``port`` and ``app()``)
    on a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        if isinstance(server, Sink):
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", server._handle)
        else:
            app = server.app()
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", server.port).start()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


# -- the delivery invariant -------------------------------------------------------------


def account_for_every_event(
    ev: EventdProcess,
    destination: str,
    delivered: set[str],
    skip_reason: Callable[[dict[str, Any]], str | None],
) -> dict[str, set[str]]:
    """Assert that every stored event of ``destination`` ended delivered, skipped,
    dead-lettered or pending, and nothing else, after a drain.

    ``delivered`` is what the destination's receiving end saw (messageIds);
    ``skip_reason(event)`` is the test's own reading of why the destination must not
    get a stored event (its integrations, a suppression, a filter), None if it must.
    Skips carry no messageId in eventd's answers, so they are checked by count: the
    events the test expects skipped must be exactly those neither delivered nor
    dead, and their number what ``/admin/destinations`` counts as skipped.
    Returns the sets, by outcome.
    """
    status = {d["name"]: d for d in ev.drain(timeout=60)}[destination]
    stored = {m["messageId"]: m for m in ev.stored()}
    dead = {
        d["message_id"]
        for d in ev.admin("GET", f"/admin/dead-letters?destination={destination}&limit=10000")
    }
    expected_skipped = {mid for mid, m in stored.items() if skip_reason(m) is not None}
    assert status["lag_events"] == 0, status  # drained: nothing pending
    assert not delivered & dead, "delivered and dead-lettered both"
    assert delivered | dead <= set(stored), "delivered something never stored"
    assert delivered & expected_skipped == set(), "delivered what it should have skipped"
    left = set(stored) - delivered - dead
    assert left == expected_skipped, "stored events neither delivered, dead nor skipped"
    assert status["skipped"] == len(expected_skipped), status
    assert status["dead"] == len(dead), status
    return {"delivered": delivered, "dead": dead, "skipped": left}
