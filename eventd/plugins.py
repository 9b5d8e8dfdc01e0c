"""The plugin manager: loads the ``eventd.destinations``, ``eventd.sources``,
``eventd.transforms`` and ``eventd.plugins`` (features: services, routes, CLI verbs)
entry-point groups.

First-party destinations, source types and transforms (``plugins/``) are found
through the same groups as a third-party package's, so the plugin API is
exercised by eventd's own code. Source types have a group of their own, like
destinations, rather than riding on ``eventd.plugins``: a package that only adds
a source type says so in its metadata, and ``eventd.plugins`` stays the group of
features that hook into the server itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TypeVar

import pluggy

from eventd import hookspecs
from eventd.config import TRACKING_API, Config, ConfigError
from eventd.delivery.transform import Transform
from eventd.destination import Destination
from eventd.source import Source

ENTRY_POINT_GROUP = "eventd.destinations"
SOURCES_GROUP = "eventd.sources"
TRANSFORMS_GROUP = "eventd.transforms"
FEATURES_GROUP = "eventd.plugins"


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """Every installed plugin, loaded once per process."""
    pm = pluggy.PluginManager("eventd")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.load_setuptools_entrypoints(SOURCES_GROUP)
    pm.load_setuptools_entrypoints(TRANSFORMS_GROUP)
    pm.load_setuptools_entrypoints(FEATURES_GROUP)
    pm.check_pending()  # an @hookimpl that matches no hookspec is an error, not silence
    return pm


def destination_types(pm: pluggy.PluginManager | None = None) -> dict[str, type[Destination]]:
    """Installed destination classes by ``type`` name."""
    pm = pm or plugin_manager()
    return _by_type_name("destination", pm.hook.eventd_destinations())


def source_types(pm: pluggy.PluginManager | None = None) -> dict[str, type[Source]]:
    """Installed cloud-app source classes by ``type`` name (the Tracking API's own
    type, ``segment``, is eventd itself and never a plugin)."""
    pm = pm or plugin_manager()
    return _by_type_name("source", pm.hook.eventd_source_types(), reserved=TRACKING_API)


_Class = TypeVar("_Class", bound=type)


def _by_type_name(
    kind: str, provided: Iterable[Iterable[_Class]], reserved: str | None = None
) -> dict[str, _Class]:
    """The classes every plugin returned, by their ``type_name``; a name two plugins
    (or a plugin and eventd, ``reserved``) claim is an error naming both."""
    types: dict[str, _Class] = {}
    for classes in provided:
        for cls in classes:
            name: str = getattr(cls, "type_name")  # noqa: B009 - a ClassVar of each kind's base
            if name == reserved or (name in types and types[name] is not cls):
                other = "eventd" if name == reserved else types[name].__module__
                raise ConfigError(
                    f"{kind} type {name!r} is provided twice: by {other} and {cls.__module__}"
                )
            types[name] = cls
    return types


def check_sources(config: Config, types: Mapping[str, type[Source]]) -> dict[str, Source]:
    """Every cloud-app source names an installed type and valid settings; returns one
    instance of each by source name (the Tracking API's sources have none)."""
    built: dict[str, Source] = {}
    for name, src in config.sources.items():
        if src.type == TRACKING_API:
            continue
        cls = types.get(src.type)
        if cls is None:
            known = ", ".join(sorted([TRACKING_API, *types]))
            raise ConfigError(
                f"{config.origin}: sources.{name}.type = {src.type!r}: expected an "
                f"installed source type ({known})"
            )
        try:
            cls.validate_settings(name, src.settings)
            built[name] = cls(name, src.settings)
        except ConfigError as exc:
            raise ConfigError(f"{config.origin}: {exc}") from None
    return built


def transforms(pm: pluggy.PluginManager | None = None) -> dict[str, Transform]:
    """Installed transforms by name."""
    pm = pm or plugin_manager()
    found: dict[str, Transform] = {}
    for provided in pm.hook.eventd_transforms():
        for name, fn in provided.items():
            if name in found and found[name] is not fn:
                raise ConfigError(
                    f"transform {name!r} is provided twice: by {found[name].__module__} and "
                    f"{fn.__module__}"
                )
            found[name] = fn
    return found


def check_destinations(
    config: Config,
    types: Mapping[str, type[Destination]],
    installed_transforms: Mapping[str, Transform] | None = None,
) -> None:
    """Every configured destination names an installed type, valid settings and
    installed transforms (looked up when not given)."""
    known = transforms() if installed_transforms is None else installed_transforms
    for name, dest in config.destinations.items():
        for t in dest.transforms:
            if t not in known:
                raise ConfigError(
                    f"{config.origin}: destinations.{name}.transforms = {t!r}: expected an "
                    f"installed transform ({', '.join(sorted(known)) or 'none installed'})"
                )
        cls = types.get(dest.type)
        if cls is None:
            raise ConfigError(
                f"{config.origin}: destinations.{name}.type = {dest.type!r}: expected an "
                f"installed destination type ({', '.join(sorted(types)) or 'none installed'})"
            )
        try:
            cls.validate_settings(name, dest.settings)
        except ConfigError as exc:
            raise ConfigError(f"{config.origin}: {exc}") from None
        if cls.node_local and dest.enabled and config.storage.backend == "jetstream":
            _check_local_retention(config, name, dest.type)


# The shortest storage.retention that a node-local destination on the cluster takes.
# Its consumer on a node is removed once nobody pulled it for storage.retention (so a
# dead node does not hold the log forever), and a node back after that misses what was
# purged meanwhile: a retention shorter than a restart, an upgrade or a reboot would
# leave holes in a node's file after routine work.
MIN_LOCAL_RETENTION = 3600.0


def _check_local_retention(config: Config, name: str, dtype: str) -> None:
    retention = config.storage.retention
    if retention < MIN_LOCAL_RETENTION:
        raise ConfigError(
            f"{config.origin}: storage.retention = {retention:g}s: expected at least 1h"
            f" with destinations.{name} (type {dtype!r}, node-local: each node keeps its"
            " own copy) on storage.backend = 'jetstream'; a node's consumer is removed"
            " after storage.retention without pulls, and a node back later misses what"
            " was purged meanwhile (docs/scaling.md, 'Node-local destinations')"
        )
