"""Ceiling A: a bare aiohttp server answering every POST with a fixed 200.

It reads the body (as eventd must) and answers what eventd answers, with the
same server settings (no access log), so the gap to eventd is everything eventd
does per request: parsing, validation, the commit, metrics.

Run: ``python -m bench.ceiling PORT``.
"""

from __future__ import annotations

import sys

from aiohttp import web

OK = b'{"success":true}'


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=OK, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def app() -> web.Application:
    application = web.Application(client_max_size=1024 * 1024)
    application.router.add_post("/v1/{tail}", handle)
    application.router.add_get("/health", health)
    return application


def main() -> None:
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
