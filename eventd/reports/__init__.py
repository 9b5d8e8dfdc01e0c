"""Reports on a warehouse store: funnel, retention, engagement, churn, revenue.

Each report is a module with ``NAME``, ``HELP``, ``PARAMS`` (params.py), ``run(store,
args) -> JSON`` and ``table(JSON) -> sections`` (output.py). They read the tables of
the ``[reports] store`` destination (duckdb or postgres) through its ``query``
method, never the outbox; store.py holds the SQL they share (events, people,
periods). http.py serves them at ``GET /admin/reports/NAME``; cli.py adds
``eventd report NAME``, a client of those endpoints; plugin.py registers both through
eventd's feature hooks (the ``eventd.plugins`` entry-point group).
"""

from __future__ import annotations

from types import ModuleType

from eventd.reports import churn, engagement, funnel, retention, revenue

REPORTS: dict[str, ModuleType] = {
    m.NAME: m for m in (funnel, retention, engagement, churn, revenue)
}

__all__ = ["REPORTS"]
