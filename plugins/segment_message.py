"""Reading a stored Segment message the way analytics destinations need it.

Shared by the ``mixpanel``, ``amplitude`` and ``ga4`` destinations: safe lookups
into a message's nested objects, numbers sent as numbers or strings, the event time
in epoch milliseconds, the browser and operating system behind ``context.userAgent``,
and the name of the event that a page or screen call becomes. Nothing here knows a
vendor's API.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventd import ConfigError

# -- lookups -------------------------------------------------------------------


def lookup(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a level is missing or not an object."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def text(value: Any) -> str | None:
    """A non-empty string, or None (numbers are ids too: they become strings)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def number(value: Any) -> int | float | None:
    """A JSON number, or a string holding one (clients send "12.5" as often as 12.5).

    Only finite numbers: "NaN" and "Infinity" parse as floats but no API takes them
    (JSON has no spelling for them). A string without a decimal point that holds a
    whole number is an int ("12" is 12, "12.0" stays 12.0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        if not math.isfinite(parsed):
            return None
        return int(parsed) if parsed.is_integer() and "." not in value else parsed
    return None


def obj(value: Any) -> dict[str, Any]:
    """An object's copy, or an empty one when the value is not an object."""
    return dict(value) if isinstance(value, dict) else {}


def compact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop keys whose value is None (vendors read a null as "clear this")."""
    return {k: v for k, v in values.items() if v is not None}


# -- time ----------------------------------------------------------------------


def time_ms(message: dict[str, Any], fallback_ms: int) -> int:
    """The event's time (``timestamp``, skew-corrected at ingest) in epoch milliseconds."""
    for field in ("timestamp", "originalTimestamp", "receivedAt"):
        value = message.get(field)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value).timestamp() * 1000)
            except ValueError:
                continue
    return fallback_ms


def epoch_ms(value: Any) -> int | None:
    """A number of epoch milliseconds or an ISO-8601 string as epoch milliseconds."""
    n = number(value)
    if n is not None:
        return int(n)
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value).timestamp() * 1000)
        except ValueError:
            return None
    return None


# -- user agent ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserAgent:
    """What analytics tools show from a browser's User-Agent header."""

    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    device: str | None = None


# Order matters: most browsers claim to be Safari and Mozilla, Edge and Opera claim
# Chrome, so the specific tokens are tested before the generic ones. Names are the
# ones Mixpanel's and Amplitude's own web SDKs report.
_BROWSERS: tuple[tuple[str, str, str], ...] = (
    # (token in the UA, browser name, regex whose group 1 is the version)
    (" OPR/", "Opera", r"OPR/(\d+(?:\.\d+)*)"),
    ("Opera", "Opera", r"Opera[/ ](\d+(?:\.\d+)*)"),
    ("SamsungBrowser/", "Samsung Internet", r"SamsungBrowser/(\d+(?:\.\d+)*)"),
    ("Edg/", "Microsoft Edge", r"Edg/(\d+(?:\.\d+)*)"),
    ("Edge/", "Microsoft Edge", r"Edge/(\d+(?:\.\d+)*)"),
    ("FBIOS", "Facebook Mobile", r"FBAV/(\d+(?:\.\d+)*)"),
    ("CriOS/", "Chrome iOS", r"CriOS/(\d+(?:\.\d+)*)"),
    ("FxiOS/", "Firefox iOS", r"FxiOS/(\d+(?:\.\d+)*)"),
    ("UCBrowser", "UC Browser", r"UCBrowser/(\d+(?:\.\d+)*)"),
    ("Chrome/", "Chrome", r"Chrome/(\d+(?:\.\d+)*)"),
    ("Firefox/", "Firefox", r"Firefox/(\d+(?:\.\d+)*)"),
    ("MSIE", "Internet Explorer", r"MSIE (\d+(?:\.\d+)*)"),
    ("Trident/", "Internet Explorer", r"rv:(\d+(?:\.\d+)*)"),
)
_OS: tuple[tuple[str, str], ...] = (
    (r"Windows Phone", "Windows Phone"),
    (r"Windows", "Windows"),
    (r"iPhone|iPad|iPod", "iOS"),
    (r"Android", "Android"),
    (r"CrOS", "Chrome OS"),
    (r"Mac OS X|Macintosh", "Mac OS X"),
    (r"BlackBerry|BB10", "BlackBerry"),
    (r"Linux", "Linux"),
)
_DEVICES: tuple[tuple[str, str], ...] = (
    ("iPad", "iPad"),
    ("iPod", "iPod Touch"),
    ("iPhone", "iPhone"),
    ("Windows Phone", "Windows Phone"),
    ("BlackBerry", "BlackBerry"),
    ("Android", "Android"),
)


def parse_user_agent(ua: str | None) -> UserAgent:
    """Browser, version, OS and device family of a User-Agent string (unknown parts None)."""
    if not ua:
        return UserAgent()
    browser = version = None
    for token, name, pattern in _BROWSERS:
        if token in ua:
            browser = name
            m = re.search(pattern, ua)
            version = m.group(1) if m else None
            break
    else:
        if "Safari/" in ua and "Version/" in ua:
            browser = "Mobile Safari" if "Mobile" in ua else "Safari"
            m = re.search(r"Version/(\d+(?:\.\d+)*)", ua)
            version = m.group(1) if m else None
    os_name = next((name for pattern, name in _OS if re.search(pattern, ua)), None)
    device = next((name for token, name in _DEVICES if token in ua), None)
    return UserAgent(browser, version, os_name, device)


# -- page and screen event names ---------------------------------------------------

PAGE_TEMPLATE_FIELDS = frozenset({"name", "category", "type"})
DEFAULT_PAGE_TEMPLATE = "Viewed {name} {type}"
PAGE_EVENT_NAME_SETTING = {
    "type": "string",
    "default": DEFAULT_PAGE_TEMPLATE,
    "description": "event for page/screen calls; placeholders {name}, {category}, {type}",
}


def template_error(template: str) -> str | None:
    """Why ``template`` is not a usable page/screen event name template, or None."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"not a valid template ({exc})"
    unknown = sorted({f for f in fields if f not in PAGE_TEMPLATE_FIELDS})
    if unknown:
        return f"unknown placeholder {{{unknown[0]}}}: use {{name}}, {{category}} and {{type}} only"
    if not template.strip():
        return "an empty event name"
    return None


def check_page_event_name(name: str, settings: Mapping[str, Any]) -> None:
    """Raise ConfigError naming ``destinations.NAME.settings.page_event_name`` when it is
    not a usable template (JSON Schema cannot look inside a string this way)."""
    template = settings.get("page_event_name")
    if isinstance(template, str) and (why := template_error(template)):
        raise ConfigError(f"destinations.{name}.settings.page_event_name = {template!r}: {why}")


def page_event_name(template: str, message: dict[str, Any]) -> str:
    """The event a page or screen call becomes: ``template`` filled in with the call's
    ``name``, ``category`` and ``type`` ("Page" or "Screen"). When the call lacks a
    value the template uses, it is "Loaded a Page" / "Loaded a Screen", as Segment's
    classic destinations name pages they cannot name."""
    kind = "Screen" if message.get("type") == "screen" else "Page"
    values = {
        "name": text(message.get("name")) or text(lookup(message, "properties", "name")),
        "category": text(message.get("category"))
        or text(lookup(message, "properties", "category")),
        "type": kind,
    }
    used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    if any(values[f] is None for f in used):
        return f"Loaded a {kind}"
    return template.format(**values)
