"""Where and how the ``s3`` destination lays events out: grouping, object keys, bodies.

Pure functions, no I/O, so the layout (what a data team's queries depend on) is
tested on its own. A batch becomes one object per (source, day received):

    {prefix}/{source}/{YYYY-MM-DD}/{first received_at ms}-{first seq}-{last seq}.jsonl.gz

The day is the first event's ``received_at`` in UTC, the same for every event of
the group. The seq range names exactly the events inside, so sending the same
events again (the dispatcher retries a group as it was) writes the same key.
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from eventd import Event, json_dumps

# mtime=0 in the gzip header: the same events give the same bytes (and ETag) every time.
_GZIP_LEVEL = 6


def day(received_at_ms: int) -> str:
    """YYYY-MM-DD of a unix-ms time, in UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(received_at_ms // 1000))


@dataclass
class Group:
    """The events of one batch from one source received on one UTC day, in seq order."""

    source: str
    day: str
    indexes: list[int] = field(default_factory=list)  # positions in the batch
    events: list[Event] = field(default_factory=list)

    def key(self, prefix: str, gzipped: bool) -> str:
        first, last = self.events[0], self.events[-1]
        name = f"{first.received_at}-{first.seq}-{last.seq}.jsonl" + (".gz" if gzipped else "")
        return day_prefix(prefix, self.source, self.day) + name


def day_prefix(prefix: str, source: str, day: str) -> str:
    """The key prefix of a source's objects of one UTC day, ending in ``/``."""
    return "/".join(p for p in (prefix, source, day) if p) + "/"


_NAME = re.compile(r"/\d+-(\d+)-(\d+)\.jsonl(?:\.gz)?$")


def seq_range(key: str) -> tuple[int, int] | None:
    """(first seq, last seq) of the events in the object at ``key``; None for a key
    this layout did not make."""
    found = _NAME.search("/" + key)
    return (int(found.group(1)), int(found.group(2))) if found else None


def group(batch: Sequence[Event]) -> list[Group]:
    """The batch's (source, day) groups, in order of each group's first event."""
    groups: dict[tuple[str, str], Group] = {}
    for i, event in enumerate(batch):
        d = day(event.received_at)
        g = groups.get((event.source, d))
        if g is None:
            g = groups[event.source, d] = Group(event.source, d)
        g.indexes.append(i)
        g.events.append(event)
    return list(groups.values())


def line(event: Event) -> bytes:
    """The event's stored JSON as one line."""
    body = event.body
    # Stored bodies are compact JSON (no raw newline); anything else would split a
    # record in two for every reader, so it is re-encoded compactly.
    if b"\n" in body:
        body = json_dumps(event.message)
    return body + b"\n"


def object_body(events: Sequence[Event], gzipped: bool) -> bytes:
    """Newline-delimited JSON of the events, gzip-compressed when asked."""
    data = b"".join(line(e) for e in events)
    return gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0) if gzipped else data
