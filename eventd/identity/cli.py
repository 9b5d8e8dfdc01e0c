"""``eventd profiles show ID [--json]`` and ``eventd profiles events ID [--limit N]``:
thin clients of the profile API (eventd/identity/api.py) on the running daemon."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from eventd.cli import AdminClient, _table
from eventd.config import load


def add_commands(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "profiles", help="who a userId or anonymousId is: profile and stitched timeline"
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, run, help in (
        ("show", cmd_show, "show the profile of a userId or anonymousId"),
        ("events", cmd_events, "list a profile's stored events, newest first"),
    ):
        a = group.add_parser(action, help=help, description=help)
        a.set_defaults(run=run, verb="profiles")
        a.add_argument("--config", metavar="PATH")
        a.add_argument("id", metavar="ID", help="a userId (tried first) or an anonymousId")
        a.add_argument("--kind", choices=("user_id", "anonymous_id"), help="force the id's kind")
    group.choices["show"].add_argument("--json", action="store_true", help="print the JSON")
    group.choices["events"].add_argument("--limit", type=int, default=20, metavar="N")


def _path(args: argparse.Namespace, suffix: str = "", **query: Any) -> str:
    q = {k: v for k, v in {"kind": args.kind, **query}.items() if v is not None}
    path = f"/admin/profiles/{urllib.parse.quote(args.id, safe='')}{suffix}"
    return path + ("?" + urllib.parse.urlencode(q) if q else "")


def cmd_show(args: argparse.Namespace) -> int:
    profile = AdminClient(load(args.config)).request("GET", _path(args))
    if args.json:
        print(json.dumps(profile, indent=2, ensure_ascii=False))
        return 0
    for key, value in profile.items():
        text = value if isinstance(value, str | int | float) else json.dumps(value)
        print(f"{key + ':':16} {text}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    res = AdminClient(load(args.config)).request("GET", _path(args, "/events", limit=args.limit))
    rows = []
    for item in res["events"]:
        e = item["event"]
        rows.append(
            {
                "seq": item["seq"],
                "timestamp": e.get("timestamp"),
                "type": e.get("type"),
                "name": e.get("event") or e.get("name"),
                "user_id": e.get("userId"),
                "anonymous_id": e.get("anonymousId"),
            }
        )
    if not rows:
        print("no stored events")
        return 0
    _table(rows, ["seq", "timestamp", "type", "name", "user_id", "anonymous_id"])
    return 0
