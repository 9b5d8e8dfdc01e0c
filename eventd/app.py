"""The aiohttp application: wires config, store, dispatcher, ingest and admin together.

Start-up and shut-down order live here (one ``cleanup_ctx``): the store opens
first and closes last, so every request and delivery in flight can still commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources

import structlog
from aiohttp import web

from eventd import bundle
from eventd.admin import Admin
from eventd.config import Config
from eventd.delivery.dispatcher import Dispatcher
from eventd.destination import Destination
from eventd.hookspecs import Service
from eventd.ingest import CLIENT_MAX_SIZE, Ingest
from eventd.live import LiveHub
from eventd.metrics import Metrics
from eventd.plugins import check_destinations, destination_types, plugin_manager, transforms
from eventd.retention import Retention
from eventd.store import Store, service_cursor
from eventd.store.backends import open_store
from eventd.suppressions import Suppressions
from eventd.tasks import Budget, cancel, finish

log = structlog.get_logger("eventd.app")

CLOSE_RESERVE = 2.0  # seconds of server.shutdown_timeout (at most half) kept for the store's close
CLOSE_FLOOR = 0.5  # seconds the store's close is given even past the deadline
STEP_FLOOR = 0.2  # seconds a service's stop is given even past the deadline (it may be quick)
# Seconds past server.shutdown_timeout by which the process has exited, whatever the
# cluster answers (issue 14): the floors above and the cancellations of steps cut
# short (measured: 1.5 s past a 4 s timeout during a quorum loss). eventd/server.py
# ends the process at that bound if the stop has not (systemd's TimeoutStopSec is
# above it).
EXIT_MARGIN = 5.0


@dataclass
class Runtime:
    """What a running server is made of; features get it through their hooks.

    ``store`` is the log and its bookkeeping (a service reads the log with
    ``store.read(after, limit)``, waits on ``store.subscribe()`` and keeps its
    position with ``store.cursor/save_cursor(service_cursor(name), ...)``);
    ``dispatcher`` answers for destinations (``status()``, ``redrive``, ``replay``).
    """

    config: Config
    metrics: Metrics
    live: LiveHub
    store: Store
    dispatcher: Dispatcher
    retention: Retention
    suppressions: Suppressions
    services: list[Service] = field(default_factory=list)
    # time.monotonic() of the signal to stop (serve sets it): the whole stop, requests,
    # deliveries and closes, ends by server.shutdown_timeout after it
    stop_began: float | None = None


RUNTIME = web.AppKey("runtime", Runtime)


def create_app(
    config: Config,
    types: dict[str, type[Destination]] | None = None,
    *,
    retention_interval: float = 60.0,
) -> web.Application:
    types = destination_types() if types is None else types
    installed_transforms = transforms()  # the plugin manager is loaded once per process
    check_destinations(config, types, installed_transforms)
    metrics = Metrics()
    live = LiveHub()
    enabled = {n: d for n, d in config.destinations.items() if d.enabled}
    store = open_store(
        config.storage,
        metrics,
        list(enabled),
        ordered=[n for n, d in enabled.items() if d.ordered],
        local=[n for n, d in enabled.items() if types[d.type].node_local],
    )
    suppressions = Suppressions(store)
    dispatcher = Dispatcher(
        config, types, store, metrics, installed_transforms, suppressions.user_ids
    )
    services: list[Service] = []  # filled below, from the eventd_services hook
    retention = Retention(
        config.storage,
        store,
        lambda: passed_seq(dispatcher, store, services),
        retention_interval,
        suppressions.erase_pending,
    )
    rt = Runtime(config, metrics, live, store, dispatcher, retention, suppressions, services)

    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[RUNTIME] = rt
    ingest = Ingest(config, store, metrics, live, suppressions.user_ids)
    ingest.add_routes(app)
    bundle.add_routes(app, config)
    Admin(config, store, dispatcher, metrics, live, suppressions, time.time()).add_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/openapi.json", openapi)
    # Features (identity, reports, the console, sources, third-party plugins) add
    # their routes and services through the same hooks.
    pm = plugin_manager()
    pm.hook.eventd_routes(app=app, runtime=rt)
    services.extend(s for provided in pm.hook.eventd_services(runtime=rt) for s in provided)
    ingest.add_fallback_routes(app)  # last: any /v1/... no route above serves
    app.cleanup_ctx.append(_lifecycle)
    return app


async def passed_seq(dispatcher: Dispatcher, store: Store, services: list[Service]) -> int:
    """The highest seq every running destination and every running service that keeps
    a cursor (``service_cursor(service.name)``) has passed: retention keeps the rest."""
    passed = dispatcher.passed_seq()
    if services:
        saved = await store.cursors()
        for service in services:
            seq = saved.get(service_cursor(service.name))
            if seq is not None:
                passed = min(passed, seq)
    return passed


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    await rt.store.open()  # a store cancelled while it opens closes what it had opened
    started: list[Service] = []
    try:
        await rt.suppressions.load()
        await rt.dispatcher.start()
        for service in rt.services:
            await service.start()
            started.append(service)
    except BaseException:  # SIGTERM during start-up cancels it (eventd/server.py), or a failure
        await _shut_down(rt, started, None)
        raise
    retention = asyncio.create_task(rt.retention.run(), name="retention")
    log.info(
        "eventd started",
        storage=str(rt.config.storage.path),
        sources=sorted(rt.config.sources),
        destinations=sorted(rt.config.destinations),
    )
    yield
    # Requests have finished by now (aiohttp stops the sites and waits for
    # handlers first); deliveries get until the deadline, then the store closes.
    await _shut_down(rt, started, retention)
    log.info("eventd stopped", last_seq=rt.store.last_seq)


async def _shut_down(
    rt: Runtime, started: list[Service], retention: asyncio.Task[None] | None
) -> None:
    """Stop what started (``started``: the services, in start order), then close the
    store, all by ``server.shutdown_timeout`` after the signal to stop (issue 14: a
    cluster without a quorum answers nothing, and each step used to wait its own
    timeout, one after another: 20 s against 10). Deliveries get what is left of it
    but :data:`CLOSE_RESERVE`, kept for the store's close; a service whose stop
    outlasts its share is stopped (logged)."""
    timeout = rt.config.server.shutdown_timeout
    began = rt.stop_began if rt.stop_began is not None else time.monotonic()
    budget = Budget(timeout - (time.monotonic() - began))
    reserve = min(CLOSE_RESERVE, timeout / 2)

    def until_reserve() -> float:  # seconds left to a step before the store's close
        return max(STEP_FLOOR, budget.left() - reserve)

    rt.retention.stop()
    for service in reversed(started):
        if not await finish(service.stop(), until_reserve()):
            log.warning("stop cut short at server.shutdown_timeout", step=type(service).__name__)
    if not await finish(rt.dispatcher.stop(budget.left() - reserve), until_reserve() + 1.0):
        log.warning("stop cut short at server.shutdown_timeout", step="deliveries")
    if retention is not None:  # told to stop: it ends after the batch in hand
        await asyncio.wait((retention,), timeout=until_reserve())
        await cancel(retention, within=STEP_FLOOR)
    await rt.suppressions.close()
    await rt.store.close(within=budget.left(floor=CLOSE_FLOOR))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    checks = {"storage_writable": rt.store.writable, "dispatcher_running": rt.dispatcher.running}
    ok = all(checks.values())
    return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)


async def openapi(request: web.Request) -> web.Response:
    text = resources.files("eventd").joinpath("openapi.json").read_bytes()
    return web.Response(body=text, content_type="application/json")
