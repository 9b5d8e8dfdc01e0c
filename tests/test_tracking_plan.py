"""Tracking plans: the plan file checked at config load, messages checked at ingest,
forward vs block end to end through a real eventd."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventd.config import ConfigError, parse_config
from eventd.normalize import InvalidMessage
from eventd.tracking_plan import PlanError, load_plan
from tests.contract.fixtures import counters
from tests.harness import EventdProcess

Start = Callable[..., EventdProcess]

PLAN = {
    "track": {
        "Order Completed": {
            "type": "object",
            "required": ["order_id", "total"],
            "properties": {
                "order_id": {"type": "string"},
                "total": {"type": "number", "minimum": 0},
                "products": {
                    "type": "array",
                    "items": {"type": "object", "required": ["sku"]},
                },
            },
        },
        "Signed Up": {},
    },
    "identify": {
        "type": "object",
        "properties": {"email": {"type": "string", "format": "email"}},
        "required": ["email"],
    },
}


def write_plan(tmp_path: Path, plan: Any = PLAN, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
    return path


def test_check_finds_unplanned_events_and_violations_with_their_fields(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path), "forward", "forward")
    order = {"type": "track", "event": "Order Completed"}
    assert plan.check({**order, "properties": {"order_id": "o1", "total": 5}}) == []
    assert plan.check({"type": "track", "event": "Signed Up", "properties": {"x": 1}}) == []
    assert plan.check({"type": "page", "name": "Home"}) == []
    assert plan.check({"type": "group", "groupId": "g", "traits": {"any": 1}}) == []

    found = plan.check(
        {**order, "properties": {"order_id": 7, "total": -1, "products": [{"name": "x"}]}}
    )
    assert all(f["type"] == "schema" for f in found)
    assert {f["field"] for f in found} == {
        "properties.order_id",
        "properties.total",
        "properties.products.0",
    }
    assert plan.check({"type": "track", "event": "Order Shipped"}) == [
        {
            "type": "unplanned_event",
            "field": "event",
            "description": "'Order Shipped' is not in the tracking plan",
        }
    ]
    [missing] = plan.check({"type": "identify", "userId": "u", "traits": {}})
    assert (
        missing["field"] == "traits"
        and "'email' is a required property" in (missing["description"])
    )
    [bad_email] = plan.check({"type": "identify", "traits": {"email": "not-an-address"}})
    assert bad_email["field"] == "traits.email"


def test_block_raises_with_a_clear_code(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path), "block", "block")
    with pytest.raises(InvalidMessage) as exc:
        plan.check({"type": "track", "event": "Nope"})
    assert exc.value.code == "unplanned_event"
    with pytest.raises(InvalidMessage) as exc:
        plan.check({"type": "track", "event": "Order Completed", "properties": {"total": 1}})
    assert exc.value.code == "tracking_plan_violation"
    assert exc.value.message == "properties: 'order_id' is a required property"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{nope", "not valid JSON"),
        ([], "expected a JSON object with track, identify and group keys"),
        ({"screen": {}}, "screen: expected only track, identify and group keys"),
        ({"track": []}, "track: expected an object of event name -> properties schema"),
        ({"track": {"A": 5}}, "track.A: expected a JSON Schema object"),
        ({"identify": {"type": "strng"}}, "identify: not a valid JSON Schema"),
    ],
)
def test_a_broken_plan_says_where(tmp_path: Path, content: Any, error: str) -> None:
    with pytest.raises(PlanError) as exc:
        load_plan(write_plan(tmp_path, content), "forward", "forward")
    assert str(exc.value).startswith(error)


def test_config_names_the_key_resolves_relative_paths_and_checks_choices(
    tmp_path: Path,
) -> None:
    write_plan(tmp_path, name="web-plan.json")
    origin = str(tmp_path / "eventd.toml")

    def source(**keys: Any) -> dict[str, Any]:
        return {"sources": {"web": {"write_key": "wk", **keys}}}

    cfg = parse_config(source(tracking_plan="web-plan.json", violations="block"), origin)
    plan = cfg.sources["web"].tracking_plan
    assert plan is not None and plan.path == tmp_path / "web-plan.json"
    assert (plan.unplanned_events, plan.violations) == ("forward", "block")

    for keys, message in (
        (
            {"tracking_plan": "missing.json"},
            "sources.web.tracking_plan = 'missing.json': expected a tracking plan "
            f"({tmp_path / 'missing.json'}: cannot read it: No such file or directory)",
        ),
        (
            {"tracking_plan": "web-plan.json", "violations": "drop"},
            "sources.web.violations = 'drop': expected one of 'forward', 'block'",
        ),
        (
            {"unplanned_events": "block"},
            "sources.web.unplanned_events = 'block': expected tracking_plan set beside it",
        ),
    ):
        with pytest.raises(ConfigError) as exc:
            parse_config(source(**keys), origin)
        assert str(exc.value) == f"{origin}: {message}"


def test_forward_annotates_and_block_rejects_end_to_end(eventd: Start, tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    ev = eventd(
        {
            "sources": {
                "app": {"write_key": "wk_forward", "tracking_plan": str(plan)},
                "strict": {
                    "write_key": "wk_block",
                    "tracking_plan": str(plan),
                    "unplanned_events": "block",
                    "violations": "block",
                },
            }
        }
    )

    def batch() -> list[dict[str, Any]]:
        return [
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u",
                "messageId": str(uuid.uuid4()),
                "properties": {"order_id": "o1", "total": 10},
            },
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u",
                "messageId": str(uuid.uuid4()),
                "properties": {"total": "ten"},
            },
            {"type": "track", "event": "Coupon Typed", "userId": "u", "messageId": "m3"},
            {"type": "page", "name": "Home", "userId": "u", "messageId": "m4"},
        ]

    assert ev.post("/v1/batch", {"batch": batch()}, key="wk_forward")[0] == 200
    assert ev.post("/v1/batch", {"batch": batch()}, key="wk_block")[0] == 200
    status, answer = ev.post("/v1/track", {"event": "Coupon Typed", "userId": "u"}, key="wk_block")
    assert status == 400 and answer["code"] == "unplanned_event"

    by_source: dict[str, list[dict[str, Any]]] = {}
    for source, body in ev.query("SELECT source, body FROM events ORDER BY seq"):
        by_source.setdefault(source, []).append(json.loads(body))
    forwarded = by_source["app"]
    assert len(forwarded) == 4
    violations = [m["context"].get("protocols", {}).get("violations") for m in forwarded]
    assert violations[0] is None and violations[3] is None
    assert {v["field"] for v in violations[1]} == {"properties", "properties.total"}
    assert violations[2] == [
        {
            "type": "unplanned_event",
            "field": "event",
            "description": "'Coupon Typed' is not in the tracking plan",
        }
    ]
    # Blocked: only the planned, valid order and the (unplanned-type) page are stored.
    assert [(m["type"], m.get("event")) for m in by_source["strict"]] == [
        ("track", "Order Completed"),
        ("page", None),
    ]
    findings = {
        (labels["source"], labels["kind"]): value
        for labels, value in counters(ev, "eventd_tracking_plan_findings")
    }
    assert findings == {("app", "schema"): 1.0, ("app", "unplanned_event"): 1.0}
    rejected = {labels["reason"]: value for labels, value in counters(ev, "eventd_rejected_events")}
    assert rejected == {"tracking_plan_violation": 1.0, "unplanned_event": 2.0}
