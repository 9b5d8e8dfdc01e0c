"""The ``intercom`` source type: Intercom's webhook notifications as Segment calls.

Intercom POSTs a ``notification_event`` (``{"type": "notification_event", "id":
"notif_...", "topic": "conversation.user.created", "created_at": UNIX_S, "data":
{"item": {...}}}``) signed with the app's client secret: ``X-Hub-Signature:
sha1=<hex HMAC-SHA1 of the raw body>`` (Intercom's "Setting up webhooks" docs).
The notification id is the messageId, so Intercom's retries of one notification
(same id, ``delivery_attempts`` + 1) are stored once.

The topics mapped, and how, are in :data:`TRACKS`, :data:`IDENTIFY_TOPICS` and this
package's README; any other topic (``ping`` among them) is acknowledged and ignored.
The person is the contact's ``external_id`` (Intercom's name for your user id;
``user_id`` in API 1.x) as userId, else its Intercom id as anonymousId.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventd import Message, Source, compact, hmac_matches, hookimpl, iso_time, message

SIGNATURE_HEADER = "X-Hub-Signature"

# topic -> track event name (Segment's Object Action, Title Case).
TRACKS = {
    "conversation.user.created": "Conversation Started",
    "conversation.user.replied": "Conversation User Replied",
    "conversation.admin.replied": "Conversation Admin Replied",
    "conversation.admin.closed": "Conversation Closed",
    "conversation.admin.opened": "Conversation Reopened",
    "conversation.rating.added": "Conversation Rated",
    # API 2.x names tag topics by contact role; 1.x by user / lead ("contact").
    "contact.user.tag.created": "Contact Tagged",
    "contact.lead.tag.created": "Contact Tagged",
    "contact.tag.created": "Contact Tagged",
    "user.tag.created": "Contact Tagged",
    "contact.user.tag.deleted": "Contact Untagged",
    "contact.lead.tag.deleted": "Contact Untagged",
    "contact.tag.deleted": "Contact Untagged",
    "user.tag.deleted": "Contact Untagged",
}
# Topics whose item is a contact (user or lead): an identify with its traits.
IDENTIFY_TOPICS = frozenset(
    {"contact.created", "contact.user.created", "contact.lead.created", "user.created"}
)


class IntercomSource(Source):
    type_name = "intercom"
    description = "Intercom webhook notifications (conversations, contacts, tags)"
    settings_schema = {
        "type": "object",
        "required": ["client_secret"],
        "properties": {
            "client_secret": {
                "type": "string",
                "minLength": 1,
                "description": "The app's client secret (Developer Hub, Basic info): "
                "signs X-Hub-Signature",
            }
        },
        "additionalProperties": False,
    }

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        return hmac_matches(
            self.settings["client_secret"], body, "sha1", headers.get(SIGNATURE_HEADER)
        )

    def map(self, payload: Any) -> list[Message]:
        if not isinstance(payload, dict):
            return []
        topic = payload.get("topic")
        item = _dict(_dict(payload.get("data")).get("item"))
        ids: dict[str, Any] = {
            "message_id": _str(payload.get("id")),
            "timestamp": payload.get("created_at"),
        }
        if topic in IDENTIFY_TOPICS:
            user_id, anonymous_id = person(item)
            return [
                message(
                    "identify",
                    user_id=user_id,
                    anonymous_id=anonymous_id,
                    traits=contact_traits(item),
                    **ids,
                )
            ]
        if not isinstance(topic, str) or topic not in TRACKS:
            return []
        if topic.startswith("conversation."):
            who, properties = conversation_person(item), conversation_properties(topic, item)
        else:  # a user_tag / contact_tag item: {"tag": {...}, "user"|"contact": {...}}
            who = _dict(item.get("contact") or item.get("user"))
            tag = _dict(item.get("tag"))
            properties = compact({"tag_id": _str(tag.get("id")), "tag_name": tag.get("name")})
        user_id, anonymous_id = person(who)
        return [
            message(
                "track",
                user_id=user_id,
                anonymous_id=anonymous_id,
                event=TRACKS[topic],
                properties=properties,
                **ids,
            )
        ]


def person(contact: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(userId, anonymousId) of a contact: its external_id (``user_id`` in API 1.x),
    else its Intercom id."""
    external = _str(contact.get("external_id")) or _str(contact.get("user_id"))
    if external:
        return external, None
    return None, _str(contact.get("id"))


def conversation_person(conversation: Mapping[str, Any]) -> dict[str, Any]:
    """The customer of a conversation: the first of ``contacts`` (API 2.x), else
    ``user`` (1.x), else the author of its first message when a user or lead."""
    contacts = _dict(conversation.get("contacts")).get("contacts")
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        return contacts[0]
    if isinstance(conversation.get("user"), dict):
        return dict(conversation["user"])
    author = _dict(_dict(conversation.get("source")).get("author"))
    return author if author.get("type") in ("user", "lead", "contact") else {}


def conversation_properties(topic: str, conversation: Mapping[str, Any]) -> dict[str, Any]:
    """What a conversation event says, without message bodies (they are the customer's
    words and may hold personal data)."""
    source = _dict(conversation.get("source"))
    parts = _dict(conversation.get("conversation_parts")).get("conversation_parts")
    last = parts[-1] if isinstance(parts, list) and parts and isinstance(parts[-1], dict) else {}
    author = _dict(last.get("author"))
    rating = _dict(conversation.get("conversation_rating"))
    props: dict[str, Any] = {
        "conversation_id": _str(conversation.get("id")),
        "state": conversation.get("state"),
        "channel": source.get("delivered_as"),
        "source_type": source.get("type"),
    }
    if topic in ("conversation.user.replied", "conversation.admin.replied"):
        props["part_id"] = _str(last.get("id"))
    if topic.startswith("conversation.admin."):
        props["admin_id"] = _str(author.get("id")) if author.get("type") == "admin" else None
    if topic == "conversation.rating.added":
        props["rating"] = rating.get("rating")
        props["remark"] = rating.get("remark")
    return compact(props)


def contact_traits(contact: Mapping[str, Any]) -> dict[str, Any]:
    """Segment's reserved traits from an Intercom contact (or 1.x user / lead)."""
    created = contact.get("created_at") or contact.get("signed_up_at")
    return compact(
        {
            "email": contact.get("email"),
            "name": contact.get("name"),
            "phone": contact.get("phone"),
            "createdAt": iso_time(created),
            "intercom_id": _str(contact.get("id")),
            "intercom_role": contact.get("role") or _legacy_role(contact),
        }
    )


def _legacy_role(contact: Mapping[str, Any]) -> str | None:
    kind = contact.get("type")
    return {"user": "user", "contact": "lead", "lead": "lead"}.get(kind) if kind else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    """An id as text (Intercom sends some ids as numbers), None when absent or empty."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    return str(value) if isinstance(value, str | int) else None


@hookimpl
def eventd_source_types() -> list[type[Source]]:
    return [IntercomSource]
