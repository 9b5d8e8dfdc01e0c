"""Structured logging: one JSON object per line on stdout (journald keeps it), or console.

Every line is one ``write`` of the text and its newline, under one lock that
eventd's own log and every library's share: two threads logging at once never
glue two records on one line (seen in issue 14's trial: structlog's
``PrintLogger`` wrote a record and its newline in two writes, under a lock the
stdlib handler did not take).

Secrets never reach a log line: callers do not pass write keys, tokens or bodies,
and a processor masks any field whose name says it holds one, as a second line
of defence.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

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


_WRITE_LOCK = threading.Lock()  # one for the process: every log line goes to one stdout


class _Lines:
    """A file's lines: :meth:`write` puts a line and its newline in one write and
    flushes, under the lock every log writer of this process shares."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, line: str) -> None:
        text = line + "\n"
        with _WRITE_LOCK:
            self._file.write(text)
            self._file.flush()


class _LineLogger:
    """structlog's logger: each rendered record is one line of :class:`_Lines`."""

    def __init__(self, lines: _Lines) -> None:
        self._lines = lines

    def msg(self, message: str) -> None:
        self._lines.write(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineHandler(logging.Handler):
    """stdlib logging's handler: each formatted record is one line of :class:`_Lines`."""

    def __init__(self, lines: _Lines) -> None:
        super().__init__()
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.write(self.format(record))
        except Exception:  # logging's own rule: a failed emit never raises
            self.handleError(record)


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
    lines = _Lines(sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: _LineLogger(lines),
        cache_logger_on_first_use=True,
    )
    handler = _LineHandler(lines)
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
