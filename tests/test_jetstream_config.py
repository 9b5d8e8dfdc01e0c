"""``[storage] backend = "jetstream"`` keys: parsed into JetStreamConfig, and every
mistake named by key, value and expectation (what ``eventd check`` prints)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from eventd.config import ConfigError, JetStreamConfig, parse_config
from eventd.plugins import check_destinations, destination_types


def js(**keys: Any) -> dict[str, Any]:
    return {"storage": {"backend": "jetstream", **keys}}


def test_defaults_and_every_key(tmp_path: Path) -> None:
    cfg = parse_config(js(), "t.toml")
    assert cfg.storage.backend == "jetstream"
    assert cfg.storage.jetstream == JetStreamConfig()
    assert parse_config({}, "t.toml").storage.jetstream is None

    for name in ("user.creds", "ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    origin = str(tmp_path / "eventd.toml")
    cfg = parse_config(
        js(
            servers=["nats://10.0.0.1:4222", "tls://nats-2.internal:4222"],
            stream="EV_PROD",
            replicas=5,
            partitions=16,
            publish_timeout="2s",
            creds="user.creds",
            tls_ca="ca.pem",
            tls_cert="cert.pem",
            tls_key=str(tmp_path / "key.pem"),
        ),
        origin,
    )
    j = cfg.storage.jetstream
    assert j is not None
    assert j.servers == ("nats://10.0.0.1:4222", "tls://nats-2.internal:4222")
    assert (j.stream, j.replicas, j.partitions, j.publish_timeout) == ("EV_PROD", 5, 16, 2.0)
    # Relative paths are relative to the config file, as for tracking plans.
    assert j.creds == tmp_path / "user.creds" and j.tls_ca == tmp_path / "ca.pem"
    assert (j.tls_cert, j.tls_key) == (tmp_path / "cert.pem", tmp_path / "key.pem")
    assert "s3cret" not in repr(parse_config(js(token="s3cret"), "t").storage)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"storage": {"backend": "kafka"}}, "storage.backend = 'kafka': expected 'sqlite' or"),
        (
            {"storage": {"servers": ["nats://a:4222"]}},
            "storage.servers = ['nats://a:4222']: expected storage.backend = 'jetstream' beside",
        ),
        (
            {"storage": {"token": "s3cret"}},
            "storage.token = '***': expected storage.backend = 'jetstream'",
        ),
        (js(servers=[]), "storage.servers = []: expected at least one nats://host:port URL"),
        (js(servers=["http://a:4222"]), "storage.servers = 'http://a:4222': expected a nats://"),
        (js(servers="nats://a:4222"), "storage.servers = 'nats://a:4222': expected a list"),
        (js(stream="EV.X"), "storage.stream = 'EV.X': expected a stream name of 1-32 letters"),
        (js(replicas=0), "storage.replicas = 0: expected a positive integer"),
        (js(replicas=7), "storage.replicas = 7: expected 1 to 5 (JetStream's limit)"),
        (js(partitions=5000), "storage.partitions = 5000: expected 1 to 1024"),
        (js(publish_timeout="soon"), "storage.publish_timeout = 'soon': expected a duration"),
        (js(creds="/nope.creds"), "storage.creds = '/nope.creds': expected a readable file"),
        (js(user="eventd"), "storage.password is missing: expected it beside storage.user"),
        (js(password="pw"), "storage.user is missing: expected it beside storage.password"),
        (
            js(user="u", password="p", token="s3cret"),
            "storage.user = 'u': expected one way to log in; storage.token is already set",
        ),
        (js(tls_cert="/etc/hostname"), "storage.tls_key is missing: expected it beside"),
        (js(replica=3), "storage.replica = 3: expected one of the known keys"),
    ],
)
def test_errors_name_key_value_and_expectation(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "t.toml")
    assert message in str(exc.value)
    assert "s3cret" not in str(exc.value)


def eventd(verb: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventd.cli", verb, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_eventd_check_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "eventd.toml"
    path.write_text(tomli_w.dumps(js(servers=["nats://127.0.0.1:4222"], replicas=9)))
    run = eventd("check", path)
    assert run.returncode == 1
    assert "storage.replicas = 9: expected 1 to 5" in run.stderr + run.stdout


def test_a_node_local_destination_on_the_cluster_needs_an_hour_of_retention() -> None:
    """A duckdb destination is node-local (``Destination.node_local``): on the cluster
    each node keeps its own copy through a consumer of its own, which the servers
    remove after ``storage.retention`` without pulls. So a retention shorter than a
    routine restart is refused, naming the key, the value and the destination; a
    duckdb destination with the default retention, or any retention on SQLite, or a
    disabled one, passes (eventd.plugins.check_destinations: it knows the types)."""
    types = destination_types()
    assert types["duckdb"].node_local and not types["postgres"].node_local
    duckdb = {"a": {"type": "duckdb", "settings": {"path": "/tmp/a.duckdb"}}}
    check_destinations(parse_config({**js(), "destinations": duckdb}, "t.toml"), types)
    short = js(retention="10m")
    with pytest.raises(ConfigError) as exc:
        check_destinations(parse_config({**short, "destinations": duckdb}, "t.toml"), types)
    assert str(exc.value).startswith(
        "t.toml: storage.retention = 600s: expected at least 1h with destinations.a"
        " (type 'duckdb', node-local: each node keeps its own copy) on storage.backend"
        " = 'jetstream'"
    )
    off = {"a": {**duckdb["a"], "enabled": False}}
    check_destinations(parse_config({**short, "destinations": off}, "t.toml"), types)
    postgres = {"w": {"type": "postgres", "settings": {"dsn": "postgresql://h/db"}}}
    check_destinations(parse_config({**short, "destinations": postgres}, "t.toml"), types)
    sqlite = {"storage": {"retention": "10m"}, "destinations": duckdb}
    check_destinations(parse_config(sqlite, "t.toml"), types)


def test_eventd_check_names_a_node_local_destinations_short_retention(tmp_path: Path) -> None:
    path = tmp_path / "eventd.toml"
    duckdb = {"a": {"type": "duckdb", "settings": {"path": str(tmp_path / "a.duckdb")}}}
    path.write_text(tomli_w.dumps({**js(retention="10m"), "destinations": duckdb}))
    run = eventd("check", path)
    assert run.returncode == 1
    assert "storage.retention = 600s: expected at least 1h with destinations.a" in (
        run.stderr + run.stdout
    )
    path.write_text(tomli_w.dumps({**js(), "destinations": duckdb}))
    run = eventd("check", path)
    assert run.returncode == 0, run.stderr
    path.write_text(tomli_w.dumps(js()))  # the identity graph on (the default)
    run = eventd("check", path)
    assert run.returncode == 0, run.stderr


def test_the_backend_without_its_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh `pip install .` lacks nats-py: `eventd check` says so, not serve's
    ModuleNotFoundError (a newcomer's trial)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nats" else real(name, *a)
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(js(), "t.toml")
    assert str(caught.value) == (
        "t.toml: storage.backend = 'jetstream': expected nats-py installed beside it:"
        " pip install 'eventd[jetstream]'"
    )
