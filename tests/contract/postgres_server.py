"""A real PostgreSQL server for tests: Debian's PostgreSQL binaries on a free port.

``initdb`` into a temporary directory, password (scram-sha-256) authentication over
TCP, the socket in the same directory, run as a non-root OS user (``postgres``
refuses to run as root: the ``postgres`` account when it exists, else one made with
``useradd``). Readiness is polled with ``pg_isready`` against a deadline. A role
with a password owns the databases the tests create, one per test.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from tests.harness import free_port

BINARIES = ("initdb", "pg_ctl", "postgres", "pg_isready")
TEST_OS_USER = "eventd-pgtest"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _os_user() -> str | None:
    """Who runs the server: None for ourselves when not root, else a non-root account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", TEST_OS_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_OS_USER],
        check=True,
        capture_output=True,
    )
    return TEST_OS_USER


class PostgresServer:
    """One PostgreSQL cluster: ``start()``/``stop()`` keep its data and port."""

    superuser = "eventd_admin"
    role = "eventd"

    def __init__(self) -> None:
        self.os_user = _os_user()
        self.dir = Path(tempfile.mkdtemp(prefix="eventd-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.password = "pw-" + uuid.uuid4().hex  # long enough to be redacted
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.os_user is not None:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        pwfile.unlink()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.os_user is not None:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.dir)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def start(self, timeout: float = 30.0) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            # a test cluster: durability is not under test here, speed is welcome
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            # DDL is logged with the database's name, so a test can count what eventd issued
            " -c log_statement=ddl -c log_line_prefix=%d:"
        )
        self._run("pg_ctl", "start", "-W", "-D", str(self.data), "-l", str(self.log), "-o", options)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run(
                ["pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)  # polling pg_isready: the readiness signal itself
        raise RuntimeError(f"PostgreSQL did not get ready in {timeout}s:\n{self.server_log()}")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", check=False)

    def ddl(self, database: str) -> list[str]:
        """The DDL statements run in ``database`` so far (from the server's log)."""
        return [
            line.split("statement: ", 1)[1]
            for line in self.server_log().splitlines()
            if line.startswith(f"{database}:") and "statement: " in line
        ]

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def setup_role(self) -> None:
        self.run_sql(
            f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'",
            user=self.superuser,
            database="postgres",
        )

    def create_database(self, prefix: str = "wh") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.run_sql(f"CREATE DATABASE {name} OWNER {self.role}", user=self.superuser)
        return name

    def dsn(self, database: str, *, password: str | None = None, user: str | None = None) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user or self.role}{secret}@127.0.0.1:{self.port}/{database}"

    def run_sql(self, sql: str, *, user: str | None = None, database: str = "postgres") -> None:
        async def run() -> None:
            conn = await asyncpg.connect(self.dsn(database, user=user, password=self.password))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def fetch(
        self, database: str, sql: str, *args: Any, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of a query, as dicts, through the test role (or ``user``)."""

        async def run() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.dsn(database, user=user, password=self.password))
            try:
                return [dict(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
