"""eventd.delivery.transform.transform() and the first-party transforms, on real Events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from eventd_plugins.transforms import anonymize_ip, drop_ip

from eventd.delivery.transform import Transform, TransformError, transform
from eventd.event import Event
from eventd.plugins import transforms


def stored(message: dict[str, Any]) -> Event:
    return Event(7, "web", 1_700_000_000_000, body=orjson.dumps(message))


async def run(message: dict[str, Any], *fns: Transform) -> Event | None:
    return await transform(stored(message), [(f"t{i}", fn) for i, fn in enumerate(fns)])


async def test_a_transform_gets_a_copy_and_the_result_is_a_new_event() -> None:
    event = stored({"type": "track", "event": "a", "properties": {"n": 1}})

    def bump(m: dict[str, Any]) -> dict[str, Any]:
        m["properties"]["n"] += 1
        return m

    out = await transform(event, [("bump", bump)])
    assert out is not None and out.message["properties"] == {"n": 2}
    assert orjson.loads(out.body) == out.message and out.size == len(out.body)
    assert (out.seq, out.source, out.received_at) == (7, "web", 1_700_000_000_000)
    assert event.message["properties"] == {"n": 1}  # the stored event is untouched


async def test_chain_runs_in_order_sync_and_async() -> None:
    async def add(m: dict[str, Any]) -> dict[str, Any]:
        return {**m, "trail": [*m.get("trail", []), "async"]}

    def add_sync(m: dict[str, Any]) -> dict[str, Any]:
        return {**m, "trail": [*m.get("trail", []), "sync"]}

    out = await run({"type": "track"}, add_sync, add, add_sync)
    assert out is not None and out.message["trail"] == ["sync", "async", "sync"]


async def test_none_drops_and_stops_the_chain() -> None:
    called: list[str] = []

    def later(m: dict[str, Any]) -> dict[str, Any]:
        called.append("later")
        return m

    assert await run({"type": "track"}, lambda m: None, later) is None
    assert called == []


@pytest.mark.parametrize(
    ("fn", "error"),
    [
        (lambda m: 1 / 0, "transform 't0' raised ZeroDivisionError: division by zero"),
        (lambda m: ["not", "a", "dict"], "transform 't0' returned list: expected a message"),
        (lambda m: {**m, "x": {1, 2}}, "the transformed message is not JSON"),
    ],
)
async def test_failures_say_which_transform_and_why(fn: Transform, error: str) -> None:
    with pytest.raises(TransformError) as exc:
        await run({"type": "track"}, fn)
    assert str(exc.value).startswith(error)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
    ],
)
def test_anonymize_ip_keeps_the_network(ip: str, expected: str) -> None:
    assert anonymize_ip({"context": {"ip": ip}}) == {"context": {"ip": expected}}


def test_anonymize_ip_drops_what_is_not_an_address_and_ignores_no_ip() -> None:
    assert anonymize_ip({"context": {"ip": "unknown"}}) == {"context": {}}
    assert anonymize_ip({"type": "track"}) == {"type": "track"}
    assert anonymize_ip({"context": {"ip": 5}}) == {"context": {"ip": 5}}


def test_drop_ip() -> None:
    assert drop_ip({"context": {"ip": "1.2.3.4", "locale": "en"}}) == {"context": {"locale": "en"}}
    assert drop_ip({"context": None}) == {"context": None}


def test_first_party_transforms_are_found_through_the_entry_point_group() -> None:
    installed = transforms()
    assert installed["drop_ip"] is drop_ip and installed["anonymize_ip"] is anonymize_ip
