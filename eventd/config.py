"""Configuration: the TOML file's schema, its typed frozen model, and where it is found.

Lookup order: ``--config PATH``, ``$EVENTD_CONFIG``, ``./eventd.toml``, else the
embedded default (data in ``./eventd-data/``, one source ``default`` whose write
key is generated once and kept in the data directory).

Every error is a :class:`ConfigError` naming the file, the key, the bad value and
what was expected, so ``eventd check`` can print it as is.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from eventd.errors import ConfigError as ConfigError  # re-exported: its old home
from eventd.identity.graph import DEFAULT_BLOCKED_VALUES, DEFAULT_MAX_ANONYMOUS_IDS
from eventd.normalize import TYPES
from eventd.tracking_plan import ACTIONS, PlanError, TrackingPlan, load_plan

DEFAULT_DATA_DIR = Path("eventd-data")
EMBEDDED_ORIGIN = "<embedded default>"  # a Config's origin when no file was read
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.I)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    None: 1,
}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The source type of the Tracking API (/v1/*): SDKs send with its write key. Every other
# type is a cloud-app source (eventd/source.py), reached only at /v1/webhooks/{write_key}.
TRACKING_API = "segment"


def parse_duration(value: object) -> float:
    """'90s', '15m', '4h', '7d', '1w' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '15m', '4h' or '7d'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a duration >= 0")
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("expected a duration like '30s', '15m', '4h' or '7d'")


def parse_size(value: object) -> int:
    """'500MB', '2GiB', '10kb' or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower() if m.group(2) else None
        return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError("expected a size like '500MB' or '2GiB'")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8088
    # Peers whose X-Forwarded-For is believed when filling context.ip.
    trusted_proxies: tuple[str, ...] = ()
    # Seconds a SIGTERM waits for in-flight deliveries before cancelling them.
    shutdown_timeout: float = 10.0
    # Events received and not yet committed past which ingest answers 429 +
    # Retry-After (clients wait and resend) rather than queue without bound.
    max_pending_events: int = 20_000
    # analytics.js (@segment/analytics-next's dist/umd/standalone.js) to serve at
    # /analytics.js/v1/{writeKey}/analytics.min.js, so a site needs no CDN.
    analytics_js: Path | None = None


_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NATS_URL = re.compile(r"^(nats|tls)://[^\s/:@]+(:\d{1,5})?$")


@dataclass(frozen=True, kw_only=True)
class JetStreamConfig:
    """``storage.*`` keys of ``backend = "jetstream"`` (DESIGN.md, "Past one machine")."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: str = "EVENTD"  # the log; the other streams and buckets derive their names from it
    replicas: int = 3
    # Dedup and per-user ordering partitions: subjects carry a partition number, a
    # partition has one dedup stage (and, for ordered destinations, one fetcher) at a time.
    partitions: int = 8
    # The stream's own message-id window: covers a publisher retrying one publish.
    publish_dedup_window: float = 120.0
    # How long ingest waits for the stream's acknowledgement before answering 503.
    publish_timeout: float = 5.0
    creds: Path | None = None
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    backend: str = "sqlite"
    jetstream: JetStreamConfig | None = None  # set when backend = "jetstream"
    path: Path = DEFAULT_DATA_DIR / "eventd.db"
    synchronous: str = "full"
    retention: float = 7 * 86400.0
    dead_letter_retention: float = 30 * 86400.0
    dedup_window: float = 86400.0
    max_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    token: str | None = None
    # When false, /metrics answers without the bearer token (for scrapers on a trusted network).
    metrics_auth: bool = True


@dataclass(frozen=True, kw_only=True)
class ReportsConfig:
    # The destination (type duckdb or postgres) whose tables reports read; None: no
    # report can run. Default: the only duckdb destination.
    store: str | None = None


REPORT_STORE_TYPES = ("duckdb", "postgres")
# The embedded default's analytics store, so reports answer on a fresh install.
DEFAULT_ANALYTICS = "analytics"


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    name: str
    write_key: str
    # CORS: browser origins allowed to send with this key; empty means any origin.
    allowed_origins: tuple[str, ...] = ()
    # What its events may carry (tracking_plan.py); None: anything the spec allows.
    tracking_plan: TrackingPlan | None = None
    # TRACKING_API, or a cloud-app source type (`eventd plugins` lists them) whose own
    # keys (client_secret, ...) are in settings, validated by the type's settings_schema.
    type: str = TRACKING_API
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DestinationConfig:
    name: str
    type: str
    sources: tuple[str, ...] | None = None  # None: every source
    batch_size: int = 100
    max_in_flight: int = 4
    rate_limit: float | None = None  # events per second; None: unlimited
    retry_max_age: float = 4 * 3600.0
    retry_backoff: float = 1.0  # first retry delay; doubles per attempt, with jitter
    retry_backoff_max: float = 300.0
    enabled: bool = True
    # Destination filters: call types it gets, and track event names it gets (or not).
    types: tuple[str, ...] | None = None  # None: every type
    events: tuple[str, ...] | None = None  # None: every track event
    exclude_events: tuple[str, ...] = ()
    transforms: tuple[str, ...] = ()  # names of installed transforms, applied in order
    # Stitched delivery (eventd/identity/stitch.py): anonymous events with the linked
    # userId, and these profile traits copied into context.traits.
    resolve_identity: bool = False
    enrich_traits: tuple[str, ...] = ()
    # Per-user order (README, "Ordered destinations"): one batch in flight at a time (per
    # partition on a cluster), a failing one holding back the later ones.
    ordered: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class IdentityConfig:
    """``[identity]``: the identity graph and its merge protection (eventd/identity/graph.py)."""

    enabled: bool = True
    blocked_values: tuple[str, ...] = DEFAULT_BLOCKED_VALUES
    max_anonymous_ids: int = DEFAULT_MAX_ANONYMOUS_IDS


@dataclass(frozen=True, kw_only=True)
class Config:
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    admin: AdminConfig = AdminConfig()
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    destinations: dict[str, DestinationConfig] = field(default_factory=dict)
    reports: ReportsConfig = ReportsConfig()
    identity: IdentityConfig = IdentityConfig()
    origin: str = EMBEDDED_ORIGIN

    def source_by_key(self, type: str | None = TRACKING_API) -> dict[str, SourceConfig]:
        """Sources of one type (default: the Tracking API's; None: every type) by write key.

        A cloud-app source's key is refused at /v1/*: its events must pass its signature
        check at /v1/webhooks/{write_key}."""
        return {s.write_key: s for s in self.sources.values() if type in (None, s.type)}

    @property
    def data_dir(self) -> Path:
        return self.storage.path.parent


class _Table:
    """Reads one TOML table, remembering its dotted name for error messages."""

    def __init__(self, origin: str, prefix: str, data: object) -> None:
        self.origin = origin
        self.prefix = prefix
        if not isinstance(data, dict):
            self.fail("", data, "a table")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def fail(self, key: str, value: object, expected: str) -> NoReturn:
        dotted = ".".join(part for part in (self.prefix, key) if part) or "(top level)"
        raise ConfigError(f"{self.origin}: {dotted} = {value!r}: expected {expected}")

    def get(self, key: str, expected_type: type | tuple[type, ...], expected: str) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if value is None:
            return None
        bad_bool = isinstance(value, bool) and bool not in _as_tuple(expected_type)
        if not isinstance(value, expected_type) or bad_bool:
            self.fail(key, value, expected)
        return value

    def require(self, key: str, expected_type: type, expected: str) -> Any:
        value = self.get(key, expected_type, expected)
        if value is None:
            raise ConfigError(f"{self.origin}: {self.prefix}.{key} is missing: expected {expected}")
        return value

    def convert(self, key: str, parse: Any) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(key, value, str(exc).removeprefix("expected "))

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.get(key, list, "a list of strings")
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            self.fail(key, value, "a list of strings")
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            key = unknown[0]
            self.fail(
                key, self.data[key], f"one of the known keys ({', '.join(sorted(self.seen))})"
            )


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(value: object) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"expected a positive {'integer' if kind is int else 'number'}")
        if kind is int and not isinstance(value, int):
            raise ValueError("expected a positive integer")
        return value

    return parse


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("expected a port number 0-65535")
    return value


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError("an IP address or CIDR network") from exc
    return value


def parse_config(data: dict[str, Any], origin: str) -> Config:
    """Build a :class:`Config` from parsed TOML, validating every key."""
    root = _Table(origin, "", data)

    def section(name: str) -> _Table:
        root.seen.add(name)
        return _Table(origin, name, data.get(name, {}))

    srv = section("server")
    proxies = srv.strings("trusted_proxies") or ()
    for p in proxies:
        try:
            _network(p)
        except ValueError:
            srv.fail("trusted_proxies", p, "an IP address or CIDR network")
    server = ServerConfig(
        host=srv.get("host", str, "a host name or address") or ServerConfig.host,
        port=_default(srv.convert("port", _port), ServerConfig.port),
        trusted_proxies=proxies,
        shutdown_timeout=_default(srv.convert("shutdown_timeout", parse_duration), 10.0),
        max_pending_events=_default(
            srv.convert("max_pending_events", _positive(int)), ServerConfig.max_pending_events
        ),
        analytics_js=_optional_path(srv.get("analytics_js", str, "a file path")),
    )
    srv.finish()

    st = section("storage")
    path_value = st.get("path", str, "a file path")
    path = Path(path_value) if path_value else DEFAULT_DATA_DIR / "eventd.db"
    sync = st.get("synchronous", str, "'full' or 'normal'") or "full"
    if sync not in ("full", "normal"):
        st.fail("synchronous", sync, "'full' or 'normal'")
    backend = st.get("backend", str, "'sqlite' or 'jetstream'") or "sqlite"
    if backend not in ("sqlite", "jetstream"):
        st.fail("backend", backend, "'sqlite' or 'jetstream'")
    storage = StorageConfig(
        backend=backend,
        jetstream=_jetstream(st, origin) if backend == "jetstream" else _no_jetstream(st),
        path=path,
        synchronous=sync,
        retention=_default(st.convert("retention", parse_duration), StorageConfig.retention),
        dead_letter_retention=_default(
            st.convert("dead_letter_retention", parse_duration), StorageConfig.dead_letter_retention
        ),
        dedup_window=_default(st.convert("dedup_window", parse_duration), 86400.0),
        max_size=st.convert("max_size", parse_size),
    )
    st.finish()

    idn = section("identity")
    identity = IdentityConfig(
        enabled=_default(idn.get("enabled", bool, "true or false"), True),
        blocked_values=_default(idn.strings("blocked_values"), DEFAULT_BLOCKED_VALUES),
        max_anonymous_ids=_default(
            idn.convert("max_anonymous_ids", _positive(int)), DEFAULT_MAX_ANONYMOUS_IDS
        ),
    )
    idn.finish()

    adm = section("admin")
    admin = AdminConfig(
        token=adm.get("token", str, "a string"),
        metrics_auth=_default(adm.get("metrics_auth", bool, "true or false"), True),
    )
    adm.finish()

    src_root = section("sources")
    sources: dict[str, SourceConfig] = {}
    keys: dict[str, str] = {}
    for name, raw in src_root.data.items():
        if not _NAME.match(name):
            src_root.fail(name, raw, "a source name of letters, digits, '-' or '_'")
        t = _Table(origin, f"sources.{name}", raw)
        key = t.require("write_key", str, "a write key string")
        if not key.strip():
            t.fail("write_key", key, "a non-empty write key")
        if key in keys:
            t.fail("write_key", "***", f"a key not already used by sources.{keys[key]}")
        keys[key] = name
        stype = t.get("type", str, "a source type (see `eventd plugins`)") or TRACKING_API
        sources[name] = SourceConfig(
            name=name,
            write_key=key,
            allowed_origins=t.strings("allowed_origins") or (),
            tracking_plan=_tracking_plan(t, origin),
            type=stype,
            settings=_source_settings(t, stype),
        )
        t.finish()

    dst_root = section("destinations")
    destinations: dict[str, DestinationConfig] = {}
    for name, raw in dst_root.data.items():
        if not _NAME.match(name):
            dst_root.fail(name, raw, "a destination name of letters, digits, '-' or '_'")
        t = _Table(origin, f"destinations.{name}", raw)
        dtype = t.require("type", str, "a destination type (see `eventd plugins`)")
        dsources = t.strings("sources")
        for s in dsources or ():
            if s not in sources:
                t.fail(
                    "sources", s, f"a configured source ({', '.join(sorted(sources)) or 'none'})"
                )
        dtypes = t.strings("types")
        for call_type in dtypes or ():
            if call_type not in TYPES:
                t.fail("types", call_type, f"a call type ({', '.join(sorted(TYPES))})")
        events = t.strings("events")
        exclude_events = t.strings("exclude_events")
        if events is not None and exclude_events is not None:
            t.fail(
                "exclude_events", list(exclude_events), "no exclude_events beside events (use one)"
            )
        settings = t.get("settings", dict, "a table") or {}
        destinations[name] = DestinationConfig(
            name=name,
            type=dtype,
            sources=dsources,
            batch_size=_default(t.convert("batch_size", _positive(int)), 100),
            max_in_flight=_default(t.convert("max_in_flight", _positive(int)), 4),
            rate_limit=t.convert("rate_limit", _positive(float)),
            retry_max_age=_default(t.convert("retry_max_age", parse_duration), 4 * 3600.0),
            retry_backoff=_default(t.convert("retry_backoff", parse_duration), 1.0),
            retry_backoff_max=_default(t.convert("retry_backoff_max", parse_duration), 300.0),
            enabled=_default(t.get("enabled", bool, "true or false"), True),
            types=dtypes,
            events=events,
            exclude_events=exclude_events or (),
            transforms=t.strings("transforms") or (),
            resolve_identity=_default(t.get("resolve_identity", bool, "true or false"), False),
            enrich_traits=t.strings("enrich_traits") or (),
            ordered=_default(t.get("ordered", bool, "true or false"), False),
            settings=settings,
        )
        if not identity.enabled:
            for key in ("resolve_identity", "enrich_traits"):
                if t.data.get(key):
                    t.fail(key, t.data[key], "identity.enabled = true beside it")
        t.finish()

    rep = section("reports")
    reports = ReportsConfig(store=_report_store(rep, destinations))
    rep.finish()

    root.finish()
    return Config(
        server=server,
        storage=storage,
        admin=admin,
        sources=sources,
        destinations=destinations,
        reports=reports,
        identity=identity,
        origin=origin,
    )


def _report_store(t: _Table, destinations: dict[str, DestinationConfig]) -> str | None:
    """``reports.store``: a duckdb or postgres destination's name; default the only duckdb
    destination (None when there is none, or several: reports then say to set it)."""
    stores = sorted(n for n, d in destinations.items() if d.type in REPORT_STORE_TYPES)
    name: str | None = t.get("store", str, "a duckdb or postgres destination's name")
    if name is None:
        duckdbs = [n for n in stores if destinations[n].type == "duckdb"]
        return duckdbs[0] if len(duckdbs) == 1 else None
    if name not in stores:
        t.fail("store", name, f"a duckdb or postgres destination ({', '.join(stores) or 'none'})")
    return name


def _tracking_plan(t: _Table, origin: str) -> TrackingPlan | None:
    """A source's plan: ``tracking_plan`` (a path, relative to the config file's
    directory), and what to do with ``unplanned_events`` and ``violations``."""
    actions = f"one of {', '.join(repr(a) for a in ACTIONS)}"
    choices = {}
    for key in ("unplanned_events", "violations"):
        value = t.get(key, str, actions)
        if value is not None and value not in ACTIONS:
            t.fail(key, value, actions)
        choices[key] = value or "forward"
    value = t.get("tracking_plan", str, "a JSON file path")
    if value is None:
        for key in ("unplanned_events", "violations"):
            if key in t.data:
                t.fail(key, t.data[key], "tracking_plan set beside it")
        return None
    path = Path(value)
    if not path.is_absolute() and origin != EMBEDDED_ORIGIN:
        path = Path(origin).parent / path
    try:
        return load_plan(path, choices["unplanned_events"], choices["violations"])
    except PlanError as exc:
        t.fail("tracking_plan", value, f"a tracking plan ({path}: {exc})")


def _source_settings(t: _Table, stype: str) -> dict[str, Any]:
    """A cloud-app source's own keys: every key of its table not read above. Its type
    validates them (plugins.check_sources); a Tracking API source has none, so an
    unknown key there stays an error."""
    if stype == TRACKING_API:
        return {}
    settings = {k: v for k, v in t.data.items() if k not in t.seen}
    t.seen.update(settings)
    return settings


_JETSTREAM_KEYS = (
    "servers",
    "stream",
    "replicas",
    "partitions",
    "publish_dedup_window",
    "publish_timeout",
    "creds",
    "token",
    "user",
    "password",
    "tls_ca",
    "tls_cert",
    "tls_key",
)


def _no_jetstream(st: _Table) -> JetStreamConfig | None:
    """None, after refusing any jetstream key given without the backend."""
    for key in _JETSTREAM_KEYS:
        if key in st.data:
            shown = "***" if key in ("token", "password") else st.data[key]
            st.fail(key, shown, "storage.backend = 'jetstream' beside it")
    return None


def _jetstream(st: _Table, origin: str) -> JetStreamConfig:
    """The jetstream keys of ``[storage]``: the cluster, names, and one way to log in."""
    if importlib.util.find_spec("nats") is None:  # an optional dependency (pyproject)
        need = "nats-py installed beside it: pip install 'eventd[jetstream]'"
        st.fail("backend", "jetstream", need)
    servers = st.strings("servers")
    if servers is not None:
        if not servers:
            st.fail("servers", [], "at least one nats://host:port URL")
        for url in servers:
            if not _NATS_URL.match(url):
                st.fail("servers", url, "a nats://host:port or tls://host:port URL")
    stream = st.get("stream", str, "a stream name") or JetStreamConfig.stream
    if not _STREAM_NAME.match(stream):
        st.fail("stream", stream, "a stream name of 1-32 letters, digits, '-' or '_'")
    replicas = _default(st.convert("replicas", _positive(int)), JetStreamConfig.replicas)
    if replicas > 5:
        st.fail("replicas", replicas, "1 to 5 (JetStream's limit)")
    partitions = _default(st.convert("partitions", _positive(int)), JetStreamConfig.partitions)
    if partitions > 1024:
        st.fail("partitions", partitions, "1 to 1024")

    def file(key: str) -> Path | None:
        value = st.get(key, str, "a file path")
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute() and origin != EMBEDDED_ORIGIN:
            path = Path(origin).parent / path
        if not path.is_file():
            st.fail(key, value, f"a readable file ({path} does not exist)")
        return path

    creds = file("creds")
    token = st.get("token", str, "a string")
    user = st.get("user", str, "a string")
    password = st.get("password", str, "a string")
    if (user is None) != (password is None):
        missing, given = ("password", "user") if user is not None else ("user", "password")
        raise ConfigError(
            f"{origin}: storage.{missing} is missing: expected it beside storage.{given}"
        )
    ways = [k for k, v in (("creds", creds), ("token", token), ("user", user)) if v is not None]
    if len(ways) > 1:
        shown = "***" if ways[1] == "token" else st.data[ways[1]]
        st.fail(ways[1], shown, f"one way to log in; storage.{ways[0]} is already set")
    tls_cert, tls_key = file("tls_cert"), file("tls_key")
    if (tls_cert is None) != (tls_key is None):
        missing, given = (
            ("tls_key", "tls_cert") if tls_cert is not None else ("tls_cert", "tls_key")
        )
        raise ConfigError(
            f"{origin}: storage.{missing} is missing: expected it beside storage.{given}"
            " (a client certificate and its key)"
        )
    for key in _JETSTREAM_KEYS:
        st.seen.add(key)
    return JetStreamConfig(
        servers=servers or JetStreamConfig.servers,
        stream=stream,
        replicas=replicas,
        partitions=partitions,
        publish_dedup_window=_default(
            st.convert("publish_dedup_window", parse_duration), JetStreamConfig.publish_dedup_window
        ),
        publish_timeout=_default(
            st.convert("publish_timeout", parse_duration), JetStreamConfig.publish_timeout
        ),
        creds=creds,
        token=token,
        user=user,
        password=password,
        tls_ca=file("tls_ca"),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def load_file(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path))


def find_config_path(explicit: str | None) -> Path | None:
    """The config file to use, by the lookup order; None means the embedded default."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("EVENTD_CONFIG"):
        return Path(env)
    local = Path("eventd.toml")
    return local if local.exists() else None


def load(explicit: str | None = None, *, create_secrets: bool = False) -> Config:
    """Load the config by the lookup order.

    With the embedded default, the write key and admin token live in the data
    directory; ``create_secrets`` generates them on first start (``serve``), while
    the other verbs only read them.
    """
    path = find_config_path(explicit)
    if path is not None:
        return load_file(path)
    return embedded_default(DEFAULT_DATA_DIR, create_secrets=create_secrets)


def embedded_default(data_dir: Path, *, create_secrets: bool) -> Config:
    write_key = _secret_file(data_dir / "write_key", "wk_", create_secrets)
    admin_token = _secret_file(data_dir / "admin_token", "adm_", create_secrets)
    return Config(
        storage=StorageConfig(path=data_dir / "eventd.db"),
        admin=AdminConfig(token=admin_token),
        sources={"default": SourceConfig(name="default", write_key=write_key or "")}
        if write_key
        else {},
        destinations={DEFAULT_ANALYTICS: default_analytics(data_dir)},
        reports=ReportsConfig(store=DEFAULT_ANALYTICS),
    )


def default_analytics(data_dir: Path) -> DestinationConfig:
    """The embedded analytics store: every event into ``DATA_DIR/analytics.duckdb``, in
    batches of up to 5,000: DuckDB loads a batch as one bulk insert with a fixed cost per
    transaction (bench.reports: ~30 % more events per CPU-second than 1,000)."""
    return DestinationConfig(
        name=DEFAULT_ANALYTICS,
        type="duckdb",
        batch_size=5000,
        settings={"path": str(data_dir / "analytics.duckdb")},
    )


def _secret_file(path: Path, prefix: str, create: bool) -> str | None:
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = new_secret(prefix)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)
