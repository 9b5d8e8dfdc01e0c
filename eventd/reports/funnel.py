"""The funnel report: how many people did steps 1..k in order, within a window.

A person reaches step k if they did steps 1..k in that order, each at or after the
previous (events sent together carry one timestamp; an event never counts for two
steps, as steps are distinct event names), all within ``within`` of their first
step-1 event in the range (their earliest step-1 event anchors the funnel; each later
step takes its earliest match, which is the best choice for every step after it).
``by`` splits people by a property's value on that anchoring event (Mixpanel's rule);
a missing value is ``"(none)"``.

JSON: ``{"steps": [...], "total": [n1, ...], "by": {"VALUE": [n1, ...], ...}}``.

The SQL: GROUP BYs per userId / anonymousId, then per person, and list functions on
DuckDB (:func:`_duckdb_sql`), joins and GROUP BYs on PostgreSQL (:func:`_joins_sql`);
the tests hold both to the same independently computed answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventd.reports import params as p
from eventd.reports.output import Section
from eventd.reports.store import (
    Catalog,
    Query,
    Store,
    keyed_people_sql,
    people_sql,
    quote,
    report_events,
)

NAME = "funnel"
HELP = "people who did the steps in order, within a window, split by a property"
PARAMS = [
    p.Param(
        "steps",
        "the step events in order, separated by commas",
        p.steps,
        required=True,
        metavar='"A,B,C"',
    ),
    p.Param("by", "split by this property of the step-1 event", p.text, metavar="PROPERTY"),
    p.Param(
        "within", "all steps within this long of step 1 (default 1d)", p.duration, "1d", metavar="D"
    ),
    *p.RANGE,
]
NONE = "(none)"


async def run(store: Store, args: dict[str, Any]) -> dict[str, Any]:
    steps: list[str] = args["steps"]
    q, cat, source = await report_events(store, args, sorted(set(steps)))
    pe = people_sql(store, cat, source)
    within = q.param(float(args["within"]))
    # Steps as numbers, and only the columns the funnel reads: what is grouped or
    # materialized stays narrow (src and id only to find a --by value).
    number = " ".join(f"WHEN {q.param(step)} THEN {i}" for i, step in enumerate(steps, 1))
    by = args["by"] is not None
    parts = _Funnel(store, cat, q, steps, args["by"], source, pe, number, within)
    sql = _duckdb_sql(parts) if store.dialect == "duckdb" else _joins_sql(parts)
    rows = await store.query(*q.bind(sql))
    total = [0] * len(steps)
    by_value: dict[str, list[int]] = {}
    for v, *numbers in rows:
        total = [a + int(b) for a, b in zip(total, numbers, strict=True)]
        if by:
            key = NONE if v is None else str(v)
            by_value[key] = [
                a + int(b)
                for a, b in zip(by_value.get(key, [0] * len(steps)), numbers, strict=True)
            ]
    return {"steps": steps, "total": total, "by": dict(sorted(by_value.items()))}


@dataclass
class _Funnel:
    """What a funnel's SQL is built from: ``pe`` the people's events (SQL), ``number``
    the CASE branches giving each step's number, ``within`` the window's parameter."""

    store: Store
    cat: Catalog
    q: Query
    steps: list[str]
    by: str | None
    events: str  # the events (store.events_sql), for keyed_people_sql
    pe: str  # the people's events (store.people_sql)
    number: str
    within: str


def _joins_sql(f: _Funnel) -> str:
    """The funnel in joins and GROUP BYs any engine runs (PostgreSQL's): one row per
    ``by`` value (NULL without ``by``) and its people per step."""
    store, cat, q, steps, by_property = f.store, f.cat, f.q, f.steps, f.by
    pe, number, within = f.pe, f.number, f.within
    k = len(steps)
    by = by_property is not None
    keys = ", src, id" if by else ""
    ctes = [
        f"pe AS MATERIALIZED (SELECT person, t, CASE event {number} END AS step{keys}"
        f" FROM ({pe}) AS x)"
    ]
    if by:  # the earliest step-1 event, ties broken by id: its src and id give the value
        ctes.append(
            "s1 AS (SELECT person, src, id, t AS t1 FROM (SELECT person, src, id, t,"
            " ROW_NUMBER() OVER (PARTITION BY person ORDER BY t, id) AS rn FROM pe"
            " WHERE step = 1) AS x WHERE rn = 1)"
        )
    else:
        ctes.append("s1 AS (SELECT person, MIN(t) AS t1 FROM pe WHERE step = 1 GROUP BY person)")
    # One join: every later step's events within the window of each person's step 1;
    # then step j takes, per person, the earliest of its events at or after step j-1's
    # time: a join and a GROUP BY per step over that smaller set (hash aggregates:
    # DuckDB's partitioned window functions sorted, 2-3x slower here).
    ctes.append(
        "w AS MATERIALIZED (SELECT pe.person, pe.step, pe.t FROM pe JOIN s1"
        f" ON pe.person = s1.person WHERE pe.step > 1 AND pe.t >= s1.t1"
        f" AND pe.t <= s1.t1 + {within})"
    )
    previous = "(SELECT person, t1 AS tk FROM s1)"
    for j in range(2, k + 1):
        ctes.append(
            f"r{j} AS (SELECT w.person, MIN(w.t) AS tk FROM w JOIN {previous} AS prev"
            f" ON w.person = prev.person WHERE w.step = {j} AND w.t >= prev.tk"
            " GROUP BY w.person)"
        )
        previous = f"r{j}"
    by_sql, by_join = "CAST(NULL AS TEXT)", ""
    if by_property is not None:
        ctes.append(f"byv AS ({_by_values(store, cat, q, steps[0], by_property)})")
        by_sql, by_join = "b.v", " LEFT JOIN byv AS b ON b.src = s1.src AND b.id = s1.id"
    counts = ", ".join(["COUNT(*)"] + [f"COUNT(r{j}.person)" for j in range(2, k + 1)])
    joins = "".join(f" LEFT JOIN r{j} ON r{j}.person = s1.person" for j in range(2, k + 1))
    return (
        f"WITH {', '.join(ctes)} SELECT {by_sql} AS v, {counts}"
        f" FROM s1{by_join}{joins} GROUP BY {by_sql}"
    )


def _duckdb_sql(f: _Funnel) -> str:
    """The funnel in one pass over people's events (DuckDB): the earliest step-1 event
    and each later step's times as a list, per userId and per anonymousId first
    (``store.keyed_people_sql``), then per person (the lists' times together); step j
    takes the earliest time of its list at or after step j-1's and within the window
    of step 1, by list functions on each person's row. The same answer as
    :func:`_joins_sql` (the tests run both stores), in ~a third of its CPU over 10 M
    events: no join of every event with its person's step 1, nor of each step with
    the previous one, nor of every event with its identity link."""
    steps, by_property, number, within = f.steps, f.by, f.number, f.within
    k = len(steps)
    by = by_property is not None
    # the anchoring step-1 event: the earliest, ties broken by id (src and id: --by)
    first = "{'t': t, 'id': id, 'src': src}" if by else "t"
    aggregates = {"a": f"min({first}) FILTER (WHERE step = 1)"}
    aggregates |= {f"l{j}": f"list(t) FILTER (WHERE step = {j})" for j in range(2, k + 1)}
    columns = f"t, CASE event {number} END AS step{', src, id' if by else ''}"
    keyed = keyed_people_sql(f.store, f.cat, f.events, columns, aggregates)
    # flatten skips a NULL list (a key without that step)
    lists = "".join(f", flatten(list(l{j})) AS l{j}" for j in range(2, k + 1))
    grouped = f"SELECT person, min(a) AS a{lists} FROM ({keyed}) AS keyed GROUP BY person"
    t1 = "a['t']" if by else "a"
    chain = f"SELECT *, {t1} AS t1 FROM ({grouped}) AS g WHERE a IS NOT NULL"
    for j in range(2, k + 1):
        chain = (
            f"SELECT *, list_min(list_filter(l{j}, lambda x: x >= t{j - 1}"
            f" AND x <= t1 + {within})) AS t{j} FROM ({chain}) AS c{j}"
        )
    counts = ", ".join(["COUNT(*)"] + [f"COUNT(f.t{j})" for j in range(2, k + 1)])
    if by_property is None:
        return f"SELECT CAST(NULL AS TEXT) AS v, {counts} FROM ({chain}) AS f"
    values = _by_values(f.store, f.cat, f.q, steps[0], by_property)
    return (
        f"SELECT b.v, {counts} FROM ({chain}) AS f LEFT JOIN ({values}) AS b"
        " ON b.src = f.a['src'] AND b.id = f.a['id'] GROUP BY b.v"
    )


def _by_values(store: Store, cat: Catalog, q: Query, step: str, prop: str) -> str:
    """(src, id, v) of the step-1 event's table in every schema: ``v`` the property's
    value as text (NULL where the table lacks the column)."""
    table = store.column_name(step)
    column = p.require_column(store.column_name(prop), "by", prop)
    parts = [
        f"SELECT CAST({q.param(schema)} AS TEXT) AS src, id,"
        f" CAST({quote(column) if column in cat.tables[(schema, table)] else 'NULL'} AS TEXT)"
        f" AS v FROM {quote(schema)}.{quote(table)}"
        for schema in cat.schemas_with(table)
    ]
    return " UNION ALL ".join(parts) or (
        "SELECT CAST(NULL AS TEXT) AS src, CAST(NULL AS TEXT) AS id, CAST(NULL AS TEXT) AS v"
        " WHERE 1 = 0"
    )


def table(result: dict[str, Any]) -> list[Section]:
    """One row per step: its people in all, the share of step 1, and per ``by`` value."""
    keys = list(result["by"])
    header = ["step", "people", "of step 1", *keys]
    first = result["total"][0] if result["total"] else 0
    rows = []
    for i, step in enumerate(result["steps"]):
        n = result["total"][i]
        share = f"{100 * n / first:.1f}%" if first else "-"
        rows.append([step, n, share, *(result["by"][k][i] for k in keys)])
    return [("funnel", header, rows)]
