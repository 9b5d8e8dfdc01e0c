"""Values reach a destination exactly as sent (issue 12): integers past 64 bits keep
every digit when an event is parsed (``Event.message``), rewritten by a transform,
and serialized again by a destination (``eventd.json_dumps``)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd import Event, json_dumps, json_loads
from eventd.delivery.transform import transform

WIDE = 123456789012345678901234567890
STORED = (
    b'{"type":"track","event":"Big","messageId":"w1","userId":"123456789012345678901",'
    b'"properties":{"n":123456789012345678901234567890,"neg":-9223372036854775809,'
    b'"u64":18446744073709551615,"f":0.1,"small":7,"id":"12345678901234567890123"}}'
)


def test_an_event_parses_wide_integers_exactly() -> None:
    props = Event(1, "app", 0, body=STORED).message["properties"]
    assert props == {
        "n": WIDE,
        "neg": -9223372036854775809,
        "u64": 18446744073709551615,
        "f": 0.1,
        "small": 7,
        "id": "12345678901234567890123",
    }
    assert type(props["n"]) is int and type(props["f"]) is float
    # orjson alone would have changed the number: the case this module exists for
    assert orjson.loads(STORED)["properties"]["n"] != WIDE


def test_a_message_built_in_memory_serializes_every_digit() -> None:
    event = Event(1, "app", 0, message={"type": "track", "properties": {"n": WIDE}})
    assert b'"n":123456789012345678901234567890' in event.body
    assert json.loads(event.body)["properties"]["n"] == WIDE


def test_dumps_takes_orjson_when_it_can_and_refuses_what_json_cannot_write() -> None:
    assert json_dumps({"a": [1, 2.5, "é"]}) == orjson.dumps({"a": [1, 2.5, "é"]})
    assert json_dumps({"a": -(2**70)}) == b'{"a":-1180591620717411303424}'
    with pytest.raises(TypeError):
        json_dumps({"a": object()})


def test_loads_refuses_invalid_json_as_a_value_error() -> None:
    for bad in (b"{", b'{"n": 1234567890123456789012', b"nope"):
        with pytest.raises(ValueError):
            json_loads(bad)


async def test_a_transform_keeps_wide_integers() -> None:
    def stamp(message: dict[str, Any]) -> dict[str, Any]:
        message["properties"]["seen"] = True
        return message

    out = await transform(Event(1, "app", 0, body=STORED), [("stamp", stamp)])
    assert out is not None
    assert out.message["properties"]["n"] == WIDE
    assert b'"n":123456789012345678901234567890' in out.body


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_value_round_trips_exactly(value: Any) -> None:
    assert json_loads(json_dumps(value)) == value


def test_admin_answers_carry_wide_integers_exactly() -> None:
    """A dead letter's or a profile timeline's stored event, answered as JSON."""
    from eventd.admin import json_response

    body = json_response({"message": Event(1, "app", 0, body=STORED).message}).body
    assert isinstance(body, bytes)
    assert b'"n":123456789012345678901234567890' in body
