"""Each plugin's ``delete_user`` on its own, against the same contract servers (and a real
PostgreSQL, moto's S3) as delivery: the cases the end-to-end erasure does not reach
(credentials missing or refused, a fixed warehouse schema with an identities table,
a webhook that batches, a bucket that may not be listed), and DuckDB's file loaded
through the destination itself."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from eventd_plugins.amplitude import Amplitude
from eventd_plugins.duckdb import Duckdb
from eventd_plugins.intercom import Intercom
from eventd_plugins.mixpanel import Mixpanel
from eventd_plugins.postgres import Postgres
from eventd_plugins.s3 import S3
from eventd_plugins.webhook import Webhook

from eventd import OK, Destination, Erasure, IdentityLink, Permanent, StoredRef, Unsupported
from tests.contract.amplitude_server import DELETIONS, AmplitudeServer
from tests.contract.intercom_server import IntercomServer
from tests.contract.mixpanel_server import MixpanelServer
from tests.contract.postgres_server import PostgresServer
from tests.contract.s3_server import MotoS3
from tests.harness import Sink
from tests.test_duckdb import events
from tests.test_postgres import db, pg  # noqa: F401  (the real PostgreSQL fixtures)
from tests.test_s3 import moto, s3_settings  # noqa: F401  (moto's S3 server, session-wide)

ERASURE = Erasure(("user-del-1", "user-del-2"), ("anon-del-1",))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_mixpanel_without_a_gdpr_token_deletes_profiles_and_says_the_events_stay(
    mixpanel: MixpanelServer, session: aiohttp.ClientSession
) -> None:
    settings = {"project_token": mixpanel.project_token, "endpoint": mixpanel.url}
    dest = Mixpanel("mp", settings, session)
    outcome = await dest.delete_user(ERASURE)
    assert isinstance(outcome, Unsupported)
    assert "settings.gdpr_oauth_token" in outcome.instructions
    assert "user-del-1, user-del-2, anon-del-1" in outcome.instructions
    assert mixpanel.deleted_profiles == ["user-del-1", "user-del-2", "anon-del-1"]
    assert mixpanel.statuses("/engage") == [200]
    assert mixpanel.deletions == []


async def test_amplitude_without_or_with_a_wrong_secret_key(
    amplitude: AmplitudeServer, session: aiohttp.ClientSession
) -> None:
    settings = {"api_key": amplitude.api_key, "endpoint": amplitude.url}
    without = await Amplitude("amp", settings, session).delete_user(ERASURE)
    assert isinstance(without, Unsupported) and "settings.secret_key" in without.instructions
    assert amplitude.statuses(DELETIONS) == []

    wrong = Amplitude("amp", {**settings, "secret_key": "not-the-secret-9f8e"}, session)
    refused = await wrong.delete_user(ERASURE)
    assert isinstance(refused, Permanent)
    assert "HTTP 401" in refused.reason and "secret_key" in refused.reason
    assert "not-the-secret" not in refused.reason

    # A user Amplitude never saw is no error: ignore_invalid_id is sent (as "True").
    right = Amplitude("amp", {**settings, "secret_key": amplitude.secret_key}, session)
    assert await right.delete_user(ERASURE) == OK
    assert [j["user_ids"] for j in amplitude.deletions] == [["user-del-1", "user-del-2"]]


async def test_intercom_deletes_every_contact_of_the_user_ids_and_none_is_done(
    intercom: IntercomServer, session: aiohttp.ClientSession
) -> None:
    intercom.contacts["c1"] = {"type": "contact", "id": "c1", "external_id": "user-del-2"}
    intercom.contacts["c2"] = {"type": "contact", "id": "c2", "external_id": "someone-else"}
    dest = Intercom("ic", {"access_token": intercom.token, "endpoint": intercom.url}, session)
    assert await dest.delete_user(ERASURE) == OK
    assert [c["id"] for c in intercom.deleted] == ["c1"]
    assert set(intercom.contacts) == {"c2"}
    assert intercom.statuses("/user_delete_requests") == [200]
    assert await dest.delete_user(ERASURE) == OK  # asked again: nothing left, still done
    assert intercom.statuses("/user_delete_requests") == [200]


async def test_webhook_deletions_are_off_unless_asked_and_batched_and_signed_like_events(
    sink: Sink, session: aiohttp.ClientSession
) -> None:
    off = Webhook("hook", {"url": sink.url + "/hook"}, session)
    outcome = await off.delete_user(ERASURE)
    assert isinstance(outcome, Unsupported) and "forward_deletions = true" in outcome.instructions
    assert sink.attempts == []

    settings = {
        "url": sink.url + "/hook",
        "forward_deletions": True,
        "batch": True,
        "shared_secret": "sign-deletions-too",
    }
    assert await Webhook("hook", settings, session).delete_user(ERASURE) == OK
    [request] = sink.received
    sent = json.loads(request.body)
    assert [(m["type"], m["userId"], m["anonymousIds"]) for m in sent] == [
        ("delete", "user-del-1", ["anon-del-1"]),
        ("delete", "user-del-2", ["anon-del-1"]),
    ]
    signature = hmac.new(b"sign-deletions-too", request.body, hashlib.sha1).hexdigest()
    assert request.headers["X-Signature"] == signature


async def test_s3_without_the_list_permission_names_the_day_prefixes_and_seqs(
    moto: MotoS3,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    bucket = moto.bucket("erase-no-list")
    keys = moto.user_without_policy("eraser-no-list")
    settings = {
        **s3_settings(moto, bucket),
        "access_key_id": keys.access_key_id,
        "secret_access_key": keys.secret_access_key,
    }
    erasure = Erasure(("u1",), (), (StoredRef(41, "web", 1_795_900_000_000),))
    outcome = await S3("archive", settings, session).delete_user(erasure)
    assert isinstance(outcome, Unsupported)
    text = outcome.instructions
    assert "AccessDenied" in text and "s3:ListBucket" in text
    assert f"s3://{bucket}/segment-logs/web/2026-11-28/" in text and ": 41." in text
    assert keys.secret_access_key not in text


async def test_postgres_deletes_from_its_schema_only_including_identities_and_aliases(
    pg: PostgresServer,  # noqa: F811
    db: str,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    tables = {  # table: (columns, rows); the person's rows are the ones with -del-
        "identifies": (
            "id, user_id, anonymous_id",
            "('m1', 'user-del-1', NULL), ('m2', NULL, 'anon-del-1'), ('m3', 'k', 'a')",
        ),
        "identities": ("id, user_id, anonymous_id", "('i1', 'user-del-2', 'x'), ('i2', 'k', 'a')"),
        "users": ("id, email", "('user-del-1', 'a@x'), ('k', 'k@x')"),
        "aliases": ("id, user_id, previous_id", "('l1', 'k', 'anon-del-1'), ('l2', 'k', 'a')"),
    }
    kept = {"identifies": {"m3"}, "identities": {"i2"}, "users": {"k"}, "aliases": {"l2"}}
    conn = await asyncpg.connect(pg.dsn(db, password=pg.password))
    try:
        for schema in ("wh", "other"):  # "other" is not the destination's schema
            await conn.execute(f"CREATE SCHEMA {schema}")
            for table, (columns, values) in tables.items():
                typed = ", ".join(f"{c} text" for c in columns.split(", "))
                await conn.execute(f"CREATE TABLE {schema}.{table} ({typed})")
                await conn.execute(f"INSERT INTO {schema}.{table} VALUES {values}")
        settings = {"dsn": pg.dsn(db), "password": pg.password, "schema": "wh"}
        dest = Postgres("wh", settings, session)
        try:
            assert await dest.delete_user(ERASURE) == OK
        finally:
            await dest.close()
        for table, (_, values) in tables.items():
            left = {r["id"] for r in await conn.fetch(f"SELECT id FROM wh.{table}")}
            assert left == kept[table], table
            untouched = await conn.fetch(f"SELECT id FROM other.{table}")
            assert len(untouched) == values.count("("), table
    finally:
        await conn.close()


def person(user_id: str, anonymous_id: str, alias_of: str, alias_to: str) -> list[dict[str, Any]]:
    """One person's calls, one of each table's kind (messageIds start with the userId)."""
    both = {"userId": user_id, "anonymousId": anonymous_id}
    return [
        {"type": "identify", "messageId": f"{user_id}-i", "traits": {"plan": "pro"}, **both},
        {"type": "track", "messageId": f"{user_id}-t", "event": "Signed Up", **both},
        {"type": "page", "messageId": f"{user_id}-p", "anonymousId": anonymous_id, "name": "Home"},
        # an alias from one of their ids to an id the erasure does not name: by previous_id
        {"type": "alias", "messageId": f"{user_id}-a", "previousId": alias_of, "userId": alias_to},
    ]


@pytest.mark.parametrize("schema", [None, "wh"])
async def test_duckdb_deletes_the_person_from_every_table_and_keeps_the_other(
    tmp_path: Path, session: aiohttp.ClientSession, schema: str | None
) -> None:
    settings: dict[str, Any] = {"path": str(tmp_path / "analytics.duckdb")}
    if schema:
        settings["schema"] = schema
    Duckdb.validate_settings("analytics", settings)
    dest = Duckdb("analytics", settings, session)
    theirs = person("user-del-1", "anon-del-1", "anon-del-1", "user-new-3")
    kept = person("k", "anon-k", "anon-k", "k")
    linked = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    links = [
        IdentityLink("anon-del-1", "user-del-1", "p1", linked),
        IdentityLink(None, "user-del-2", "p1", linked),
        IdentityLink("anon-k", "k", "p2", linked),
    ]
    where = schema or "app"  # without the setting: one schema per source, identities in main
    tables = {  # table: the query of what is in it
        t: f"SELECT id FROM {where}.{t}"
        for t in ("identifies", "tracks", "signed_up", "pages", "aliases", "users")
    }
    tables["identities"] = (
        f"SELECT coalesce(anonymous_id, '') || '>' || user_id FROM {schema or 'main'}.identities"
    )

    async def contents() -> dict[str, set[str]]:
        return {t: {r[0] for r in await dest.query(sql)} for t, sql in tables.items()}

    try:
        assert await dest.deliver(events(*theirs, *kept, source="app")) == [OK] * 8
        await dest.write_identities(links)
        assert await contents() == {
            "identifies": {"user-del-1-i", "k-i"},
            "tracks": {"user-del-1-t", "k-t"},
            "signed_up": {"user-del-1-t", "k-t"},
            "pages": {"user-del-1-p", "k-p"},
            "aliases": {"user-del-1-a", "k-a"},
            "users": {"user-del-1", "k"},
            "identities": {"anon-del-1>user-del-1", ">user-del-2", "anon-k>k"},
        }
        assert await dest.delete_user(ERASURE) == OK
        assert await contents() == {
            "identifies": {"k-i"},
            "tracks": {"k-t"},
            "signed_up": {"k-t"},
            "pages": {"k-p"},
            "aliases": {"k-a"},
            "users": {"k"},
            "identities": {"anon-k>k"},
        }
        assert await dest.delete_user(ERASURE) == OK  # asked again: nothing left, still done
    finally:
        await dest.close()


async def test_a_destination_without_delete_user_is_unsupported_naming_its_type(
    session: aiohttp.ClientSession,
) -> None:
    class Quiet(Destination):
        type_name = "quiet"
        integration_name = "Quiet Analytics"

    outcome = await Quiet("q", {}, session).delete_user(ERASURE)
    assert outcome == Unsupported(
        "the quiet destination cannot delete through its API: delete the user's data in "
        "Quiet Analytics by hand"
    )
