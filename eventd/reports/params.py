"""Report parameters: one declaration per report, read the same way from the CLI's
options and the HTTP endpoint's query string.

The CLI does not parse values itself: it passes them to the daemon as query
parameters, so a value is judged in one place and an error reads the same either
way (``since='yesterday': expected a duration back from now ...``); HTTP answers it
as a JSON 400 naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from eventd.config import parse_duration

MAX_STEPS = 20
MAX_PERIODS = 366


class BadParameter(Exception):
    """A report parameter has a value it cannot take; the message names both."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name


@dataclass(frozen=True)
class Param:
    """One parameter: ``--name`` on the CLI, ``?name=`` over HTTP."""

    name: str
    help: str
    parse: Callable[[str], Any]
    default: str | None = None  # parsed like a given value; None: absent unless required
    required: bool = False
    metavar: str = "VALUE"


def parse(params: Sequence[Param], given: Mapping[str, str]) -> dict[str, Any]:
    """The parsed value of every parameter (None when absent and without default).

    Raises BadParameter for an unknown, missing or bad one."""
    known = {p.name for p in params}
    for name in given:
        if name not in known:
            raise BadParameter(
                name, given[name], f"one of the parameters {', '.join(sorted(known))}"
            )
    out: dict[str, Any] = {}
    for p in params:
        raw = given.get(p.name)
        if raw is None or raw == "":
            if p.required:
                raise BadParameter(p.name, raw, f"a value ({p.help})")
            raw = p.default
        if raw is None:
            out[p.name] = None
            continue
        try:
            out[p.name] = p.parse(raw)
        except BadParameter:
            raise
        except ValueError as exc:
            # parsers say "expected ..." themselves (config's parse_duration does)
            raise BadParameter(p.name, raw, str(exc).removeprefix("expected ")) from None
    return out


# -- value parsers (raise ValueError with what was expected) ------------------------


def event_name(raw: str) -> str:
    if not raw.strip():
        raise ValueError("an event name")
    return raw


def steps(raw: str) -> list[str]:
    names = [s.strip() for s in raw.split(",")]
    if any(not n for n in names) or not 1 <= len(names) <= MAX_STEPS:
        raise ValueError(f"1 to {MAX_STEPS} event names separated by commas")
    if len(set(names)) != len(names):
        raise ValueError("distinct event names (a step's event cannot count for two steps)")
    return names


def duration(raw: str) -> float:
    seconds = parse_duration(raw)
    if seconds <= 0:
        raise ValueError("a duration above zero like '30m', '1d' or '7d'")
    return seconds


def time(raw: str) -> datetime:
    """``T``: a duration back from now (``2h``, ``7d``) or an ISO-8601 date or date-time
    (``2026-11-01``, ``2026-11-01T09:00:00Z``; without a zone: UTC)."""
    expected = "a duration back from now (2h, 7d) or an ISO-8601 date or date-time"
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(raw))
    except (ValueError, OverflowError):
        pass
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(expected) from None
    if isinstance(parsed, date) and len(raw) == 10:
        parsed = datetime(parsed.year, parsed.month, parsed.day)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def choice(*options: str) -> Callable[[str], str]:
    def parse_choice(raw: str) -> str:
        if raw not in options:
            raise ValueError(" or ".join(options))
        return raw

    return parse_choice


def count(low: int, high: int) -> Callable[[str], int]:
    def parse_count(raw: str) -> int:
        try:
            n = int(raw)
        except ValueError:
            n = low - 1
        if not low <= n <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return n

    return parse_count


def text(raw: str) -> str:
    return raw


def require_column(column: str, name: str, value: str) -> str:
    """A property's column name, or BadParameter when the name has none."""
    if not column:
        raise BadParameter(name, value, "a property name with letters or digits")
    return column


SINCE = Param(
    "since", "only events at or after T (a duration ago or an ISO date)", time, metavar="T"
)
UNTIL = Param("until", "only events before T", time, metavar="T")


RANGE = [SINCE, UNTIL]


def number(name: str, help: str, default: str) -> Param:
    """A count of periods, 1 to MAX_PERIODS."""
    return Param(
        name,
        f"{help} (1 to {MAX_PERIODS}, default {default})",
        count(1, MAX_PERIODS),
        default,
        metavar="N",
    )


def period(default: str, *options: str) -> Param:
    return Param(
        "period",
        f"{' | '.join(options)} (default {default})",
        choice(*options),
        default,
        metavar="|".join(options),
    )
