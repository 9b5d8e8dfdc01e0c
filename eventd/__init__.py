"""eventd: a self-hosted, Segment-compatible customer-data router.

This module is the plugin API: a destination, source, transform or feature plugin imports
only from ``eventd`` (the README's "Writing a plugin" section lists every name,
and tests/test_public_api.py fails when this ``__all__`` and that list differ).
Everything else in the package is eventd's own and may change.
"""

from eventd.background import BackgroundWorker
from eventd.codec import dumps as json_dumps
from eventd.codec import loads as json_loads
from eventd.delivery.transform import Transform
from eventd.destination import (
    OK,
    DeletionOutcome,
    Destination,
    Erasure,
    Ok,
    Outcome,
    Permanent,
    Retry,
    Skip,
    StoredRef,
    Unsupported,
    fold,
    lazy_import,
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
from eventd.identity.links import IdentityLink
from eventd.priority import background_priority
from eventd.redact import SECRET_WORDS, is_secret, redact
from eventd.source import Message, Source, compact, hmac_matches, iso_time, load_mapper, message
from eventd.store.base import Store, service_cursor

__version__ = "0.1.0"

__all__ = [
    "HTTP_SETTINGS",
    "OK",
    "SECRET_WORDS",
    "TOO_LARGE",
    "BackgroundWorker",
    "ConfigError",
    "DeletionOutcome",
    "Destination",
    "Erasure",
    "Event",
    "HttpDestination",
    "IdentityLink",
    "Message",
    "Ok",
    "Outcome",
    "Permanent",
    "Response",
    "Retry",
    "Service",
    "Skip",
    "Source",
    "Store",
    "StoredRef",
    "Transform",
    "Unsupported",
    "__version__",
    "background_priority",
    "classify",
    "compact",
    "deliver_halving",
    "fold",
    "hmac_matches",
    "hookimpl",
    "is_secret",
    "iso_time",
    "json_body",
    "json_dumps",
    "json_loads",
    "lazy_import",
    "load_mapper",
    "message",
    "optional_import",
    "redact",
    "retry_after",
    "scrub",
    "service_cursor",
    "with_defaults",
    "worst",
]
