"""Identity as a feature plugin: registered in the ``eventd.plugins`` entry-point group
(pyproject.toml), so it arrives through the same hooks a third-party plugin uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from eventd.hookspecs import Service, hookimpl

if TYPE_CHECKING:
    from eventd.app import Runtime


@hookimpl
def eventd_services(runtime: Runtime) -> list[Service]:
    if not runtime.config.identity.enabled:
        return []
    from eventd.identity.feed import LinkFeed, writer_of
    from eventd.identity.service import IdentityService
    from eventd.identity.stitch import Stitcher

    config = runtime.config
    service = IdentityService(
        config.identity,
        runtime.store,
        config.data_dir / "identity.db",
        runtime.metrics,
        synchronous=config.storage.synchronous,
    )

    def feeds() -> list[LinkFeed]:
        """Destinations that store identities (their instances exist once the dispatcher runs)."""
        found = []
        for name, destination in runtime.dispatcher.destinations().items():
            write = writer_of(destination)
            if write is not None:
                found.append(
                    LinkFeed(
                        name,
                        write,
                        service.store,
                        service.save_position,
                        node_local=destination.node_local,
                    )
                )
        return found

    service.find_feeds = feeds
    runtime.dispatcher.stitch = Stitcher(service)
    runtime.suppressions.erasers.append(service.erase)
    runtime.suppressions.identities.append(service.identities)
    return [service]


@hookimpl
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    from eventd.identity.api import add_routes

    add_routes(app, runtime.config.admin.token)


@hookimpl
def eventd_commands(subparsers: Any, verb: Any) -> None:
    from eventd.identity.cli import add_commands

    add_commands(subparsers)
