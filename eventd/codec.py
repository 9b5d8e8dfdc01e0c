"""JSON that keeps every value exactly as sent, between the socket and a destination.

orjson is eventd's JSON (fast), but it reads an integer past 64 bits as a float (a
different number) and cannot write one at all. Segment keeps such values exactly
(issue 12: ids coerced to exact strings, numbers kept as numbers), so whatever reads
or writes a message goes through here: orjson when it can be exact, the standard
library's parser and encoder when it cannot. Like :mod:`eventd.event`, this sits
below everything (no eventd imports).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# A run of 19 digits may be an integer past 64 bits, which orjson reads as a float.
# Found by mapping digits to "1" and the rest to "0" and looking for 19 ones: a few
# times faster than a regular expression, whose search cost more than the parse.
_DIGITS = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))
_WIDE_RUN = b"1" * 19


def may_hold_wide_int(body: bytes) -> bool:
    """Whether ``body`` has a run of 19 or more digits (an integer orjson would read
    as a float). False positives (a long digit string inside a string) only cost
    the slower exact parse."""
    return body.translate(_DIGITS).find(_WIDE_RUN) >= 0


def loads(body: bytes | str) -> Any:
    """``body`` parsed with every integer exact. Raises ``ValueError`` (orjson's
    ``JSONDecodeError`` is one) on invalid JSON, like :func:`orjson.loads`."""
    data = body.encode() if isinstance(body, str) else body
    if not may_hold_wide_int(data):
        return orjson.loads(data)
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, integers of any width written exactly.

    orjson when it can; the standard library for what orjson refuses because of an
    integer past 64 bits. Raises ``TypeError`` for what neither can write."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "Integer" not in str(exc):
            raise
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
