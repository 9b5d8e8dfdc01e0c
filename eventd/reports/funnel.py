"""The funnel report: how many people did steps 1..k in order, within a window.

A person reaches step k if they did steps 1..k in that order, each at or after the
previous (events sent together carry one timestamp; an event never counts for two
steps, as steps are distinct event names), all within ``within`` of their first
step-1 event in the range (their earliest step-1 event anchors the funnel; each later
step takes its earliest match, which is the best choice for every step after it).
``by`` splits people by a property's value on that anchoring event (Mixpanel's rule);
a missing value is ``"(none)"``.

JSON: ``{"steps": [...], "total": [n1, ...], "by": {"VALUE": [n1, ...], ...}}``.
"""

from __future__ import annotations

from typing import Any

from eventd.reports import params as p
from eventd.reports.output import Section
from eventd.reports.store import Catalog, Query, Store, person_events, quote

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
    q, cat, pe = await person_events(store, args, sorted(set(steps)))
    within = q.param(float(args["within"]))
    ctes = [
        f"pe AS MATERIALIZED ({pe})",
        "s1 AS (SELECT person, src, id, t AS t1 FROM (SELECT person, src, id, t,"
        " ROW_NUMBER() OVER (PARTITION BY person ORDER BY t, id) AS rn FROM pe"
        f" WHERE event = {q.param(steps[0])}) AS x WHERE rn = 1)",
        "s1t AS (SELECT person, t1, t1 AS tk FROM s1)",
    ]
    previous = "s1t"
    for k, step in enumerate(steps[1:], 2):
        ctes.append(
            f"s{k} AS (SELECT prev.person, prev.t1, MIN(pe.t) AS tk FROM {previous} AS prev"
            f" JOIN pe ON pe.person = prev.person AND pe.event = {q.param(step)}"
            f" AND pe.t >= prev.tk AND pe.t <= prev.t1 + {within}"
            " GROUP BY prev.person, prev.t1)"
        )
        previous = f"s{k}"
    by_sql, by_join = "CAST(NULL AS TEXT)", ""
    if args["by"] is not None:
        ctes.append(f"byv AS ({_by_values(store, cat, q, steps[0], args['by'])})")
        by_sql, by_join = "b.v", " LEFT JOIN byv AS b ON b.src = s1.src AND b.id = s1.id"
    counts = ", ".join(["COUNT(*)"] + [f"COUNT(s{k}.person)" for k in range(2, len(steps) + 1)])
    joins = "".join(f" LEFT JOIN s{k} ON s{k}.person = s1.person" for k in range(2, len(steps) + 1))
    sql = (
        f"WITH {', '.join(ctes)} SELECT {by_sql} AS v, {counts} FROM s1{by_join}{joins}"
        f" GROUP BY {by_sql}"
    )
    rows = await store.query(*q.bind(sql))
    total = [0] * len(steps)
    by: dict[str, list[int]] = {}
    for v, *numbers in rows:
        total = [a + int(b) for a, b in zip(total, numbers, strict=True)]
        if args["by"] is not None:
            key = NONE if v is None else str(v)
            by[key] = [
                a + int(b) for a, b in zip(by.get(key, [0] * len(steps)), numbers, strict=True)
            ]
    return {"steps": steps, "total": total, "by": dict(sorted(by.items()))}


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
