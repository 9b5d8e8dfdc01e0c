"""Data audits: a generated data set of known shape is stored by a real eventd with a
tracking plan, then audited through ``GET /admin/audit`` and ``eventd audit``; every
figure is checked against what the test computes from the messages it sent (volumes,
JSON types per path, null and missing shares, distinct counts, plan violations, planned
events never seen). The HyperLogLog estimate past the exact range is checked on
the report on its own.
"""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventd.audit.report import EXACT_DISTINCT, Audit
from tests.harness import EventdProcess

Start = Callable[..., EventdProcess]

PLAN = {
    "track": {
        "Order Completed": {
            "type": "object",
            "required": ["order_id"],
            "properties": {"total": {"type": "number"}},
        },
        "Product Viewed": {},
        "Signed Up": {},  # planned, never sent
    },
    "identify": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
}
ROOTS = {"track": "properties", "page": "properties", "identify": "traits"}


def generate(n: int, seed: int = 20) -> list[dict[str, Any]]:
    """``n`` messages of a few shapes, with missing, null and mistyped values on purpose."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        m: dict[str, Any] = {
            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "userId": f"u{i % 40}",
        }
        kind = rng.choice(["order", "order", "viewed", "unplanned", "identify", "page"])
        if kind == "order":
            props: dict[str, Any] = {"items": [1, 2][: rng.randint(0, 2)]}
            if rng.random() < 0.8:
                props["order_id"] = f"o-{rng.randint(0, 150)}"
            props["total"] = rng.choice([round(rng.uniform(1, 99), 2), "12.50", None, 7])
            if rng.random() < 0.5:
                props["shipping"] = {"city": rng.choice(["Paris", "Lyon", None]), "zip": 75000}
            m.update(type="track", event="Order Completed", properties=props)
        elif kind == "viewed":
            props = {"product_id": rng.randint(1, 30), "name": rng.choice(["Mug", "Tee"])}
            m.update(type="track", event="Product Viewed", properties=props)
        elif kind == "unplanned":
            m.update(type="track", event="Coupon Tried", properties={"code": f"C{i % 7}"})
        elif kind == "identify":
            traits: dict[str, Any] = {"email": f"u{i % 40}@example.com"}
            traits["age"] = rng.choice([rng.randint(18, 80), -1, "old"])
            if rng.random() < 0.3:
                traits["plan"] = None
            m.update(type="identify", traits=traits)
        else:
            m.update(type="page", name=rng.choice(["Home", "Pricing"]), properties={"path": "/"})
        out.append(m)
    return out


def kind_of(value: Any) -> str:
    """JSON type names, written apart from the report's own."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")


def paths(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in obj.items():
        found[f"{prefix}.{key}"] = value
        if isinstance(value, dict):
            found.update(paths(value, f"{prefix}.{key}"))
    return found


def expected(messages: list[dict[str, Any]]) -> dict[tuple[str, str | None], dict[str, Any]]:
    """(type, event or name) -> volume, properties and violations, computed from the sent
    messages and the plan read by hand."""
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        groups[m["type"], m.get("event") or m.get("name")].append(m)
    out: dict[tuple[str, str | None], dict[str, Any]] = {}
    for (kind, name), ms in groups.items():
        values: dict[str, list[Any]] = defaultdict(list)
        for m in ms:
            for path, value in paths(m.get(ROOTS[kind], {}), ROOTS[kind]).items():
                values[path].append(value)
        volume = len(ms)
        props = {
            path: {
                "types": dict(sorted(Counter(kind_of(v) for v in vs).items())),
                "null_share": round(sum(v is None for v in vs) / volume, 4),
                "missing_share": round((volume - len(vs)) / volume, 4),
                "distinct": len({json.dumps(v, sort_keys=True) for v in vs if v is not None}),
            }
            for path, vs in values.items()
        }
        findings: Counter[tuple[str, str]] = Counter()
        violating = 0
        for m in ms:
            found: list[tuple[str, str]] = []
            p = m.get("properties", {})
            if name == "Order Completed":
                found += [("schema", "properties")] if "order_id" not in p else []
                total = p["total"]
                ok = isinstance(total, int | float) and not isinstance(total, bool)
                found += [] if ok else [("schema", "properties.total")]
            elif name == "Coupon Tried":
                found.append(("unplanned_event", "event"))
            elif kind == "identify":
                age = m["traits"]["age"]
                found += [] if isinstance(age, int) and age >= 0 else [("schema", "traits.age")]
            findings.update(found)
            violating += bool(found)
        out[kind, name] = {
            "volume": volume,
            "properties": props,
            "violations": (
                None if kind == "page" else {"events": violating, "findings": dict(findings)}
            ),
        }
    return out


def compare(report: dict[str, Any], want: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    got = {(c["type"], c["event"]): c for c in report["calls"]}
    assert set(got) == set(want)
    for key, w in want.items():
        c = got[key]
        assert c["volume"] == w["volume"], key
        props = {
            p["path"]: {k: p[k] for k in ("types", "null_share", "missing_share", "distinct")}
            for p in c["properties"]
        }
        assert props == w["properties"], key
        for p in c["properties"]:
            assert p["distinct_exact"] is True
            assert len(p["examples"]) == min(3, p["distinct"])
        v = c["violations"]
        found = (
            None
            if v is None
            else {
                "events": v["events"],
                "findings": {(f["type"], f["field"]): f["count"] for f in v["findings"]},
            }
        )
        assert found == w["violations"], key
    volumes = [c["volume"] for c in report["calls"]]
    assert volumes == sorted(volumes, reverse=True)


@pytest.fixture
def audited(eventd: Start, tmp_path: Path) -> tuple[EventdProcess, list[dict[str, Any]]]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    ev = eventd(
        {
            "sources": {
                "app": {"write_key": "wk_audit_app_0123456", "tracking_plan": str(plan)},
                "other": {"write_key": "wk_audit_other_01234"},
            }
        }
    )
    ev.write_key = "wk_audit_app_0123456"
    messages = generate(900)
    for i in range(0, len(messages), 100):
        status, _ = ev.post("/v1/batch", {"batch": messages[i : i + 100]}, key=ev.write_key)
        assert status == 200
    other = [{"type": "track", "event": "Elsewhere", "userId": "x", "properties": {"a": 1}}]
    assert ev.post("/v1/batch", {"batch": other}, key="wk_audit_other_01234")[0] == 200
    return ev, messages


def test_the_audit_of_one_source_matches_what_was_sent(
    audited: tuple[EventdProcess, list[dict[str, Any]]],
) -> None:
    ev, messages = audited
    report = ev.admin("GET", "/admin/audit?source=app")
    assert report["source"] == "app" and report["since"] is None
    assert report["events"] == len(messages)
    compare(report, expected(messages))
    assert report["never_seen"] == [{"source": "app", "event": "Signed Up"}]
    # First and last seen are the received times eventd stored.
    stored: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for at, body in ev.query("SELECT received_at, body FROM events WHERE source = 'app'"):
        m = json.loads(body)
        stored[m["type"], m.get("event") or m.get("name")].append(at)
    for c in report["calls"]:
        ats = stored[c["type"], c["event"]]
        assert c["first_seen"] == iso(min(ats)) and c["last_seen"] == iso(max(ats))

    # The CLI prints the same JSON; every source, or none since a time to come.
    cli = ev.cli("audit", "--source", "app", "--format", "json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == report
    both = ev.admin("GET", "/admin/audit")
    assert both["events"] == len(messages) + 1
    assert ("track", "Elsewhere") in {(c["type"], c["event"]) for c in both["calls"]}
    later = ev.cli("audit", "--since", "2999-01-01", "--format", "json")
    assert json.loads(later.stdout)["events"] == 0


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_csv_and_table_formats_show_the_same_figures(
    audited: tuple[EventdProcess, list[dict[str, Any]]],
) -> None:
    ev, messages = audited
    want = expected(messages)
    out = ev.cli("audit", "--source", "app", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == sum(len(w["properties"]) for w in want.values())
    for row in rows:
        w = want[row["type"], row["event"] or None]["properties"][row["path"]]
        assert float(row["null_share"]) == w["null_share"]
        assert float(row["missing_share"]) == w["missing_share"]
        assert row["distinct"] == str(w["distinct"])
        assert row["types"] == " ".join(f"{t}:{n}" for t, n in w["types"].items())
    table = ev.cli("audit", "--source", "app")
    assert table.returncode == 0, table.stderr
    text = table.stdout
    assert text.startswith(f"{len(messages)} stored events of source app")
    assert "tracking plan violations:" in text and "planned events never seen:" in text
    assert "properties.total" in text and "Signed Up" in text


def test_bad_parameters_are_a_400_naming_them(
    audited: tuple[EventdProcess, list[dict[str, Any]]],
) -> None:
    ev, _ = audited
    for query, named in (("source=nope", "source="), ("since=yesterday-ish", "since=")):
        status, body = get(ev, f"/admin/audit?{query}")
        assert status == 400 and body["code"] == "bad_request" and named in body["message"]


def get(ev: EventdProcess, path: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        ev.url + path, headers={"Authorization": f"Bearer {ev.admin_token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_past_the_exact_range_distinct_values_are_estimated_closely() -> None:
    audit = Audit({})
    n = 20_000
    rows = [
        (
            "app",
            1_000 + i,
            json.dumps(
                {"type": "track", "event": "E", "properties": {"id": f"id-{i}", "small": i % 50}}
            ).encode(),
        )
        for i in range(n)
    ]
    audit.add(rows)
    [call] = audit.result()["calls"]
    props = {p["path"]: p for p in call["properties"]}
    assert props["properties.small"]["distinct"] == 50
    assert props["properties.small"]["distinct_exact"] is True
    estimate = props["properties.id"]
    assert estimate["distinct_exact"] is False
    assert abs(estimate["distinct"] - n) <= 0.03 * n  # p=14: ~0.8 % standard error
    assert n > EXACT_DISTINCT
