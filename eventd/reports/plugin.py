"""Reports as an eventd feature plugin: its routes and its CLI verb, through the same
hooks a third-party plugin uses (registered in the ``eventd.plugins`` group)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from eventd.hookspecs import hookimpl
from eventd.reports import cli, http
from eventd.reports.store import Store

if TYPE_CHECKING:
    from eventd.app import Runtime


@hookimpl
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    def store() -> Store | None:
        """The ``[reports] store`` destination, once the dispatcher runs it."""
        name = runtime.config.reports.store
        found: Any = runtime.dispatcher.destination(name) if name else None
        return found if found is not None and hasattr(found, "query") else None

    http.add_routes(app, runtime.config.admin.token, store)


@hookimpl
def eventd_commands(subparsers: Any, verb: Any) -> None:
    cli.add_commands(subparsers, verb)
