"""eventd: a self-hosted, Segment-compatible customer-data router."""

from eventd.delivery.transform import Transform
from eventd.destination import (
    OK,
    Destination,
    HttpDestination,
    Ok,
    Outcome,
    Permanent,
    Retry,
    Skip,
)
from eventd.errors import ConfigError
from eventd.event import Event
from eventd.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "OK",
    "ConfigError",
    "Destination",
    "Event",
    "HttpDestination",
    "Ok",
    "Outcome",
    "Permanent",
    "Retry",
    "Skip",
    "Transform",
    "__version__",
    "hookimpl",
]
