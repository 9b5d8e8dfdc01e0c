"""``eventd serve``: runs the app until SIGTERM/SIGINT, speaking systemd's notify protocol.

Shutdown: stop accepting, let in-flight requests finish and commit, let
in-flight deliveries finish until ``server.shutdown_timeout``, close the store,
exit 0. READY=1 is sent once storage and the listener are up; WATCHDOG=1 is
sent from the event loop itself, so a wedged loop stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from eventd.app import RUNTIME, create_app
from eventd.config import Config
from eventd.ingest import error_response
from eventd.sdnotify import Notifier
from eventd.store import StorageUnavailable

log = structlog.get_logger("eventd.server")


async def serve(config: Config, *, announce_write_key: bool = False) -> None:
    # Handlers first: systemd may stop us the moment READY=1 is sent (or before).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    notifier = Notifier()
    runner = Runner(app, access_log=None, shutdown_timeout=config.server.shutdown_timeout)
    try:
        await runner.setup()  # opens the store, starts the dispatcher
    except StorageUnavailable as exc:  # a cluster out of reach at start, a read-only disk
        raise SystemExit(f"eventd: storage unavailable at start: {exc}") from None
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(
            f"eventd: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}"
        ) from None
    # What start-up made (modules, config, JSON schemas, plugins) lives until exit: move it
    # out of the collector's generations so the full collections that a stream of parsed
    # requests triggers do not walk it again each time.
    gc.collect()
    gc.freeze()
    # A young collection every 20,000 allocations, not 700: a request makes a few hundred
    # short-lived objects, nearly all freed by their reference counts, and a collection
    # walks every young object still alive (the requests in flight) each time. +4 % of
    # /v1/track per CPU-second (issue 18, docs/benchmarks.md); a few MB at most held longer.
    gc.set_threshold(20_000, 10, 10)
    addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple)]
    log.info("listening", addresses=addresses, config=config.origin)
    if announce_write_key:
        for source in config.sources.values():
            # Printed, not logged: the operator needs it once, journald need not keep it.
            print(
                f"write key for source '{source.name}': {source.write_key}",
                file=sys.stderr,
                flush=True,
            )
    notifier.notify("READY=1", f"STATUS=listening on {', '.join(addresses)}")

    watchdog = asyncio.create_task(_watchdog(notifier, app))
    await stop.wait()
    log.info("stopping")
    notifier.notify("STOPPING=1", "STATUS=stopping: finishing requests and deliveries")
    watchdog.cancel()
    await runner.cleanup()
    notifier.close()


async def _watchdog(notifier: Notifier, app: web.Application) -> None:
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    rt = app[RUNTIME]
    while True:
        notifier.notify(
            "WATCHDOG=1",
            f"STATUS=last_seq={rt.store.last_seq} writable={rt.store.writable}",
        )
        await asyncio.sleep(interval)


# -- requests aiohttp refuses before any handler runs ------------------------------------


class ClientFaultHandler(RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse as a JSON 4xx.

    A request line or header over aiohttp's limits (8190 bytes, 128 headers), a
    malformed request or an undecodable Content-Encoding (br without brotli) never
    reaches a route: aiohttp answers them itself, in text, and logs each with a full
    traceback at error level ("Error handling request"), so anyone could fill the
    journal. These are the client's fault: answered ``{"code", "message"}`` like
    every other refusal and logged in one line at info. A server-side 5xx keeps
    aiohttp's handling (and its traceback).
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not (isinstance(exc, HttpProcessingError) and 400 <= status < 500):
            return super().handle_error(request, status, exc, message)
        log.info(
            "request refused before routing",
            status=status,
            error=type(exc).__name__,
            peer=request.remote,
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot answer the error")
        code = _FAULT_CODES.get(type(exc).__name__, "bad_request")
        text = (exc.message if isinstance(exc.message, str) else "") or "bad request"
        if code == "unreadable_body" and text.startswith("Can not decode content-encoding"):
            # br or zstd without their libraries: refused before the body is read, by
            # the parser, with the same answer ingest gives any other unknown encoding
            code = "unsupported_encoding"
            text = f"{text.partition('.')[0]}: send gzip, deflate or none"
        response = error_response(status, code, text[:200])
        response.force_close()
        return response


# aiohttp's exception names (aiohttp.http_exceptions) -> the code answered.
_FAULT_CODES = {
    "LineTooLong": "request_too_large",
    "ContentEncodingError": "unreadable_body",
    "TransferEncodingError": "unreadable_body",
    "ContentLengthError": "unreadable_body",
    "BadHttpMethod": "bad_request",
    "BadStatusLine": "bad_request",
    "InvalidHeader": "bad_request",
    "InvalidURLError": "bad_request",
}


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        # web.Server.__call__ builds a RequestHandler from these same attributes;
        # aiohttp offers no public hook for the handler's class.
        return ClientFaultHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections answer unparseable requests as JSON 4xx."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same object, only __call__ differs
        return server
