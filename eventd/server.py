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

from eventd.app import RUNTIME, create_app
from eventd.config import Config
from eventd.sdnotify import Notifier

log = structlog.get_logger("eventd.server")


async def serve(config: Config, *, announce_write_key: bool = False) -> None:
    # Handlers first: systemd may stop us the moment READY=1 is sent (or before).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    notifier = Notifier()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.server.shutdown_timeout)
    await runner.setup()  # opens the store, starts the dispatcher
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
