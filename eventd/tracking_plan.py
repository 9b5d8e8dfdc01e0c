"""Tracking plans: what a source's events may carry, as JSON Schema (Segment's Protocols).

A plan is a JSON file named by ``sources.NAME.tracking_plan``::

    {
      "track": {                       # the planned track events, by name
        "Order Completed": {"type": "object", "required": ["order_id"], ...},
        "Signed Up": {}                # planned, any properties
      },
      "identify": {...},               # schema of an identify's traits
      "group": {...}                   # schema of a group's traits
    }

Each schema is checked when the config loads (``eventd check``), so a broken
plan never reaches ingest. At ingest a message is checked after normalization:
a track event the plan does not name is *unplanned*; properties or traits
failing their schema are *violations*. The source says what happens to each
(``unplanned_events``, ``violations``): ``forward`` stores and delivers it with
the findings in ``context.protocols.violations`` (as Segment does), ``block``
rejects it like any invalid message (400, or dropped from a batch and counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from eventd.normalize import InvalidMessage

ACTIONS = ("forward", "block")
MAX_VIOLATIONS = 10  # per message: enough to fix it, bounded in size


class PlanError(ValueError):
    """The plan file cannot be used; the message says where in it."""


@dataclass(frozen=True, eq=False)  # compared and hashed as itself: it holds validators
class TrackingPlan:
    path: Path
    unplanned_events: str = "forward"
    violations: str = "forward"
    # track event name -> validator of its properties; None: any track event is planned
    events: dict[str, Any] | None = None
    # "identify" / "group" -> validator of their traits
    traits: dict[str, Any] = field(default_factory=dict)

    def check(self, msg: dict[str, Any]) -> list[dict[str, str]]:
        """Findings on a normalized message (empty when it keeps to the plan); raises
        InvalidMessage when the source blocks what was found."""
        msg_type = msg["type"]
        if msg_type == "track":
            if self.events is None:
                return []
            validator = self.events.get(msg["event"])
            if validator is None:
                if self.unplanned_events == "block":
                    raise InvalidMessage(
                        "unplanned_event", f"event {msg['event']!r} is not in the tracking plan"
                    )
                return [
                    {
                        "type": "unplanned_event",
                        "field": "event",
                        "description": f"{msg['event']!r} is not in the tracking plan",
                    }
                ]
            found = _violations(validator, msg.get("properties"), "properties")
        elif msg_type in self.traits:
            found = _violations(self.traits[msg_type], msg.get("traits"), "traits")
        else:
            return []
        if found and self.violations == "block":
            first = found[0]
            raise InvalidMessage(
                "tracking_plan_violation", f"{first['field']}: {first['description']}"
            )
        return found


def _violations(validator: Any, value: Any, root: str) -> list[dict[str, str]]:
    instance = value if value is not None else {}
    found = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path)):
        path = ".".join([root, *(str(p) for p in error.absolute_path)])
        found.append({"type": "schema", "field": path, "description": error.message[:300]})
        if len(found) == MAX_VIOLATIONS:
            break
    return found


def load_plan(path: Path, unplanned_events: str, violations: str) -> TrackingPlan:
    """Read and check a plan file; PlanError says what is wrong and where."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"cannot read it: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError("expected a JSON object with track, identify and group keys")
    unknown = sorted(set(data) - {"track", "identify", "group"})
    if unknown:
        raise PlanError(f"{unknown[0]}: expected only track, identify and group keys")
    events = None
    if "track" in data:
        if not isinstance(data["track"], dict):
            raise PlanError("track: expected an object of event name -> properties schema")
        events = {name: _validator(s, f"track.{name}") for name, s in data["track"].items()}
    traits = {t: _validator(data[t], t) for t in ("identify", "group") if t in data}
    return TrackingPlan(path, unplanned_events, violations, events, traits)


def _validator(schema: Any, where: str) -> Any:
    if not isinstance(schema, dict):
        raise PlanError(f"{where}: expected a JSON Schema object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PlanError(f"{where}: not a valid JSON Schema: {exc.message}") from None
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
