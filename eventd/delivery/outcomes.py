"""Recent delivery outcomes, per event and destination, kept in memory for the live debugger.

``GET /admin/outcomes`` answers "which destinations took, skipped or dead-lettered
this event" from what the workers tell this record (one per dispatcher, shared by
its workers; :meth:`~eventd.delivery.dispatcher.Dispatcher.outcomes_of` asks it):

- per event, the exceptions: skipped (with the reason: a filter, a transform, a
  suppressed user, the plugin), dead-lettered (with the error), and delivered out of
  the log's order (a redrive, a replay); they are rare, and the newest ``capacity``
  events with one are kept;
- per batch read from the log, one entry: the seq span it covered and when (the
  newest ``BATCHES`` per destination). Delivery is the hot path, so it costs one
  append per batch, not a write per event.

An event inside a settled span, routed to the destination (the caller says so, from
the same routing code) and without an exception, was delivered. Nothing
here is durable: a restart forgets it (the dead-letter table stays the record of
failures), and :meth:`describe` says ``not_recorded`` rather than guess.

Keyed by the log's ``seq`` (the worker has it without parsing the event); the
admin endpoint finds the event of a ``(source, messageId)`` with ``Store.find_event``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Literal, TypedDict

from eventd.store import iso_ms, now_ms

Kind = Literal["delivered", "skipped", "dead_lettered"]
# What describe() says of a destination with nothing recorded for the event.
Unrecorded = Literal["pending", "not_routed", "not_recorded", "not_stored"]
CAPACITY = 10_000  # events with a skip or a dead letter
BATCHES = 2_000  # delivered batches per destination


class Outcome(TypedDict):
    """One destination's outcome for one event (``at``: ISO-8601 UTC, ms)."""

    destination: str
    outcome: Kind | Unrecorded
    reason: str | None
    at: str | None


class RecentOutcomes:
    """Exceptions by seq (bounded to ``capacity`` seqs) and delivered seq ranges by
    destination (bounded to ``batches`` each)."""

    def __init__(self, capacity: int = CAPACITY, batches: int = BATCHES) -> None:
        self.capacity = capacity
        self.batches = batches
        self._exceptions: OrderedDict[int, dict[str, tuple[Kind, str | None, int]]] = OrderedDict()
        self._delivered: dict[str, deque[tuple[int, int, int]]] = {}

    def record(self, seq: int, destination: str, outcome: Kind, reason: str | None) -> None:
        """Event ``seq`` was skipped or dead-lettered (or, out of the log's order, delivered)
        by ``destination``, because ``reason``."""
        entry = self._exceptions.get(seq)
        if entry is None:
            entry = self._exceptions[seq] = {}
            if len(self._exceptions) > self.capacity:
                self._exceptions.popitem(last=False)  # the oldest recorded
        entry[destination] = (outcome, reason, now_ms())

    def delivered(self, destination: str, first: int, last: int) -> None:
        """A batch read from the log, seqs ``first`` to ``last``, is settled: every event of
        it routed to ``destination`` and not recorded as skipped or dead was delivered.
        (A log batch is a contiguous run of the events routed there, so the span holds
        no other batch's.)"""
        ranges = self._delivered.get(destination)
        if ranges is None:
            ranges = self._delivered[destination] = deque(maxlen=self.batches)
        ranges.append((first, last, now_ms()))

    def delivered_aside(self, destination: str, seqs: Iterable[int], since: int) -> None:
        """Events sent out of the log's order (redrive, replay) from unix ms ``since``, now
        done with: delivered, unless skipped during this attempt (a redriven dead letter
        that got through reads delivered)."""
        for seq in seqs:
            found = self._exceptions.get(seq, {}).get(destination)
            if found is None or found[0] != "skipped" or found[2] < since:
                self.record(seq, destination, "delivered", None)

    def _outcome(self, seq: int, destination: str) -> Outcome | None:
        found = self._exceptions.get(seq, {}).get(destination)
        if found is None:
            found = next(
                (
                    ("delivered", None, at)
                    for lo, hi, at in reversed(self._delivered.get(destination, ()))
                    if lo <= seq <= hi
                ),
                None,
            )
        if found is None:
            return None
        kind, reason, at = found
        return Outcome(destination=destination, outcome=kind, reason=reason, at=iso_ms(at))

    def describe(
        self, seq: int | None, destinations: Iterable[tuple[str, int, bool]]
    ) -> list[Outcome]:
        """One outcome per destination ``(name, cursor, routed)`` for event ``seq``.

        ``routed``: whether the destination's routing (its ``sources``, the event's
        ``integrations``) sends the event there. Recorded outcomes come first
        (delivered, skipped, dead_lettered, with the reason), else ``not_stored``
        (``seq`` is None: not committed yet, or never sent), ``not_routed``,
        ``pending`` (its cursor is before the event) or ``not_recorded`` (passed
        before this record began, e.g. a restart, or forgotten past its bounds).
        """
        out: list[Outcome] = []
        for name, cursor, routed in destinations:
            if seq is None:
                state: Unrecorded = "not_stored"
            elif not routed:
                state = "not_routed"
            elif (found := self._outcome(seq, name)) is not None:
                out.append(found)
                continue
            else:
                state = "pending" if cursor < seq else "not_recorded"
            out.append(Outcome(destination=name, outcome=state, reason=None, at=None))
        return out
