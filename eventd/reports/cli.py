"""``eventd report funnel|retention|engagement|churn|revenue``: a client of the
daemon's ``/admin/reports/*`` (the daemon holds the store open; DuckDB allows one
process), printing its answer as a table, JSON or CSV (``--format``).

Each report's options are its PARAMS; values go to the daemon unparsed, so an error
reads the same as over HTTP.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from eventd.reports import REPORTS
from eventd.reports.output import FORMATS, render


def add_commands(subparsers: Any, verb: Any) -> None:
    parent = verb("report", _no_report, "funnel, retention, engagement, churn and revenue reports")
    reports = parent.add_subparsers(dest="report", metavar="REPORT", required=True)
    for name, report in REPORTS.items():
        r = reports.add_parser(name, help=report.HELP, description=report.HELP)
        r.set_defaults(run=_run, report=name)
        for p in report.PARAMS:
            r.add_argument(
                f"--{p.name}",
                dest=f"param_{p.name}",
                metavar=p.metavar,
                help=p.help,
                required=p.required,
            )
        r.add_argument("--format", choices=FORMATS, default="table", help="default: table")
        # --config after the report name too (eventd report funnel --config PATH ...)
        r.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)


def _no_report(args: argparse.Namespace) -> int:  # argparse requires a report first
    return 2


def _run(args: argparse.Namespace) -> int:
    from eventd.cli import _client  # the admin client every daemon verb uses

    report = REPORTS[args.report]
    query = {
        p.name: getattr(args, f"param_{p.name}")
        for p in report.PARAMS
        if getattr(args, f"param_{p.name}") is not None
    }
    path = f"/admin/reports/{report.NAME}"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    result = _client(args).request("GET", path)
    sys.stdout.write(render(result, report.table(result), args.format))
    return 0
