"""Recent delivery outcomes, per event and destination, kept in memory for the live debugger.

The dispatcher records how each destination settled an event (delivered, skipped
with the reason, dead-lettered with the error); ``GET /admin/outcomes`` answers
"which destinations took, skipped or dead-lettered this event" from it. Only the
newest ``capacity`` events are kept (oldest seq forgotten first), so memory stays
bounded whatever the traffic; nothing here is durable (a restart forgets it, and the
dead-letter table stays the record of failures).

Keyed by the log's ``seq`` (the dispatcher has it without parsing the event); the
admin endpoint finds the seq of a ``(source, messageId)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import Literal, TypedDict

from eventd.outbox import iso_ms, now_ms

Kind = Literal["delivered", "skipped", "dead_lettered"]
# What describe() says of a destination with nothing recorded for the event.
Unrecorded = Literal["pending", "not_routed", "not_recorded", "not_stored"]
CAPACITY = 10_000  # events; at most a few hundred bytes each


class Outcome(TypedDict):
    """One destination's outcome for one event (``at``: ISO-8601 UTC, ms)."""

    destination: str
    outcome: Kind | Unrecorded
    reason: str | None
    at: str | None


class RecentOutcomes:
    """seq -> {destination: (outcome, reason, unix ms)}, bounded to ``capacity`` seqs."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._by_seq: OrderedDict[int, dict[str, tuple[Kind, str | None, int]]] = OrderedDict()

    def record(self, seq: int, destination: str, outcome: Kind, reason: str | None = None) -> None:
        """The latest outcome wins (a redriven dead letter later delivered reads delivered)."""
        entry = self._by_seq.get(seq)
        if entry is None:
            entry = self._by_seq[seq] = {}
            if len(self._by_seq) > self.capacity:
                # seqs arrive nearly in order, so the oldest inserted is the oldest event
                self._by_seq.popitem(last=False)
        entry[destination] = (outcome, reason, now_ms())

    def get(self, seq: int) -> list[Outcome]:
        """What each destination did with event ``seq``, by destination name."""
        entry = self._by_seq.get(seq, {})
        return [
            Outcome(destination=d, outcome=o, reason=why, at=iso_ms(at))
            for d, (o, why, at) in sorted(entry.items())
        ]

    def describe(
        self,
        seq: int | None,
        source: str,
        destinations: Iterable[tuple[str, int, Collection[str] | None]],
    ) -> list[Outcome]:
        """One outcome per destination ``(name, cursor, sources or None)`` for event ``seq``
        of ``source``: what was recorded (delivered, skipped, dead_lettered, with the
        reason), else ``not_stored`` (``seq`` is None: not committed yet, or never sent),
        ``not_routed`` (its ``sources`` exclude the event's), ``pending`` (its cursor is
        before the event) or ``not_recorded`` (passed before this record began, e.g. a
        restart, or forgotten past ``capacity``; also events its ``integrations`` kept
        from it, which routing drops without a record)."""
        recorded = {o["destination"]: o for o in self.get(seq)} if seq is not None else {}
        out: list[Outcome] = []
        for name, cursor, sources in destinations:
            if name in recorded:
                out.append(recorded[name])
                continue
            state: Unrecorded
            if seq is None:
                state = "not_stored"
            elif sources is not None and source not in sources:
                state = "not_routed"
            else:
                state = "pending" if cursor < seq else "not_recorded"
            out.append(Outcome(destination=name, outcome=state, reason=None, at=None))
        return out

    def __len__(self) -> int:
        return len(self._by_seq)
