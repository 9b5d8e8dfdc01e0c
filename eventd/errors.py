"""Errors a plugin raises or catches, apart from the modules that raise them so that
importing them pulls nothing else in (``eventd.config`` loads normalize, tracking
plans and jsonschema)."""


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message says which and why."""
