"""A short history of identity.db (the events of a few people, page by page, one erasure),
replayed by tests/store/test_identity_sqlite.py over a file made by older eventd code
(tests/store/data/identity_v3.db, made by ``python -m tests.store.identity_history
DIR`` run against that code: ``git archive``'s copy first on PYTHONPATH) and over a new
one, whose answers must then be the same.

Only :class:`~eventd.store.identity.IdentityStore` methods every identity.db version has
are used here, so the same steps run against the old code and the new.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eventd.identity.graph import ANONYMOUS, USER, Graph
from eventd.store.identity import IdentityStore

Step = tuple[str, Any]  # ("page", [events]) or ("erase", userId)
PAGE = 7  # events per page: a visit's events cross pages


def ts(i: int) -> str:
    return f"2026-11-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z"


def events() -> Iterator[dict[str, Any]]:
    """Visitors who sign in (1 in 3 on a second device, identified later), a shared laptop,
    an alias joining two userIds, an alias whose previousId is an anonymousId, blocked
    ids, groups, traits and revenue."""
    for i in range(12):
        anon, user = str(uuid.UUID(int=i)), f"user-{i:03d}"
        yield {"type": "track", "anonymousId": anon, "properties": {"step": 1}}
        yield {"type": "page", "anonymousId": anon, "context": {"traits": {"car": "Volvo"}}}
        traits = {"plan": "pro" if i % 2 else "free", "email": f"{user}@example.com"}
        yield {"type": "identify", "userId": user, "anonymousId": anon, "traits": traits}
        yield {"type": "track", "userId": user, "anonymousId": anon,
               "properties": {"revenue": 1.5 * i}}  # fmt: skip
        if i % 3 == 0:
            phone = str(uuid.UUID(int=i + 2**64))
            yield {"type": "track", "anonymousId": phone}
            yield {"type": "identify", "userId": user, "anonymousId": phone}
        yield {"type": "group", "userId": user, "groupId": f"g{i % 4}"}
        yield {"type": "track", "anonymousId": anon}
    laptop = "shared-laptop"
    yield {"type": "track", "anonymousId": laptop}
    yield {"type": "identify", "userId": "ana", "anonymousId": laptop}
    yield {"type": "track", "anonymousId": laptop}
    yield {"type": "identify", "userId": "bob", "anonymousId": laptop}
    yield {"type": "track", "anonymousId": laptop}
    yield {"type": "alias", "previousId": "user-001", "userId": "user-002"}
    yield {"type": "track", "anonymousId": "visitor-x"}
    yield {"type": "alias", "previousId": "visitor-x", "userId": "user-004"}
    yield {"type": "identify", "userId": "null", "anonymousId": "visitor-y"}
    yield {"type": "track", "userId": "user-005", "anonymousId": "undefined"}


def history() -> list[Step]:
    """The steps: pages of :data:`PAGE` events, and one erasure after the sixth page."""
    log = list(events())
    steps: list[Step] = []
    for n, start in enumerate(range(0, len(log), PAGE)):
        steps.append(("page", log[start : start + PAGE]))
        if n == 5:
            steps.append(("erase", "user-003"))
    return steps


def replay(store: IdentityStore, steps: list[Step], first_seq: int = 1) -> int:
    """Apply ``steps`` to ``store`` (open for writing) as the writer does, a graph per page
    reading what it needs from the store; returns the next seq."""
    seq = first_seq
    for kind, arg in steps:
        if kind == "erase":
            store.erase(arg)
            continue
        graph = Graph(backing=store)
        for msg in arg:
            graph.apply(seq, {"timestamp": ts(seq), **msg})
            seq += 1
        store.apply(graph.take_changes(), seq - 1)
    return seq


def identifiers(steps: list[Step]) -> list[tuple[str, str]]:
    """Every (kind, id) the steps' events sent."""
    found: set[tuple[str, str]] = set()
    for kind, arg in steps:
        for msg in arg if kind == "page" else ():
            for field, which in (("userId", USER), ("anonymousId", ANONYMOUS),
                                 ("previousId", USER), ("previousId", ANONYMOUS)):  # fmt: skip
                if field in msg:
                    found.add((which, msg[field]))
    return sorted(found)


def main(argv: list[str]) -> int:
    """Write DIR/identity_v3.db: :func:`history` replayed by the code on PYTHONPATH."""
    path = Path(argv[0]) / "identity_v3.db"
    store = IdentityStore(path, "normal")
    store.open_writer()
    replay(store, history())
    store.save_position("warehouse", 5)
    store.w.execute("VACUUM")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
