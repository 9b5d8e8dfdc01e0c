"""One eventd, four vendor destinations at once (mixpanel, amplitude, ga4, intercom), each
pointed at its contract server: one call of every Segment type, sent by Segment's own
Python SDK, must land in every vendor exactly as that plugin's README documents, or be
skipped and counted with the reason the plugin gives, and nothing may be dead-lettered.

Vendors that carry no event id (GA4, Intercom) get the messageId in a ``message_ref``
property, so what arrived is matched to what was sent by id everywhere.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.contract.amplitude_server import HTTP_API, AmplitudeServer
from tests.contract.fixtures import counters, dead_letters, destination, skipped
from tests.contract.ga4_server import Ga4Server
from tests.contract.intercom_server import IntercomServer
from tests.contract.mixpanel_server import MixpanelServer
from tests.harness import EventdProcess

TYPES = ("identify", "track", "page", "screen", "group", "alias")
# Amplitude refuses user and device ids shorter than 5 characters by default.
USER, ANON = "user-4242", "anon-7f3c9e51"
GROUP = "acme-42"
TRAITS = {"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro"}
GROUP_TRAITS = {"name": "Acme", "employees": 30, "tier": "gold"}
PAGE_URL = "https://example.com/docs/pricing"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The reason of every skip, as counted in eventd_skipped_events_total{destination, reason}.
# Operators alert and build dashboards on these labels: a change must be deliberate.
SKIPS = {
    "mixpanel": {"group": "group: group_key is not set"},
    "amplitude": {"alias": "alias: not supported by Amplitude's HTTP API"},
    "ga4": {
        "identify": "identify calls are not supported by GA4",
        "screen": "screen calls are not supported by GA4 web streams",
        "group": "group calls are not supported by GA4",
        "alias": "alias calls are not supported by GA4",
    },
    "intercom": {
        "page": "page calls are not supported by Intercom",
        "screen": "screen calls are not supported by Intercom",
        "alias": "alias calls are not supported by Intercom",
    },
}


def send_with_segment_sdk(ev: EventdProcess) -> dict[str, str]:
    """One call of each type through segment-analytics-python; returns type -> messageId.

    Identify comes first, as an app identifies a user before tracking them: Intercom
    needs the contact before it takes the user's events. (A track queued ahead of its
    user's identify in the same batch holds that identify behind its own retries until
    intercom's contact_grace_seconds runs out, and is then dead-lettered.)"""
    from segment.analytics import Client

    ids = {kind: str(uuid.uuid4()) for kind in TYPES}
    errors: list[Any] = []
    client = Client(ev.write_key, host=ev.url, on_error=lambda e, batch: errors.append(e))
    both = {"user_id": USER, "anonymous_id": ANON}
    client.identify(traits=TRAITS, message_id=ids["identify"], **both)
    client.track(
        event="Signed Up",
        properties={"method": "email", "message_ref": ids["track"]},
        message_id=ids["track"],
        **both,
    )
    client.page(
        category="Docs",
        name="Pricing",
        properties={"url": PAGE_URL, "message_ref": ids["page"]},
        message_id=ids["page"],
        **both,
    )
    client.screen(
        name="Settings", properties={"message_ref": ids["screen"]}, message_id=ids["screen"], **both
    )
    client.group(group_id=GROUP, traits=GROUP_TRAITS, message_id=ids["group"], **both)
    client.alias(previous_id=ANON, user_id=USER, message_id=ids["alias"])
    client.flush()
    client.join()
    assert errors == []
    return ids


def epoch_micros(message: dict[str, Any]) -> int:
    """The stored (skew-corrected) timestamp in epoch microseconds, exactly."""
    return (datetime.fromisoformat(message["timestamp"]) - EPOCH) // timedelta(microseconds=1)


def test_every_call_type_into_four_destinations_at_once(
    eventd: Callable[..., EventdProcess],
    mixpanel: MixpanelServer,
    amplitude: AmplitudeServer,
    ga4: Ga4Server,
    intercom: IntercomServer,
) -> None:
    ev = eventd(
        {
            "destinations": {
                # Defaults: no group_key (group skipped), alias_event = "$create_alias".
                "mixpanel": destination(
                    "mixpanel", {"project_token": mixpanel.project_token, "endpoint": mixpanel.url}
                ),
                # With group_type, so that group calls are sent (as $identify and
                # $groupidentify); alias has no Amplitude counterpart.
                "amplitude": destination(
                    "amplitude",
                    {
                        "api_key": amplitude.api_key,
                        "endpoint": amplitude.url,
                        "group_type": "company",
                    },
                ),
                "ga4": destination(
                    "ga4",
                    {
                        "measurement_id": ga4.measurement_id,
                        "api_secret": ga4.api_secret,
                        "endpoint": ga4.url,
                    },
                ),
                "intercom": destination(
                    "intercom", {"access_token": intercom.token, "endpoint": intercom.url}
                ),
            }
        }
    )
    ids = send_with_segment_sdk(ev)
    status = {d["name"]: d for d in ev.drain()}

    # eventd stored what the SDK sent, once each; the vendors' times derive from these.
    stored = {m["messageId"]: m for m in ev.stored()}
    assert {m["type"]: mid for mid, m in stored.items()} == ids
    ingested = {labels["type"]: n for labels, n in counters(ev, "eventd_ingested_events")}
    assert ingested == dict.fromkeys(TYPES, 1.0)
    us = {kind: epoch_micros(stored[mid]) for kind, mid in ids.items()}
    ms = {kind: t // 1000 for kind, t in us.items()}
    library = stored[ids["track"]]["context"]["library"]["name"]
    assert library == "analytics-python"

    # -- mixpanel: events to /import, identify's traits to /engage, group skipped -----------
    imported = {e["properties"]["$insert_id"]: e for e in mixpanel.imported}
    assert mixpanel.insert_ids() == Counter(
        {ids[k]: 1 for k in ("identify", "track", "page", "screen", "alias")}
    )
    for kind, name in (
        ("track", "Signed Up"),
        ("page", "Viewed Pricing Page"),
        ("screen", "Viewed Settings Screen"),
    ):
        event = imported[ids[kind]]
        assert event["event"] == name, kind
        props = event["properties"]
        assert (props["distinct_id"], props["$user_id"], props["$device_id"]) == (USER, USER, ANON)
        assert (props["time"], props["mp_lib"], props["message_ref"]) == (
            ms[kind],
            f"eventd: {library}",
            ids[kind],
        )
    assert imported[ids["track"]]["properties"]["method"] == "email"
    page = imported[ids["page"]]["properties"]
    assert (page["name"], page["category"], page["url"]) == ("Pricing", "Docs", PAGE_URL)
    link = imported[ids["identify"]]
    assert link["event"] == "$identify"
    assert {k: link["properties"][k] for k in ("distinct_id", "$identified_id", "$anon_id")} == {
        "distinct_id": USER,
        "$identified_id": USER,
        "$anon_id": ANON,
    }
    alias = imported[ids["alias"]]
    assert alias == {
        "event": "$create_alias",
        "properties": {
            "distinct_id": ANON,
            "alias": USER,
            "time": ms["alias"],
            "$insert_id": ids["alias"],
        },
    }
    assert mixpanel.profiles == [
        {
            "$token": mixpanel.project_token,
            "$distinct_id": USER,
            "$ip": stored[ids["identify"]]["context"]["ip"],
            "$set": {"$email": TRAITS["email"], "$name": TRAITS["name"], "plan": "pro"},
        }
    ]
    assert mixpanel.group_profiles == []
    # strict=1 validation on /import; ip=0 so that Mixpanel does not geolocate the
    # profile from eventd's own address.
    assert {(r.path, r.status, r.auth, tuple(r.query.items())) for r in mixpanel.requests} == {
        ("/import", 200, "project_token", (("strict", "1"),)),
        ("/engage", 200, None, (("verbose", "1"), ("ip", "0"))),
    }

    # -- amplitude: insert_id = messageId; group as membership + group properties ------------
    assert amplitude.deliveries == Counter(
        {
            **{ids[k]: 1 for k in ("identify", "track", "page", "screen", "group")},
            ids["group"] + "-group": 1,
        }
    )
    got = amplitude.ingested
    for insert_id, event in got.items():
        assert (event["user_id"], event["device_id"], event["library"]) == (
            USER,
            ANON,
            f"eventd/{library}",
        ), insert_id
    assert {k: (got[ids[k]]["event_type"], got[ids[k]]["time"]) for k in ids if k != "alias"} == {
        "identify": ("$identify", ms["identify"]),
        "track": ("Signed Up", ms["track"]),
        "page": ("Viewed Pricing Page", ms["page"]),
        "screen": ("Viewed Settings Screen", ms["screen"]),
        "group": ("$identify", ms["group"]),
    }
    assert got[ids["identify"]]["user_properties"] == {"$set": TRAITS}
    assert got[ids["track"]]["event_properties"] == {"method": "email", "message_ref": ids["track"]}
    assert got[ids["page"]]["event_properties"] == {
        "name": "Pricing",
        "category": "Docs",
        "url": PAGE_URL,
        "message_ref": ids["page"],
    }
    membership, group_properties = got[ids["group"]], got[ids["group"] + "-group"]
    assert (membership["groups"], membership["user_properties"]) == (
        {"company": GROUP},
        {"$set": {"company": GROUP}},
    )
    assert (
        group_properties["event_type"],
        group_properties["groups"],
        group_properties["group_properties"],
    ) == ("$groupidentify", {"company": GROUP}, {"$set": GROUP_TRAITS})
    assert {(r.path, r.status) for r in amplitude.requests} == {(HTTP_API, 200)}

    # -- ga4: page -> page_view, track -> its recommended event; nothing GA4 would drop ----
    assert ga4.problems == []
    by_ref = {e["params"]["message_ref"]: (client, user, e) for client, user, e in ga4.events()}
    assert len(by_ref) == len(ga4.events())
    assert by_ref == {
        ids["track"]: (
            ANON,
            USER,
            {
                "name": "sign_up",
                "params": {
                    "method": "email",
                    "engagement_time_msec": 1,
                    "message_ref": ids["track"],
                },
                "timestamp_micros": us["track"],
            },
        ),
        ids["page"]: (
            ANON,
            USER,
            {
                "name": "page_view",
                "params": {
                    "page_location": PAGE_URL,
                    "page_title": "Pricing",
                    "engagement_time_msec": 1,
                    "message_ref": ids["page"],
                },
                "timestamp_micros": us["page"],
            },
        ),
    }

    # -- intercom: contact, data event, company attached to the contact -------------------
    assert intercom.problems == []
    contact = intercom.contact(USER)
    assert len(intercom.contacts) == 1
    assert {k: contact.get(k) for k in ("role", "email", "name", "custom_attributes")} == {
        "role": "user",
        "email": TRAITS["email"],
        "name": TRAITS["name"],
        "custom_attributes": {"plan": "pro"},
    }
    assert contact["last_seen_at"] == ms["identify"] // 1000
    assert intercom.events == [
        {
            "event_name": "signed up",  # Intercom keeps names lower-case
            "created_at": ms["track"] // 1000,
            "user_id": USER,
            "metadata": {"method": "email", "message_ref": ids["track"]},
            "contact": contact["id"],
        }
    ]
    (company,) = intercom.companies.values()
    assert (company["company_id"], company["name"], company["size"]) == (GROUP, "Acme", 30)
    assert company["custom_attributes"] == {"tier": "gold"}
    assert intercom.attached == {(contact["id"], company["id"])}
    assert {c.status for c in intercom.calls} <= {200, 202}

    # -- eventd's own account: every event passed, each delivered or skipped, none dead ----
    # What reached each vendor, by messageId. Intercom's contact and company carry none:
    # they stand for the identify and the group (both checked field by field above).
    reached = {
        "mixpanel": set(imported),
        "amplitude": {i.removesuffix("-group") for i in got},
        "ga4": set(by_ref),
        "intercom": {ids["identify"], *(e["metadata"]["message_ref"] for e in intercom.events)}
        | ({ids["group"]} if intercom.attached else set()),
    }

    def per_destination(family: str) -> dict[str, float]:
        return {labels["destination"]: n for labels, n in counters(ev, family)}

    delivered = per_destination("eventd_delivered_events")
    retried = per_destination("eventd_retried_events")
    dead = per_destination("eventd_dead_lettered_events")
    for name, skips in SKIPS.items():
        skipped_ids = {ids[kind] for kind in skips}
        assert reached[name] | skipped_ids == set(ids.values()), name
        assert not reached[name] & skipped_ids, name
        counted = skipped(ev, name)
        assert counted == Counter(skips.values()), name
        # Every event was passed: delivered (what reached the vendor) or skipped.
        assert delivered.get(name, 0) == len(reached[name]), name
        assert delivered.get(name, 0) + sum(counted.values()) == len(TYPES), name
        assert retried.get(name, 0) == dead.get(name, 0) == 0, name
        assert dead_letters(ev, name) == {}, name
        keys = ("delivered", "skipped", "dead", "retrying", "lag_events")
        assert {k: status[name][k] for k in keys} == {
            "delivered": len(reached[name]),
            "skipped": len(skips),
            "dead": 0,
            "retrying": 0,
            "lag_events": 0,
        }, name
    assert set(status) == set(SKIPS)

    # The operator's view of the same: `eventd status` has a column for each count.
    shown = ev.cli("status")
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    columns = header.split()
    assert columns[:9] == [
        "NAME", "TYPE", "CURSOR", "LAG_EVENTS", "LAG_SECONDS", "DELIVERED", "SKIPPED",
        "RETRYING", "DEAD",
    ]  # fmt: skip
    table = {cells[0]: cells for cells in (line.split() for line in lines)}
    for name, skips in SKIPS.items():
        assert table[name][5:9] == [str(len(reached[name])), str(len(skips)), "0", "0"], name
