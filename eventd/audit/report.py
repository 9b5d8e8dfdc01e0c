"""A data audit of stored events: what is collected, per call type and event name.

Pure (no I/O): :class:`Audit` takes stored events (``add``) and answers
(``result``) the JSON both ``eventd audit`` and ``GET /admin/audit`` give::

    {"source": "web" | null, "since": ISO | null, "events": N,
     "calls": [{"type": "track", "event": "Order Completed", "volume": N,
                "first_seen": ISO, "last_seen": ISO, "sources": ["web"],
                "properties": [{"path": "properties.total",
                                "types": {"number": 9, "string": 1},
                                "null_share": 0.0, "missing_share": 0.1,
                                "distinct": 10, "distinct_exact": true,
                                "examples": ["12.5", ...]}],
                "violations": null | {"events": N, "findings": [
                    {"type": "schema", "field": "properties.total", "count": N,
                     "example": "'x' is not of type 'number'"}]}}],
     "never_seen": [{"source": "web", "event": "Signed Up"}]}

Paths are the call's ``properties`` (track, page, screen) or ``traits`` (identify,
group), objects flattened with dots (an object is a path of type ``object`` and
its keys paths of their own; arrays are not entered). ``types`` count JSON types
(``integer`` apart from ``number``, as JSON Schema does). Shares are of the
call's volume, rounded to 4 places. Distinct values are counted exactly up to
``EXACT_DISTINCT``, then estimated with HyperLogLog (datasketch, p=14: about
0.8 % standard error) in bounded memory. ``violations`` are those of the source's
tracking plan as it is now (null when no plan has a rule for the call); ``never_seen`` the track
events a plan names that no stored event of that source has.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from datasketch import HyperLogLogPlusPlus

from eventd.store import iso_ms
from eventd.tracking_plan import TrackingPlan

EXACT_DISTINCT = 1000
MAX_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 100
MAX_DEPTH = 8  # paths deeper than this are counted at this depth, as objects
_ROOT = {"track": "properties", "page": "properties", "screen": "properties"}
_ROOT.update(identify="traits", group="traits")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass
class PathStats:
    types: Counter[str] = field(default_factory=Counter)
    present: int = 0
    exact: set[bytes] | None = field(default_factory=set)
    sketch: HyperLogLogPlusPlus | None = None
    examples: list[str] = field(default_factory=list)

    def add(self, value: Any) -> None:
        self.present += 1
        kind = json_type(value)
        self.types[kind] += 1
        if kind == "null":
            return
        key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if self.exact is not None:
            if key not in self.exact:
                self.exact.add(key)
                if len(self.examples) < MAX_EXAMPLES:
                    text = value if isinstance(value, str) else key.decode()
                    self.examples.append(text[:MAX_EXAMPLE_CHARS])
                if len(self.exact) > EXACT_DISTINCT:
                    # imported here: datasketch brings scipy, ~50 MB of every eventd's
                    # memory for a path only an audit of a varied property reaches
                    from datasketch import HyperLogLogPlusPlus

                    self.sketch = HyperLogLogPlusPlus(p=14)
                    for seen in self.exact:
                        self.sketch.update(seen)
                    self.exact = None
        else:
            assert self.sketch is not None
            self.sketch.update(key)

    def distinct(self) -> tuple[int, bool]:
        if self.exact is not None:
            return len(self.exact), True
        assert self.sketch is not None
        return round(self.sketch.count()), False


@dataclass
class CallStats:
    type: str
    event: str | None
    volume: int = 0
    first: int | None = None
    last: int | None = None
    sources: set[str] = field(default_factory=set)
    paths: dict[str, PathStats] = field(default_factory=dict)
    checked: bool = False  # some event of it came from a source with a plan
    violating: int = 0
    findings: Counter[tuple[str, str]] = field(default_factory=Counter)
    example: dict[tuple[str, str], str] = field(default_factory=dict)


class Audit:
    def __init__(self, plans: Mapping[str, TrackingPlan | None], source: str | None = None) -> None:
        # Checked as a forwarding plan: the findings are wanted, whatever blocks at ingest.
        self.plans = {
            name: dataclasses.replace(p, unplanned_events="forward", violations="forward")
            for name, p in plans.items()
            if p is not None and (source is None or name == source)
        }
        self.source = source
        self.events = 0
        self.calls: dict[tuple[str, str | None], CallStats] = {}
        self.seen_tracks: dict[str, set[str]] = {}

    def add(self, rows: Iterable[tuple[str, int, bytes]]) -> None:
        """Stored events as (source, received_at ms, body JSON)."""
        for source, received_at, body in rows:
            self._add(source, received_at, orjson.loads(body))

    def _add(self, source: str, received_at: int, msg: dict[str, Any]) -> None:
        self.events += 1
        kind = msg.get("type", "?")
        name = msg.get("event") if kind == "track" else msg.get("name")
        name = name if isinstance(name, str) else None
        call = self.calls.get((kind, name))
        if call is None:
            call = self.calls[kind, name] = CallStats(kind, name)
        call.volume += 1
        call.first = received_at if call.first is None else min(call.first, received_at)
        call.last = received_at if call.last is None else max(call.last, received_at)
        call.sources.add(source)
        if kind == "track" and name is not None:
            self.seen_tracks.setdefault(source, set()).add(name)
        root = _ROOT.get(kind)
        if root is not None and isinstance(msg.get(root), dict):
            self._walk(call, root, msg[root], 1)
        plan = self.plans.get(source)
        # Null for calls the plan says nothing about (page, screen, alias...).
        if plan is not None and (
            (kind == "track" and plan.events is not None) or kind in plan.traits
        ):
            call.checked = True
            found = plan.check(msg)
            if found:
                call.violating += 1
            for f in found:
                key = (f["type"], f["field"])
                call.findings[key] += 1
                call.example.setdefault(key, f["description"])

    def _walk(self, call: CallStats, prefix: str, obj: dict[str, Any], depth: int) -> None:
        for key, value in obj.items():
            path = f"{prefix}.{key}"
            stats = call.paths.get(path)
            if stats is None:
                stats = call.paths[path] = PathStats()
            stats.add(value)
            if isinstance(value, dict) and depth < MAX_DEPTH:
                self._walk(call, path, value, depth + 1)

    def result(self, since_ms: int | None = None) -> dict[str, Any]:
        calls = sorted(self.calls.values(), key=lambda c: (-c.volume, c.type, c.event or ""))
        never = [
            {"source": source, "event": name}
            for source, plan in sorted(self.plans.items())
            for name in sorted(plan.events or {})
            if name not in self.seen_tracks.get(source, set())
        ]
        return {
            "source": self.source,
            "since": iso_ms(since_ms),
            "events": self.events,
            "calls": [_call(c) for c in calls],
            "never_seen": never,
        }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _call(c: CallStats) -> dict[str, Any]:
    properties = []
    for path in sorted(c.paths):
        p = c.paths[path]
        distinct, exact = p.distinct()
        properties.append(
            {
                "path": path,
                "types": dict(sorted(p.types.items())),
                "null_share": _share(p.types["null"], c.volume),
                "missing_share": _share(c.volume - p.present, c.volume),
                "distinct": distinct,
                "distinct_exact": exact,
                "examples": p.examples,
            }
        )
    violations = None
    if c.checked:
        violations = {
            "events": c.violating,
            "findings": [
                {"type": t, "field": f, "count": n, "example": c.example[t, f]}
                for (t, f), n in sorted(c.findings.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        }
    return {
        "type": c.type,
        "event": c.event,
        "volume": c.volume,
        "first_seen": iso_ms(c.first),
        "last_seen": iso_ms(c.last),
        "sources": sorted(c.sources),
        "properties": properties,
        "violations": violations,
    }
