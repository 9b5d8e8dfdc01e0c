"""systemd's notify protocol: datagrams like ``READY=1`` to ``$NOTIFY_SOCKET``.

Written against sd_notify(3): a unix datagram socket, a leading '@' meaning the
abstract namespace. Without ``$NOTIFY_SOCKET`` (not under systemd) every call is
a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (systemd's advice), when this process is the one watched."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
