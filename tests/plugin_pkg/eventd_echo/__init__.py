"""A third-party destination: appends each event's messageId to a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eventd import OK, Destination, Event, Outcome, hookimpl


class Echo(Destination):
    type_name = "echo"
    description = "writes messageIds to a file (eventd's plugin test)"
    settings_schema = {
        "type": "object",
        "required": ["path"],
        "properties": {"path": {"type": "string"}},
        "additionalProperties": False,
    }

    async def deliver(self, batch: Sequence[Event]) -> Outcome:
        with Path(self.settings["path"]).open("a") as f:  # noqa: ASYNC230 - tiny test write
            f.writelines(e.message["messageId"] + "\n" for e in batch)
        return OK


@hookimpl
def eventd_destinations() -> list[type[Destination]]:
    return [Echo]
