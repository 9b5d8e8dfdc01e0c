"""Which warehouse rows hold a person, for ``delete_user`` (postgres and duckdb).

Owns the rule both stores erase by: in every table of eventd's schemas (those
holding one of its standard tables or ``identities``; the ``schema`` setting alone
when set), the rows whose ``user_id`` is one of the person's userIds or whose
``anonymous_id`` is one of their anonymousIds (every event table, ``identities``),
``aliases`` rows whose ``previous_id`` is either, and ``users`` rows whose ``id``
is one of their userIds. It is written as SQL that PostgreSQL and DuckDB both read
(``information_schema``, ``$n`` parameters, ``unnest`` of a text array); each
store runs the statements in one transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .batches import IDENTITIES
from .rows import STANDARD_COLUMNS, qualified, quote

_COLUMNS = ("user_id", "anonymous_id", "previous_id", "id")
_TABLES = sorted({*STANDARD_COLUMNS, IDENTITIES})


def _literals(values: Iterable[str]) -> str:
    # only this module's constant names: no quote in them
    return ", ".join(f"'{v}'" for v in values)


def tables_sql(schema: str | None) -> tuple[str, list[Any]]:
    """The catalog query and its parameters: one row per table of eventd's schemas
    that has a column to delete by: (schema, table, [those column names])."""
    only = " AND CAST(table_schema AS TEXT) = CAST($1 AS TEXT)" if schema is not None else ""
    sql = (
        "SELECT table_schema, table_name, array_agg(CAST(column_name AS TEXT))"
        " FROM information_schema.columns"
        f" WHERE column_name IN ({_literals(_COLUMNS)})"
        " AND table_schema IN (SELECT table_schema FROM information_schema.tables"
        f"  WHERE table_name IN ({_literals(_TABLES)}){only})"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return sql, [schema] if schema is not None else []


def delete_statements(
    tables: Iterable[tuple[str, str, Sequence[str]]],
    user_ids: Sequence[str],
    anonymous_ids: Sequence[str],
) -> list[tuple[str, list[list[str]]]]:
    """``DELETE`` statements (each with its parameters: one text array per ``$n``) that
    take the person's rows out of ``tables`` (rows of :func:`tables_sql`)."""
    users, anonymous = list(user_ids), list(anonymous_ids)
    statements = []
    for schema, table, columns in tables:
        by = (
            {"id": users}
            if table == "users"
            else {"user_id": users, "anonymous_id": anonymous, "previous_id": users + anonymous}
        )
        wanted = [(c, ids) for c, ids in by.items() if c in columns and ids]
        if wanted:
            where = " OR ".join(
                f"{quote(c)} IN (SELECT unnest(${i}::text[]))" for i, (c, _) in enumerate(wanted, 1)
            )
            statements.append(
                (f"DELETE FROM {qualified(schema, table)} WHERE {where}", [i for _, i in wanted])
            )
    return statements
