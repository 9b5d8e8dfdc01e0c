"""Third-party transforms (eventd's transform tests), registered in ``eventd.transforms``."""

from __future__ import annotations

import asyncio
from typing import Any

from eventd import Transform, hookimpl


def tag_team(message: dict[str, Any]) -> dict[str, Any] | None:
    """Adds properties.team; drops internal events; fails on properties.boom."""
    props = message.setdefault("properties", {})
    if props.get("internal"):
        return None
    if props.get("boom"):
        raise ValueError("boom is not allowed")
    props["team"] = "growth"
    return message


async def rename_signup(message: dict[str, Any]) -> dict[str, Any]:
    """An async transform (it could look something up): "signup" becomes "Signed Up"."""
    await asyncio.sleep(0)
    if message.get("event") == "signup":
        message["event"] = "Signed Up"
    return message


@hookimpl
def eventd_transforms() -> dict[str, Transform]:
    return {"tag_team": tag_team, "rename_signup": rename_signup}
