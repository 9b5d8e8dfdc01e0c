"""How a Segment message becomes warehouse rows: names, flattening, column types.

Owns the mapping of Segment's warehouse layout, with no database in sight:
which tables a call lands in (``tracks`` plus one table per event, ``identifies``
plus ``users``, ``pages``, ``screens``, ``groups``, ``aliases``), their standard
columns, how ``context``, ``properties`` and ``traits`` are flattened into
columns (nested objects joined with ``_``, arrays as JSON text), how names are
snake_cased the way Segment's go-snakecase does, the type a new column gets
from the first value seen, when a column's type widens for a later value
(:func:`widened`), and how a later value is fitted to a column's type.

Whatever it changes or drops to fit is reported as one of the fixed ``ADJUSTED_*``
reasons, so the destination can count it.

Shared by every warehouse destination (postgres, duckdb): the same event gets the
same tables, columns and values in each, which is what lets a report give one
answer on either store.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventd import json_dumps

from ..segment_message import lookup, number, text

# -- column types ----------------------------------------------------------------
# Spelled the way PostgreSQL's format_type() prints them, so a type read back from
# the catalog compares equal to the one the column was created with (DuckDB accepts
# these spellings too; its catalog's own are mapped back by the duckdb destination).
BOOLEAN = "boolean"
BIGINT = "bigint"
DOUBLE = "double precision"
TIMESTAMP = "timestamp with time zone"
TEXT = "text"
INFERRED_TYPES = frozenset({BOOLEAN, BIGINT, DOUBLE, TIMESTAMP, TEXT})
WIDENABLE = frozenset({BIGINT})  # the types ``widened`` may change

MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1 (bytes; our names are ASCII); DuckDB too,
# so a name is the same in either store
_INT64 = (-(2**63), 2**63 - 1)

# -- what is counted (eventd_adjusted_events_total{reason}) ----------------------
ADJUSTED_TRUNCATED = "column name cut to 63 bytes"
ADJUSTED_NON_ASCII = "column name lost non-ASCII characters"
ADJUSTED_NO_NAME = "key dropped: no usable column name"
ADJUSTED_RESERVED = "key dropped: clashes with a standard column"
ADJUSTED_DUPLICATE = "key dropped: same column as another key"
ADJUSTED_CAST = "value cast to the column's type"
ADJUSTED_DROPPED = "value dropped: does not fit the column's type"
ADJUSTED_NO_EVENT_TABLE = "event table skipped: unusable event name"

# -- tables and their standard columns --------------------------------------------
_COMMON: dict[str, str] = {
    "id": TEXT,
    "received_at": TIMESTAMP,
    "sent_at": TIMESTAMP,
    "timestamp": TIMESTAMP,
    "original_timestamp": TIMESTAMP,
    "uuid_ts": TIMESTAMP,
    "user_id": TEXT,
    "anonymous_id": TEXT,
}
_EVENT = {**_COMMON, "event": TEXT, "event_text": TEXT}
_PAGE = {**_COMMON, "name": TEXT, "category": TEXT}
STANDARD_COLUMNS: dict[str, dict[str, str]] = {
    "tracks": _EVENT,
    "identifies": _COMMON,
    "pages": _PAGE,
    "screens": _PAGE,
    "groups": {**_COMMON, "group_id": TEXT},
    "aliases": {**_COMMON, "previous_id": TEXT},
    "users": {"id": TEXT, "received_at": TIMESTAMP, "uuid_ts": TIMESTAMP},
}
# Tables an event's own table must not take the name of (accounts: Segment's, reserved).
STANDARD_TABLES = frozenset({*STANDARD_COLUMNS, "accounts"})
_TABLE_OF_TYPE = {
    "track": "tracks",
    "identify": "identifies",
    "page": "pages",
    "screen": "screens",
    "group": "groups",
    "alias": "aliases",
}


def standard_columns(table: str) -> dict[str, str]:
    """The columns a table is created with: its type's, or a track event table's."""
    return STANDARD_COLUMNS.get(table, _EVENT)


# -- names ------------------------------------------------------------------------

_WORD = re.compile(r"[A-Z0-9]*[a-z0-9]*")


def snake_case(name: str) -> str:
    """Segment's column and table names (go-snakecase): words are runs of capitals or
    digits followed by lower-case letters or digits, everything else separates them.

    ``"Order Completed"`` → ``order_completed``, ``"accountType"`` → ``account_type``,
    ``"Base64Encode"`` → ``base64_encode``; characters outside ASCII letters and
    digits are dropped."""
    return "_".join(w.lower() for w in _WORD.findall(name) if w)


@functools.lru_cache(maxsize=8192)  # the same few keys arrive with every event
def identifier(name: str) -> tuple[str, tuple[str, ...]]:
    """``name`` as a column or table name, and the adjustments that took (empty name:
    not usable)."""
    adjusted: list[str] = []
    ident = snake_case(name)
    if any(ch.isalnum() and not ch.isascii() for ch in name):
        adjusted.append(ADJUSTED_NON_ASCII)
    if len(ident) > MAX_IDENTIFIER:
        ident = ident[:MAX_IDENTIFIER].rstrip("_")
        adjusted.append(ADJUSTED_TRUNCATED)
    return ident, tuple(adjusted)


def column_name(path: str) -> str:
    """The column (or table) a property path or event name lands in: ``"car.make"`` and
    ``"car_make"`` → ``car_make``, ``"Order Completed"`` → ``order_completed`` ("" when
    none is usable). What reports use to find a ``--by`` or ``--property`` column."""
    return identifier(path.replace(".", "_"))[0]


def schema_name(source: str) -> str:
    """The schema of a source's tables, named from the source as Segment does."""
    return identifier(source)[0] or "eventd"


def quote(ident: str) -> str:
    """An identifier quoted for SQL: reserved words ("user", "order") stay usable."""
    return '"' + ident.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    """``"schema"."table"``."""
    return f"{quote(schema)}.{quote(table)}"


# -- types ------------------------------------------------------------------------

_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 date or date-time string as an aware datetime (UTC when it names no
    zone), or None for anything else."""
    if not isinstance(value, str) or not _ISO_8601.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def infer_type(value: Any) -> str:
    """The type a new column gets from the first (non-null, flattened) value seen."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        # beyond bigint: text keeps every digit (double precision would round it)
        return BIGINT if _INT64[0] <= value <= _INT64[1] else TEXT
    if isinstance(value, float):
        return DOUBLE
    if parse_timestamp(value) is not None:
        return TIMESTAMP
    return TEXT


OK, CAST, DROP = "ok", "cast", "drop"


def fit(value: Any, column_type: str) -> tuple[Any, str]:
    """``value`` as the Python value a driver sends for a column of ``column_type``,
    and whether it went in as it is (``ok``), converted (``cast``) or not at all
    (``drop``: None goes in).

    A column of a type eventd does not create (changed by hand: ``integer``,
    ``jsonb``, ``inet``...) gets the value's text and PostgreSQL casts it; a value
    it refuses fails that event alone (see the loader)."""
    if column_type == TEXT:
        if isinstance(value, str):
            return value, OK
        if isinstance(value, list):
            return _json(value), OK
        return _json(value), CAST  # true, 12, 1.5 as their JSON text
    if column_type not in INFERRED_TYPES:
        return (value if isinstance(value, str) else _json(value)), OK
    if column_type == BOOLEAN:
        if isinstance(value, bool):
            return value, OK
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", CAST
        return None, DROP
    if column_type == TIMESTAMP:
        parsed = parse_timestamp(value)
        return (parsed, OK) if parsed is not None else (None, DROP)
    n = number(value)  # numbers, or strings holding one; never booleans
    if n is None:
        return None, DROP
    exact = not isinstance(value, str)
    if column_type == DOUBLE:
        return float(n), OK if exact else CAST
    # bigint: a whole number in range; 2.0 and "2" are cast, 2.5 is dropped
    if isinstance(n, float):
        if not n.is_integer():
            return None, DROP
        n = int(n)
        exact = False
    if not _INT64[0] <= n <= _INT64[1]:
        return None, DROP
    return n, OK if exact else CAST


def widened(value: Any, column_type: str) -> str | None:
    """The type a column of ``column_type`` must become for ``value`` to go in whole, or
    None when the value fits (as it is or cast) or is dropped.

    Only ``bigint`` widens: to ``double precision`` for a number (or a string holding
    one) that is not whole or is past bigint's range, so ``100, 50`` then ``7.5`` keeps
    7.5 (issue 16: a report's sum lost it). The column keeps its values (each bigint
    becomes its double). Every other misfit (a string in a number column, a number in
    a boolean one...) is dropped, counted and logged (``batches.columnar``), not
    widened to text: one stray string would turn a number column into text, and every
    report's ``sum`` on it into an error, for all the rows before it."""
    if column_type not in WIDENABLE or isinstance(value, bool):
        return None
    n = number(value)
    if isinstance(n, float) and not (n.is_integer() and -(2.0**63) <= n < 2.0**63):
        return DOUBLE
    return None


def _json(value: Any) -> str:
    return json_dumps(value).decode()  # every digit of an int past 64 bits kept


# -- rows -------------------------------------------------------------------------


@dataclass
class Row:
    """One row for one table: column → value. Standard columns hold what a driver sends
    (str, datetime); the others the flattened JSON value, fitted when the column's type
    is known."""

    table: str
    values: dict[str, Any]


@dataclass
class Planned:
    """What one event becomes: rows appended to tables (inserted once by ``id``) and
    at most one ``users`` row (upserted)."""

    schema: str
    rows: list[Row] = field(default_factory=list)
    user: Row | None = None
    adjusted: set[str] = field(default_factory=set)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every leaf: nested objects joined with ``_``; arrays and
    scalars are leaves; nulls and empty objects give nothing (no column for them)."""
    for key, value in obj.items():
        path = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten(value, path)
        elif value is not None:
            yield path, value


def _add(
    row: Row, adjusted: set[str], pairs: Iterator[tuple[str, Any]], reserved: set[str]
) -> None:
    for path, value in pairs:
        column, changes = identifier(path)
        adjusted.update(changes)
        if not column:
            adjusted.add(ADJUSTED_NO_NAME)
        elif column in reserved:
            # A property repeating a standard field (a page's properties.name) loses nothing.
            if row.values.get(column) != value:
                adjusted.add(ADJUSTED_RESERVED)
        elif column in row.values:
            adjusted.add(ADJUSTED_DUPLICATE)
        else:
            row.values[column] = value


def _timestamp_fields(message: Mapping[str, Any]) -> dict[str, datetime | None]:
    return {
        "received_at": parse_timestamp(message.get("receivedAt")),
        "sent_at": parse_timestamp(message.get("sentAt")),
        "timestamp": parse_timestamp(message.get("timestamp")),
        "original_timestamp": parse_timestamp(message.get("originalTimestamp")),
    }


def plan(message: Mapping[str, Any], schema: str, loaded_at: datetime) -> Planned:
    """The rows of one stored Segment message (normalized by eventd: a known ``type``,
    a ``messageId``, ``receivedAt``)."""
    planned = Planned(schema)
    kind = str(message.get("type"))
    table = _TABLE_OF_TYPE[kind]
    base: dict[str, Any] = {
        "id": str(message["messageId"]),
        **_timestamp_fields(message),
        "uuid_ts": loaded_at,
        "user_id": text(message.get("userId")),
        "anonymous_id": text(message.get("anonymousId")),
    }
    if kind == "track":
        event = str(message.get("event") or "")
        base["event_text"] = event
        base["event"], changes = identifier(event)
        planned.adjusted.update(changes)
    elif kind in ("page", "screen"):
        base["name"] = text(message.get("name")) or text(lookup(message, "properties", "name"))
        base["category"] = text(message.get("category"))
    elif kind == "group":
        base["group_id"] = text(message.get("groupId"))
    elif kind == "alias":
        base["previous_id"] = text(message.get("previousId"))
    base = {k: v for k, v in base.items() if v is not None and v != ""}
    main = Row(table, dict(base))
    reserved = set(standard_columns(table))
    context = message.get("context")
    if isinstance(context, dict):
        _add(main, planned.adjusted, flatten(context, "context"), reserved)
    planned.rows.append(main)

    if kind == "track":
        # tracks holds the standard and context columns; the event's own table adds
        # its properties (Segment's layout).
        name = base.get("event", "")
        if not name or name in STANDARD_TABLES:
            planned.adjusted.add(ADJUSTED_NO_EVENT_TABLE)
            return planned
        own = Row(name, dict(main.values))
        _add(own, planned.adjusted, flatten(_object(message, "properties")), reserved)
        planned.rows.append(own)
        return planned
    payload = "properties" if kind in ("page", "screen") else "traits"
    _add(main, planned.adjusted, flatten(_object(message, payload)), reserved)
    if kind == "identify" and "user_id" in base:
        user = Row("users", {"id": base["user_id"], "received_at": base.get("received_at")})
        user.values["uuid_ts"] = loaded_at
        _add(
            user,
            planned.adjusted,
            flatten(_object(message, "traits")),
            set(STANDARD_COLUMNS["users"]),
        )
        planned.user = user
    return planned


def _object(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    return value if isinstance(value, dict) else {}
