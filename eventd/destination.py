"""The destination plugin API: the base class, delivery outcomes and their combination.

A destination maps a batch of stored events to its API and reports one outcome
per event. It never sleeps, retries or throttles: the dispatcher does that for
every destination the same way. Outcomes::

    Ok                 delivered
    Retry(reason, after=None)   try again later (after seconds, when the API said)
    Permanent(reason)  will never succeed: dead-lettered at once
    Skip(reason)       this destination does not take this kind of event (counted)

A destination that can delete a person's data implements :meth:`Destination.delete_user`
(GDPR's right to erasure, asked by ``eventd suppressions add USER --erase``), which
answers once for the whole request::

    Ok                 the API took the deletion request (or deleted)
    Retry(reason, after=None)   try again later: the same backoff as delivery
    Permanent(reason)  will never succeed (the credentials lack the right...): shown failed
    Unsupported(instructions)   the API cannot delete: what the operator must do by hand

Settings are declared as JSON Schema (``settings_schema``) and validated at
``eventd check`` and at start; errors name the destination and the key (never a
secret's value: ``eventd/redact.py``). HTTP destinations build on ``eventd/http.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, cast

import aiohttp
import jsonschema

from eventd.errors import ConfigError
from eventd.event import Event as Event  # re-exported: its old home
from eventd.redact import URL_PASSWORD, is_secret, redact


@dataclass(frozen=True, slots=True)
class Ok:
    pass


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    """The destination cannot delete through its API; ``instructions`` tell the operator
    what to do by hand (where the data is, which console page or request deletes it)."""

    instructions: str


Outcome = Ok | Retry | Permanent | Skip
DeletionOutcome = Ok | Retry | Permanent | Unsupported
OK = Ok()


@dataclass(frozen=True, slots=True)
class StoredRef:
    """Where one of the person's events was in eventd's log: what a destination that
    lays events out by seq, source and day (s3) needs to find it again."""

    seq: int
    source: str
    received_at: int  # unix ms


@dataclass(frozen=True, slots=True)
class Erasure:
    """Whom :meth:`Destination.delete_user` deletes: every id of the person.

    ``user_ids`` is never empty (the suppressed userId first; every userId of their
    profile once profiles link them); ``anonymous_ids`` are the anonymousIds seen with
    them. ``events`` are the person's events eventd still held when the erasure was
    asked (events past ``storage.retention`` are no longer known), in seq order.
    """

    user_ids: tuple[str, ...]
    anonymous_ids: tuple[str, ...] = ()
    events: tuple[StoredRef, ...] = ()


class Destination:
    """Base class of every destination type.

    Subclasses set ``type_name`` (the config's ``type``), ``settings_schema``
    and implement :meth:`deliver`. ``max_batch_events`` / ``max_batch_bytes``
    bound the batches the dispatcher hands over; an instance may lower them
    from its settings. One that changes events to fit its API's rules says how
    many with :meth:`count_adjusted`.
    """

    type_name: ClassVar[str]
    # The key in an event's `integrations` object that turns this type on or off
    # (the destination's own config name always works too).
    integration_name: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    settings_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    max_batch_events: int = 100
    max_batch_bytes: int = 1_000_000
    # True for a destination whose data lives on the node that delivers to it (a file:
    # duckdb). On the JetStream cluster each node then gets every event through a
    # durable consumer of its own (``dest-NAME@NODE``) instead of a share of one
    # consumer, and the destination's max_in_flight and rate_limit hold per node
    # (docs/scaling.md, "Node-local destinations"). On SQLite it changes nothing.
    node_local: ClassVar[bool] = False

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        self.name = name
        self.settings = with_defaults(self.settings_schema, settings)
        self.session = session
        # Where count_adjusted() reports: eventd's dispatcher points it at a metric.
        self.on_adjusted: Callable[[str, int], None] = _not_counted

    @classmethod
    def validate_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        """Raise ConfigError naming ``destinations.NAME.settings.KEY`` on a bad value.

        Never prints a secret: an error on the whole table (a missing or unknown
        key) shows no value, since that value is the table, secrets included."""
        validate_schema(cls.settings_schema, settings, f"destinations.{name}.settings")
        cls.check_settings(name, settings)

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        """Checks JSON Schema cannot express (after it passed); raise ConfigError naming the key."""

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome] | Outcome:
        """Send a batch; return one outcome per event, or one for all of them."""
        raise NotImplementedError

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        """Ask the destination to delete everything it holds of the person ``erasure``
        names; called once per erasure, again after a Retry (eventd backs off and gives
        up at ``retry_max_age`` as for delivery, through the same rate limit). Must be
        idempotent: a restart may ask again. Return Ok once the API has taken the
        request (a vendor that deletes asynchronously still answers Ok), Unsupported
        with what the operator must do by hand when the API cannot delete.

        This default is for destinations that cannot delete."""
        return Unsupported(
            f"the {self.type_name} destination cannot delete through its API: delete the "
            f"user's data in {self.integration_name or self.type_name} by hand"
        )

    def count_adjusted(self, counts: Mapping[str, int]) -> None:
        """Report events delivered with changes made to fit the API's rules (fields
        renamed, cut or dropped) as ``{reason: events}``; eventd counts them in
        ``eventd_adjusted_events_total{destination,reason}``.

        A reason is one of a small fixed set the plugin names, never a value from an
        event. Count the events whose outcome is Ok: a retried one is counted when it
        gets through, not at every attempt."""
        for reason, events in counts.items():
            if events > 0:
                self.on_adjusted(reason, events)

    async def close(self) -> None:
        """Release what the destination holds (files, ...); the session is shared."""


def validate_schema(schema: Mapping[str, Any], settings: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming ``WHERE.KEY`` when ``settings`` break the JSON Schema.

    Never prints a secret: an error on the whole table (a missing or unknown key)
    shows no value, since that value is the table, secrets included; a key whose
    name holds a secret word (eventd/redact.py) shows ``***``."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(dict(settings)), key=lambda e: list(e.path))
    if not errors:
        return
    e = errors[0]
    key = ".".join(str(p) for p in e.path)
    where = where + (f".{key}" if key else "")
    secrets = [str(v) for k, v in settings.items() if is_secret(k)]
    # A password inside a URL (https://user:pass@host) is a secret whatever the key.
    secrets += [m for v in settings.values() if isinstance(v, str) for m in URL_PASSWORD.findall(v)]
    # jsonschema's message starts with the value; only that occurrence is the value
    # (the same number may be the limit too: "0 is less than the minimum of 0").
    value_repr = repr(e.instance)
    text = "value" + e.message[len(value_repr) :] if e.message.startswith(value_repr) else e.message
    message = redact(text, secrets)
    if not key:
        raise ConfigError(f"{where}: {message}")
    shown = "***" if is_secret(key) else redact(repr(e.instance), secrets)
    raise ConfigError(f"{where} = {shown}: {message}")


def optional_import(module: str, extra: str, where: str) -> ModuleType:
    """``module``, a library only some destinations need, imported when one is checked
    or used (a plugin module is imported at every start, so eventd runs without it);
    missing, a ConfigError saying ``where`` needs it and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        library = module.split(".")[0]
        raise ConfigError(
            f"{where} needs {library}, which is not installed: pip install 'eventd[{extra}]'"
        ) from None


class _LazyModule:
    """A module's stand-in that imports it on the first attribute read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


def lazy_import(module: str) -> ModuleType:
    """``module``, imported when an attribute of it is first read: a plugin module is
    imported at every start, and a heavy library (duckdb and pyarrow: ~45 MB of memory)
    should cost nothing to an eventd that configures no destination using it. Import
    the real module under ``TYPE_CHECKING`` for annotations."""
    return cast(ModuleType, _LazyModule(module))


def _not_counted(reason: str, events: int) -> None:
    """count_adjusted() of a destination that no dispatcher runs (a plugin's own tests)."""


def with_defaults(schema: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        k: prop["default"] for k, prop in schema.get("properties", {}).items() if "default" in prop
    }
    out.update(settings)
    return out


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The outcome of an event whose parts an API answered separately (an identify that
    is a profile update and a linking event): Retry, then Permanent, then Ok; an event
    made only of skipped parts is skipped. Retry wins so the parts that can still succeed
    are resent (APIs dedup what landed) before the event is given up."""
    outcomes = list(outcomes)
    retries = [o for o in outcomes if isinstance(o, Retry)]
    if retries:
        afters = [r.after for r in retries if r.after is not None]
        reason = "; ".join(dict.fromkeys(r.reason for r in retries))
        return Retry(reason, max(afters) if afters else None)
    permanents = [o for o in outcomes if isinstance(o, Permanent)]
    if permanents:
        return Permanent("; ".join(dict.fromkeys(p.reason for p in permanents)))
    skips = [o for o in outcomes if isinstance(o, Skip)]
    return skips[0] if skips and len(skips) == len(outcomes) else OK


def fold(count: int, owners: Sequence[int], answers: Sequence[Outcome]) -> list[Outcome]:
    """Per-event outcomes from per-item ``answers``; ``owners[i]`` is item i's event index."""
    parts: list[list[Outcome]] = [[] for _ in range(count)]
    for owner, answer in zip(owners, answers, strict=True):
        parts[owner].append(answer)
    return [worst(p) for p in parts]
