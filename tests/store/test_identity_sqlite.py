"""identity.db's own (SQLite): a file written by an older eventd opens as the current one."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from eventd.identity.graph import ANONYMOUS, USER, Graph, Profile, profile_id_for
from eventd.store.identity import TIMELINE_RUN, IdentityStore
from tests.store.identity_history import Step, history, identifiers, replay

DATA = Path(__file__).parent / "data"

# identity.db version 1's timeline: a row per event.
V1_TIMELINE = """
CREATE TABLE timeline (key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (key, seq))
    WITHOUT ROWID;
"""
# Version 4's profiles and identifiers (integer keys) turned back into version 3's (text
# profile_id keys), for the tests of older versions that build their file from a new one.
TO_VERSION_3 = """
ALTER TABLE profiles RENAME TO profiles_v4;
ALTER TABLE identifiers RENAME TO identifiers_v4;
CREATE TABLE profiles (profile_id TEXT PRIMARY KEY, body BLOB NOT NULL);
INSERT INTO profiles SELECT profile_id, body FROM profiles_v4 ORDER BY key;
CREATE TABLE identifiers (
    kind TEXT NOT NULL, value TEXT NOT NULL, profile_id TEXT NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
INSERT INTO identifiers
    SELECT i.kind, i.value, p.profile_id FROM identifiers_v4 i JOIN profiles_v4 p USING (key);
DROP TABLE identifiers_v4;
DROP TABLE profiles_v4;
DELETE FROM state WHERE key = 'profiles';
PRAGMA user_version = 3;
"""


async def test_a_version_1_timeline_is_moved_into_runs_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    store = IdentityStore(path, "normal")
    store.open_writer()  # the current schema, then turned back into version 1's timeline
    store.close()
    user_seqs = list(range(1, 2 * TIMELINE_RUN + 3))  # three runs: two full, one of 2
    with sqlite3.connect(path) as conn:
        conn.executescript(
            f"{TO_VERSION_3} DROP TABLE timeline; {V1_TIMELINE} PRAGMA user_version = 1;"
        )
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
        assert store.w.execute("PRAGMA user_version").fetchone() == (4,)
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
        conn.executescript(
            f"{TO_VERSION_3} CREATE INDEX links_user ON links (user_id); PRAGMA user_version = 2;"
        )
    conn.close()

    store.open_writer()
    await store.open_reader()
    try:
        indexes = store.w.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        assert "links_user" not in {name for (name,) in indexes}
        assert store.w.execute("PRAGMA user_version").fetchone() == (4,)
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


async def answers(store: IdentityStore, ids: list[tuple[str, str]]) -> dict[str, Any]:
    """Everything identity.db answers (reader thread) about ``ids``: each one's profile
    and stitched timeline, the warehouse feed's links and position, the rows per table."""
    profiles: dict[str, Any] = {}
    for kind, value in ids:
        found = await store.read(store.find, kind, value)
        profiles[f"{kind}:{value}"] = None if found is None else (
            found.public(),
            await store.read(store.timeline, found, 2**63 - 1, 1000),
        )  # fmt: skip
    return {
        "profiles": profiles,
        "links": await store.read(store.links_after, 0, 10_000),
        "position": await store.read(store.position, "warehouse"),
        "counts": await store.read(store.counts),
        "cursor": store.cursor(),
    }


async def test_a_version_3_file_made_by_older_code_migrates_and_answers_the_same(
    tmp_path: Path,
) -> None:
    """data/identity_v3.db was made by the code before version 4 (integer profile keys)
    from :func:`history`: opened, it migrates, answers exactly what a new file made from
    the same history answers, and both go on the same (a merge of two migrated profiles,
    a new anonymousId linked to one, a new person, an erasure)."""
    old = tmp_path / "old" / "identity.db"
    old.parent.mkdir()
    shutil.copy(DATA / "identity_v3.db", old)
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        stored_keys = dict(conn.execute("SELECT profile_id, rowid FROM profiles"))
    conn.close()
    new = IdentityStore(tmp_path / "new" / "identity.db", "normal")
    new.open_writer()
    next_seq = replay(new, history())
    new.save_position("warehouse", 5)
    migrated = IdentityStore(old, "normal")
    migrated.open_writer()
    more: list[Step] = [
        ("page", [
            {"type": "alias", "previousId": "user-005", "userId": "user-006"},
            {"type": "identify", "userId": "user-007", "anonymousId": "new-tablet"},
            {"type": "track", "anonymousId": "new-tablet", "properties": {"revenue": 2}},
            {"type": "identify", "userId": "newcomer", "anonymousId": "newcomer-phone"},
            {"type": "track", "userId": "user-009", "anonymousId": str(uuid.UUID(int=9))},
        ]),
        ("erase", "ana"),
    ]  # fmt: skip
    ids = [*identifiers(history() + more), (USER, "no-one")]
    await new.open_reader()
    await migrated.open_reader()
    try:
        w = migrated.w
        assert w.execute("PRAGMA user_version").fetchone() == (4,)
        tables = {name for (name,) in w.execute("SELECT name FROM sqlite_master")}
        assert not {"profiles_v3", "identifiers_v3"} & tables
        # The keys are version 3's rowids; the counter starts past them.
        assert dict(w.execute("SELECT profile_id, key FROM profiles")) == stored_keys
        last = w.execute("SELECT value FROM state WHERE key = 'profiles'").fetchone()[0]
        assert last == max(stored_keys.values())
        before = await answers(new, ids)
        assert before["profiles"][f"{USER}:user-002"] is not None
        assert before["profiles"][f"{USER}:user-003"] is None  # erased in the history
        assert await answers(migrated, ids) == before
        assert replay(migrated, more, next_seq) == replay(new, more, next_seq)
        after = await answers(new, ids)
        assert after != before
        assert await answers(migrated, ids) == after
        newcomer = w.execute(
            "SELECT key FROM identifiers WHERE kind = 'u' AND value = 'newcomer'"
        ).fetchone()[0]
        assert newcomer > last  # a new profile's key is never a migrated one's
    finally:
        for store in (new, migrated):
            await store.close_reader()
            store.close()
