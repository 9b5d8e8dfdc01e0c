"""plugins/segment_message.py: reading Segment messages the way the analytics destinations do."""

from __future__ import annotations

import math
from typing import Any

import pytest
from eventd_plugins.amplitude.mapping import Options as AmplitudeOptions
from eventd_plugins.amplitude.mapping import map_message as amplitude_mapping
from eventd_plugins.segment_message import epoch_ms, number


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        (-3, -3),
        (12.5, 12.5),
        (0.0, 0.0),
        ("12", 12),  # a whole number without a decimal point is an int...
        ("-7", -7),
        ("1e3", 1000),
        ("12.0", 12.0),  # ...one written with a point stays a float
        ("12.5", 12.5),
        (" 4.25 ", 4.25),
        ("1e400", None),  # overflows to infinity
        ("NaN", None),
        ("nan", None),
        ("Infinity", None),
        ("-inf", None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        ("", None),
        ("12 apples", None),
        ("0x1A", None),
        (True, None),  # a bool is an int in Python, never a number in JSON
        (False, None),
        (None, None),
        ([1], None),
        ({"amount": 1}, None),
    ],
)
def test_number_takes_finite_numbers_and_numeric_strings(value: Any, expected: Any) -> None:
    got = number(value)
    assert got == expected
    assert type(got) is type(expected)  # 12 and 12.0 are different JSON


def test_epoch_ms_takes_numbers_numeric_strings_and_iso_dates_only() -> None:
    assert epoch_ms(1714564800000) == 1714564800000
    assert epoch_ms("1714564800000") == 1714564800000
    assert epoch_ms("2024-05-01T12:00:00Z") == 1714564800000
    assert epoch_ms("NaN") is None  # was a ValueError from int(nan)
    assert epoch_ms("Infinity") is None
    assert epoch_ms("soon") is None


def test_non_finite_strings_neither_crash_a_mapping_nor_reach_an_api() -> None:
    """Before number() refused them, "Infinity" made Amplitude's mapping raise (so the
    whole batch was retried for hours) and "NaN" went out as a null revenue."""
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u",
        "properties": {"revenue": "NaN", "price": 5, "quantity": "Infinity"},
        "integrations": {"Amplitude": {"session_id": "NaN"}},
    }
    [event] = amplitude_mapping(message, 1_714_564_800_000, AmplitudeOptions())
    assert event["price"] == 5
    assert "revenue" not in event and "quantity" not in event and "session_id" not in event
