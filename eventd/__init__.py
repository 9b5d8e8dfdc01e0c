"""eventd: a self-hosted, Segment-compatible customer-data router."""

from eventd.destination import (
    OK,
    Destination,
    Event,
    HttpDestination,
    Ok,
    Outcome,
    Permanent,
    Retry,
    Skip,
)
from eventd.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "OK",
    "Destination",
    "Event",
    "HttpDestination",
    "Ok",
    "Outcome",
    "Permanent",
    "Retry",
    "Skip",
    "__version__",
    "hookimpl",
]
