"""eventd.toml.example loads, and names every key the config model knows."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from eventd.config import (
    AdminConfig,
    DestinationConfig,
    IdentityConfig,
    JetStreamConfig,
    ReportsConfig,
    ServerConfig,
    SourceConfig,
    StorageConfig,
    parse_config,
)
from eventd.plugins import check_destinations, check_sources, destination_types, source_types

EXAMPLE = Path(__file__).parent.parent / "eventd.toml.example"


def _keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"name"}


def test_example_loads_and_its_destinations_check() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    cfg = parse_config(data, str(EXAMPLE))
    check_destinations(cfg, destination_types())
    check_sources(cfg, source_types())


def test_example_lists_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data["server"]) == _keys(ServerConfig)
    assert set(data["storage"]) == _keys(StorageConfig) - {"jetstream"}
    # The jetstream keys need a cluster: they are shown commented out.
    for key in _keys(JetStreamConfig):
        assert f"\n# {key} = " in EXAMPLE.read_text(), key
    assert set(data["admin"]) == _keys(AdminConfig)
    assert set(data["reports"]) == _keys(ReportsConfig)
    assert set(data["identity"]) == _keys(IdentityConfig)
    # A tracking plan needs its file: its three keys are shown commented out.
    # A source's `settings` are the other keys of a cloud-app source's table.
    assert set(data["sources"]["web"]) == _keys(SourceConfig) - {"tracking_plan", "settings"}
    assert set(data["sources"]["intercom"]) == {"type", "write_key", "client_secret"}
    text = EXAMPLE.read_text()
    for key in ("tracking_plan", "unplanned_events", "violations"):
        assert f"\n# {key} = " in text
    # events and exclude_events exclude each other: the second destination shows events.
    assert set(data["destinations"]["hooks"]) == _keys(DestinationConfig) - {"events"}
    assert "events" in data["destinations"]["orders"]
    webhook = destination_types()["webhook"].settings_schema["properties"]
    assert set(data["destinations"]["hooks"]["settings"]) == set(webhook) - {"endpoint"}
