"""The plugin manager: loads the ``eventd.destinations`` entry-point group.

First-party destinations (``plugins/``) are found through the same group as a
third-party package's, so the plugin API is exercised by eventd's own code.
"""

from __future__ import annotations

from collections.abc import Mapping

import pluggy

from eventd import hookspecs
from eventd.config import Config, ConfigError
from eventd.destination import Destination

ENTRY_POINT_GROUP = "eventd.destinations"


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("eventd")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
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


def check_destinations(config: Config, types: Mapping[str, type[Destination]]) -> None:
    """Every configured destination names an installed type and valid settings."""
    for name, dest in config.destinations.items():
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
