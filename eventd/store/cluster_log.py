"""Reading the cluster's log by position: what a log-consuming service needs there.

- :class:`ClusterLogSource` is the cluster store's :class:`~eventd.store.base.LogSource`:
  the identity writer (a process of its own) opens it and reads the log's pages after
  its cursor itself, as it does SQLite's outbox (eventd/store/log_reader.py). An
  event's seq is the cluster's (``log sequence << EVENT_BITS | offset``).
- :func:`read_seqs` reads the events at given seqs (the stitched timeline's
  ``/admin/profiles/{id}/events``) with one get per log message.

The log has no "up to" on the cluster (no node knows the newest seq without asking):
a page is whatever the log holds after ``after`` now, waiting up to
:data:`LONG_POLL` seconds when it holds nothing yet, so a reader polling pages
neither spins nor needs a wake-up signal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from eventd.config import JetStreamConfig
from eventd.event import Event
from eventd.store.cluster import EVENT_BITS
from eventd.store.cluster_identity import Bridge
from eventd.store.jetstream import Names, decode_rows

LONG_POLL = 1.0  # seconds a page waits for the log's next message when none is there
FETCH = 256  # log messages per fetch


def event_seq(log_seq: int, offset: int) -> int:
    return log_seq << EVENT_BITS | offset


class ClusterLogSource:
    """A picklable handle on the cluster's log (its settings)."""

    def __init__(self, cfg: JetStreamConfig) -> None:
        self.cfg = cfg

    def open(self) -> ClusterLogReader:
        return ClusterLogReader(self.cfg)


class ClusterLogReader:
    """Pages of the log in order through one ephemeral consumer, made again whenever a
    page is asked from elsewhere than where the last one ended."""

    def __init__(self, cfg: JetStreamConfig) -> None:
        self.names = Names(cfg.stream)
        self.bridge = Bridge(cfg, "eventd-identity-log")
        self._sub: JetStreamContext.PullSubscription | None = None
        self._next = -1  # the ``after`` the consumer continues from
        # Log messages (their (seq, body) rows) fetched past the last page's limit.
        self._held: list[list[tuple[int, bytes]]] = []

    def page(self, after: int, upto: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to about ``limit`` (seq, body) after ``after``, whole log messages (at least
        one), none past ``upto``; [] after LONG_POLL seconds when there are none."""
        return self.bridge.run(self._page(after, upto, limit))

    def lines(self, after: int, upto: int, limit: int) -> tuple[list[int], bytes]:
        rows = self.page(after, upto, limit)
        return [seq for seq, _ in rows], b"\n".join(body for _, body in rows)

    async def _page(self, after: int, upto: int, limit: int) -> list[tuple[int, bytes]]:
        if self._sub is None or after != self._next:
            await self._restart(after)
        assert self._sub is not None
        messages, self._held = self._held, []
        count, wait = sum(len(m) for m in messages), LONG_POLL
        while count < limit:
            try:
                fetched = await self._sub.fetch(FETCH, timeout=wait)
            except (TimeoutError, NatsTimeout):
                break
            for msg in fetched:
                seq = msg.metadata.sequence.stream
                rows = [(event_seq(seq, i), r[7]) for i, r in enumerate(decode_rows(msg.data))]
                rows = [r for r in rows if r[0] > after]
                if rows:
                    messages.append(rows)
                    count += len(rows)
            wait = 0.05  # more only if it is there already
        # Whole log messages (the cursor lands on a message's last event), at least one.
        page: list[tuple[int, bytes]] = []
        taken = 0
        for rows in messages:
            if rows[-1][0] > upto or (page and len(page) + len(rows) > limit):
                break
            page += rows
            taken += 1
        self._held = messages[taken:]
        self._next = page[-1][0] if page else after
        return page

    async def _restart(self, after: int) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=(after >> EVENT_BITS) + 1 if after else 1,
        )
        n = self.names
        self._sub = await self.bridge.js.pull_subscribe(
            f"{n.stream}.log.>", stream=n.stream, config=config
        )
        self._held = []
        self._next = after

    def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                self.bridge.run(self._sub.unsubscribe(), 5.0)
        self.bridge.close()


async def read_seqs(js: JetStreamContext, stream: str, seqs: Sequence[int]) -> list[Event]:
    """The events at ``seqs`` still in the log (retention purges), in seq order."""
    wanted: dict[int, set[int]] = {}
    for seq in seqs:
        wanted.setdefault(seq >> EVENT_BITS, set()).add(seq & ((1 << EVENT_BITS) - 1))
    out: list[Event] = []
    for log_seq in sorted(wanted):
        try:
            msg = await js.get_msg(stream, seq=log_seq)
        except NotFoundError:
            continue
        if msg.data is None:
            continue
        for i, r in enumerate(decode_rows(msg.data)):
            if i in wanted[log_seq]:
                out.append(Event(event_seq(log_seq, i), r[0], r[6], body=r[7], user_id=r[4]))
    return out
