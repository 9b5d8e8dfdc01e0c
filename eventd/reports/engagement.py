"""The engagement report: active people per period, events per active person, and
stickiness.

Active: a person with a track, page or screen in the period. ``stickiness`` is the
period's average daily actives over its actives (DAU/MAU for months, DAU/WAU for
weeks; 1 for days), the average taken over the period's days that fall between the
first and the last day with any activity (a partial first or last period is not
diluted by days before or after the data).

JSON: ``{"period": "day", "periods": [{"start": "2026-11-02", "active_users": 12,
"events": 80, "events_per_user": 6.6667, "stickiness": 0.5}]}`` (ratios to 4 places).
"""

from __future__ import annotations

from typing import Any

from eventd.reports import params as p
from eventd.reports.output import Section
from eventd.reports.store import Store, period_days, period_sql, period_start, person_events

NAME = "engagement"
HELP = "active people per period, events per active person, stickiness (DAU / MAU)"
PARAMS = [p.period("day", "day", "week", "month"), *p.RANGE]


async def run(store: Store, args: dict[str, Any]) -> dict[str, Any]:
    period = args["period"]
    q, _, pe = await person_events(store, args)
    sql = f"""
WITH pe AS MATERIALIZED ({pe})
SELECT 'p' AS kind, {period_sql(period)} AS pn, COUNT(DISTINCT person), COUNT(*) FROM pe
GROUP BY {period_sql(period)}
UNION ALL
SELECT 'd', {period_sql("day")}, COUNT(DISTINCT person), COUNT(*) FROM pe
GROUP BY {period_sql("day")}"""
    periods: dict[int, tuple[int, int]] = {}
    daily: dict[int, int] = {}
    for kind, pn, people, events_n in await store.query(*q.bind(sql)):
        if kind == "p":
            periods[int(pn)] = (int(people), int(events_n))
        else:
            daily[int(pn)] = int(people)
    first, last = (min(daily), max(daily)) if daily else (0, -1)
    out = []
    for pn in sorted(periods):
        people, events_n = periods[pn]
        days = [d for d in period_days(period, pn) if first <= d <= last]
        average = sum(daily.get(d, 0) for d in days) / len(days)
        out.append(
            {
                "start": period_start(period, pn).isoformat(),
                "active_users": people,
                "events": events_n,
                "events_per_user": round(events_n / people, 4),
                "stickiness": round(average / people, 4),
            }
        )
    return {"period": period, "periods": out}


def table(result: dict[str, Any]) -> list[Section]:
    columns = ["start", "active_users", "events", "events_per_user", "stickiness"]
    return [("engagement", columns, [[row[c] for c in columns] for row in result["periods"]])]
