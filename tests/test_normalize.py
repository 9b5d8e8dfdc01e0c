"""Per-message rules: required fields, id coercion, messageIds, timestamps, merging."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventd.normalize import Envelope, InvalidMessage, format_ts, normalize, scrub_unicode

NOW = datetime(2026, 11, 25, 12, 0, 0, 500000, tzinfo=UTC)
ENV = Envelope(received_at=NOW, ip="203.0.113.9")


def test_skew_is_corrected_with_sent_at() -> None:
    # The client's clock is 1 h behind: it stamped the event 10 s before sending.
    msg = normalize(
        {
            "userId": "u",
            "event": "E",
            "timestamp": "2026-11-25T11:00:00Z",
            "sentAt": "2026-11-25T11:00:10Z",
        },
        "track",
        ENV,
    )
    assert msg["originalTimestamp"] == "2026-11-25T11:00:00.000Z"
    assert msg["receivedAt"] == "2026-11-25T12:00:00.500Z"
    assert msg["timestamp"] == "2026-11-25T11:59:50.500Z"
    assert msg["sentAt"] == "2026-11-25T11:00:10.000Z"


def test_batch_sent_at_applies_to_items_and_offsets_are_kept() -> None:
    env = Envelope(received_at=NOW, sent_at="2026-11-25T12:00:00+01:00")
    msg = normalize(
        {"type": "page", "anonymousId": "a", "timestamp": "2026-11-25T10:59:00Z"}, None, env
    )
    assert msg["timestamp"] == "2026-11-25T11:59:00.500Z"


def test_without_sent_at_the_client_time_is_kept_and_without_any_receivedat_is_used() -> None:
    kept = normalize({"userId": "u", "timestamp": "2020-01-01T00:00:00Z"}, "identify", ENV)
    assert kept["timestamp"] == "2020-01-01T00:00:00.000Z"
    none = normalize({"userId": "u"}, "identify", ENV)
    assert none["timestamp"] == none["receivedAt"] == format_ts(NOW)
    assert "originalTimestamp" not in none


def test_ids_are_coerced_and_message_id_generated() -> None:
    msg = normalize({"userId": 42, "anonymousId": 7.5, "groupId": 9}, "group", ENV)
    assert (msg["userId"], msg["anonymousId"], msg["groupId"]) == ("42", "7.5", "9")
    assert len(msg["messageId"]) == 36
    other = normalize({"userId": 42, "groupId": 9}, "group", ENV)
    assert other["messageId"] != msg["messageId"]
    kept = normalize({"userId": "u", "messageId": "m-1"}, "identify", ENV)
    assert kept["messageId"] == "m-1"


def test_context_and_integrations_merge_item_over_batch_and_ip_filled() -> None:
    env = Envelope(
        received_at=NOW,
        ip="198.51.100.1",
        context={"library": {"name": "batch"}, "locale": "en"},
        integrations={"All": False, "Mixpanel": True},
    )
    msg = normalize(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "context": {"locale": "fr"},
            "integrations": {"All": True},
        },
        None,
        env,
    )
    assert msg["context"] == {"library": {"name": "batch"}, "locale": "fr", "ip": "198.51.100.1"}
    assert msg["integrations"] == {"All": True, "Mixpanel": True}
    own_ip = normalize({"userId": "u", "context": {"ip": "10.1.1.1"}}, "identify", env)
    assert own_ip["context"]["ip"] == "10.1.1.1"


def test_nulls_write_key_and_metadata_are_dropped() -> None:
    msg = normalize(
        {
            "userId": "u",
            "anonymousId": None,
            "properties": None,
            "writeKey": "wk",
            "_metadata": {"x": 1},
            "event": "E",
        },
        "track",
        ENV,
    )
    assert "writeKey" not in msg and "_metadata" not in msg
    assert "anonymousId" not in msg and "properties" not in msg


@pytest.mark.parametrize(
    ("raw", "call_type", "code"),
    [
        ({"event": "E"}, "track", "missing_user"),
        ({"userId": "", "anonymousId": ""}, "identify", "missing_user"),
        ({"userId": "u"}, "track", "missing_event"),
        ({"userId": "u", "event": "  "}, "track", "missing_event"),
        ({"userId": "u"}, "group", "missing_group"),
        ({"userId": "u"}, "alias", "missing_alias_ids"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "missing_alias_ids"),
        ({"type": "boom", "userId": "u"}, None, "invalid_type"),
        ({"userId": "u"}, None, "invalid_type"),
        ({"type": ["track"], "userId": "u"}, None, "invalid_type"),  # unhashable: was a 500
        ({"userId": ["u"]}, "identify", "invalid_field"),
        ({"userId": True}, "identify", "invalid_field"),
        ({"userId": "u", "traits": [1]}, "identify", "invalid_field"),
        ({"userId": "u", "context": "x"}, "identify", "invalid_field"),
        ({"userId": "u", "messageId": "m" * 101}, "identify", "invalid_field"),
        ({"userId": "u", "messageId": 5}, "identify", "invalid_field"),
        ({"userId": "u", "name": 5}, "page", "invalid_field"),
        ("not an object", "track", "invalid_message"),
    ],
)
def test_invalid_messages_have_codes(raw: object, call_type: str | None, code: str) -> None:
    with pytest.raises(InvalidMessage) as exc:
        normalize(raw, call_type, ENV)
    assert exc.value.code == code


def test_path_type_wins_over_body_type() -> None:
    assert normalize({"type": "identify", "userId": "u", "event": "E"}, "track", ENV)["type"] == (
        "track"
    )


# -- repairs: a part Segment tolerates costs neither the message nor its batch ---------------

SWIFT_TS = "2021-10-16T16:00:27.029:Z"  # analytics-swift #75 shipped this format


@pytest.mark.parametrize(
    ("fields", "repaired"),
    [
        ({"timestamp": "yesterday"}, [("unreadable_timestamp", "timestamp", "yesterday")]),
        ({"timestamp": 5}, [("unreadable_timestamp", "timestamp", 5)]),
        (
            {"originalTimestamp": SWIFT_TS},
            [("unreadable_timestamp", "originalTimestamp", SWIFT_TS)],
        ),
        # UTC form before year 1
        (
            {"timestamp": "0001-01-01T00:00:00+01:00"},
            [("unreadable_timestamp", "timestamp", "0001-01-01T00:00:00+01:00")],
        ),
        ({"timestamp": [], "originalTimestamp": {}}, []),  # empty: absent, nothing to repair
    ],
)
def test_unreadable_client_time_falls_back_to_received_at(
    fields: dict[str, object], repaired: list[tuple[str, str, object]]
) -> None:
    repairs: list[dict[str, object]] = []
    msg = normalize({"userId": "u", **fields}, "identify", ENV, repairs)
    assert msg["timestamp"] == msg["receivedAt"] == format_ts(NOW)
    assert "originalTimestamp" not in msg
    assert [(r["reason"], r["field"], r["sent"]) for r in repairs] == repaired
    assert msg.get("context", {}).get("repaired", []) == repairs


def test_unreadable_sent_at_means_no_skew_correction() -> None:
    env = Envelope(received_at=NOW, sent_at=SWIFT_TS)
    repairs: list[dict[str, object]] = []
    msg = normalize(
        {"type": "track", "userId": "u", "event": "E", "originalTimestamp": SWIFT_TS},
        None,
        env,
        repairs,
    )
    assert msg["timestamp"] == format_ts(NOW)  # both unreadable: receivedAt
    assert "sentAt" not in msg
    assert sorted(r["reason"] for r in repairs) == ["unreadable_sent_at", "unreadable_timestamp"]
    assert {r["sent"] for r in repairs} == {SWIFT_TS}

    kept = normalize(
        {"userId": "u", "timestamp": "2026-11-25T11:00:00Z", "sentAt": "soon"}, "identify", ENV
    )
    assert kept["timestamp"] == "2026-11-25T11:00:00.000Z"  # the client's, uncorrected
    assert kept["context"]["repaired"] == [
        {"reason": "unreadable_sent_at", "field": "sentAt", "sent": "soon"}
    ]


def test_timestamp_unreadable_but_original_timestamp_readable() -> None:
    msg = normalize(
        {"userId": "u", "timestamp": "x", "originalTimestamp": "2026-11-25T10:00:00Z"},
        "identify",
        ENV,
    )
    assert msg["timestamp"] == msg["originalTimestamp"] == "2026-11-25T10:00:00.000Z"
    assert [r["field"] for r in msg["context"]["repaired"]] == ["timestamp"]


@pytest.mark.parametrize(
    "fields",
    [
        {"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"},
        {"timestamp": "9999-12-31T00:00:00Z", "sentAt": "0001-01-02T00:00:00Z"},
    ],
)
def test_skew_correction_out_of_range_keeps_the_client_time(fields: dict[str, str]) -> None:
    msg = normalize({"userId": "u", **fields}, "identify", ENV)
    assert (
        msg["timestamp"]
        == msg["originalTimestamp"]
        == format_ts(datetime.fromisoformat(fields["timestamp"]))
    )
    assert [r["reason"] for r in msg["context"]["repaired"]] == ["skew_out_of_range"]


def test_readable_message_has_no_repairs() -> None:
    msg = normalize(
        {"userId": "u", "timestamp": "2026-11-25T11:00:00Z", "sentAt": "2026-11-25T11:00:10Z"},
        "identify",
        ENV,
    )
    assert "repaired" not in msg.get("context", {})


def test_scrub_unicode_replaces_lone_surrogates_in_keys_and_values() -> None:
    raw = {"title": "deal \ud83c", "k\udc80": ["a\udfff", {"x": "ok \U0001f389"}], "n": 5}
    fixed, n = scrub_unicode(raw)
    assert fixed == {"title": "deal \ufffd", "k\ufffd": ["a\ufffd", {"x": "ok \U0001f389"}], "n": 5}
    assert n == 3
    clean = {"a": "fine \U0001f389"}
    assert scrub_unicode(clean) == (clean, 0)


@pytest.mark.parametrize("blank", ["   ", "\u0000", "\u200b\ufeff", "\t\n", "\u3000"])
def test_invisible_message_id_is_missing_and_ids_are_trimmed(blank: str) -> None:
    first = normalize({"userId": "u", "messageId": blank}, "identify", ENV)
    second = normalize({"userId": "u", "messageId": blank}, "identify", ENV)
    assert first["messageId"] != second["messageId"]
    assert len(first["messageId"]) == 36
    trimmed = normalize({"userId": "u", "messageId": f"{blank}m-1{blank}"}, "identify", ENV)
    assert trimmed["messageId"] == "m-1"
    with pytest.raises(InvalidMessage) as exc:
        normalize({"userId": blank}, "identify", ENV)
    assert exc.value.code == "missing_user"


def test_wide_integer_ids_are_exact_strings() -> None:
    msg = normalize({"userId": 123456789012345678901, "event": "Big"}, "track", ENV)
    assert msg["userId"] == "123456789012345678901"
    neg = normalize({"anonymousId": -(2**70), "groupId": 2**64}, "group", ENV)
    assert (neg["anonymousId"], neg["groupId"]) == (str(-(2**70)), "18446744073709551616")
