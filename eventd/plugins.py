"""The plugin manager: loads the ``eventd.destinations``, ``eventd.transforms`` and
``eventd.plugins`` (features: services, routes, CLI verbs) entry-point groups.

First-party destinations and transforms (``plugins/``) are found through the
same groups as a third-party package's, so the plugin API is exercised by
eventd's own code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import pluggy

from eventd import hookspecs
from eventd.config import Config, ConfigError
from eventd.delivery.transform import Transform
from eventd.destination import Destination

ENTRY_POINT_GROUP = "eventd.destinations"
TRANSFORMS_GROUP = "eventd.transforms"
FEATURES_GROUP = "eventd.plugins"


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """Every installed plugin, loaded once per process."""
    pm = pluggy.PluginManager("eventd")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.load_setuptools_entrypoints(TRANSFORMS_GROUP)
    pm.load_setuptools_entrypoints(FEATURES_GROUP)
    pm.check_pending()  # an @hookimpl that matches no hookspec is an error, not silence
    return pm


def destination_types(pm: pluggy.PluginManager | None = None) -> dict[str, type[Destination]]:
    """Installed destination classes by ``type`` name."""
    pm = pm or plugin_manager()
    types: dict[str, type[Destination]] = {}
    for classes in pm.hook.eventd_destinations():
        for cls in classes:
            if cls.type_name in types and types[cls.type_name] is not cls:
                raise ConfigError(
                    f"destination type {cls.type_name!r} is provided twice: by "
                    f"{types[cls.type_name].__module__} and {cls.__module__}"
                )
            types[cls.type_name] = cls
    return types


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
