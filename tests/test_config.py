"""Config: parsing, defaults, the lookup order, and errors that name key, value and expectation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from eventd.cli import main, starter_config
from eventd.config import (
    ConfigError,
    embedded_default,
    load,
    load_file,
    parse_config,
    parse_duration,
    parse_size,
)


def test_full_config_parses_into_typed_values() -> None:
    cfg = parse_config(
        {
            "server": {"host": "0.0.0.0", "port": 9000, "trusted_proxies": ["10.0.0.0/8"]},
            "storage": {
                "path": "/tmp/x.db",
                "synchronous": "normal",
                "retention": "2d",
                "max_size": "500MB",
            },
            "admin": {"token": "t"},
            "sources": {"web": {"write_key": "wk1", "allowed_origins": ["https://a.example"]}},
            "destinations": {
                "hooks": {
                    "type": "webhook",
                    "sources": ["web"],
                    "batch_size": 10,
                    "max_in_flight": 2,
                    "rate_limit": 50.0,
                    "retry_max_age": "4h",
                    "settings": {"url": "http://x"},
                },
            },
        },
        "t.toml",
    )
    assert cfg.server.port == 9000 and cfg.server.trusted_proxies == ("10.0.0.0/8",)
    assert cfg.storage.retention == 2 * 86400 and cfg.storage.max_size == 500_000_000
    assert cfg.storage.synchronous == "normal" and cfg.storage.path == Path("/tmp/x.db")
    d = cfg.destinations["hooks"]
    assert (d.type, d.sources, d.batch_size, d.max_in_flight) == ("webhook", ("web",), 10, 2)
    assert (d.rate_limit, d.retry_max_age) == (50.0, 4 * 3600)
    assert cfg.source_by_key()["wk1"].allowed_origins == ("https://a.example",)


def test_defaults() -> None:
    cfg = parse_config({}, "t.toml")
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8088)
    assert cfg.storage.synchronous == "full"
    assert cfg.storage.retention == 7 * 86400 and cfg.storage.dedup_window == 86400


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server": {"port": "80"}}, "t.toml: server.port = '80': expected a port number 0-65535"),
        ({"server": {"port": 70000}}, "server.port = 70000: expected a port number"),
        ({"storage": {"synchronous": "fast"}}, "storage.synchronous = 'fast': expected 'full'"),
        ({"storage": {"retention": "soon"}}, "storage.retention = 'soon': expected a duration"),
        ({"storage": {"max_size": "lots"}}, "storage.max_size = 'lots': expected a size"),
        ({"sources": {"web": {}}}, "sources.web.write_key is missing"),
        ({"sources": {"web": {"write_key": 5}}}, "sources.web.write_key = 5: expected a write key"),
        ({"destinations": {"d": {"settings": {}}}}, "destinations.d.type is missing"),
        (
            {"destinations": {"d": {"type": "webhook", "batch_size": 0}}},
            "destinations.d.batch_size = 0: expected a positive integer",
        ),
        (
            {"destinations": {"d": {"type": "webhook", "sources": ["nope"]}}},
            "destinations.d.sources = 'nope': expected a configured source",
        ),
        (
            {"destinations": {"d": {"type": "webhook", "types": ["track", "tack"]}}},
            "destinations.d.types = 'tack': expected a call type (alias, group, identify, page",
        ),
        (
            {"destinations": {"d": {"type": "webhook", "events": "Signed Up"}}},
            "destinations.d.events = 'Signed Up': expected a list of strings",
        ),
        (
            {"destinations": {"d": {"type": "webhook", "events": ["A"], "exclude_events": ["B"]}}},
            "destinations.d.exclude_events = ['B']: expected no exclude_events beside events",
        ),
        ({"server": {"prot": 1}}, "server.prot = 1: expected one of the known keys"),
        ({"serverr": {}}, "serverr = {}: expected one of the known keys"),
        ({"server": {"trusted_proxies": ["bogus"]}}, "server.trusted_proxies = 'bogus'"),
        ({"admin": {"metrics_auth": "yes"}}, "admin.metrics_auth = 'yes': expected true or false"),
        ({"identity": {"enabled": 1}}, "identity.enabled = 1: expected true or false"),
        ({"identity": {"max_anonymous_ids": 0}}, "identity.max_anonymous_ids = 0: expected a"),
        ({"identity": {"blocked_values": "null"}}, "identity.blocked_values = 'null': expected a"),
        ({"identity": {"blocked": []}}, "identity.blocked = []: expected one of the known keys"),
        (
            {"destinations": {"d": {"type": "webhook", "resolve_identity": "yes"}}},
            "destinations.d.resolve_identity = 'yes': expected true or false",
        ),
        (
            {"destinations": {"d": {"type": "webhook", "ordered": "yes"}}},
            "destinations.d.ordered = 'yes': expected true or false",
        ),
        (
            {"destinations": {"d": {"type": "webhook", "enrich_traits": "plan"}}},
            "destinations.d.enrich_traits = 'plan': expected a list of strings",
        ),
        (
            {
                "identity": {"enabled": False},
                "destinations": {"d": {"type": "webhook", "resolve_identity": True}},
            },
            "destinations.d.resolve_identity = True: expected identity.enabled = true beside it",
        ),
    ],
)
def test_errors_name_key_value_and_expectation(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "t.toml")
    assert message in str(exc.value)


def test_duplicate_write_keys_are_refused_without_printing_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"sources": {"a": {"write_key": "k1"}, "b": {"write_key": "k1"}}}, "t")
    assert "sources.b.write_key" in str(exc.value) and "k1" not in str(exc.value)


def test_durations_and_sizes() -> None:
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900
    assert parse_duration("1w") == 604800 and parse_duration(2.5) == 2.5
    assert parse_duration("250ms") == 0.25
    assert parse_size("2GiB") == 2 * 1024**3 and parse_size(1024) == 1024
    for bad in ("-1s", "4 hours", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_file(p)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTD_CONFIG", raising=False)
    assert load().origin == "<embedded default>"
    (tmp_path / "eventd.toml").write_text("[server]\nport = 1111\n")
    assert load().server.port == 1111
    env = tmp_path / "env.toml"
    env.write_text("[server]\nport = 2222\n")
    monkeypatch.setenv("EVENTD_CONFIG", str(env))
    assert load().server.port == 2222
    explicit = tmp_path / "x.toml"
    explicit.write_text("[server]\nport = 3333\n")
    assert load(str(explicit)).server.port == 3333


def test_embedded_default_keeps_its_write_key(tmp_path: Path) -> None:
    first = embedded_default(tmp_path / "d", create_secrets=True)
    key = first.sources["default"].write_key
    assert key.startswith("wk_") and len(key) > 20
    again = embedded_default(tmp_path / "d", create_secrets=True)
    assert again.sources["default"].write_key == key
    assert (tmp_path / "d" / "write_key").stat().st_mode & 0o077 == 0


def test_embedded_default_has_an_analytics_store_reports_read(tmp_path: Path) -> None:
    cfg = embedded_default(tmp_path / "d", create_secrets=True)
    analytics = cfg.destinations["analytics"]
    assert analytics.type == "duckdb"
    assert analytics.settings == {"path": str(tmp_path / "d" / "analytics.duckdb")}
    assert cfg.reports.store == "analytics"


def test_reports_store_names_a_warehouse_destination() -> None:
    def cfg(reports: dict[str, object] | None, **types: str) -> object:
        data: dict[str, object] = {
            "destinations": {n: {"type": t, "settings": {}} for n, t in types.items()}
        }
        if reports is not None:
            data["reports"] = reports
        return parse_config(data, "x.toml").reports.store  # type: ignore[arg-type]

    assert cfg(None, a="duckdb", h="webhook") == "a"  # the only duckdb destination
    assert cfg(None, a="duckdb", b="duckdb") is None  # two: say which
    assert cfg({"store": "w"}, w="postgres", a="duckdb") == "w"
    with pytest.raises(ConfigError, match=r"reports\.store = 'h': expected a duckdb or postgres"):
        cfg({"store": "h"}, h="webhook")
    with pytest.raises(ConfigError, match=r"reports\.store = 'nope'.*\(a, w\)"):
        cfg({"store": "nope"}, a="duckdb", w="postgres")
    with pytest.raises(ConfigError, match=r"reports\.colour"):
        cfg({"colour": "red"}, a="duckdb")


def test_init_writes_a_valid_commented_config_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "eventd.toml"
    assert main(["init", str(target)]) == 0
    text = target.read_text()
    assert text.count("\n# ") >= 5
    cfg = parse_config(tomllib.loads(text), str(target))
    assert cfg.sources["web"].write_key.startswith("wk_")
    assert cfg.admin.token and cfg.destinations["file"].type == "jsonl"
    assert cfg.destinations["analytics"].type == "duckdb"
    assert cfg.reports.store == "analytics"
    assert main(["init", str(target)]) == 1
    assert "exists; not overwriting" in capsys.readouterr().err
    assert target.read_text() == text
    assert starter_config() != starter_config()  # fresh keys each time


def test_check_exits_1_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[destinations.h]\ntype = "webhook"\n[destinations.h.settings]\nurl = 5\n')
    assert main(["check", "--config", str(p)]) == 1
    assert "destinations.h.settings.url = 5" in capsys.readouterr().err
    p.write_text('[destinations.h]\ntype = "webhook"\nordered = 1\n')
    assert main(["check", "--config", str(p)]) == 1
    assert "destinations.h.ordered = 1: expected true or false" in capsys.readouterr().err
    p.write_text('[destinations.h]\ntype = "nosuch"\n')
    assert main(["check", "--config", str(p)]) == 1
    assert "destinations.h.type = 'nosuch': expected an installed destination type" in (
        capsys.readouterr().err
    )
    p.write_text(
        '[destinations.h]\ntype = "webhook"\n[destinations.h.settings]\nurl = "http://x"\n'
    )
    assert main(["check", "--config", str(p)]) == 0
