"""Structured logging: one JSON object per line on stdout (journald keeps it), or console.

Secrets never reach a log line: callers do not pass write keys, tokens or bodies,
and a processor masks any field whose name says it holds one, as a second line
of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from eventd.redact import is_secret


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if is_secret(key):
            event[key] = "***"
    return event


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


_settings: tuple[str, str] | None = None  # what configure() was last given here


def settings() -> tuple[str, str] | None:
    """``(format, level)`` as :func:`configure` was last called in this process (None:
    never): a spawned background process configures itself the same
    (eventd/background.py), so its lines are JSON when the server's are."""
    return _settings


def configure(fmt: str = "json", level: str = "info") -> None:
    """eventd's own log (structlog) and every library's (stdlib ``logging``: nats-py,
    aiohttp, asyncio) in one format on stdout, at ``level`` and above."""
    global _settings
    _settings = (fmt, level)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.captureWarnings(True)  # Python warnings too, as lines of the same format
