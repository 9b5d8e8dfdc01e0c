"""The duckdb destination's fast path: a batch of track events loaded by DuckDB itself,
from the stored JSON, with no Python work per event.

Owns: surveying a batch's JSON in DuckDB (which keys and JSON types each event name
carries), deciding from that survey whether the batch may take this path, and the SQL
that then flattens and types it (``json_transform`` into a struct, one ``INSERT ...
SELECT`` per table). The names, tables and types are those of
``eventd_plugins.warehouse.rows`` (the rules postgres shares): a key's column is
``identifier()`` of its flattened path, an event's table ``identifier()`` of its name.

The path is taken for a batch's tracks (its other calls go to the Python path) only
where it provably gives the rows the Python path (``warehouse.rows.plan`` and
``batches.columnar``) would give, with nothing to adjust: one schema, tracks with
unique string messageIds, an event name whose table needs no adjustment, timestamps
in RFC 3339 form, string ids; every context and property leaf already a column of
its table, of a JSON type that goes into the column unchanged (no cast, no drop, no
array), its name needing no adjustment and clashing with no other key. Anything else
(a new column, a value to cast) raises NotVectorizable and the caller plans the whole
batch in Python, which creates columns and counts adjustments. A steady stream of
the same events (the common case) takes this path after its first batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import duckdb

from ..warehouse.rows import (
    BIGINT,
    BOOLEAN,
    DOUBLE,
    STANDARD_TABLES,
    TEXT,
    TIMESTAMP,
    identifier,
    qualified,
    quote,
    standard_columns,
)

# Timestamps both Python's datetime.fromisoformat and DuckDB's TIMESTAMPTZ cast read
# to the same instant (a zone always given: no session time zone involved).
_TIMESTAMP = (
    r"\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
)
# The message's own fields a track's standard columns come from.
_IDS = {"messageId": "id", "userId": "user_id", "anonymousId": "anonymous_id"}
_TIMES = {
    "receivedAt": "received_at",
    "sentAt": "sent_at",
    "timestamp": "timestamp",
    "originalTimestamp": "original_timestamp",
}
_TOP = ("type", "event", *_IDS, *_TIMES)
# Which JSON types (as DuckDB's json_tree names them) go into a column unchanged, and
# the type json_transform reads them as (timestamps are read as text, then cast).
_FITS = {
    TEXT: ({"VARCHAR"}, "VARCHAR"),
    TIMESTAMP: ({"VARCHAR"}, "VARCHAR"),
    BIGINT: ({"UBIGINT", "BIGINT"}, "BIGINT"),
    DOUBLE: ({"UBIGINT", "BIGINT", "DOUBLE"}, "DOUBLE"),
    BOOLEAN: ({"BOOLEAN"}, "BOOLEAN"),
}

# Per event name: messages, tracks, non-empty messageIds, and the merged shape of their
# JSON (DuckDB's json_group_structure: a key's JSON type, "JSON" where types differ or
# an object is empty, HUGEINT where signed and unsigned integers meet).
_SURVEY = """
SELECT f[1], count(*), count(*) FILTER (WHERE f[2] = 'track'),
       count(*) FILTER (WHERE f[3] <> ''), json_group_structure(j)
FROM (SELECT j, json_extract_string(j, ['$.event', '$.type', '$.messageId']) AS f
      FROM (SELECT CAST(decode(body) AS JSON) AS j FROM {view}))
GROUP BY f[1]
"""
_INTEGERS = {"UBIGINT", "BIGINT", "HUGEINT"}
# Which merged JSON types go into a column unchanged, and the type json_transform
# reads them as (timestamps and bigints as text, then cast and checked).
_FITS = {
    TEXT: ({"VARCHAR"}, "VARCHAR"),
    TIMESTAMP: ({"VARCHAR"}, "VARCHAR"),
    BIGINT: (_INTEGERS, "VARCHAR"),
    DOUBLE: ({*_INTEGERS, "DOUBLE"}, "DOUBLE"),
    BOOLEAN: ({"BOOLEAN"}, "BOOLEAN"),
}


class NotVectorizable(Exception):
    """The batch needs the Python path (the reason is for debugging only)."""


@dataclass
class _Leaf:
    """A flattened key of the batch: its keys from the message's root, its column, and
    the merged JSON types it came in."""

    keys: tuple[str, ...]
    column: str
    types: set[str] = field(default_factory=set)


@dataclass
class Plan:
    """What the batch's SQL needs: the struct ``json_transform`` reads each message
    into, each column's expression over it, the checks every row must pass, and which
    columns each table gets from which event names."""

    structure: dict[str, Any]
    expressions: dict[str, str]  # column -> SQL over the struct ``m``
    checks: list[str]  # SQL over the struct ``m``: TRUE where the row is loaded unchanged
    tables: dict[str, tuple[list[str], list[str]]]  # table -> (columns, event names)


def _leaves(shape: Any, keys: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(keys, merged JSON type) of every leaf under an object's ``shape``."""
    if shape == "JSON":  # an object in some messages only, or always {}
        raise NotVectorizable(f"{keys} is not always an object with keys")
    if not isinstance(shape, dict):
        return []  # a context or properties that is never an object: Python ignores it
    out: list[tuple[tuple[str, ...], str]] = []
    for key, value in shape.items():
        if isinstance(value, dict):
            out += _leaves(value, (*keys, key))
        elif isinstance(value, list) or value == "JSON":
            raise NotVectorizable(f"{(*keys, key)} holds an array, {{}} or mixed types")
        elif value != "NULL":
            out.append(((*keys, key), value))
    return out


def not_tracks(con: duckdb.DuckDBPyConnection, view: str) -> list[int]:
    """The ``i`` of every message of ``view`` (columns ``i``, ``body``) that is no track:
    those the Python path loads."""
    ((found,),) = con.execute(
        f"SELECT list(i ORDER BY i) FROM {view}"
        " WHERE json_extract_string(decode(body), '$.type') IS DISTINCT FROM 'track'"
    ).fetchall()
    return [int(i) for i in found or []]


def survey(
    con: duckdb.DuckDBPyConnection, view: str, count: int, columns: Mapping[str, Mapping[str, str]]
) -> Plan:
    """The plan of the ``count`` messages of ``view`` (a BLOB column ``body``), given
    the known columns of their schema (table -> {column: type}). Raises
    NotVectorizable when the batch needs the Python path."""
    table_of: dict[str, str] = {}
    leaves: dict[tuple[str, ...], _Leaf] = {}
    per_event: dict[str, set[tuple[str, ...]]] = {}
    checks: list[str] = ["m['messageId'] IS NOT NULL"]
    for event, n, tracks, ids, merged in con.execute(_SURVEY.replace("{view}", view)).fetchall():
        if event is None or not n == tracks == ids:
            raise NotVectorizable("not only named tracks with messageIds")
        count -= n
        name, changes = identifier(event)
        if changes or not name or name in STANDARD_TABLES:
            raise NotVectorizable(f"event name {event!r} needs adjusting")
        table_of[event] = name
        shape = orjson.loads(merged)
        for key in ("messageId", "event", "userId", "anonymousId", *_TIMES):
            if shape.get(key, "NULL") not in ("VARCHAR", "NULL"):
                raise NotVectorizable(f"{key} is not a string")
        found = _leaves(shape.get("context"), ("context",))
        found += _leaves(shape.get("properties"), ("properties",))
        per_event[event] = set()
        for keys, json_type in found:
            path = "_".join(keys if keys[0] == "context" else keys[1:])
            column, changes = identifier(path)
            if changes or not column:
                raise NotVectorizable(f"key {keys} needs adjusting")
            leaf = leaves.setdefault(keys, _Leaf(keys, column))
            leaf.types.add(json_type)
            per_event[event].add(keys)
    if count != 0:
        raise NotVectorizable("a message without an event name")
    expressions = _expressions(table_of)
    for key in _TIMES:
        checks.append(_timestamp_check(f"m[{_literal(key)}]"))
    structure: dict[str, Any] = {k: "VARCHAR" for k in ("event", *_IDS, *_TIMES)}
    by_column: dict[str, _Leaf] = {}
    for leaf in leaves.values():
        if leaf.column in expressions or by_column.setdefault(leaf.column, leaf) is not leaf:
            raise NotVectorizable(f"two keys land in column {leaf.column!r}")
    tables: dict[str, tuple[list[str], list[str]]] = {"tracks": ([], list(table_of))}
    for event, table in table_of.items():
        tables.setdefault(table, ([], []))[1].append(event)
    for table, (cols, names) in tables.items():
        known = columns.get(table)
        if known is None:
            raise NotVectorizable(f"table {table!r} not made yet")
        wanted = {
            leaves[keys].column
            for event in names
            for keys in per_event[event]
            if table != "tracks" or keys[0] == "context"
        }
        for column in sorted(wanted):
            leaf = by_column[column]
            column_type = known.get(column)
            if column_type not in _FITS:  # a new column, or one altered by hand
                raise NotVectorizable(f"column {table}.{column} missing or of another type")
            fits, read_as = _FITS[column_type]
            if not leaf.types <= fits:
                raise NotVectorizable(f"{leaf.keys} does not fit {table}.{column}")
            node = structure
            for key in leaf.keys[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise NotVectorizable(f"{leaf.keys} read as two types")
            if node.setdefault(leaf.keys[-1], read_as) != read_as:
                raise NotVectorizable(f"{leaf.keys} read as two types")
            value = "m" + "".join(f"[{_literal(k)}]" for k in leaf.keys)
            if column_type == TIMESTAMP:
                check, value = _timestamp_check(value), f"CAST({value} AS TIMESTAMPTZ)"
            elif column_type == BIGINT:  # read as text: one beyond bigint is dropped in Python
                check = f"{value} IS NULL OR TRY_CAST({value} AS BIGINT) IS NOT NULL"
                value = f"TRY_CAST({value} AS BIGINT)"
            else:
                check = ""
            if check and check not in checks:
                checks.append(check)
            if expressions.setdefault(column, value) != value:
                raise NotVectorizable(f"column {column!r} of two types in two tables")
        cols.extend([*(c for c in standard_columns(table) if c in expressions), *sorted(wanted)])
    _no_case_clashes(structure)
    return Plan(structure, expressions, checks, tables)


def _expressions(table_of: Mapping[str, str]) -> dict[str, str]:
    """The standard columns' SQL over the struct ``m`` (``$1``: the load time)."""
    names = " ".join(f"WHEN {_literal(e)} THEN {_literal(t)}" for e, t in table_of.items())
    out = {
        "id": "m['messageId']",
        "user_id": "NULLIF(m['userId'], '')",
        "anonymous_id": "NULLIF(m['anonymousId'], '')",
        "event": f"CASE m['event'] {names} END",
        "event_text": "m['event']",
        "uuid_ts": "CAST($1 AS TIMESTAMPTZ)",
    }
    for key, column in _TIMES.items():
        out[column] = f"CAST(m[{_literal(key)}] AS TIMESTAMPTZ)"
    return out


def _timestamp_check(value: str) -> str:
    return f"{value} IS NULL OR regexp_full_match({value}, {_literal(_TIMESTAMP)})"


def _no_case_clashes(structure: Mapping[str, Any]) -> None:
    """DuckDB's struct fields are case-insensitive: ``carType`` and ``cartype`` beside
    each other (two columns in Python) cannot both be read."""
    seen = {k.lower() for k in structure}
    if len(seen) != len(structure):
        raise NotVectorizable("keys differing only in case")
    for value in structure.values():
        if isinstance(value, dict):
            _no_case_clashes(value)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def statements(
    plan: Plan, schema: str, view: str, skipping: Callable[[str, str, str, str], str]
) -> tuple[str, str, list[tuple[str, str]], str]:
    """The statement that reads the batch into a temporary table (``$1``: the load
    time; run before the transaction), the query that says whether every row passed
    the checks (one row: TRUE or FALSE), each table's plain insert from the temporary
    table with its form that skips loaded ids (``skipping(insert, table, target,
    where)``: the loader's rule), and the temporary table's name (to drop after)."""
    rows = "eventd_vectorized"
    structure = orjson.dumps(plan.structure).decode()
    picks = ", ".join(f"{sql} AS {quote(c)}" for c, sql in plan.expressions.items())
    ok = " AND ".join(f"({c})" for c in plan.checks)
    read = (
        f"CREATE OR REPLACE TEMP TABLE {rows} AS SELECT {picks}, {ok} AS eventd_ok FROM"
        f" (SELECT json_transform(decode(body), {_literal(structure)}) AS m FROM {view})"
    )
    passed = f"SELECT count(DISTINCT id) = count(*) AND bool_and(eventd_ok) FROM {rows}"
    inserts = []
    for table, (cols, events) in plan.tables.items():
        names = ", ".join(quote(c) for c in cols)
        where = ""
        if table != "tracks":
            where = f"event_text IN ({', '.join(map(_literal, events))})"
        target = qualified(schema, table)
        plain = f"INSERT INTO {target} ({names}) SELECT {names} FROM {rows}"
        plain += f" WHERE {where}" if where else ""
        inserts.append((plain, skipping(plain, table, target, where)))
    return read, passed, inserts, rows
