"""The console's hook implementations: its routes and its history sampler."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from aiohttp import web

from eventd.console.pages import Console
from eventd.console.sampler import Sampler
from eventd.console.session import Sessions
from eventd.hookspecs import Service, hookimpl
from eventd.metrics import Metrics

if TYPE_CHECKING:
    from eventd.app import Runtime

# One sampler per server (keyed by its metrics, which live as long as it does), made
# with its routes and started as its service.
_SAMPLERS: weakref.WeakKeyDictionary[Metrics, Sampler] = weakref.WeakKeyDictionary()


def _sampler(runtime: Runtime) -> Sampler:
    found = _SAMPLERS.get(runtime.metrics)
    if found is None:
        # strong references would keep the entry forever
        metrics_ref, dispatcher_ref = weakref.ref(runtime.metrics), weakref.ref(runtime.dispatcher)

        async def exposition() -> bytes:
            metrics, dispatcher = metrics_ref(), dispatcher_ref()
            if metrics is None or dispatcher is None:
                return b""
            await dispatcher.status()  # fills the lag gauges, as /metrics does
            return metrics.exposition()

        found = _SAMPLERS[runtime.metrics] = Sampler(exposition)
    return found


@hookimpl
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    sessions = Sessions(runtime.config.server.trusted_proxies)
    Console(runtime.config.admin.token, sessions, _sampler(runtime)).add_routes(app)


@hookimpl
def eventd_services(runtime: Runtime) -> list[Service]:
    return [_sampler(runtime)]
