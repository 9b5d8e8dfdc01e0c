"""What reports need of a warehouse store, and the SQL every report starts from.

Owns: the :class:`Store` protocol (the duckdb and postgres destinations implement it),
reading the store's catalog, the events a report reads (a ``UNION ALL`` over every
source's schema), who each event belongs to (the rule of eventd.identity.links, in
SQL both engines run the same way), and calendar periods as integers.

The SQL is one text for both engines: standard SQL both DuckDB and PostgreSQL run
(window functions, ``EXTRACT(EPOCH ...)``, ``$n`` parameters), in sessions whose time
zone is UTC (the stores' ``query`` sets it), so one report gives one answer on either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol


class Store(Protocol):
    """A warehouse destination reports read (``[reports] store``)."""

    dialect: str  # "duckdb" | "postgres"

    @property
    def identities_schema(self) -> str: ...

    def column_name(self, path: str) -> str:
        """The column (or event table) a property path (or event name) lands in."""
        ...

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


# Tables whose rows make a person active (a track, page or screen call).
ACTIVITY_TABLES = ("tracks", "pages", "screens")
_NUMERIC = ("BIGINT", "INTEGER", "SMALLINT", "DOUBLE", "DOUBLE PRECISION", "REAL", "NUMERIC")


@dataclass
class Catalog:
    """(schema, table) → {column: its catalog type, upper-cased}."""

    tables: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def schemas_with(self, table: str) -> list[str]:
        return sorted(s for (s, t) in self.tables if t == table and "id" in self.tables[(s, t)])

    def column_type(self, schema: str, table: str, column: str) -> str | None:
        return self.tables.get((schema, table), {}).get(column)

    def is_numeric(self, schema: str, table: str, column: str) -> bool:
        found = self.column_type(schema, table, column)
        return found is not None and found.split("(")[0].strip() in _NUMERIC


async def read_catalog(store: Store) -> Catalog:
    rows = await store.query(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema NOT IN ('information_schema', 'pg_catalog')"
    )
    cat = Catalog()
    for schema, table, column, type_ in rows:
        cat.tables.setdefault((str(schema), str(table)), {})[str(column)] = str(type_).upper()
    return cat


def quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


_PARAM = re.compile(r"\$(\d+)")


class Query:
    """A SQL text being built and its ``$n`` parameters."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def bind(self, sql: str) -> tuple[str, list[Any]]:
        """``sql`` with its parameters numbered in order of use, and their values: a
        parameter made for a part of the query that was then left out (no table of
        that kind yet) is dropped, since both engines refuse unused parameters. (The
        SQL holds no ``$`` but parameters: values never go into its text.)"""
        order: dict[int, int] = {}

        def renumber(m: re.Match[str]) -> str:
            old = int(m.group(1))
            return f"${order.setdefault(old, len(order) + 1)}"

        text = _PARAM.sub(renumber, sql)
        return text, [self.params[old - 1] for old in order]


@dataclass(frozen=True)
class Range:
    """``--since`` / ``--until``: event timestamps in [since, until); None: unbounded."""

    since: datetime | None = None
    until: datetime | None = None


def events_sql(
    q: Query,
    cat: Catalog,
    span: Range,
    *,
    tables: Sequence[str] = ("tracks",),
    events: Sequence[str] | None = None,
) -> str:
    """A query of (src, id, ts, user_id, anonymous_id, event) over ``tables`` of every
    schema; ``event`` is the track's name as sent (NULL for pages and screens);
    ``events`` keeps only tracks of those names."""
    parts = []
    since = q.param(span.since) if span.since else None
    until = q.param(span.until) if span.until else None
    names = [q.param(e) for e in events] if events is not None else None
    for table in tables:
        for schema in cat.schemas_with(table):
            columns = cat.tables[(schema, table)]
            if "timestamp" not in columns:
                continue
            conds = ['"timestamp" IS NOT NULL']
            if since:
                conds.append(f'"timestamp" >= {since}')
            if until:
                conds.append(f'"timestamp" < {until}')
            event = "event_text" if table == "tracks" and "event_text" in columns else "NULL"
            if names is not None:
                if event == "NULL":
                    continue
                conds.append(f"event_text IN ({', '.join(names)})")
            user = "user_id" if "user_id" in columns else "NULL"
            anon = "anonymous_id" if "anonymous_id" in columns else "NULL"
            parts.append(
                f'SELECT CAST({q.param(schema)} AS TEXT) AS src, id, "timestamp" AS ts,'
                f" CAST({user} AS TEXT) AS user_id, CAST({anon} AS TEXT) AS anonymous_id,"
                f" CAST({event} AS TEXT) AS event FROM {quote(schema)}.{quote(table)}"
                f" WHERE {' AND '.join(conds)}"
            )
    if not parts:  # nothing loaded yet: an empty set of the same shape
        return (
            "SELECT CAST(NULL AS TEXT) AS src, CAST(NULL AS TEXT) AS id,"
            " CAST(NULL AS TIMESTAMP WITH TIME ZONE) AS ts, CAST(NULL AS TEXT) AS user_id,"
            " CAST(NULL AS TEXT) AS anonymous_id, CAST(NULL AS TEXT) AS event WHERE 1 = 0"
        )
    return " UNION ALL ".join(parts)


def people_sql(store: Store, cat: Catalog, events: str) -> str:
    """``events`` (a query from :func:`events_sql`) with ``person`` and ``t`` (epoch
    seconds) added, by the rule of eventd.identity.links:

    - a userId's event belongs to that userId's profile_id, else to the userId;
    - an anonymous event to the profile_id of its anonymousId's link with the greatest
      linked_at at or before it, or the earliest link when it precedes them all
      (links tied on linked_at are ordered by user_id, the later one winning), else to
      the anonymousId.

    Each link of an anonymousId covers [its linked_at, the next one's), the first from
    the beginning of time: one range join both engines run the same way.
    """
    schema = store.identities_schema
    t = "CAST(EXTRACT(EPOCH FROM ev.ts) AS DOUBLE PRECISION)"
    if "linked_at" not in cat.tables.get((schema, "identities"), {}):
        return (
            f"SELECT ev.*, COALESCE(ev.user_id, ev.anonymous_id) AS person, {t} AS t"
            f" FROM ({events}) AS ev"
        )
    ident = f"{quote(schema)}.identities"
    # Two halves, each with the one join it needs: a userId's events probe only the
    # userId's link, the anonymous ones only the anonymousId's ranges (one join of
    # both over every event cost ~40% of a funnel over 10 M events).
    return f"""
SELECT ev.*, COALESCE(up.profile_id, ev.user_id) AS person, {t} AS t
FROM ({events}) AS ev
LEFT JOIN (SELECT user_id, MIN(profile_id) AS profile_id FROM {ident} GROUP BY user_id) AS up
  ON up.user_id = ev.user_id
WHERE ev.user_id IS NOT NULL
UNION ALL
SELECT ev.*, COALESCE(al.profile_id, ev.anonymous_id) AS person, {t} AS t
FROM ({events}) AS ev
LEFT JOIN {_ranges(ident)}
  ON al.anonymous_id = ev.anonymous_id
 AND (al.valid_from IS NULL OR ev.ts >= al.valid_from)
 AND (al.valid_to IS NULL OR ev.ts < al.valid_to)
WHERE ev.user_id IS NULL AND ev.anonymous_id IS NOT NULL"""


def keyed_people_sql(
    store: Store, cat: Catalog, events: str, columns: str, aggregates: Mapping[str, str]
) -> str:
    """Rows of (person, each of ``aggregates``): the aggregates ({alias: SQL aggregate
    expression}, over ``columns``: a select list over one event's columns of
    :func:`events_sql` and ``t``, epoch seconds) computed per userId, per anonymousId,
    and per person only for anonymousIds with more than one link; a person may so have
    several rows, which the caller merges (GROUP BY person: a min of the mins, the
    lists' elements together...). The person is :func:`people_sql`'s, by the same rule.

    Why: over 10 M events the join of every event with its link and a GROUP BY of
    every event by the person it gives were ~half of a funnel's CPU. A userId's events
    all belong to one person (its link's profile_id, else itself), and so do an
    anonymousId's when it has at most one link (that link's range covers all time); so
    the events are grouped by their own id, and only the ~one row per id left is
    joined with the links (docs/benchmarks.md: the funnel -40 % CPU). An anonymousId
    linked twice or more (a shared device) joins event by event, on its ranges.
    """
    t = "CAST(EXTRACT(EPOCH FROM ev.ts) AS DOUBLE PRECISION)"
    names = ", ".join(aggregates)
    computed = ", ".join(f"{sql} AS {alias}" for alias, sql in aggregates.items())

    def grouped(key: str, where: str) -> str:
        return (
            f"SELECT k, {computed} FROM (SELECT {key} AS k, {columns} FROM"
            f" (SELECT ev.*, {t} AS t FROM ({events}) AS ev WHERE {where}) AS x) AS y GROUP BY k"
        )

    schema = store.identities_schema
    if "linked_at" not in cat.tables.get((schema, "identities"), {}):
        everyone = grouped("COALESCE(x.user_id, x.anonymous_id)", "TRUE")
        return f"SELECT k AS person, {names} FROM ({everyone}) AS g"
    ident = f"{quote(schema)}.identities"
    anonymous = "ev.user_id IS NULL AND ev.anonymous_id IS NOT NULL"
    ranges = _ranges(ident)
    return f"""
SELECT COALESCE(up.profile_id, g.k) AS person, {names}
FROM ({grouped("x.user_id", "ev.user_id IS NOT NULL")}) AS g
LEFT JOIN (SELECT user_id, MIN(profile_id) AS profile_id FROM {ident} GROUP BY user_id) AS up
  ON up.user_id = g.k
UNION ALL
SELECT COALESCE(one.profile_id, g.k) AS person, {names}
FROM ({grouped("x.anonymous_id", anonymous)}) AS g
LEFT JOIN (SELECT anonymous_id, MIN(profile_id) AS profile_id, COUNT(*) AS links FROM {ident}
           WHERE anonymous_id IS NOT NULL GROUP BY anonymous_id) AS one
  ON one.anonymous_id = g.k
WHERE one.links IS NULL OR one.links = 1
UNION ALL
SELECT k AS person, {names} FROM (
SELECT k, {computed} FROM (SELECT person AS k, {columns} FROM (
  SELECT x.*, COALESCE(al.profile_id, x.anonymous_id) AS person
  FROM (SELECT ev.*, {t} AS t FROM ({events}) AS ev WHERE {anonymous}) AS x
  JOIN {ranges} ON al.anonymous_id = x.anonymous_id
   AND (al.valid_from IS NULL OR x.ts >= al.valid_from)
   AND (al.valid_to IS NULL OR x.ts < al.valid_to)
  WHERE x.anonymous_id IN (SELECT anonymous_id FROM {ident} WHERE anonymous_id IS NOT NULL
                           GROUP BY anonymous_id HAVING COUNT(*) > 1)) AS y) AS z GROUP BY k
) AS shared"""


def _ranges(ident: str) -> str:
    """Each link of an anonymousId as the range it covers, [valid_from, valid_to) (NULL:
    unbounded), as ``al``: the first from the beginning of time, each until the next
    (ties on linked_at ordered by user_id)."""
    return f"""(
  SELECT anonymous_id, profile_id,
         CASE WHEN ROW_NUMBER() OVER w = 1 THEN NULL ELSE linked_at END AS valid_from,
         LEAD(linked_at) OVER w AS valid_to
  FROM {ident} WHERE anonymous_id IS NOT NULL
  WINDOW w AS (PARTITION BY anonymous_id ORDER BY linked_at, user_id)
) AS al"""


async def person_events(
    store: Store, args: dict[str, Any], events: Sequence[str] | None = None
) -> tuple[Query, Catalog, str]:
    """What a report starts from: its query (parameters so far), the catalog, and the
    SQL of the people's events in ``args``' range (:func:`people_sql`): tracks of
    ``events``, or every track, page and screen when None."""
    q, cat, source = await report_events(store, args, events)
    return q, cat, people_sql(store, cat, source)


async def report_events(
    store: Store, args: dict[str, Any], events: Sequence[str] | None = None
) -> tuple[Query, Catalog, str]:
    """:func:`person_events` before the people: the SQL of the events themselves
    (:func:`events_sql`), for :func:`people_sql` or :func:`keyed_people_sql`."""
    cat = await read_catalog(store)
    q = Query()
    span = Range(args.get("since"), args.get("until"))
    if events is None:
        return q, cat, events_sql(q, cat, span, tables=ACTIVITY_TABLES)
    return q, cat, events_sql(q, cat, span, events=events)


# -- calendar periods, as integers SQL computes the same way on both engines ----------

PERIODS = ("day", "week", "month")
_EPOCH = date(1970, 1, 1)


def period_sql(period: str, t: str = "t", ts: str = "ts") -> str:
    """The period number of an event: days since 1970-01-01, ISO weeks (Monday first)
    since the week of 1970-01-01, or months since year 0 (``t``: epoch seconds)."""
    if period == "day":
        return f"CAST(FLOOR({t} / 86400) AS BIGINT)"
    if period == "week":
        # 1970-01-01 was a Thursday: +3 days puts each Monday at a multiple of 7
        return f"CAST(FLOOR(({t} / 86400 + 3) / 7) AS BIGINT)"
    return (
        f"(CAST(EXTRACT(YEAR FROM {ts}) AS BIGINT) * 12"
        f" + CAST(EXTRACT(MONTH FROM {ts}) AS BIGINT) - 1)"
    )


def period_of(period: str, when: datetime) -> int:
    """The period number of a moment (as :func:`period_sql` computes it)."""
    when = when.astimezone(UTC)
    if period == "month":
        return when.year * 12 + when.month - 1
    days = (when.date() - _EPOCH).days
    return days if period == "day" else (days + 3) // 7


def period_start(period: str, n: int) -> date:
    """The first day of period number ``n``."""
    if period == "day":
        return _EPOCH + timedelta(days=n)
    if period == "week":
        return _EPOCH + timedelta(days=n * 7 - 3)
    return date(n // 12, n % 12 + 1, 1)


def period_days(period: str, n: int) -> list[int]:
    """The day numbers of period ``n``."""
    first = (period_start(period, n) - _EPOCH).days
    last = (period_start(period, n + 1) - _EPOCH).days
    return list(range(first, last))


def day_number(period: str, n: int) -> int:
    return (period_start(period, n) - _EPOCH).days
