"""The cloud-app source plugin API: the base class of a source type, and what they share.

A cloud-app source (Intercom, Stripe, any webhook) is an app that POSTs its own
notifications to ``/v1/webhooks/{write_key}`` (eventd/webhooks.py). Its source
type, a plugin registered like a destination (hook ``eventd_source_types``, entry
point group ``eventd.sources``), does two things with a request:

``verify(headers, body) -> bool``
    Is the raw body signed by the app (its shared secret)? False answers 401.
``map(payload) -> list[message]``
    The parsed JSON body as Segment messages (track, identify, ...), each with the
    provider's event id as ``messageId`` so the provider's retries are stored once
    (the store's dedup). An empty list means "nothing eventd takes" (a topic it does
    not map): answered 200 so the sender does not retry, and counted as ignored.

Settings are the source's own keys in its ``[sources.NAME]`` table beside ``type``
and ``write_key`` (``client_secret = ...``), declared as JSON Schema and validated
at ``eventd check`` and at start; errors name ``sources.NAME.KEY``.

A ``webhook`` source's mapper is a function ``(payload) -> Iterable[message]``
declared in the ``eventd.source_mappers`` entry-point group (:func:`load_mapper`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

from eventd.destination import validate_schema, with_defaults
from eventd.errors import ConfigError
from eventd.normalize import format_ts

MAPPERS_GROUP = "eventd.source_mappers"
Message = dict[str, Any]
Mapper = Callable[[Any], Iterable[Message]]


class Source:
    """Base class of every cloud-app source type.

    Subclasses set ``type_name`` (the config's ``type``), ``settings_schema`` and
    implement :meth:`verify` and :meth:`map`. An instance is made once per configured
    source at start, after its settings were validated.
    """

    type_name: ClassVar[str]
    description: ClassVar[str] = ""
    settings_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.settings = with_defaults(self.settings_schema, settings)

    @classmethod
    def validate_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        """Raise ConfigError naming ``sources.NAME.KEY`` on a bad value (secrets hidden)."""
        validate_schema(cls.settings_schema, settings, f"sources.{name}")
        cls.check_settings(name, settings)

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        """Checks JSON Schema cannot express (after it passed); raise ConfigError naming the key."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True when the raw ``body`` carries the app's valid signature in ``headers``."""
        raise NotImplementedError

    def map(self, payload: Any) -> list[Message]:
        """The parsed JSON body as Segment messages (empty: nothing to take)."""
        raise NotImplementedError


def hmac_matches(secret: str, body: bytes, algorithm: str, signature: str | None) -> bool:
    """Whether ``signature`` is HMAC-``algorithm`` (a hashlib name: sha1, sha256, sha512)
    of ``body`` keyed by ``secret``, as hex or base64, after an optional
    ``<algorithm>=`` (Intercom's X-Hub-Signature ``sha1=...``, GitHub's ``sha256=...``).
    Compared in constant time."""
    if not signature:
        return False
    given = signature.strip().removeprefix(f"{algorithm}=")
    if not given.isascii():  # compare_digest takes ASCII text only; anything else matches nothing
        return False
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).digest()
    return hmac.compare_digest(given.lower(), digest.hex()) or hmac.compare_digest(
        given, base64.b64encode(digest).decode()
    )


def message(
    call: str,
    *,
    message_id: str | None,
    user_id: str | None,
    anonymous_id: str | None = None,
    timestamp: object = None,
    **fields: Any,
) -> Message:
    """A Segment message of type ``call`` (track, identify, ...) with the provider's id
    as messageId, its time (unix seconds) as timestamp, and ``fields`` (event,
    properties, traits, context, ...); keys whose value is None are left out."""
    out: Message = {
        "type": call,
        "messageId": message_id,
        "userId": user_id,
        "anonymousId": anonymous_id,
        "timestamp": iso_time(timestamp),
        **fields,
    }
    return {k: v for k, v in out.items() if v is not None}


def iso_time(unix_seconds: object) -> str | None:
    """A provider's Unix time (seconds) as Segment's ISO-8601 text; None for anything
    else (absent, not a number, out of range)."""
    if isinstance(unix_seconds, bool) or not isinstance(unix_seconds, int | float):
        return None
    try:
        return format_ts(datetime.fromtimestamp(unix_seconds, UTC))
    except (OverflowError, OSError, ValueError):
        return None


def compact(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the keys whose value is None (properties and traits are
    only what the provider said)."""
    return {k: v for k, v in values.items() if v is not None}


def mapper_entry_points() -> list[EntryPoint]:
    """Every installed mapper (group ``eventd.source_mappers``)."""
    return list(entry_points(group=MAPPERS_GROUP))


def load_mapper(reference: str, where: str) -> Mapper:
    """The installed mapper ``reference`` names: an entry point of the
    ``eventd.source_mappers`` group, by its name or by its object reference
    (``acme_mappers:crm``). Only declared mappers load, so a config cannot make
    eventd import arbitrary code. Raises ConfigError naming ``where``."""
    found = [ep for ep in mapper_entry_points() if reference in (ep.name, ep.value)]
    if not found:
        names = sorted(f"{ep.name} ({ep.value})" for ep in mapper_entry_points())
        raise ConfigError(
            f"{where} = {reference!r}: expected an installed mapper, an entry point of "
            f"the {MAPPERS_GROUP!r} group by name or module:function "
            f"({', '.join(names) or 'none installed'})"
        )
    try:
        mapper = found[0].load()
    except Exception as exc:  # a third party's import error, shown with the key
        raise ConfigError(f"{where} = {reference!r}: cannot load it: {exc!r}") from exc
    if not callable(mapper):
        raise ConfigError(f"{where} = {reference!r}: expected a function, got {mapper!r}")
    return mapper  # type: ignore[no-any-return]


__all__ = [
    "MAPPERS_GROUP",
    "Mapper",
    "Message",
    "Source",
    "compact",
    "hmac_matches",
    "iso_time",
    "load_mapper",
    "mapper_entry_points",
    "message",
]
