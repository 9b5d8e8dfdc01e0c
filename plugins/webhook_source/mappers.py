"""Mappers eventd ships for ``webhook`` sources (entry-point group ``eventd.source_mappers``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventd import Message


def segment(payload: Any) -> Iterable[Message]:
    """A body that already is a Segment message (with its ``type``) or a
    ``{"batch": [...]}`` of them, taken as it is; anything else is ignored.
    Each message is validated by eventd's pipeline like a /v1/batch item."""
    if isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        return list(payload["batch"])
    if isinstance(payload, dict) and "type" in payload:
        return [payload]
    return []
