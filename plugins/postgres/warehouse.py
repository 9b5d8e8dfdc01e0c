"""The warehouse's shape and the SQL that writes to it: DDL, the column cache, inserts.

Owns schema evolution (``CREATE SCHEMA/TABLE IF NOT EXISTS``, ``ALTER TABLE ...
ADD COLUMN IF NOT EXISTS``) and the cache of known columns per table that keeps a
steady stream of events free of DDL and catalog reads: a table's columns are read
from the catalog the first time it is seen, and again only when a batch brings a
column the cache does not know (after taking the table's lock, so another eventd
that added it meanwhile is seen).

DDL runs in short transactions of its own, before the batch's transaction: one
asyncio lock keeps this process's batches from racing each other's ALTERs, and a
transaction-level advisory lock per table does the same across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from .rows import (
    ADJUSTED_CAST,
    ADJUSTED_DROPPED,
    CAST,
    DROP,
    INFERRED_TYPES,
    Row,
    fit,
    infer_type,
    quote,
    standard_columns,
)

Connection = Any  # asyncpg.Connection: asyncpg ships no type information

# A column's type without its modifier (``character varying``, not ``(3)``): values for a
# type eventd does not create are cast to it, and the column's own limits then apply
# as they do to any INSERT (a too long string is refused, not cut).
_COLUMNS = """
SELECT attname, format_type(atttypid, NULL) FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
"""
_SCHEMA_EXISTS = "SELECT true FROM pg_namespace WHERE nspname = $1"


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


class Warehouse:
    """Known columns per (schema, table), and the statements built from them."""

    def __init__(self) -> None:
        self.columns: dict[tuple[str, str], dict[str, str]] = {}
        self._ddl = asyncio.Lock()

    def forget(self) -> None:
        """Drop the cache (a table or column vanished under us: read it all again)."""
        self.columns.clear()

    async def ensure(
        self, conn: Connection, schema: str, table: str, first_values: Mapping[str, Any]
    ) -> dict[str, str]:
        """The table's columns (name → type) once it has every column of ``first_values``
        (column → the first value seen, which decides a new column's type)."""
        key = (schema, table)
        known = self.columns.get(key)
        if known is not None and all(c in known for c in first_values):
            return known
        async with self._ddl:
            known = self.columns.get(key)
            if known is None:
                known = await self._read(conn, schema, table)
            if not known or any(c not in known for c in first_values):
                known = await self._evolve(conn, schema, table, first_values)
            self.columns[key] = known
            return known

    async def _read(self, conn: Connection, schema: str, table: str) -> dict[str, str]:
        rows = await conn.fetch(_COLUMNS, qualified(schema, table))
        return {str(name): str(type_) for name, type_ in rows}

    async def _evolve(
        self, conn: Connection, schema: str, table: str, first_values: Mapping[str, Any]
    ) -> dict[str, str]:
        name = qualified(schema, table)
        standard = standard_columns(table)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "eventd " + name)
            known = await self._read(conn, schema, table)
            if not known:
                # Only what is missing is created: CREATE ... IF NOT EXISTS still needs the
                # CREATE privilege, which a role loading an existing schema may not have.
                if not await conn.fetchval(_SCHEMA_EXISTS, schema):
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                columns = ", ".join(
                    f"{quote(c)} {t}{' PRIMARY KEY' if c == 'id' else ''}"
                    for c, t in standard.items()
                )
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
                known = await self._read(conn, schema, table)
            added = {
                c: standard.get(c) or infer_type(v)
                for c, v in first_values.items()
                if c not in known
            }
            if added:
                clauses = ", ".join(
                    f"ADD COLUMN IF NOT EXISTS {quote(c)} {t}" for c, t in added.items()
                )
                await conn.execute(f"ALTER TABLE {name} {clauses}")
                known = await self._read(conn, schema, table)
        return known


def first_values(rows: Sequence[Row]) -> dict[str, Any]:
    """Every column of ``rows`` with its first value, in the order first seen."""
    seen: dict[str, Any] = {}
    for row in rows:
        for column, value in row.values.items():
            seen.setdefault(column, value)
    return seen


def _param_type(column_type: str) -> str:
    # Types eventd does not create travel as text and are cast by the server.
    return column_type if column_type in INFERRED_TYPES else "text"


def _select(columns: Sequence[str], types: Mapping[str, str]) -> tuple[str, str]:
    """The select list and the ``unnest(...)`` source of an insert of ``columns``."""
    params = ", ".join(f"${i}::{_param_type(types[c])}[]" for i, c in enumerate(columns, 1))
    names = ", ".join(quote(c) for c in columns)
    picks = ", ".join(
        quote(c) if types[c] in INFERRED_TYPES else f"CAST({quote(c)} AS {types[c]})"
        for c in columns
    )
    return picks, f"unnest({params}) AS u({names})"


def columnar(
    rows: Sequence[Row], types: Mapping[str, str], adjusted: Sequence[set[str]]
) -> tuple[list[str], list[list[Any]]]:
    """The rows as one array per column (what ``unnest`` takes), every value fitted to its
    column's type; what was cast or dropped is added to the row's ``adjusted`` set."""
    columns = list(first_values(rows))
    arrays: list[list[Any]] = [[] for _ in columns]
    for row, changes in zip(rows, adjusted, strict=True):
        for i, column in enumerate(columns):
            if column not in row.values or row.values[column] is None:
                arrays[i].append(None)
                continue
            value = row.values[column]
            if column in standard_columns(row.table):
                arrays[i].append(value)  # already str / datetime
                continue
            fitted, how = fit(value, types[column])
            if how == CAST:
                changes.add(ADJUSTED_CAST)
            elif how == DROP:
                changes.add(ADJUSTED_DROPPED)
            arrays[i].append(fitted)
    return columns, arrays


def insert_sql(schema: str, table: str, columns: Sequence[str], types: Mapping[str, str]) -> str:
    """Append rows, each once: a row whose ``id`` is there already (a redelivery, a
    replay) is left as it is."""
    picks, source = _select(columns, types)
    names = ", ".join(quote(c) for c in columns)
    return (
        f"INSERT INTO {qualified(schema, table)} ({names}) SELECT {picks} FROM {source}"
        " ON CONFLICT (id) DO NOTHING"
    )


def upsert_users_sql(schema: str, columns: Sequence[str], types: Mapping[str, str]) -> str:
    """Upsert users by id: each trait takes the newer identify's value (by received_at)
    when it has one and keeps the stored value otherwise, so neither a replayed older
    identify nor one that lacks a trait erases what a newer one set."""
    picks, source = _select(columns, types)
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
        f"INSERT INTO {qualified(schema, 'users')} AS t ({names}) SELECT {picks} FROM {source}"
        f" ON CONFLICT (id) DO UPDATE SET {', '.join(sets)}"
    )
