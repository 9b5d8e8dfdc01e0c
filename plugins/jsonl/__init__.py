"""The ``jsonl`` destination: appends each event as one JSON line to a local file.

For local use and debugging. The file is rotated by size (``max_bytes``):
``events.jsonl`` becomes ``events.jsonl.1``, the previous ``.1`` becomes ``.2``,
and so on up to ``keep`` files. Each batch is written and fsynced before it
counts as delivered.

Erasure: the file is an append-only log eventd never rewrites, so ``delete_user``
answers *unsupported* with a command that removes the person's lines.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from eventd import (
    OK,
    DeletionOutcome,
    Destination,
    Erasure,
    Event,
    Outcome,
    Retry,
    Unsupported,
    hookimpl,
    json_dumps,
)


class JsonLines(Destination):
    type_name = "jsonl"
    description = "append events as JSON lines to a local file (rotated by size)"
    settings_schema = {
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "minLength": 1, "description": "file to append to"},
            "max_bytes": {
                "type": "integer",
                "minimum": 1,
                "description": "rotate when the file would grow past this many bytes",
            },
            "keep": {
                "type": "integer",
                "minimum": 1,
                "default": 5,
                "description": "rotated files to keep",
            },
        },
    }
    max_batch_events = 1000

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        self.path = Path(self.settings["path"])
        self.max_bytes: int | None = self.settings.get("max_bytes")
        self._lock = asyncio.Lock()  # batches in flight must not interleave their writes

    async def deliver(self, batch: Sequence[Event]) -> Outcome:
        data = b"".join(json_dumps(e.message) + b"\n" for e in batch)
        try:
            async with self._lock:
                await asyncio.to_thread(self._append, data)
        except OSError as exc:
            return Retry(f"cannot write {self.path}: {exc.strerror}")
        return OK

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        users = json_dumps(list(erasure.user_ids)).decode()
        anonymous = json_dumps(list(erasure.anonymous_ids)).decode()
        return Unsupported(
            f"eventd does not rewrite {self.path}: remove the user's lines from it and its "
            f"rotated copies ({self.path.name}.1 ... .{self.settings['keep']}), e.g. for each "
            f"file: jq -c --argjson u '{users}' --argjson a '{anonymous}' "
            "'select((.userId as $x | $u | index($x) | not) and "
            "(.anonymousId as $y | $a | index($y) | not))' FILE > FILE.new && mv FILE.new FILE"
        )

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if (
            self.max_bytes
            and self.path.exists()
            and self.path.stat().st_size + len(data) > self.max_bytes
        ):
            self._rotate()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _rotate(self) -> None:
        keep = int(self.settings["keep"])
        for i in range(keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


@hookimpl
def eventd_destinations() -> list[type[Destination]]:
    return [JsonLines]
