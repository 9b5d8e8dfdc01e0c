"""The sink: a webhook receiver that counts events and, when asked, when each arrived.

It parses as little as it can: events are counted by their ``"messageId":"``
keys, so a 100-event JSON array costs a byte search, not a JSON parse. With
``record`` on, it keeps (messageId, arrival time) for end-to-end latency. Its
answer is 200 unless told otherwise (``POST /_control?status=503``), which is
how a benchmark holds a backlog undelivered.

Control endpoints (all under ``/_``): ``GET /_stats``, ``POST /_control``
(``status``, ``record``, ``reset``), ``GET /_arrivals``.

Run: ``python -m bench.sink PORT``. Times are ``time.monotonic()`` seconds
(CLOCK_MONOTONIC: the same clock in every process of the machine).
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter

import orjson
from aiohttp import web

MARK = b'"messageId":"'
MESSAGE_ID = re.compile(rb'"messageId":"([^"]*)"')


class Sink:
    def __init__(self) -> None:
        self.status = 200
        self.record = False
        self.reset()

    def reset(self) -> None:
        self.events = 0
        self.requests = 0
        self.refused = 0
        self.first: float | None = None
        self.last: float | None = None
        self.by_path: Counter[str] = Counter()
        self.arrivals: list[tuple[bytes, float]] = []

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        if self.status >= 300:
            self.refused += 1
            return web.Response(status=self.status)
        count = body.count(MARK)
        self.events += count
        self.requests += 1
        self.by_path[request.path] += count
        if self.first is None:
            self.first = now
        self.last = now
        if self.record:
            self.arrivals.extend((m, now) for m in MESSAGE_ID.findall(body))
        return web.Response(body=b"{}", content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "events": self.events,
                "requests": self.requests,
                "refused": self.refused,
                "first": self.first,
                "last": self.last,
                "by_path": dict(self.by_path),
            }
        )

    async def control(self, request: web.Request) -> web.Response:
        q = request.query
        if "reset" in q:
            self.reset()
        if "status" in q:
            self.status = int(q["status"])
        if "record" in q:
            self.record = q["record"] == "1"
        return _json({"status": self.status, "record": self.record})

    async def arrivals_json(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({m.decode(): t for m, t in self.arrivals}),
            content_type="application/json",
        )

    def app(self) -> web.Application:
        application = web.Application(client_max_size=64 * 1024 * 1024)
        application.router.add_get("/_stats", self.stats)
        application.router.add_post("/_control", self.control)
        application.router.add_get("/_arrivals", self.arrivals_json)
        application.router.add_post("/{tail:.*}", self.receive)
        return application


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def main() -> None:
    web.run_app(Sink().app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
