"""The revenue report: revenue, paying people, ARPU and ARPPU per period, and revenue
per person by signup cohort.

Revenue is the sum of ``property`` (a numeric column) over ``event`` tracks. A paying
person has such an event in the period; ARPU divides the period's revenue by its
active people (a track, page or screen in it), ARPPU by its paying people. A person's
signup cohort is the period of their first activity in the range.

JSON: ``{"period": "month", "event": "Order Completed", "property": "revenue",
"periods": [{"start", "revenue", "paying_users", "active_users", "arpu", "arppu"}],
"cohorts": [{"start", "users", "revenue", "revenue_per_user"}]}``; money to 2 places.
"""

from __future__ import annotations

from typing import Any

from eventd.reports import params as p
from eventd.reports.output import Section
from eventd.reports.store import (
    Catalog,
    Query,
    Store,
    period_sql,
    period_start,
    person_events,
    quote,
)

NAME = "revenue"
HELP = "revenue, paying people, ARPU and ARPPU per period; revenue per person by cohort"
PARAMS = [
    p.Param(
        "event",
        "the purchase event (default 'Order Completed')",
        p.event_name,
        "Order Completed",
        metavar="EVENT",
    ),
    p.Param(
        "property",
        "its numeric amount property (default 'revenue')",
        p.text,
        "revenue",
        metavar="PROPERTY",
    ),
    p.period("month", "day", "week", "month"),
    *p.RANGE,
]


async def run(store: Store, args: dict[str, Any]) -> dict[str, Any]:
    period = args["period"]
    q, cat, pe = await person_events(store, args)
    amounts = _amounts(store, cat, q, args["event"], args["property"])
    pn = period_sql(period)
    sql = f"""
WITH pe AS MATERIALIZED ({pe}),
rev AS (SELECT pe.person, {pn} AS pn, amt.amount FROM pe
        JOIN ({amounts}) AS amt ON amt.src = pe.src AND amt.id = pe.id),
fs AS (SELECT person, MIN({pn}) AS c FROM pe GROUP BY person),
spent AS (SELECT person, SUM(amount) AS total FROM rev GROUP BY person)
SELECT 'a' AS kind, {pn} AS pn, CAST(COUNT(DISTINCT person) AS DOUBLE PRECISION), 0.0 FROM pe
GROUP BY {pn}
UNION ALL
SELECT 'r', pn, SUM(amount), CAST(COUNT(DISTINCT person) AS DOUBLE PRECISION) FROM rev
GROUP BY pn
UNION ALL
SELECT 'c', fs.c, CAST(COUNT(*) AS DOUBLE PRECISION), COALESCE(SUM(spent.total), 0.0)
FROM fs LEFT JOIN spent ON spent.person = fs.person GROUP BY fs.c"""
    active: dict[int, int] = {}
    revenue: dict[int, tuple[float, int]] = {}
    cohorts: dict[int, tuple[int, float]] = {}
    for kind, n, a, b in await store.query(*q.bind(sql)):
        if kind == "a":
            active[int(n)] = int(a)
        elif kind == "r":
            revenue[int(n)] = (float(a), int(b))
        else:
            cohorts[int(n)] = (int(a), float(b))
    periods = []
    for n in sorted(active):
        total, paying = revenue.get(n, (0.0, 0))
        periods.append(
            {
                "start": period_start(period, n).isoformat(),
                "revenue": round(total, 2),
                "paying_users": paying,
                "active_users": active[n],
                "arpu": round(total / active[n], 2),
                "arppu": round(total / paying, 2) if paying else 0.0,
            }
        )
    return {
        "period": period,
        "event": args["event"],
        "property": args["property"],
        "periods": periods,
        "cohorts": [
            {
                "start": period_start(period, n).isoformat(),
                "users": users,
                "revenue": round(total, 2),
                "revenue_per_user": round(total / users, 2),
            }
            for n, (users, total) in sorted(cohorts.items())
        ],
    }


def _amounts(store: Store, cat: Catalog, q: Query, event: str, prop: str) -> str:
    """(src, id, amount) of every ``event`` track with a numeric ``prop``, every schema."""
    table = store.column_name(event)
    column = p.require_column(store.column_name(prop), "property", prop)
    name = q.param(event)
    parts = [
        f"SELECT CAST({q.param(schema)} AS TEXT) AS src, id,"
        f" CAST({quote(column)} AS DOUBLE PRECISION) AS amount FROM {quote(schema)}.{quote(table)}"
        f" WHERE event_text = {name} AND {quote(column)} IS NOT NULL"
        for schema in cat.schemas_with(table)
        if cat.is_numeric(schema, table, column)
    ]
    if not parts and any(column in cat.tables[(s, table)] for s in cat.schemas_with(table)):
        raise p.BadParameter("property", prop, f"a numeric property of {event!r} events")
    return " UNION ALL ".join(parts) or (
        "SELECT CAST(NULL AS TEXT) AS src, CAST(NULL AS TEXT) AS id,"
        " CAST(NULL AS DOUBLE PRECISION) AS amount WHERE 1 = 0"
    )


def table(result: dict[str, Any]) -> list[Section]:
    """The periods, then the signup cohorts."""
    periods = ["start", "revenue", "paying_users", "active_users", "arpu", "arppu"]
    cohorts = ["start", "users", "revenue", "revenue_per_user"]
    return [
        ("revenue", periods, [[row[c] for c in periods] for row in result["periods"]]),
        ("cohorts", cohorts, [[row[c] for c in cohorts] for row in result["cohorts"]]),
    ]
