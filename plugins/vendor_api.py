"""What the ``mixpanel`` and ``amplitude`` destinations share about a vendor's API.

Folding per-item answers onto events (``worst``, ``fold``) and keeping secrets
out of reasons (``redact``, ``scrub``) live in :mod:`eventd.destination`, for
every destination; this module re-exports them and adds reading a vendor's JSON
answer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from eventd.destination import Destination, fold, redact, scrub, worst

__all__ = ["SecretSafeSettings", "fold", "json_body", "redact", "scrub", "worst"]


def json_body(body: bytes) -> dict[str, Any]:
    """A response body as a JSON object; anything else (HTML from a proxy...) as {}."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class SecretSafeSettings(Destination):
    """A destination naming the settings that hold secrets (never printed in errors).

    ``Destination.validate_settings`` already hides values of keys that look
    secret and the whole table on table-level errors; ``secret_settings`` lists
    the plugin's secrets explicitly, for reasons scrubbed with :func:`scrub`.
    """

    secret_settings: ClassVar[tuple[str, ...]] = ()
