"""Who shares a destination's limits on the cluster: :class:`LiveNodes` turns
successive readings of the nodes' heartbeats (``node-<id>`` keys in ``S_LEASES``)
into this node's ``(place, nodes)``, :attr:`Store.limit_share`, which
eventd/delivery/share.py divides the limits by."""

from __future__ import annotations


class LiveNodes:
    """The nodes that share the limits, from successive readings of the heartbeats:
    a node absent from the readings stays counted until it has been absent for
    ``grace`` seconds of readings (the lease TTL). A beat can vanish from a live
    node: after a quorum loss every ``node-<id>`` key has expired and each node
    beats again at its next round, up to 3 s later; read in that moment, each node
    saw only itself and took the whole limit (issue #14's trial: ``destination limits
    shared nodes=1`` on both nodes, the limits briefly doubled). Counting a dead
    node a little longer keeps the total below the limit, never above."""

    def __init__(self, me: str, grace: float) -> None:
        self.me = me
        self.grace = grace
        self._missing_since: dict[str, float] = {}  # node id -> first reading without it
        self._known: set[str] = {me}

    def read(self, ids: set[str], now: float) -> tuple[int, int]:
        """Take one reading (``ids``: the nodes whose beat is there; ``now``: seconds,
        monotonic) and return this node's ``(place, nodes)``: its index among the
        counted ids in sorted order, and how many are counted."""
        for node in ids:
            self._missing_since.pop(node, None)
        for node in self._known - ids - {self.me}:
            since = self._missing_since.setdefault(node, now)
            if now - since >= self.grace:
                del self._missing_since[node]
                self._known.discard(node)
        self._known |= ids
        counted = sorted(self._known)
        return counted.index(self.me), len(counted)
