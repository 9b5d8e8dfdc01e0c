"""eventd: a self-hosted, Segment-compatible customer-data router."""

from eventd.destination import (
    OK,
    DeletionOutcome,
    Destination,
    Erasure,
    Event,
    HttpDestination,
    Ok,
    Outcome,
    Permanent,
    Retry,
    Skip,
    StoredRef,
    Unsupported,
)
from eventd.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "OK",
    "DeletionOutcome",
    "Destination",
    "Erasure",
    "Event",
    "HttpDestination",
    "Ok",
    "Outcome",
    "Permanent",
    "Retry",
    "Skip",
    "StoredRef",
    "Unsupported",
    "__version__",
    "hookimpl",
]
