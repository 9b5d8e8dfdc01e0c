"""identity.db's own (SQLite): a file written by an older eventd opens as the current one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from eventd.identity.graph import ANONYMOUS, USER, Graph, Profile, profile_id_for
from eventd.store.identity import TIMELINE_RUN, IdentityStore

# identity.db version 1's timeline: a row per event.
V1_TIMELINE = """
CREATE TABLE timeline (key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (key, seq))
    WITHOUT ROWID;
"""


async def test_a_version_1_timeline_is_moved_into_runs_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    store = IdentityStore(path, "normal")
    store.open_writer()  # the current schema, then turned back into version 1's timeline
    store.close()
    user_seqs = list(range(1, 2 * TIMELINE_RUN + 3))  # three runs: two full, one of 2
    with sqlite3.connect(path) as conn:
        conn.executescript(f"DROP TABLE timeline; {V1_TIMELINE} PRAGMA user_version = 1;")
        conn.executemany(
            "INSERT INTO timeline VALUES (?, ?)",
            [("u:ana", s) for s in user_seqs] + [("a:a1", 0), ("a:a1", 7)],
        )
    conn.close()

    store.open_writer()
    await store.open_reader()
    try:
        ana = Profile(profile_id_for(USER, "ana"), 1, user_ids=["ana"])
        newest = user_seqs[::-1]
        assert await store.read(store.timeline, ana, 2**63 - 1, 3) == newest[:3]
        assert await store.read(store.timeline, ana, TIMELINE_RUN + 2, 4) == [
            TIMELINE_RUN + 1, TIMELINE_RUN, TIMELINE_RUN - 1, TIMELINE_RUN - 2
        ]  # fmt: skip
        assert await store.read(store.timeline, ana, 2**63 - 1, 10**6) == newest
        mobile = Profile("p", 1, anonymous_ids=["a1"])
        assert await store.read(store.timeline, mobile, 2**63 - 1, 10) == [7, 0]
        rows = store.w.execute("SELECT key, first, last FROM timeline ORDER BY key, first")
        assert rows.fetchall() == [
            ("a:a1", 0, 7),
            ("u:ana", 1, TIMELINE_RUN),
            ("u:ana", TIMELINE_RUN + 1, 2 * TIMELINE_RUN),
            ("u:ana", 2 * TIMELINE_RUN + 1, 2 * TIMELINE_RUN + 2),
        ]
        assert store.w.execute("PRAGMA user_version").fetchone() == (3,)
    finally:
        await store.close_reader()
        store.close()


async def test_a_version_2_file_loses_the_links_user_index_and_merges_resend_the_same(
    tmp_path: Path,
) -> None:
    """Version 3 reads a userId's links by primary key (from its profile's anonymousIds):
    a version 2 file's index on links (user_id) is dropped on open, and a merge after it
    still sends the merged user's links again, erasure still deletes them."""
    path = tmp_path / "identity.db"
    store = IdentityStore(path, "normal")
    store.open_writer()

    def apply(seq: int, *msgs: dict[str, str]) -> None:
        graph = Graph(backing=store)
        for i, msg in enumerate(msgs):
            graph.apply(seq + i, {"timestamp": "2026-11-01T10:00:00.000Z", **msg})
        store.apply(graph.take_changes(), seq + len(msgs) - 1)

    apply(
        1,
        {"type": "identify", "anonymousId": "laptop", "userId": "ana"},
        {"type": "identify", "anonymousId": "phone", "userId": "bob"},
        {"type": "identify", "anonymousId": "tablet", "userId": "bob"},
    )
    store.close()
    with sqlite3.connect(path) as conn:  # back to version 2
        conn.executescript("CREATE INDEX links_user ON links (user_id); PRAGMA user_version = 2;")
    conn.close()

    store.open_writer()
    await store.open_reader()
    try:
        indexes = store.w.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        assert "links_user" not in {name for (name,) in indexes}
        assert store.w.execute("PRAGMA user_version").fetchone() == (3,)
        top = (await store.read(store.links_after, 0, 100))[-1][0]
        apply(4, {"type": "alias", "previousId": "bob", "userId": "ana"})
        ana = profile_id_for(USER, "ana")
        again = await store.read(store.links_after, top, 100)
        assert [(x.anonymous_id, x.user_id, x.profile_id) for _, x in again] == [
            (None, "bob", ana),
            ("phone", "bob", ana),
            ("tablet", "bob", ana),
        ]
        assert store.erase("ana") == []
        assert store.links_of("phone") == store.links_of("laptop") == []
        assert await store.read(store.counts) == {"profiles": 0, "identifiers": 0, "links": 0}
        assert store.profile_of(ANONYMOUS, "tablet") is None
    finally:
        await store.close_reader()
        store.close()
