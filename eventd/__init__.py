"""eventd: a self-hosted, Segment-compatible customer-data router.

This module is the plugin API: a destination, transform or feature plugin imports
only from ``eventd`` (the README's "Writing a plugin" section lists every name,
and tests/test_public_api.py fails when this ``__all__`` and that list differ).
Everything else in the package is eventd's own and may change.
"""

from eventd.delivery.transform import Transform
from eventd.destination import (
    OK,
    Destination,
    Ok,
    Outcome,
    Permanent,
    Retry,
    Skip,
    fold,
    optional_import,
    with_defaults,
    worst,
)
from eventd.errors import ConfigError
from eventd.event import Event
from eventd.hookspecs import Service, hookimpl
from eventd.http import (
    HTTP_SETTINGS,
    TOO_LARGE,
    HttpDestination,
    Response,
    classify,
    deliver_halving,
    json_body,
    retry_after,
    scrub,
)
from eventd.redact import SECRET_WORDS, is_secret, redact
from eventd.store.base import Store, service_cursor

__version__ = "0.1.0"

__all__ = [
    "HTTP_SETTINGS",
    "OK",
    "SECRET_WORDS",
    "TOO_LARGE",
    "ConfigError",
    "Destination",
    "Event",
    "HttpDestination",
    "Ok",
    "Outcome",
    "Permanent",
    "Response",
    "Retry",
    "Service",
    "Skip",
    "Store",
    "Transform",
    "__version__",
    "classify",
    "deliver_halving",
    "fold",
    "hookimpl",
    "is_secret",
    "json_body",
    "optional_import",
    "redact",
    "retry_after",
    "scrub",
    "service_cursor",
    "with_defaults",
    "worst",
]
