"""The warehouse's shape and the SQL that writes to it: DDL, the column cache, inserts.

Owns schema evolution (``CREATE SCHEMA/TABLE IF NOT EXISTS``, ``ALTER TABLE ...
ADD COLUMN IF NOT EXISTS``, ``ALTER COLUMN ... TYPE`` when a value needs a wider
type: the rule is ``warehouse.batches.widenings``) and the cache of known columns
per table that keeps a steady stream of events free of DDL and catalog reads: a
table's columns are read from the catalog the first time it is seen, and again only
when a batch brings a column the cache does not know or a value its type cannot
hold (after taking the table's lock, so another eventd that changed it meanwhile is
seen).

DDL runs in short transactions of its own, before the batch's transaction: one
asyncio lock keeps this process's batches from racing each other's ALTERs, and a
transaction-level advisory lock per table does the same across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from ..warehouse.batches import (
    IDENTITIES,
    TableRows,
    first_values,
    identities_ddl,
    log_widened,
    widen_sql,
    widenings,
)
from ..warehouse.batches import upsert_identities_sql as shared_upsert_identities_sql
from ..warehouse.batches import upsert_users_sql as shared_upsert_users_sql
from ..warehouse.rows import INFERRED_TYPES, infer_type, qualified, quote, standard_columns

Connection = Any  # asyncpg.Connection: asyncpg ships no type information

# A column's type without its modifier (``character varying``, not ``(3)``): values for a
# type eventd does not create are cast to it, and the column's own limits then apply
# as they do to any INSERT (a too long string is refused, not cut).
_COLUMNS = """
SELECT attname, format_type(atttypid, NULL) FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
"""
_SCHEMA_EXISTS = "SELECT true FROM pg_namespace WHERE nspname = $1"


class Warehouse:
    """Known columns per (schema, table), and the statements built from them."""

    def __init__(self) -> None:
        self.columns: dict[tuple[str, str], dict[str, str]] = {}
        self._ddl = asyncio.Lock()

    def forget(self) -> None:
        """Drop the cache (a table or column vanished under us: read it all again)."""
        self.columns.clear()

    async def ensure(self, conn: Connection, g: TableRows) -> dict[str, str]:
        """The table's columns (name → type) once it has every column of ``g``'s rows (the
        first value seen decides a new column's type) and each is wide enough for
        their values (``widenings``)."""
        schema, table = g.schema, g.table
        first = first_values(g.rows)
        key = (schema, table)
        known = self.columns.get(key)
        if known is not None and all(c in known for c in first) and not widenings(g, known):
            return known
        async with self._ddl:
            known = self.columns.get(key)
            if known is None:
                known = await self._read(conn, schema, table)
            if not known or any(c not in known for c in first):
                known = await self._evolve(conn, schema, table, first)
            if widenings(g, known):
                known = await self._widen(conn, g)
            self.columns[key] = known
            return known

    async def _widen(self, conn: Connection, g: TableRows) -> dict[str, str]:
        name = qualified(g.schema, g.table)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "eventd " + name)
            # read again under the lock: another eventd may have widened it already
            known = await self._read(conn, g.schema, g.table)
            for column, wider in widenings(g, known).items():
                await conn.execute(widen_sql(g.schema, g.table, column, wider))
                log_widened(g.schema, g.table, column, known[column], wider)
            return await self._read(conn, g.schema, g.table)

    async def ensure_identities(self, conn: Connection, schema: str) -> None:
        """Create ``schema.identities`` unless it is known to exist."""
        if (schema, IDENTITIES) in self.columns:
            return
        async with self._ddl, conn.transaction():
            name = qualified(schema, IDENTITIES)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "eventd " + name)
            if not await self._read(conn, schema, IDENTITIES):
                if not await conn.fetchval(_SCHEMA_EXISTS, schema):
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                await conn.execute(identities_ddl(name, "timestamp with time zone"))
                await conn.execute(
                    f"CREATE INDEX IF NOT EXISTS identities_user_id ON {name} (user_id)"
                )
            self.columns[(schema, IDENTITIES)] = await self._read(conn, schema, IDENTITIES)

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
    """Upsert users by id from ``unnest`` of one array per column (see batches.py)."""
    picks, source = _select(columns, types)
    return shared_upsert_users_sql(
        qualified(schema, "users"), columns, f"SELECT {picks} FROM {source}"
    )


def upsert_identities_sql(schema: str) -> list[str]:
    """Upsert identity links from four arrays ($1 anonymous_id, $2 user_id, $3
    profile_id, $4 linked_at) into ``schema.identities`` (see batches.py)."""
    source = (
        "(SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
        " AS u(anonymous_id, user_id, profile_id, linked_at))"
    )
    return shared_upsert_identities_sql(qualified(schema, IDENTITIES), source)
