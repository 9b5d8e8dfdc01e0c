"""``eventd serve``: runs the app until SIGTERM/SIGINT, speaking systemd's notify protocol.

Start-up: the listening sockets are bound first, before the store opens, so a
``server.port`` in use ends the process (exit 1, naming the key and the value)
before it has joined a cluster or touched the data directory. While the store
opens (on a cluster: up to ``OPEN_TIMEOUT``, 60 s, waiting for a quorum), every
request is answered at once: ``/health`` and ``/ready`` 503 (``{"status":
"starting"}``; ready false), anything else 503 ``starting`` with ``Retry-After``
(SDKs and load balancers retry; the fifth trial's clients hung up to 40 s on a
node restarting after a quorum loss, and a TCP check passed). SIGTERM/SIGINT during start-up
cancel it: what had opened is closed, exit 0.

Shutdown: stop accepting, let in-flight requests finish and commit, let
in-flight deliveries finish until ``server.shutdown_timeout``, close the store,
exit 0. READY=1 is sent once storage and the listener are up; WATCHDOG=1 is
sent from the event loop itself, so a wedged loop stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import signal
import socket
import sys
import threading
import time

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from eventd.app import EXIT_MARGIN, RUNTIME, create_app
from eventd.config import Config
from eventd.ingest import error_response
from eventd.sdnotify import Notifier
from eventd.store import StorageUnavailable
from eventd.tasks import cancel

log = structlog.get_logger("eventd.server")


async def serve(config: Config, *, announce_write_key: bool = False) -> None:
    # Handlers first: systemd may stop us the moment READY=1 is sent (or before).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sockets = _bind(config.server.host, config.server.port)
    try:
        starting = await _answer_starting(sockets)
        try:
            runner = await _start(config, stop)
        finally:
            await starting.cleanup()  # closes its copies of the sockets, not ours
    except BaseException:
        _close(sockets)
        raise
    if runner is None:
        _close(sockets)
        log.info("stopped during start-up")
        return
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
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
    notifier = Notifier()
    notifier.notify("READY=1", f"STATUS=listening on {', '.join(addresses)}")

    watchdog = asyncio.create_task(_watchdog(notifier, runner.app))
    await stop.wait()
    runner.app[RUNTIME].stop_began = time.monotonic()
    log.info("stopping")
    _exit_by(config.server.shutdown_timeout + EXIT_MARGIN)
    notifier.notify("STOPPING=1", "STATUS=stopping: finishing requests and deliveries")
    watchdog.cancel()
    await runner.cleanup()
    notifier.close()


def _exit_by(seconds: float) -> None:
    """End the process ``seconds`` from now (exit 1, logged at error) if it has not
    exited by then: the documented bound of a stop (README, "Run as a systemd
    service"). Every step of the stop is bounded (eventd/app.py), so this is a
    backstop for what no step can end: a thread stuck in a call that never returns
    (issue 14's fourth trial: the exit waited 47 s for the identity writer's call).
    As a crash would be, this is safe: what was acknowledged is stored; a helper
    process ends with its parent (eventd/background.py)."""

    def forced() -> None:
        log.error("stop outlasted its bound; exiting now", seconds=seconds)
        os._exit(1)

    timer = threading.Timer(seconds, forced)
    timer.daemon = True  # a stop that ends in time exits without waiting for it
    timer.start()


def _bind(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (as asyncio's
    ``create_server`` binds them: SO_REUSEADDR, an IPv6 socket IPv6-only); exits with
    the keys and values when one cannot be bound (a port in use, an unknown host)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:
        _close(sockets)
        why = exc.strerror or str(exc)
        hint = " (another process listens there)" if exc.errno == errno.EADDRINUSE else ""
        raise SystemExit(
            f"eventd: cannot listen on server.host = {host!r}, server.port = {port}: {why}{hint}"
        ) from None
    return sockets


STARTING_RETRY_AFTER = 5  # seconds a client is asked to wait while the store opens


async def _answer_starting(sockets: list[socket.socket]) -> web.AppRunner:
    """A runner answering every request at once while the store opens (see the
    module docstring), on copies of ``sockets`` (``dup``: closing them at its
    cleanup leaves ours listening; connections made in between wait in the
    kernel's queue for the app)."""

    async def health(request: web.Request) -> web.Response:
        # 503, not 200: whoever polls /health for 200 before sending (the tests, a
        # load balancer) keeps waiting for the app, as when the socket was silent.
        return web.json_response({"status": "starting"}, status=503)

    async def ready(request: web.Request) -> web.Response:
        checks = {"storage_writable": False, "dispatcher_running": False}
        return web.json_response({"ready": False, **checks}, status=503)

    async def refuse(request: web.Request) -> web.Response:
        message = "eventd is starting: its storage is not open yet"
        retry = {"Retry-After": str(STARTING_RETRY_AFTER)}
        return error_response(503, "starting", message, **retry)

    @web.middleware
    async def close_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.force_close()  # the next request goes to the app, on a new connection
        return response

    app = web.Application(middlewares=[close_connection])
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock.dup()).start()
    return runner


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


async def _start(config: Config, stop: asyncio.Event) -> Runner | None:
    """The app set up (store open, dispatcher and services started); None when
    ``stop`` was set first (start-up is then cancelled and what had opened closed)."""
    app = create_app(config)
    runner = Runner(app, access_log=None, shutdown_timeout=config.server.shutdown_timeout)
    setup = asyncio.create_task(runner.setup())  # opens the store, starts the dispatcher
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait((setup, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    await cancel(setup)  # when stop came first; _lifecycle and the store close what opened
    if stop.is_set() and (setup.cancelled() or setup.exception() is not None):
        await runner.cleanup()
        return None
    try:
        setup.result()
    except StorageUnavailable as exc:  # a cluster out of reach at start, a data dir in use
        raise SystemExit(f"eventd: storage unavailable at start: {exc}") from None
    return runner


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
