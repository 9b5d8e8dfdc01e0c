"""Every hook eventd calls. A plugin module implements them with ``@hookimpl``.

pluggy is synchronous, so hooks only *register* things (return destination
classes, transform functions, services; add routes and CLI verbs); eventd then
calls and awaits what they registered directly. Built-in features (identity,
reports, the console, cloud-app sources) arrive through these same hooks, the
way datasette's own features are plugins.

A plugin may implement a hook with fewer arguments than its spec (pluggy passes
only those it names), so hooks can grow without breaking plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy
from aiohttp import web

from eventd.delivery.transform import Transform
from eventd.destination import Destination

if TYPE_CHECKING:
    from eventd.app import Runtime

hookspec = pluggy.HookspecMarker("eventd")
hookimpl = pluggy.HookimplMarker("eventd")


class Service(Protocol):
    """A background task that lives as long as the server (a log consumer, a sampler).

    ``start`` is awaited after the store opens and before the first request; ``stop``
    is awaited at shut-down, before the store closes, and must return once the
    service has saved what it needs (its cursor).

    A log consumer keeps its position in the store under ``service_cursor(name)``
    (``"service:identity"``): ``await runtime.store.cursor(...)`` at start (None: it
    has none yet), ``runtime.store.read(after, limit)`` for pages in seq order,
    ``runtime.store.subscribe()`` for an event set on every commit of new events, and
    ``runtime.store.save_cursor(...)`` as it goes. Retention keeps every event a
    running service has not passed, so a service must move its cursor.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@hookspec
def eventd_destinations() -> list[type[Destination]]:  # type: ignore[empty-body]
    """Return the destination classes this plugin provides."""


@hookspec
def eventd_transforms() -> dict[str, Transform]:  # type: ignore[empty-body]
    """Return the transforms this plugin provides, by the name a config uses."""


@hookspec
def eventd_services(runtime: Runtime) -> list[Service]:  # type: ignore[empty-body]
    """Return the background services this plugin runs for this server (may be empty).

    ``runtime`` (``eventd.app.Runtime``) gives ``config``, ``metrics``, ``live``, ``store``
    (the log: :class:`eventd.Store`), ``dispatcher`` (``status()``) and ``suppressions``.
    """


@hookspec
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    """Add HTTP routes (``app.router.add_*``) for this server; ``runtime`` as for
    :func:`eventd_services`. Routes under ``/admin/`` check the admin token themselves."""


@hookspec
def eventd_commands(subparsers: Any, verb: Any) -> None:
    """Add CLI verbs.

    ``subparsers`` is the ``eventd`` command's ``argparse`` sub-parsers action;
    ``verb(name, run, help) -> argparse.ArgumentParser`` adds a verb that takes
    ``--config`` like every other (``run(args) -> int`` is called with the parsed
    arguments).
    """


__all__ = ["Service", "hookimpl", "hookspec"]
