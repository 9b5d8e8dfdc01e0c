"""A batch of planned events as per-table column arrays, and the SQL both stores share
to upsert ``users`` and ``identities``.

Owns: grouping a batch's rows by (schema, table) with one ``users`` row per user,
which columns a batch widens (and the ``ALTER COLUMN`` that does it), turning rows
into one fitted array per column (logging what it drops), the ``ON CONFLICT``
assignments that keep a newer identify's traits, and the ``identities`` table (its columns, how a
batch of links is reduced to one row per key, the two statements that upsert them).
The source of rows (``unnest`` of arrays in PostgreSQL, an Arrow table in DuckDB) is
the store's; the statements take it as a SQL fragment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventd import IdentityLink, Ok, Outcome

from .rows import (
    ADJUSTED_CAST,
    ADJUSTED_DROPPED,
    CAST,
    DROP,
    WIDENABLE,
    Planned,
    Row,
    fit,
    qualified,
    quote,
    widened,
)
from .rows import standard_columns as standard_columns

log = logging.getLogger("eventd.warehouse")

# The ``schema`` setting of every warehouse destination.
SCHEMA_SETTING = {
    "type": "string",
    "pattern": "^[a-z_][a-z0-9_]{0,62}$",
    "description": "one schema for every source (default: one per source, named from the source)",
}


def adjusted_counts(
    planned: Sequence[Planned], outcomes: Sequence[Outcome] | Outcome
) -> tuple[list[Outcome], dict[str, int]]:
    """One outcome per event, and {reason: events} of what was adjusted in the events
    that were loaded (for ``Destination.count_adjusted``)."""
    results = list(outcomes) if isinstance(outcomes, Sequence) else [outcomes] * len(planned)
    counts: dict[str, int] = {}
    for p, outcome in zip(planned, results, strict=True):
        if isinstance(outcome, Ok):
            for reason in p.adjusted:
                counts[reason] = counts.get(reason, 0) + 1
    return results, counts


@dataclass
class TableRows:
    """The rows one batch appends to (or upserts into) one table."""

    schema: str
    table: str
    rows: list[Row]
    adjusted: list[set[str]]  # the adjustment set of each row's event, to add casts to


def grouped(planned: Sequence[Planned]) -> list[TableRows]:
    """The batch's rows per (schema, table), each messageId once: appended tables first,
    then ``users`` with one row per user (two identifies of one user in a batch merged:
    a statement may not update a row twice), sorted by id so concurrent batches lock
    users in one order."""
    tables: dict[tuple[str, str], TableRows] = {}
    users: dict[tuple[str, str], tuple[Row, set[str]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for p in planned:
        for row in p.rows:
            once = (p.schema, row.table, str(row.values["id"]))
            if once in seen:  # a messageId twice in one batch (a replay beside a retry)
                continue
            seen.add(once)
            t = tables.setdefault((p.schema, row.table), TableRows(p.schema, row.table, [], []))
            t.rows.append(row)
            t.adjusted.append(p.adjusted)
        if p.user is not None:
            key = (p.schema, str(p.user.values["id"]))
            row = merged(users[key][0], p.user) if key in users else p.user
            users[key] = (row, p.adjusted)
    out = list(tables.values())
    by_schema: dict[str, TableRows] = {}
    for (schema, _), (row, adjusted) in sorted(users.items(), key=lambda item: item[0]):
        t = by_schema.setdefault(schema, TableRows(schema, "users", [], []))
        t.rows.append(row)
        t.adjusted.append(adjusted)
    return out + list(by_schema.values())


def merged(older: Row, newer: Row) -> Row:
    """Two identifies of one user in a batch as one upsert row: the newer one's values,
    the older one's where the newer has none."""
    values = {**older.values, **{k: v for k, v in newer.values.items() if v is not None}}
    received = [v for v in (older.values.get("received_at"), newer.values.get("received_at")) if v]
    if received:
        values["received_at"] = max(received)
    return Row("users", values)


def first_values(rows: Sequence[Row]) -> dict[str, Any]:
    """Every column of ``rows`` with its first value, in the order first seen."""
    seen: dict[str, Any] = {}
    for row in rows:
        for column, value in row.values.items():
            seen.setdefault(column, value)
    return seen


def widenings(g: TableRows, types: Mapping[str, str]) -> dict[str, str]:
    """{column: its wider type} for the columns of ``types`` (the table's, as known)
    that must widen for a value of ``g`` to go in whole (``rows.widened``)."""
    # Only the columns of a type that may widen are looked at, which keeps this pass
    # cheap beside columnar's (none at all for most tables).
    narrow = {c for c, t in types.items() if t in WIDENABLE}
    narrow -= set(standard_columns(g.table))
    out: dict[str, str] = {}
    for column in narrow:
        column_type = types[column]
        for row in g.rows:
            value = row.values.get(column)
            # an int (the steady case of a bigint column) never widens it
            if value is not None and type(value) is not int:
                wider = widened(value, column_type)
                if wider is not None:
                    out[column] = wider
                    break
    return out


def widen_sql(schema: str, table: str, column: str, column_type: str) -> str:
    """The DDL that widens a column in place, keeping its values (PostgreSQL and DuckDB
    both take this form and cast each stored value to the new type)."""
    return f"ALTER TABLE {qualified(schema, table)} ALTER COLUMN {quote(column)} TYPE {column_type}"


def log_widened(schema: str, table: str, column: str, old: str, new: str) -> None:
    """Say that a column was widened (a schema change its readers should know of)."""
    log.warning(
        "warehouse column %s.%s.%s widened from %s to %s for a value that did not fit",
        schema,
        table,
        column,
        old,
        new,
    )


def columnar(g: TableRows, types: Mapping[str, str]) -> tuple[list[str], list[list[Any]]]:
    """``g``'s rows as one array per column, every value fitted to its column's type;
    what was cast or dropped is added to the row's ``adjusted`` set, and each dropped
    value (stored as NULL) is also logged at warning, once per column and value type
    in the batch, naming the table, the column, its type and the value's type."""
    rows = g.rows
    columns = list(first_values(rows))
    arrays: list[list[Any]] = [[] for _ in columns]
    dropped: dict[tuple[str, str], int] = {}
    for row, changes in zip(rows, g.adjusted, strict=True):
        standard = standard_columns(row.table)
        for i, column in enumerate(columns):
            value = row.values.get(column)
            if value is None:
                arrays[i].append(None)
                continue
            if column in standard:
                arrays[i].append(value)  # already str / datetime
                continue
            fitted, how = fit(value, types[column])
            if how == CAST:
                changes.add(ADJUSTED_CAST)
            elif how == DROP:
                changes.add(ADJUSTED_DROPPED)
                key = (column, type(value).__name__)
                dropped[key] = dropped.get(key, 0) + 1
            arrays[i].append(fitted)
    for (column, value_type), n in dropped.items():
        log.warning(
            "warehouse %s.%s.%s (%s): %d %s value(s) did not fit and were stored as NULL"
            " (counted as %r)",
            g.schema,
            g.table,
            column,
            types[column],
            n,
            _JSON_TYPES.get(value_type, value_type),
            ADJUSTED_DROPPED,
        )
    return columns, arrays


# Python's type names of flattened JSON values, as JSON names them (for the log).
_JSON_TYPES = {"str": "string", "int": "number", "float": "number", "bool": "boolean"}


def upsert_users_sql(target: str, columns: Sequence[str], select: str) -> str:
    """Upsert users by id from ``select`` (a query giving ``columns`` in order): each
    trait takes the newer identify's value (by received_at) when it has one and keeps
    the stored value otherwise, so neither a replayed older identify nor one that lacks
    a trait erases what a newer one set. ``target`` is the qualified table name."""
    names = ", ".join(quote(c) for c in columns)
    newer = "EXCLUDED.received_at >= t.received_at OR t.received_at IS NULL"
    sets = ["received_at = GREATEST(t.received_at, EXCLUDED.received_at)"]
    for c in columns:
        if c in ("id", "received_at"):
            continue
        q = quote(c)
        sets.append(
            f"{q} = CASE WHEN {newer} THEN COALESCE(EXCLUDED.{q}, t.{q})"
            f" ELSE COALESCE(t.{q}, EXCLUDED.{q}) END"
        )
    return (
        f"INSERT INTO {target} AS t ({names}) {select}"
        f" ON CONFLICT (id) DO UPDATE SET {', '.join(sets)}"
    )


# -- identities (eventd.identity.links) ----------------------------------------------

IDENTITIES = "identities"
IDENTITY_COLUMNS = ("anonymous_id", "user_id", "profile_id", "linked_at")


def identities_ddl(target: str, timestamp_type: str) -> str:
    """The ``identities`` table (no key: anonymous_id may be NULL, and a NULL never
    conflicts in a unique index, so upserts match with IS NOT DISTINCT FROM)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {target} (anonymous_id TEXT, user_id TEXT NOT NULL,"
        f" profile_id TEXT NOT NULL, linked_at {timestamp_type} NOT NULL)"
    )


def identity_rows(links: Iterable[IdentityLink]) -> list[IdentityLink]:
    """One link per (anonymous_id, user_id): the earliest ``linked_at`` and the last
    ``profile_id`` given (the rule of eventd.identity.links, applied within a batch)."""
    found: dict[tuple[str | None, str], IdentityLink] = {}
    for link in links:
        key = (link.anonymous_id, link.user_id)
        old = found.get(key)
        linked_at = min(old.linked_at, link.linked_at) if old else link.linked_at
        found[key] = IdentityLink(link.anonymous_id, link.user_id, link.profile_id, linked_at)
    return list(found.values())


def upsert_identities_sql(target: str, source: str) -> list[str]:
    """The statements (run in order, in one transaction) that upsert the links of
    ``source`` (a table expression with the four identity columns, one row per key)
    into ``target``: a repeat keeps the earlier ``linked_at`` and takes the new
    ``profile_id``; a new key is inserted."""
    same = "t.anonymous_id IS NOT DISTINCT FROM s.anonymous_id AND t.user_id = s.user_id"
    return [
        f"UPDATE {target} AS t SET profile_id = s.profile_id,"
        f" linked_at = LEAST(t.linked_at, s.linked_at) FROM {source} AS s WHERE {same}",
        f"INSERT INTO {target} SELECT s.anonymous_id, s.user_id, s.profile_id, s.linked_at"
        f" FROM {source} AS s WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {same})",
    ]
