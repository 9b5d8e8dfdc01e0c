"""The retention report: cohorts of people by the period of their first ``start`` event,
and how many of each came back in each of the ``periods`` periods after.

``returned[k-1]`` counts cohort members with a ``return`` event (any track, page or
screen with ``any``) in the k-th period after the cohort's own (k = 1..N). Periods are
UTC calendar days or ISO weeks (Monday first).

JSON: ``{"period": "day", "cohorts": [{"start": "2026-11-02", "size": 33,
"returned": [r1, ..., rN]}]}``, cohorts oldest first.
"""

from __future__ import annotations

from typing import Any

from eventd.reports import params as p
from eventd.reports.output import Section
from eventd.reports.store import (
    Store,
    keyed_people_sql,
    people_sql,
    period_sql,
    period_start,
    report_events,
)

NAME = "retention"
HELP = "cohorts by first START event, and who returned in each period after"
PARAMS = [
    p.Param(
        "start",
        "the event that puts a person in a cohort",
        p.event_name,
        required=True,
        metavar="EVENT",
    ),
    p.Param(
        "return",
        "the event that counts as coming back, or 'any' (default)",
        p.event_name,
        "any",
        metavar="EVENT|any",
    ),
    p.period("day", "day", "week"),
    p.number("periods", "periods after the cohort's", "7"),
    *p.RANGE,
]


async def run(store: Store, args: dict[str, Any]) -> dict[str, Any]:
    period, n, start, back = args["period"], args["periods"], args["start"], args["return"]
    if back == "any":
        q, cat, source = await report_events(store, args)
        returns = "TRUE"
    else:
        q, cat, source = await report_events(store, args, sorted({start, back}))
        returns = f"event = {q.param(back)}"
    columns = (
        f"{period_sql(period)} AS pn, COALESCE(event = {q.param(start)}, FALSE) AS s,"
        f" COALESCE({returns}, FALSE) AS r"
    )
    if store.dialect == "duckdb":
        sql = _duckdb_sql(keyed_people_sql(store, cat, source, columns, _KEYED), q.param(n))
    else:
        sql = _sql(people_sql(store, cat, source), columns, q.param(n))
    cohorts: dict[int, dict[str, Any]] = {}
    for c, k, people in await store.query(*q.bind(sql)):
        cohort = cohorts.setdefault(
            int(c),
            {"start": period_start(period, int(c)).isoformat(), "size": 0, "returned": [0] * n},
        )
        if int(k) == 0:
            cohort["size"] = int(people)
        else:
            cohort["returned"][int(k) - 1] = int(people)
    return {"period": period, "cohorts": [cohorts[c] for c in sorted(cohorts)]}


# Per userId / anonymousId (store.keyed_people_sql): the first start period, and the
# periods with a return event.
_KEYED = {"c": "min(pn) FILTER (WHERE s)", "rs": "list(DISTINCT pn) FILTER (WHERE r)"}


def _duckdb_sql(keyed: str, n: str) -> str:
    """Rows of (cohort period, k, people) on DuckDB: each person's cohort and return
    periods gathered from their ids' rows (``keyed``, of :data:`_KEYED`), never a row
    per event (the join of every event with its link and a GROUP BY person and period
    of every event were most of the retention's CPU over 10 M events); k = 0 gives the
    cohort's size."""
    return f"""
WITH p AS MATERIALIZED (SELECT person, min(c) AS c, list_distinct(flatten(list(rs))) AS rs
       FROM ({keyed}) AS keyed GROUP BY person HAVING min(c) IS NOT NULL)
SELECT c, 0 AS k, COUNT(*) FROM p GROUP BY c
UNION ALL
SELECT c, pn - c AS k, COUNT(*) FROM (SELECT c, unnest(rs) AS pn FROM p) AS r
  WHERE pn > c AND pn <= c + {n} GROUP BY c, pn - c"""


def _sql(pe: str, columns: str, n: str) -> str:
    """The same rows in SQL both engines run (PostgreSQL's), from people's events."""
    # One narrow materialized table (person, period, is-start, is-return): the wide
    # rows of people's events are never stored.
    return f"""
WITH pe AS MATERIALIZED (SELECT person, {columns} FROM ({pe}) AS x),
c AS (SELECT person, MIN(pn) AS c FROM pe WHERE s GROUP BY person),
r AS (SELECT DISTINCT person, pn FROM pe WHERE r)
SELECT c, 0 AS k, COUNT(*) FROM c GROUP BY c
UNION ALL
SELECT c.c, r.pn - c.c AS k, COUNT(*) FROM c JOIN r ON r.person = c.person
  AND r.pn > c.c AND r.pn <= c.c + {n} GROUP BY c.c, r.pn - c.c"""


def table(result: dict[str, Any]) -> list[Section]:
    """One row per cohort: its start, size, and returned people per period after."""
    n = max((len(c["returned"]) for c in result["cohorts"]), default=0)
    header = ["cohort", "people", *(f"+{k}" for k in range(1, n + 1))]
    return [
        ("retention", header, [[c["start"], c["size"], *c["returned"]] for c in result["cohorts"]])
    ]
