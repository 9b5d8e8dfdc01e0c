"""The ``postgres`` destination: loads events into a PostgreSQL warehouse laid out the way
Segment's Postgres warehouse is (see README.md beside this file).

Owns the connection pool, one transaction per batch, and what PostgreSQL's answers
mean for each event: a refused login or a missing database is permanent, a server
that is down, restarting, full of connections or slow is retried, and a row
PostgreSQL refuses (a data exception) fails only its own event, found by loading
the batch's events one by one. Rows and names come from ``rows.py``; DDL, the
column cache and the SQL from ``warehouse.py``.

asyncpg is imported when a destination of this type is checked or created, so
eventd starts with its other destinations where asyncpg is not installed.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import aiohttp

from eventd import (
    OK,
    ConfigError,
    DeletionOutcome,
    Destination,
    Erasure,
    Event,
    IdentityLink,
    Outcome,
    Permanent,
    Retry,
    hookimpl,
    optional_import,
    scrub,
)

from ..warehouse.batches import (
    IDENTITY_COLUMNS,
    SCHEMA_SETTING,
    adjusted_counts,
    columnar,
    grouped,
    identity_rows,
)
from ..warehouse.erasure import delete_statements, tables_sql
from ..warehouse.rows import (
    Planned,
    column_name,
    plan,
    schema_name,
)
from .warehouse import (
    Connection,
    Warehouse,
    insert_sql,
    upsert_identities_sql,
    upsert_users_sql,
)


def _asyncpg(where: str = "the postgres destination") -> ModuleType:
    return optional_import("asyncpg", "postgres", where)


def masked_dsn(dsn: str) -> str:
    """The DSN as it may be shown: any password in it replaced by ``***``."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = userinfo.split(":", 1)[0] + ":***@" + host
    query = "&".join(
        f"{k}=***" if k == "password" else f"{k}={v}"
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def dsn_secrets(dsn: str) -> list[str]:
    """Passwords a DSN carries (in its user info or a ``password=`` parameter), raw and
    percent-decoded, so either spelling is redacted."""
    parts = urllib.parse.urlsplit(dsn)
    found = [v for k, v in urllib.parse.parse_qsl(parts.query) if k == "password"]
    userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    if ":" in userinfo:
        raw = userinfo.split(":", 1)[1]
        found += [raw, urllib.parse.unquote(raw)]
    return [s for s in found if s]


# SQLSTATE classes (the first two characters) and codes, and what they mean here.
_PERMANENT_CODES = {
    "28000": "PostgreSQL refused the login",  # invalid authorization (pg_hba, no such role)
    "28P01": "PostgreSQL refused the login",  # wrong password
    "3D000": "the database does not exist",
    "42501": "not allowed",  # insufficient privilege (CREATE on the schema...)
}
# A table or column dropped behind the cache's back: read the catalog again, retry.
# 42804: a column's type changed by hand, so a value of the old type no longer fits.
_STALE_CACHE = {"42P01", "42703", "3F000", "42804"}
_ROW_CLASSES = {"22", "23"}  # data exception, integrity constraint violation


class RowRefused(Exception):
    """PostgreSQL refused a row of the batch (raised only to leave the transaction)."""


class Postgres(Destination):
    type_name = "postgres"
    description = "load events into a PostgreSQL warehouse (Segment's warehouse schema)"
    settings_schema = {
        "type": "object",
        "required": ["dsn"],
        "additionalProperties": False,
        "properties": {
            # No pattern here: a schema error prints the value, and a DSN may hold a
            # password; check_settings checks it and shows it masked.
            "dsn": {
                "type": "string",
                "description": "postgresql://user[:password]@host[:port]/database[?options]",
            },
            "password": {
                "type": "string",
                "description": "the password, when the DSN leaves it out",
            },
            "schema": SCHEMA_SETTING,
            "pool_size": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "default": 4,
                "description": "connections at most (one per batch in flight)",
            },
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": 30,
                "description": "seconds to connect, and for each statement",
            },
            "max_batch_events": {
                "type": "integer",
                "minimum": 1,
                "maximum": 10000,
                "default": 1000,
                "description": "events per transaction at most",
            },
            "max_batch_bytes": {
                "type": "integer",
                "minimum": 1024,
                "default": 10_000_000,
                "description": "bytes of events per transaction at most",
            },
        },
    }
    max_batch_events = 1000
    max_batch_bytes = 10_000_000

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        self.asyncpg = _asyncpg()
        self.dsn = str(self.settings["dsn"])
        self.password: str | None = self.settings.get("password")
        self.schema: str | None = self.settings.get("schema")
        self.timeout = float(self.settings["timeout"])
        self.max_batch_events = int(self.settings["max_batch_events"])
        self.max_batch_bytes = int(self.settings["max_batch_bytes"])
        self.secrets = [*dsn_secrets(self.dsn), *([self.password] if self.password else [])]
        self.warehouse = Warehouse()
        self._pool: Any = None  # asyncpg.Pool, made on first use

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        _asyncpg(f"destinations.{name}.type = 'postgres'")
        dsn = str(settings["dsn"])
        where = f"destinations.{name}.settings.dsn"
        try:
            parts = urllib.parse.urlsplit(dsn)
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError as exc:
            raise ConfigError(f"{where} = {masked_dsn_or_hidden(dsn)!r}: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                f"{where} = {masked_dsn_or_hidden(dsn)!r}: expected a URL starting with "
                "postgresql://"
            )

    # -- delivery ---------------------------------------------------------------

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome] | Outcome:
        loaded_at = datetime.now(UTC)
        planned = [plan(e.message, self.schema or schema_name(e.source), loaded_at) for e in batch]
        outcomes = scrub(await self._load(planned), self.secrets)
        assert outcomes is not None
        results, counts = adjusted_counts(planned, outcomes)
        self.count_adjusted(counts)
        return results

    async def _load(self, planned: list[Planned]) -> Sequence[Outcome] | Outcome:
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self.timeout) as conn:
                try:
                    await self._write(conn, planned)
                    return OK
                except RowRefused:
                    pass
                # One row of the batch was refused: load each event on its own so only
                # the events PostgreSQL refuses fail.
                outcomes: list[Outcome] = []
                for i, p in enumerate(planned):
                    try:
                        await self._write(conn, [p])
                        outcomes.append(OK)
                    except RowRefused as refused:
                        outcomes.append(Permanent(f"PostgreSQL refused the row: {refused}"))
                    except Exception as exc:
                        outcome = self._classify(exc)
                        if isinstance(outcome, Retry):
                            # the connection is gone or the server busy: the rest later
                            return outcomes + [outcome] * (len(planned) - i)
                        outcomes.append(outcome)
                return outcomes
        except Exception as exc:
            return self._classify(exc)

    async def _write(self, conn: Connection, planned: list[Planned]) -> None:
        """Every row of ``planned`` in one transaction; RowRefused when PostgreSQL refuses
        one (the transaction then rolled back)."""
        statements: list[tuple[str, list[list[Any]]]] = []
        for group in grouped(planned):
            types = await self.warehouse.ensure(conn, group)
            columns, arrays = columnar(group, types)
            sql = (
                upsert_users_sql(group.schema, columns, types)
                if group.table == "users"
                else insert_sql(group.schema, group.table, columns, types)
            )
            statements.append((sql, arrays))
        try:
            async with conn.transaction():
                for sql, arrays in statements:
                    await conn.execute(sql, *arrays, timeout=self.timeout)
        except self.asyncpg.PostgresError as exc:
            # (asyncpg's own refusal to encode a value is a DataError too: class 22)
            if str(getattr(exc, "sqlstate", ""))[:2] in _ROW_CLASSES:
                raise RowRefused(str(exc)) from exc
            raise

    # -- the store reports read, and the identity graph writes ------------------------

    dialect = "postgres"

    column_name = staticmethod(column_name)

    @property
    def identities_schema(self) -> str:
        """Where the ``identities`` table lives: the ``schema`` setting, else ``public``."""
        return self.schema or "public"

    async def write_identities(self, links: Sequence[IdentityLink]) -> None:
        """Upsert identity links into ``identities`` (eventd.identity.links: a repeated
        (anonymous_id, user_id) keeps its first linked_at, takes the new profile_id).
        Raises what asyncpg raises; the caller (the identity graph) retries."""
        rows = identity_rows(links)
        if not rows:
            return
        arrays = [[getattr(r, c) for r in rows] for c in IDENTITY_COLUMNS]
        pool = await self._get_pool()
        async with pool.acquire(timeout=self.timeout) as conn:
            await self.warehouse.ensure_identities(conn, self.identities_schema)
            async with conn.transaction():
                # one writer at a time: two upserts of a new key would both insert it
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    f"eventd {self.identities_schema}.identities",
                )
                for sql in upsert_identities_sql(self.identities_schema):
                    await conn.execute(sql, *arrays, timeout=self.timeout)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (``$1``... parameters), in a session whose time
        zone is UTC (reports' calendar periods are UTC's)."""
        pool = await self._get_pool()
        async with pool.acquire(timeout=self.timeout) as conn, conn.transaction(readonly=True):
            await conn.execute("SET LOCAL TimeZone = 'UTC'")
            return [tuple(r) for r in await conn.fetch(sql, *params)]

    async def delete_user(self, erasure: Erasure) -> DeletionOutcome:
        """Delete the person's rows from every table of eventd's schemas, in one
        transaction, by the rule of ``eventd_plugins.warehouse.erasure`` (event tables,
        ``identities``, ``aliases`` by previous_id, ``users`` by id)."""
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self.timeout) as conn, conn.transaction():
                sql, params = tables_sql(self.schema)
                tables = await conn.fetch(sql, *params, timeout=self.timeout)
                for sql, arrays in delete_statements(
                    tables, erasure.user_ids, erasure.anonymous_ids
                ):
                    await conn.execute(sql, *arrays, timeout=self.timeout)
            return OK
        except Exception as exc:
            outcome = scrub(self._classify(exc), self.secrets)
            assert isinstance(outcome, Retry | Permanent)
            return outcome

    def _classify(self, exc: BaseException) -> Outcome:
        asyncpg = self.asyncpg
        if isinstance(exc, asyncpg.PostgresError):
            code = str(getattr(exc, "sqlstate", "") or "")
            message = f"{exc} (SQLSTATE {code})" if code else str(exc)
            if code in _PERMANENT_CODES:
                return Permanent(f"{_PERMANENT_CODES[code]}: {message}")
            if code in _STALE_CACHE:
                self.warehouse.forget()
                return Retry(f"the warehouse changed under eventd: {message}")
            if code[:2] == "42":  # syntax or access rule: retrying changes nothing
                return Permanent(f"PostgreSQL refused the statement: {message}")
            return Retry(f"PostgreSQL: {message}")
        if isinstance(exc, asyncpg.InterfaceError) and isinstance(
            exc.__context__, asyncpg.PostgresError | OSError
        ):
            # The transaction's exit found the connection gone: what closed it says more.
            return self._classify(exc.__context__)
        if isinstance(exc, asyncpg.ClientConfigurationError):
            return Permanent(f"settings.dsn is not usable: {exc}")
        if isinstance(exc, TimeoutError):
            return Retry(f"PostgreSQL did not answer within {self.timeout:g}s")
        if isinstance(exc, OSError | asyncpg.InterfaceError):
            return Retry(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}")
        raise exc  # a bug: the dispatcher retries it and logs the traceback

    async def _get_pool(self) -> Any:
        if self._pool is None:
            # min_size=0: making the pool connects nowhere, so eventd starts while the
            # warehouse is down; each batch's acquire() connects as needed.
            self._pool = await self.asyncpg.create_pool(
                self.dsn,
                password=self.password,
                min_size=0,
                max_size=int(self.settings["pool_size"]),
                timeout=self.timeout,
                command_timeout=self.timeout,
                # Idle connections are closed, so a restarted server is reconnected to.
                max_inactive_connection_lifetime=60.0,
                server_settings={"application_name": f"eventd {self.name}"},
            )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except TimeoutError:
                pool.terminate()  # a connection stuck on a dead server must not hold shutdown


def masked_dsn_or_hidden(dsn: str) -> str:
    """A DSN for an error message: masked, or hidden when it cannot even be parsed."""
    try:
        return masked_dsn(dsn)
    except ValueError:
        return "***"


@hookimpl
def eventd_destinations() -> list[type[Destination]]:
    return [Postgres]
