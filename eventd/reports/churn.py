"""The churn report: per period, the people active in it and, of them, those inactive
for the next ``inactive`` periods.

Active: a track, page or screen in the period. Only periods whose ``inactive``
following periods have all begun by the last period of the range (``until``'s, else
the last with any activity) are reported: for later ones, absence is not churn yet.

JSON: ``{"period": "week", "inactive": 1, "periods": [{"start": "2026-11-02",
"active_users": 40, "churned": 6, "churn_rate": 0.15}]}`` (rate to 4 places).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from eventd.reports import params as p
from eventd.reports.output import Section
from eventd.reports.store import Store, period_of, period_sql, period_start, person_events

NAME = "churn"
HELP = "per period: active people, and those inactive for the next N periods"
PARAMS = [
    p.period("week", "day", "week", "month"),
    p.number("inactive", "periods without activity that make a person churned", "1"),
    *p.RANGE,
]


async def run(store: Store, args: dict[str, Any]) -> dict[str, Any]:
    period, n = args["period"], args["inactive"]
    q, _, pe = await person_events(store, args)
    sql = f"""
WITH pe AS MATERIALIZED ({pe}),
act AS (SELECT DISTINCT person, {period_sql(period)} AS pn FROM pe),
nx AS (SELECT pn, LEAD(pn) OVER (PARTITION BY person ORDER BY pn) AS nxt FROM act)
SELECT pn, COUNT(*), SUM(CASE WHEN nxt IS NULL OR nxt > pn + {q.param(n)} THEN 1 ELSE 0 END)
FROM nx GROUP BY pn"""
    rows = {int(pn): (int(a), int(c)) for pn, a, c in await store.query(*q.bind(sql))}
    if not rows:
        return {"period": period, "inactive": n, "periods": []}
    last = max(rows)
    if args["until"] is not None:
        last = period_of(period, args["until"] - timedelta(microseconds=1))
    out = [
        {
            "start": period_start(period, pn).isoformat(),
            "active_users": active,
            "churned": churned,
            "churn_rate": round(churned / active, 4),
        }
        for pn, (active, churned) in sorted(rows.items())
        if pn + n <= last
    ]
    return {"period": period, "inactive": n, "periods": out}


def table(result: dict[str, Any]) -> list[Section]:
    columns = ["start", "active_users", "churned", "churn_rate"]
    return [("churn", columns, [[row[c] for c in columns] for row in result["periods"]])]
