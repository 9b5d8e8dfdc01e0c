"""The ``eventd`` command line: serve, set up, check, and operate a running daemon.

Verbs that talk to a running daemon (status, dead-letters, replay, tail) are
clients of its admin API at the configured host, port and token; they say so
plainly when nothing answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from eventd import __version__
from eventd.config import Config, ConfigError, find_config_path, load, new_secret


class CliError(Exception):
    """Printed as ``eventd: message`` with exit status 1; ``status``: the admin API's
    HTTP status when it answered with an error (None: another failure)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ConfigError, CliError) as exc:
        print(f"eventd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventd", description="Segment-compatible event router")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, run: Any, help: str) -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help, description=help)
        v.set_defaults(run=run)
        if name not in ("init", "version"):
            v.add_argument(
                "--config",
                metavar="PATH",
                help="config file (else $EVENTD_CONFIG, ./eventd.toml, or the embedded default)",
            )
        return v

    s = verb("serve", cmd_serve, "run the server")
    s.add_argument("--log-format", choices=("json", "console"), default="json")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    i = verb("init", cmd_init, "write a commented starter config with fresh keys")
    i.add_argument("path", nargs="?", default="eventd.toml")
    verb("check", cmd_check, "validate the config; exit 1 naming the key on error")
    verb("plugins", cmd_plugins, "list installed destination and source types and their settings")
    verb("status", cmd_status, "per destination: cursor, lag, delivered, retrying, dead")

    def group(
        name: str, help: str, actions: tuple[tuple[str, Any, str], ...]
    ) -> dict[str, argparse.ArgumentParser]:
        """A verb with actions (``eventd dead-letters list``), each taking --config."""
        g = sub.add_parser(name, help=help).add_subparsers(
            dest="action", metavar="ACTION", required=True
        )
        parsers = {}
        for action, run, action_help in actions:
            a = g.add_parser(action, help=action_help, description=action_help)
            a.set_defaults(run=run, verb=name)
            a.add_argument("--config", metavar="PATH")
            parsers[action] = a
        return parsers

    dl = group(
        "dead-letters",
        "list, show, redrive or purge dead letters",
        (
            ("list", cmd_dl_list, "list dead letters"),
            ("show", cmd_dl_show, "show one dead letter with its event"),
            ("redrive", cmd_dl_redrive, "put dead letters back in front of their destination"),
            ("purge", cmd_dl_purge, "delete dead letters"),
        ),
    )
    dl["show"].add_argument("id", type=int)
    for action in ("list", "redrive", "purge"):
        dl[action].add_argument("--destination", metavar="NAME")
    dl["list"].add_argument("--since", metavar="T", help="ISO-8601 time or a duration ago (2h)")
    dl["list"].add_argument("--limit", type=int, default=100)
    dl["redrive"].add_argument("--id", type=int, action="append", dest="ids", metavar="ID")
    dl["purge"].add_argument("--before", metavar="T", help="ISO-8601 time or a duration ago (7d)")

    su = group(
        "suppressions",
        "stop taking a user's events, and erase what is stored of them",
        (
            ("list", cmd_sup_list, "list suppressed users"),
            ("add", cmd_sup_add, "suppress a userId: its events are acknowledged, not stored"),
            ("remove", cmd_sup_remove, "take a userId's events again"),
            ("show", cmd_sup_show, "a suppression and its deletion status per destination"),
        ),
    )
    for action in ("add", "remove", "show"):
        su[action].add_argument("user_id", metavar="USER_ID")
    su["show"].add_argument(
        "--wait", type=float, default=0, metavar="S", help="wait until no deletion is requested"
    )
    su["show"].add_argument("--json", action="store_true", help="print the admin API's JSON")
    su["add"].add_argument(
        "--erase", action="store_true", help="also delete the user's stored events and dead letters"
    )

    r = verb("replay", cmd_replay, "re-send stored events to one destination")
    r.add_argument("destination")
    r.add_argument("--since", required=True, metavar="T")
    r.add_argument("--until", metavar="T")
    t = verb("tail", cmd_tail, "print events as they arrive")
    t.add_argument("--source", metavar="NAME")
    t.add_argument("--type", metavar="T")
    t.add_argument("--event", metavar="NAME")
    verb("version", cmd_version, "print the version")
    from eventd.plugins import plugin_manager  # features add their verbs (report, profiles)

    plugin_manager().hook.eventd_commands(subparsers=sub, verb=verb)
    return p


# -- local verbs ------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from eventd import logs
    from eventd.server import serve

    logs.configure(args.log_format, args.log_level)
    embedded = find_config_path(args.config) is None
    config = load(args.config, create_secrets=True)
    asyncio.run(serve(config, announce_write_key=embedded))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from eventd.plugins import check_destinations, check_sources, destination_types, source_types

    config = load(args.config)
    check_sources(config, source_types())
    check_destinations(config, destination_types())
    print(
        f"{config.origin}: ok ({len(config.sources)} sources, "
        f"{len(config.destinations)} destinations)"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from eventd.config import TRACKING_API
    from eventd.plugins import destination_types, source_types, transforms

    for name, cls in sorted(destination_types().items()):
        _print_type(name, cls.__module__, cls.description, cls.settings_schema)
    print("\nsource types (a source's `type`):")
    print(f"{TRACKING_API}  (eventd)\n  the Tracking API (/v1/*), the default")
    for name, source in sorted(source_types().items()):
        _print_type(name, source.__module__, source.description, source.settings_schema)
    installed = transforms()
    if installed:
        print("\ntransforms (a destination's `transforms` list):")
        for name, fn in sorted(installed.items()):
            doc = (fn.__doc__ or "").strip().splitlines()
            print(f"  {name}  ({fn.__module__})" + (f"  {doc[0]}" if doc else ""))
    return 0


def _print_type(name: str, module: str, description: str, schema: dict[str, Any]) -> None:
    """A plugin type and its settings, one line each: name, JSON type, required or default."""
    print(f"{name}  ({module})")
    if description:
        print(f"  {description}")
    required = set(schema.get("required", ()))
    for key, prop in schema.get("properties", {}).items():
        kind = prop.get("type", "")
        flag = (
            "required"
            if key in required
            else f"default {prop['default']!r}"
            if ("default" in prop)
            else "optional"
        )
        print(f"    {key:<28} {kind!s:<8} {flag:<16} {prop.get('description', '')}")


def cmd_version(args: argparse.Namespace) -> int:
    print(f"eventd {__version__}")
    return 0


def starter_config() -> str:
    """A commented config; values are written by tomli-w so quoting is always right."""
    blocks: list[tuple[str, dict[str, Any]]] = [
        (
            "Where eventd listens (the Tracking API, /admin, /metrics).",
            {"server": {"host": "127.0.0.1", "port": 8088}},
        ),
        (
            "The outbox. synchronous: 'full' (an ack survives power loss) or 'normal' (a crash).\n"
            "retention: how long delivered events stay for replay.",
            {
                "storage": {
                    "path": "eventd-data/eventd.db",
                    "synchronous": "full",
                    "retention": "7d",
                }
            },
        ),
        (
            "Bearer token for /admin/* and /metrics (used by status, dead-letters, replay, tail).",
            {"admin": {"token": new_secret("adm_")}},
        ),
        (
            "A source per app or site; SDKs send its write key.",
            {"sources": {"web": {"write_key": new_secret("wk_")}}},
        ),
        (
            "Destinations: `eventd plugins` lists the types and their settings.\n"
            "This one appends every event to a local file.",
            {
                "destinations": {
                    "file": {"type": "jsonl", "settings": {"path": "eventd-data/events.jsonl"}}
                }
            },
        ),
        (
            "An embedded analytics store (a DuckDB file) that `eventd report` reads.",
            {
                "destinations": {
                    "analytics": {
                        "type": "duckdb",
                        "batch_size": 1000,
                        "settings": {"path": "eventd-data/analytics.duckdb"},
                    }
                }
            },
        ),
        (
            "Reports (eventd report funnel|retention|engagement|churn|revenue) read this\n"
            "duckdb or postgres destination's tables.",
            {"reports": {"store": "analytics"}},
        ),
    ]
    out = ["# eventd configuration. Every key: eventd.toml.example. Check: eventd check.\n"]
    for comment, data in blocks:
        out.append("\n" + "".join(f"# {line}\n" for line in comment.splitlines()))
        out.append(tomli_w.dumps(data))
    return "".join(out)


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; not overwriting it") from None
    with os.fdopen(fd, "w") as f:
        f.write(starter_config())
    print(f"wrote {path} (keep it private: it holds the write key and admin token)")
    return 0


# -- daemon verbs -------------------------------------------------------------------


class AdminClient:
    def __init__(self, config: Config) -> None:
        host = config.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        if ":" in host:
            host = f"[{host}]"
        self.base = f"http://{host}:{config.server.port}"
        self.token = config.admin.token
        if not self.token:
            raise CliError(f"{config.origin}: admin.token is not set, so the admin API is off")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        stream: bool = False,
        wait: float = 0,
        text: bool = False,
    ) -> Any:
        """The admin API's JSON answer (``text``: the body as text); ``wait``: seconds
        the server may take on purpose."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            resp = urllib.request.urlopen(req, timeout=None if stream else 30 + wait)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", exc.reason)
            except ValueError:
                message = exc.reason
            raise CliError(f"{method} {path}: HTTP {exc.code}: {message}", exc.code) from None
        except urllib.error.URLError as exc:
            raise CliError(
                f"eventd is not running at {self.base} ({exc.reason}); start it with `eventd serve`"
            ) from None
        if stream:
            return resp
        with resp:
            return resp.read().decode() if text else json.loads(resp.read())


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(load(args.config))


def _query(**params: Any) -> str:
    q = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(q) if q else ""


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        rows = client.request("GET", "/admin/destinations")
    except CliError as exc:
        if exc.status != 503:
            raise
        # The store does not answer (a cluster without quorum): what the node itself
        # still knows, from /metrics, which answers during a loss (eventd/admin/scrape.py).
        print(f"eventd: {exc}", file=sys.stderr)
        _last_reading(client.request("GET", "/metrics", text=True))
        return 1
    if not rows:
        print("no destinations configured")
        return 0
    _table(
        _estimates_marked(rows),
        [
            "name",
            "type",
            "cursor",
            "lag_events",
            "lag_seconds",
            "delivered",
            "skipped",
            "retrying",
            "dead",
            "last_error",
        ],
    )
    return 0


def _estimates_marked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with an estimated ``lag_events`` (``lag_estimated`` true) shown as
    one: "~342000"."""
    for row in rows:
        if row.get("lag_estimated"):
            row["lag_events"] = f"~{row.get('lag_events', 0)}"
    return rows


# /metrics samples `eventd status` shows during a loss, by the column they fill
LAST_READING = {
    "eventd_lag_events": "lag_events",
    "eventd_lag_seconds": "lag_seconds",
    "eventd_lag_estimated": "lag_estimated",
    "eventd_delivered_events_total": "delivered",
    "eventd_skipped_events_total": "skipped",
    "eventd_retried_events_total": "retried",
    "eventd_dead_lettered_events_total": "dead_lettered",
}


def _last_reading(exposition: str) -> None:
    """Print, per destination, the lag gauges' last good reading and this node's own
    counters from a /metrics answer (Prometheus text, parsed by prometheus_client)."""
    rows: dict[str, dict[str, Any]] = {}
    age = float("inf")
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "eventd_lag_reading_age_seconds":
                age = sample.value
            column = LAST_READING.get(sample.name)
            name = sample.labels.get("destination")
            if column is None or name is None:
                continue
            row = rows.setdefault(name, {"name": name})
            value = row.get(column, 0) + sample.value  # skipped: summed over its reasons
            row[column] = int(value) if value.is_integer() else round(value, 1)
    print(
        f"this node's last lag reading, {age:.0f} s old (from /metrics); delivered,"
        " skipped, retried and dead_lettered: by this node since it started"
    )
    _table(
        _estimates_marked(sorted(rows.values(), key=lambda r: str(r["name"]))),
        ["name", "lag_events", "lag_seconds", "delivered", "skipped", "retried", "dead_lettered"],
    )


def cmd_dl_list(args: argparse.Namespace) -> int:
    rows = _client(args).request(
        "GET",
        "/admin/dead-letters"
        + _query(destination=args.destination, since=args.since, limit=args.limit),
    )
    if not rows:
        print("no dead letters")
        return 0
    _table(rows, ["id", "destination", "message_id", "attempts", "failed_at", "state", "error"])
    return 0


def cmd_dl_show(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).request("GET", f"/admin/dead-letters/{args.id}"), indent=2))
    return 0


def cmd_dl_redrive(args: argparse.Namespace) -> int:
    res = _client(args).request(
        "POST",
        "/admin/dead-letters/redrive",
        {"destination": args.destination, "ids": args.ids or []},
    )
    print(f"redriven: {res['redriven']}")
    return 0


def cmd_dl_purge(args: argparse.Namespace) -> int:
    res = _client(args).request(
        "POST",
        "/admin/dead-letters/purge",
        {"destination": args.destination, "before": args.before},
    )
    print(f"purged: {res['purged']}")
    return 0


def cmd_sup_list(args: argparse.Namespace) -> int:
    rows = _client(args).request("GET", "/admin/suppressions")
    if not rows:
        print("no suppressed users")
        return 0
    _table(rows, ["user_id", "created_at", "erase", "erased_events", "erased_at"])
    return 0


def cmd_sup_add(args: argparse.Namespace) -> int:
    res = _client(args).request(
        "POST", "/admin/suppressions", {"user_id": args.user_id, "erase": args.erase}
    )
    print(f"suppressed: {res['user_id']}")
    if res["erase"]:
        state = "done" if res["erased_at"] else "pending (their event is the newest)"
        print(f"erased events: {res['erased_events']}, erasure {state}")
        print(f"deletions forwarded to destinations: eventd suppressions show {args.user_id}")
    return 0


def cmd_sup_remove(args: argparse.Namespace) -> int:
    res = _client(args).request("POST", "/admin/suppressions/remove", {"user_id": args.user_id})
    print(f"no longer suppressed: {args.user_id}" if res["removed"] else "was not suppressed")
    return 0


def cmd_sup_show(args: argparse.Namespace) -> int:
    path = "/admin/suppressions/" + urllib.parse.quote(args.user_id, safe="")
    res = _client(args).request("GET", path + _query(wait=args.wait or None), wait=args.wait)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"suppressed: {res['user_id']} since {res['created_at']}")
    if res["erase"]:
        state = "done" if res["erased_at"] else "pending (their event is the newest)"
        print(f"erased events: {res['erased_events']}, erasure in eventd {state}")
    if not res["deletions"]:
        print("no deletion forwarded to destinations (suppressed without --erase)")
        return 0
    rows = [{**d, "detail": d["reason"] or d["instructions"] or ""} for d in res["deletions"]]
    _table(rows, ["destination", "type", "state", "attempts", "updated_at", "detail"])
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    res = _client(args).request(
        "POST",
        "/admin/replay",
        {"destination": args.destination, "since": args.since, "until": args.until},
    )
    if not res.get("events"):
        print(f"no stored events in that range for {args.destination}")
    else:
        print(
            f"replaying {res['events']} events (seq {res['from_seq']}..{res['until_seq']}) "
            f"to {args.destination}"
        )
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    resp = _client(args).request(
        "GET", "/admin/live" + _query(source=args.source, format="json"), stream=True
    )
    with resp:
        for line in resp:
            if not line.strip():
                continue
            item = json.loads(line)
            msg = item.get("message") or {}
            if args.type and msg.get("type") != args.type:
                continue
            if args.event and msg.get("event") != args.event:
                continue
            print(json.dumps(item, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    # `python -m eventd.cli` runs this file as __main__, a second copy of the module:
    # run the real one, so a feature's verb that raises eventd.cli.CliError is caught.
    from eventd.cli import main as real_main

    sys.exit(real_main())
