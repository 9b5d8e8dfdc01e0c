"""A minimal keep-alive HTTP/1.1 client on asyncio protocols, for load generation.

aiohttp's client spends more CPU per request than the server it is measuring;
this one writes preformatted request bytes and reads a response by its
Content-Length, nothing more, so one core of load can saturate one core of
server. It speaks only what the benchmarks need: no chunked responses, no
pipelining, one request in flight per connection.
"""

from __future__ import annotations

import asyncio
import re

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class PostTemplate:
    """Preformatted ``POST`` request bytes: ``template(body)`` is a whole request."""

    def __init__(self, path: str, host: str, headers: dict[str, str]) -> None:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()

    def __call__(self, body: bytes) -> bytes:
        return b"%b%d\r\n\r\n%b" % (self._prefix, len(body), body)


class Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` sends and returns the status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._need: int | None = None
        self._status = 0
        self._waiter: asyncio.Future[int] | None = None
        self._lost = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            if self._need is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buf[:end]
                m = _CONTENT_LENGTH.search(head)
                self._status = int(head[9:12])
                self._need = end + 4 + (int(m.group(1)) if m else 0)
            if len(self._buf) < self._need:
                return
            self._buf = self._buf[self._need :]
            self._need = None
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self._status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self._lost.done():
            self._lost.set_result(None)

    def request(self, data: bytes) -> asyncio.Future[int]:
        """Send one request; the future resolves to the response's status."""
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            await self._lost
