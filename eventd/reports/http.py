"""``GET /admin/reports/{funnel|retention|engagement|churn|revenue}``: a report's JSON.

The CLI's parameters are the query parameters (params.py reads both). Behind the
admin bearer token (eventd.admin.guarded). Errors are JSON ``{"code", "message"}``:
400 ``bad_parameter`` (also naming ``parameter``), 503 ``no_report_store`` when no
store is configured or running, 503 ``report_store_unavailable`` when it fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import structlog
from aiohttp import web

from eventd.admin import guarded
from eventd.reports import REPORTS
from eventd.reports.params import BadParameter, parse
from eventd.reports.store import Store

log = structlog.get_logger("eventd.reports")
StoreLookup = Callable[[], Store | None]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def add_routes(app: web.Application, token: str | None, store: StoreLookup) -> None:
    for name, report in REPORTS.items():
        app.router.add_get(f"/admin/reports/{name}", guarded(token, _handler(report, store)))


def _handler(
    report: ModuleType, store: StoreLookup
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            args = parse(report.PARAMS, dict(request.query))
        except BadParameter as exc:
            return _json({"code": "bad_parameter", "message": str(exc), "parameter": exc.name}, 400)
        found = store()
        if found is None:
            return _json(
                {
                    "code": "no_report_store",
                    "message": "no report store: set [reports] store to a duckdb or postgres "
                    "destination (enabled)",
                },
                503,
            )
        try:
            result = await report.run(found, args)
        except BadParameter as exc:
            return _json({"code": "bad_parameter", "message": str(exc), "parameter": exc.name}, 400)
        except Exception as exc:  # the store's driver errors: down, locked, a bad file
            log.warning("report failed", report=report.NAME, error=f"{type(exc).__name__}: {exc}")
            return _json(
                {
                    "code": "report_store_unavailable",
                    "message": f"the report store failed: {type(exc).__name__}: {exc}",
                },
                503,
            )
        return _json(result)

    return handle
