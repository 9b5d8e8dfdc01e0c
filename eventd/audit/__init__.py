"""Data audits: ``eventd audit`` and ``GET /admin/audit`` (a feature plugin).

Reads the stored events (so what ``storage.retention`` kept) through the Store
(``seq_range`` finds where ``since`` starts, ``read`` pages the log from there)
and reports them with :class:`.report.Audit`; the CLI prints the admin API's
JSON, or a table or CSV of it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from eventd.admin import BadRequest, guarded, parse_time
from eventd.hookspecs import hookimpl
from eventd.store import Store, now_ms

from .report import Audit

if TYPE_CHECKING:
    from eventd.app import Runtime

FORMATS = ("table", "json", "csv")
PAGE = 5000  # events per read of the log
COLUMNS = ["type", "event", "volume", "path", "types", "null_share", "missing_share", "distinct"]


async def stored_events(
    store: Store, source: str | None, since_ms: int | None
) -> AsyncIterator[list[tuple[str, int, bytes]]]:
    """Pages of (source, received_at ms, body JSON) of the stored events of ``source``
    (every source when None) received at or after ``since_ms`` (all when None)."""
    after = 0
    if since_ms is not None:
        found = await store.seq_range(since_ms, max(since_ms, now_ms()))
        if found is None:
            return
        after = found.first - 1
    while True:
        events = await store.read(after, PAGE)
        if not events:
            return
        after = events[-1].seq
        yield [
            (e.source, e.received_at, e.body)
            for e in events
            if (source is None or e.source == source)
            and (since_ms is None or e.received_at >= since_ms)
        ]


async def audit(runtime: Runtime, source: str | None, since_ms: int | None) -> dict[str, Any]:
    """The audit of the stored events of ``source`` (all) since ``since_ms`` (all)."""
    plans = {name: s.tracking_plan for name, s in runtime.config.sources.items()}
    report = Audit(plans, source)
    async for page in stored_events(runtime.store, source, since_ms):
        # Parsing and counting a page is CPU work: off the event loop that ingests.
        await asyncio.to_thread(report.add, page)
    return report.result(since_ms)


@hookimpl
def eventd_routes(app: web.Application, runtime: Runtime) -> None:
    async def handler(request: web.Request) -> web.Response:
        source = request.query.get("source") or None
        if source is not None and source not in runtime.config.sources:
            raise BadRequest(f"source={source!r}: no such source")
        since = parse_time(request.query.get("since"), "since")
        body = orjson.dumps(await audit(runtime, source, since))
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/admin/audit", guarded(runtime.config.admin.token, handler))


@hookimpl
def eventd_commands(subparsers: Any, verb: Any) -> None:
    a = verb("audit", run, "report what stored events carry, per event and property")
    a.add_argument("--source", metavar="S", help="one source (default: every source)")
    a.add_argument("--since", metavar="T", help="a duration back (7d) or an ISO-8601 time")
    a.add_argument("--format", choices=FORMATS, default="table")


def run(args: argparse.Namespace) -> int:
    from eventd.cli import _client, _query  # the CLI's admin client (not at import: cycle)

    res = _client(args).request(
        "GET", "/admin/audit" + _query(source=args.source, since=args.since)
    )
    if args.format == "json":
        print(json.dumps(res, indent=2))
    elif args.format == "csv":
        write_csv(res)
    else:
        print_table(res)
    return 0


def rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (call, property path); a call without properties is one row."""
    out = []
    for c in res["calls"]:
        base = {"type": c["type"], "event": c["event"] or "", "volume": c["volume"]}
        base["first_seen"], base["last_seen"] = c["first_seen"], c["last_seen"]
        v = c["violations"]
        base["violating_events"] = "" if v is None else v["events"]
        for p in c["properties"] or [{}]:
            row = dict(base)
            if p:
                row.update(
                    path=p["path"],
                    types=" ".join(f"{t}:{n}" for t, n in p["types"].items()),
                    null_share=p["null_share"],
                    missing_share=p["missing_share"],
                    distinct=("" if p["distinct_exact"] else "~") + str(p["distinct"]),
                    examples=" | ".join(p["examples"]),
                )
            out.append(row)
    return out


def write_csv(res: dict[str, Any]) -> None:
    fields = [*COLUMNS, "examples", "first_seen", "last_seen", "violating_events"]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows(res))


def print_table(res: dict[str, Any]) -> None:
    from eventd.cli import _table

    scope = f"source {res['source']}" if res["source"] else "every source"
    since = f" since {res['since']}" if res["since"] else ""
    print(f"{res['events']} stored events of {scope}{since}")
    if res["calls"]:
        _table(rows(res), [*COLUMNS, "examples"])
    findings = [
        (c, f) for c in res["calls"] if c["violations"] for f in c["violations"]["findings"]
    ]
    if findings:
        print("\ntracking plan violations:")
        _table(
            [
                {**f, "type": c["type"], "event": c["event"] or "", "finding": f["type"]}
                for c, f in findings
            ],
            ["type", "event", "finding", "field", "count", "example"],
        )
    if res["never_seen"]:
        print("\nplanned events never seen:")
        _table(res["never_seen"], ["source", "event"])


__all__ = ["audit"]
