"""One server per data directory: an exclusive flock(2) on a lock file, taken when a
store opens and let go when it closes.

Without it, two ``eventd serve`` on one ``storage.path`` both ran: SQLite lets two
processes write one file, so both delivered the outbox, and the second ran without
the dedup set (RocksDB's own LOCK refused it) and refused ingest. Two cluster nodes
on one data directory would share its ``node-id`` (so one consumer of each node-local
destination) and its dedup sets. The lock is the kernel's: it goes with the process,
so a crash or SIGKILL never leaves a stale lock (the file stays, empty of meaning).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from eventd.store.base import StorageUnavailable


class StorageInUse(StorageUnavailable):
    """Another process holds the lock; the message names the key, its value and the pid."""


class DataLock:
    """The lock file ``path``; ``what``: how the message names what it guards (the
    config key and value), e.g. ``storage.path = '/var/lib/eventd/eventd.db'``."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StorageInUse` at once (never waits)."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageUnavailable(
                f"{self.what}: cannot open the lock file {self.path}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageInUse(
                f"{self.what} is in use by another eventd (pid {holder}, lock {self.path}):"
                " two servers cannot share a data directory; give each its own"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # only for the next one's message (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing lets the flock go
