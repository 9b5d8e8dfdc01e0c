"""Generate ``eventd/openapi.json``, the OpenAPI 3.1 document eventd serves at ``/openapi.json``.

The document is written from this script rather than by hand because the Tracking
API repeats itself (six call types, each at a long and a one-letter path, plus
three batch paths); here each shape is written once. The JSON file is what ships
and what tests read; ``tests/test_openapi.py`` fails when it differs from what
this script produces, so edit this script, then run::

    python tools/gen_openapi.py          # rewrite eventd/openapi.json
    python tools/gen_openapi.py --check  # exit 1 if the file is stale

Everything here is read off the handlers (eventd/ingest.py, eventd/webhooks.py,
eventd/admin.py, eventd/app.py, eventd/bundle.py): statuses, error codes, limits and shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from eventd.ingest import BATCH_PATHS, SINGLE_PATHS

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "eventd" / "openapi.json"

# Duplicated from eventd.ingest on purpose (this script must not need eventd
# importable); tests/test_openapi.py checks they agree.
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_MESSAGE_ID = 100

Schema = dict[str, Any]


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema(name: str) -> Schema:
    return ref("schemas", name)


def response(name: str) -> Schema:
    return ref("responses", name)


def json_content(s: Schema) -> Schema:
    return {"application/json": {"schema": s}}


# -- message shapes ---------------------------------------------------------------

CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")

ID_DOC = (
    "A string or a number (numbers are stored as strings, integers of any width with"
    " every digit); null, empty or only invisible characters (whitespace, NUL,"
    " zero-width) means absent."
)


def message_schemas() -> dict[str, Schema]:
    """Segment's message shapes, as normalize.py enforces them."""
    s: dict[str, Schema] = {
        "Id": {
            "description": ID_DOC,
            "type": ["string", "number", "null"],
        },
        "PresentId": {
            "description": "A non-empty string or a number (stored as a string).",
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "number"}],
        },
        "Timestamp": {
            "description": (
                "An ISO-8601 time. Without a timezone it is taken as UTC. A value"
                " that cannot be read (another type, not ISO-8601, out of range) does"
                " not make the message invalid: it is repaired (an unreadable sentAt"
                " means no skew correction; an unreadable timestamp/originalTimestamp"
                " falls back to receivedAt), the value as sent is kept in"
                " context.repaired and the repair is counted in"
                " eventd_repaired_events_total{reason}."
            ),
            "type": ["string", "null"],
            "format": "date-time",
        },
        "Context": {
            "description": (
                "Free-form context. eventd fills context.ip from the request (the"
                " peer, or X-Forwarded-For from a server.trusted_proxies peer) when"
                " it is absent. Batch-level context is merged under each item's."
                " eventd adds context.repaired, a list of {reason, field, sent} (or"
                " {reason: invalid_unicode, replaced: N}), when it repaired the message."
            ),
            "type": ["object", "null"],
            "properties": {
                "ip": {"type": "string"},
                "userAgent": {"type": "string"},
                "library": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                },
            },
        },
        "Integrations": {
            "description": (
                "Destination name (the destination's config name or its integration"
                " name, e.g. Webhooks) -> true/false or an options object, read as"
                " analytics.js reads it: only false disables a destination; an options"
                " object (even {}) enables it; 'All': false disables the destinations"
                " not named with a truthy value. A destination skipped this way counts"
                ' the event in eventd_skipped_events_total{reason="integrations"}.'
            ),
            "type": ["object", "null"],
            "additionalProperties": True,
        },
        "Properties": {"description": "Free-form properties.", "type": ["object", "null"]},
        "Traits": {"description": "Free-form traits.", "type": ["object", "null"]},
        "MessageCommon": {
            "description": (
                "Fields every call type shares. Unknown fields are kept as sent;"
                " writeKey and _metadata are dropped. Null fields are ignored."
                f" At most {MAX_MESSAGE_BYTES} bytes per message."
            ),
            "type": "object",
            "properties": {
                "messageId": {
                    "description": (
                        "Deduplication key: a repeat of (source, messageId) inside"
                        " storage.dedup_window is acknowledged but not stored again."
                        " Trimmed of invisible characters (whitespace, NUL, zero-width);"
                        " generated when absent, empty or only invisible characters."
                    ),
                    "type": ["string", "null"],
                    "maxLength": MAX_MESSAGE_ID,
                },
                "userId": schema("Id"),
                "anonymousId": schema("Id"),
                "timestamp": schema("Timestamp"),
                "originalTimestamp": schema("Timestamp"),
                "sentAt": {
                    "allOf": [schema("Timestamp")],
                    "description": (
                        "When the client sent the message; with it the stored"
                        " timestamp is corrected for client clock skew."
                    ),
                },
                "context": schema("Context"),
                "integrations": schema("Integrations"),
                "writeKey": {
                    "type": "string",
                    "description": "The source's write key (or send it as HTTP Basic username).",
                },
                "_metadata": {"description": "Sent by some clients; dropped."},
            },
            "anyOf": [
                {"required": ["userId"], "properties": {"userId": schema("PresentId")}},
                {"required": ["anonymousId"], "properties": {"anonymousId": schema("PresentId")}},
            ],
        },
        "Track": {
            "description": "A user action. `event` is required.",
            "allOf": [
                schema("MessageCommon"),
                {
                    "type": "object",
                    "required": ["event"],
                    "properties": {
                        "event": {"type": "string", "pattern": "\\S"},
                        "properties": schema("Properties"),
                    },
                },
            ],
        },
        "Identify": {
            "description": "Who the user is.",
            "allOf": [
                schema("MessageCommon"),
                {"type": "object", "properties": {"traits": schema("Traits")}},
            ],
        },
        "Page": {
            "description": "A page view (web).",
            "allOf": [schema("MessageCommon"), schema("PageFields")],
        },
        "Screen": {
            "description": "A screen view (mobile).",
            "allOf": [schema("MessageCommon"), schema("PageFields")],
        },
        "PageFields": {
            "type": "object",
            "properties": {
                "name": {"type": ["string", "null"]},
                "category": {"type": ["string", "null"]},
                "properties": schema("Properties"),
            },
        },
        "Group": {
            "description": "Associates the user with a group. `groupId` is required.",
            "allOf": [
                schema("MessageCommon"),
                {
                    "type": "object",
                    "required": ["groupId"],
                    "properties": {"groupId": schema("PresentId"), "traits": schema("Traits")},
                },
            ],
        },
        "Alias": {
            "description": "Merges two identities. `previousId` and `userId` are required.",
            "allOf": [
                schema("MessageCommon"),
                {
                    "type": "object",
                    "required": ["previousId", "userId"],
                    "properties": {
                        "previousId": schema("PresentId"),
                        "userId": schema("PresentId"),
                    },
                },
            ],
        },
        "BatchItem": {
            "description": (
                "One message of a batch; its `type` says which call it is."
                f" At most {MAX_MESSAGE_BYTES} bytes once serialized (a larger item is"
                " dropped as message_too_large, like any invalid item)."
            ),
            "oneOf": [schema(f"{t.capitalize()}Item") for t in CALL_TYPES],
        },
        "Batch": {
            "description": (
                f"1 to {MAX_BATCH_EVENTS} messages and at most {MAX_BATCH_BYTES} bytes"
                " (decompressed). Batch-level"
                " sentAt applies to every item; batch-level context and integrations are"
                " merged under each item's own."
            ),
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH_EVENTS,
                    "items": schema("BatchItem"),
                },
                "writeKey": {"type": "string"},
                "sentAt": schema("Timestamp"),
                "context": schema("Context"),
                "integrations": schema("Integrations"),
            },
        },
    }
    for t in CALL_TYPES:
        s[f"{t.capitalize()}Item"] = {
            "allOf": [
                schema(t.capitalize()),
                {"type": "object", "required": ["type"], "properties": {"type": {"const": t}}},
            ]
        }
    return s


def response_schemas() -> dict[str, Schema]:
    status_fields: Schema = {
        "name": {"type": "string"},
        "type": {"type": "string", "description": "The destination plugin."},
        "cursor": {"type": "integer", "description": "Last seq this destination has passed."},
        "lag_events": {"type": "integer", "minimum": 0},
        "lag_seconds": {"type": "number", "minimum": 0},
        "lag_estimated": {
            "type": "boolean",
            "description": "lag_events is an estimate: on a cluster a long backlog is read"
            " a part per reading, the rest counted at the mean of the messages read.",
        },
        "delivered": {"type": "integer", "description": "Events the destination took."},
        "skipped": {
            "type": "integer",
            "description": "Events the destination does not take (counted by reason in"
            " eventd_skipped_events_total).",
        },
        "retrying": {"type": "integer"},
        "dead": {"type": "integer", "description": "Dead letters in state 'dead'."},
        "last_error": {"type": ["string", "null"]},
        "rate_limit": {"type": ["number", "null"], "description": "Events per second."},
        "max_in_flight": {"type": "integer"},
    }
    dead_letter_fields: Schema = {
        "id": {"type": "integer"},
        "destination": {"type": "string"},
        "seq": {"type": "integer"},
        "source": {"type": "string"},
        "message_id": {"type": "string"},
        "attempts": {"type": "integer"},
        "error": {"type": "string"},
        "failed_at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": ["dead", "redrive"]},
    }
    dead_letter_node: Schema = {
        "type": "string",
        "description": (
            "Only a node-local destination's letter on the cluster: the id of the node"
            " whose own file refused it; a redrive of it is resent by that node."
        ),
    }
    return {
        "Success": {
            "description": "Exactly this body, with status 200: the events are on disk.",
            "type": "object",
            "required": ["success"],
            "properties": {"success": {"const": True}},
            "additionalProperties": False,
        },
        "Error": {
            "description": (
                "Segment's error body. Tracking API codes: invalid_json, invalid_batch,"
                " empty_batch, batch_too_large, message_too_large, invalid_message,"
                " invalid_type, missing_user, missing_event, missing_group,"
                " missing_alias_ids, invalid_field, unplanned_event,"
                " tracking_plan_violation (400, a source's tracking plan blocking it),"
                " unsupported_encoding, unreadable_body (400: a Content-Encoding other"
                " than gzip/deflate, or a body that cannot be decoded or was cut short);"
                " missing_write_key, invalid_write_key (401); origin_not_allowed (403);"
                " not_found (404: no such /v1 path); method_not_allowed (405);"
                " body_too_large (413); overloaded (429); storage_unavailable (503);"
                " http_error (other HTTP errors while a /v1 request is read)."
                " Before any route (any path): request_too_large (400: a request line or"
                " header over 8190 bytes), bad_request (400: not parseable HTTP)."
                " Admin codes: bad_request (400),"
                " unauthorized (401), admin_disabled (403), not_found (404),"
                " drain_timeout (504); reports: bad_parameter (400, with `parameter`),"
                " no_report_store and report_store_unavailable (503)."
            ),
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "parameter": {
                    "type": "string",
                    "description": "bad_parameter: the query parameter at fault.",
                },
            },
        },
        "ProjectSettings": {
            "description": "The settings analytics-next fetches from its cdnURL.",
            "type": "object",
            "required": ["integrations"],
            "properties": {
                "integrations": {
                    "type": "object",
                    "properties": {
                        "Segment.io": {
                            "type": "object",
                            "required": ["apiKey", "apiHost", "protocol"],
                            "properties": {
                                "apiKey": {"type": "string"},
                                "apiHost": {
                                    "type": "string",
                                    "description": (
                                        "host[:port]/v1 of this request (X-Forwarded-Host"
                                        " from a trusted proxy)."
                                    ),
                                },
                                "protocol": {"type": "string"},
                            },
                        }
                    },
                },
                "plan": {"type": "object"},
                "metrics": {"type": "object"},
                "remotePlugins": {"type": "array"},
                "enabledMiddleware": {"type": "object"},
            },
        },
        "SourceConfig": {
            "description": "What @rudderstack/analytics-js 3.x reads from its config URL.",
            "type": "object",
            "required": ["source"],
            "properties": {
                "isHosted": {"type": "boolean"},
                "source": {
                    "type": "object",
                    "required": ["id", "name", "enabled", "config", "destinations"],
                    "properties": {
                        "id": {"type": "string", "description": "The source's name."},
                        "name": {"type": "string"},
                        "writeKey": {"type": "string"},
                        "enabled": {"const": True},
                        "workspaceId": {"type": "string"},
                        "config": {
                            "type": "object",
                            "description": "statsCollection: the SDK's own reports, off.",
                        },
                        "destinations": {"type": "array", "maxItems": 0},
                    },
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["ready", "storage_writable", "dispatcher_running"],
            "properties": {
                "ready": {"type": "boolean"},
                "storage_writable": {"type": "boolean"},
                "dispatcher_running": {"type": "boolean"},
            },
        },
        "Runtime": {
            "type": "object",
            "required": ["version", "started_at", "uptime_seconds", "last_seq", "storage"],
            "properties": {
                "version": {"type": "string"},
                "started_at": {"type": "string", "format": "date-time"},
                "uptime_seconds": {"type": "number"},
                "last_seq": {"type": "integer"},
                "storage": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "writable": {"type": "boolean"},
                        "last_error": {"type": ["string", "null"]},
                        "file_bytes": {"type": "integer"},
                        "max_size": {"type": ["integer", "null"]},
                    },
                },
                "dispatcher_running": {"type": "boolean"},
                "sources": {"type": "array", "items": {"type": "string"}},
                "destinations": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Source": {
            "type": "object",
            "required": ["name", "allowed_origins"],
            "properties": {
                "name": {"type": "string"},
                "allowed_origins": {"type": "array", "items": {"type": "string"}},
            },
        },
        "DestinationStatus": {
            "type": "object",
            "required": list(status_fields),
            "properties": status_fields,
        },
        "DeadLetter": {
            "type": "object",
            "required": list(dead_letter_fields),
            "properties": {**dead_letter_fields, "node": dead_letter_node},
        },
        "DeadLetterDetail": {
            "type": "object",
            "required": [*dead_letter_fields, "received_at", "event"],
            "properties": {
                **dead_letter_fields,
                "node": dead_letter_node,
                "received_at": {"type": "string", "format": "date-time"},
                "event": {"type": "object", "description": "The stored (normalized) event."},
            },
        },
        "TimeSpec": {
            "description": (
                "An ISO-8601 time (UTC when no timezone is given), or a duration ago:"
                " '90s', '15m', '2h', '7d', '1w', or a number of seconds."
            ),
            "type": ["string", "number", "null"],
        },
        "RedriveRequest": {
            "type": "object",
            "properties": {
                "destination": {
                    "type": ["string", "null"],
                    "description": "Only this destination's dead letters (default: all).",
                },
                "ids": {
                    "type": ["array", "null"],
                    "items": {"type": "integer"},
                    "description": "Only these dead letters (default: all matching).",
                },
            },
        },
        "PurgeRequest": {
            "type": "object",
            "properties": {
                "destination": {"type": ["string", "null"]},
                "before": {
                    "allOf": [schema("TimeSpec")],
                    "description": "Only dead letters that failed before this time.",
                },
            },
        },
        "SuppressRequest": {
            "type": "object",
            "required": ["user_id"],
            "properties": {
                "user_id": {"type": "string", "minLength": 1},
                "erase": {
                    "type": "boolean",
                    "default": False,
                    "description": "Also delete the user's stored events and dead letters.",
                },
            },
        },
        "UnsuppressRequest": {
            "type": "object",
            "required": ["user_id"],
            "properties": {"user_id": {"type": "string", "minLength": 1}},
        },
        "Suppression": {
            "type": "object",
            "required": ["user_id", "created_at", "erase", "erased_events", "erased_at"],
            "properties": {
                "user_id": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "erase": {"type": "boolean"},
                "erased_events": {"type": "integer"},
                "erased_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": (
                        "When none of the user's events was left; null while the erasure"
                        " is pending (the user's event is the newest in the log)."
                    ),
                },
            },
        },
        "SuppressionStatus": {
            "allOf": [schema("Suppression")],
            "type": "object",
            "required": ["deletions"],
            "properties": {
                "deletions": {
                    "type": "array",
                    "items": schema("Deletion"),
                    "description": "The erasure forwarded to each destination (empty without"
                    " erase).",
                }
            },
        },
        "Deletion": {
            "type": "object",
            "required": ["destination", "type", "state", "attempts", "requested_at"],
            "properties": {
                "destination": {"type": "string"},
                "type": {"type": "string"},
                "state": {"enum": ["requested", "done", "failed", "unsupported"]},
                "attempts": {"type": "integer"},
                "reason": {
                    "type": ["string", "null"],
                    "description": "failed: why; requested: the last retry's reason.",
                },
                "instructions": {
                    "type": ["string", "null"],
                    "description": "unsupported: what the operator must do by hand.",
                },
                "requested_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
                "user_ids": {"type": "array", "items": {"type": "string"}},
                "anonymous_ids": {"type": "array", "items": {"type": "string"}},
                "nodes": {
                    "type": "array",
                    "items": schema("NodeDeletion"),
                    "description": "Only for a node-local destination (duckdb) on the"
                    " cluster: each node's copy, deleted from its own file; the state"
                    " above is done once every copy not gone is.",
                },
            },
        },
        "NodeDeletion": {
            "type": "object",
            "required": ["node", "state", "attempts", "updated_at"],
            "properties": {
                "node": {"type": "string", "description": "The node's lasting id."},
                "state": {
                    "enum": ["requested", "done", "failed", "unsupported", "gone"],
                    "description": "gone: the node's consumer was removed (away longer"
                    " than storage.retention); the erasure no longer waits for it.",
                },
                "attempts": {"type": "integer"},
                "reason": {"type": ["string", "null"]},
                "updated_at": {"type": "string", "format": "date-time"},
                "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "Audit": {
            "type": "object",
            "required": ["source", "since", "events", "calls", "never_seen"],
            "properties": {
                "source": {"type": ["string", "null"]},
                "since": {"type": ["string", "null"], "format": "date-time"},
                "events": {"type": "integer", "description": "Stored events read."},
                "calls": {"type": "array", "items": schema("AuditCall")},
                "never_seen": {
                    "type": "array",
                    "description": "Track events a source's tracking plan names, never stored.",
                    "items": {
                        "type": "object",
                        "required": ["source", "event"],
                        "properties": {"source": {"type": "string"}, "event": {"type": "string"}},
                    },
                },
            },
        },
        "AuditCall": {
            "type": "object",
            "required": ["type", "event", "volume", "first_seen", "last_seen", "properties"],
            "properties": {
                "type": {"type": "string"},
                "event": {
                    "type": ["string", "null"],
                    "description": "track: the event; page, screen: the name.",
                },
                "volume": {"type": "integer"},
                "first_seen": {"type": "string", "format": "date-time"},
                "last_seen": {"type": "string", "format": "date-time"},
                "sources": {"type": "array", "items": {"type": "string"}},
                "properties": {"type": "array", "items": schema("AuditProperty")},
                "violations": {
                    "type": ["object", "null"],
                    "description": "Against the source's tracking plan; null without one.",
                    "properties": {
                        "events": {"type": "integer"},
                        "findings": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "type": {"type": "string"},
                                    "field": {"type": "string"},
                                    "count": {"type": "integer"},
                                    "example": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "AuditProperty": {
            "type": "object",
            "required": ["path", "types", "null_share", "missing_share", "distinct"],
            "properties": {
                "path": {"type": "string", "examples": ["properties.total"]},
                "types": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "JSON type -> how many values had it.",
                },
                "null_share": {"type": "number", "minimum": 0, "maximum": 1},
                "missing_share": {"type": "number", "minimum": 0, "maximum": 1},
                "distinct": {"type": "integer"},
                "distinct_exact": {
                    "type": "boolean",
                    "description": "false: a HyperLogLog estimate (past 1,000 values).",
                },
                "examples": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ReplayRequest": {
            "type": "object",
            "required": ["destination", "since"],
            "properties": {
                "destination": {"type": "string"},
                "since": schema("TimeSpec"),
                "until": schema("TimeSpec"),
            },
        },
        "ReplayResult": {
            "type": "object",
            "required": ["destination", "events"],
            "properties": {
                "destination": {"type": "string"},
                "from_seq": {"type": "integer"},
                "until_seq": {"type": "integer"},
                "events": {"type": "integer", "description": "0 when nothing is in the range."},
            },
        },
    }


# -- responses and security -----------------------------------------------------------


def responses() -> dict[str, Schema]:
    def error(description: str, **headers: Schema) -> Schema:
        out: Schema = {"description": description, "content": json_content(schema("Error"))}
        if headers:
            out["headers"] = headers
        return out

    retry_after: Schema = {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
    return {
        "Success": {
            "description": "Stored (committed to disk) or a duplicate of a stored message.",
            "content": json_content(schema("Success")),
        },
        "BatchSuccess": {
            "description": (
                "The valid messages are stored. Invalid items are dropped, logged,"
                " counted in eventd_rejected_events and counted in X-Eventd-Rejected."
            ),
            "headers": {
                "X-Eventd-Rejected": {
                    "description": "How many items were invalid and dropped (absent when none).",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
            "content": json_content(schema("Success")),
        },
        "BadRequest": error("Invalid body or message; clients drop it, they do not retry."),
        "WriteKeyRequired": error(
            "missing_write_key or invalid_write_key: no write key in the body or HTTP"
            " Basic username, or it matches no source."
        ),
        "OriginNotAllowed": error(
            "origin_not_allowed: the request's Origin is not in the source's allowed_origins."
        ),
        "PayloadTooLarge": error(
            "body_too_large: the body (decompressed) is over its path's limit,"
            f" {MAX_MESSAGE_BYTES} bytes for one message and {MAX_BATCH_BYTES} for a batch,"
            " whatever its size."
        ),
        "TooManyRequests": error(
            "overloaded: more than server.max_pending_events events already wait for"
            " their commit. Nothing of this request was stored; wait Retry-After seconds"
            " and retry (the SDKs do).",
            **{"Retry-After": retry_after},
        ),
        "StorageUnavailable": error(
            "storage_unavailable: the store cannot take the events (disk full,"
            " storage.max_size reached, store closed). Nothing was stored; retry.",
            **{"Retry-After": retry_after},
        ),
        "AdminBadRequest": error("bad_request: a parameter is wrong; the message says which."),
        "ReportBadParameter": error(
            "bad_parameter: a query parameter is unknown, missing or wrong; `parameter`"
            " names it and the message says what was expected."
        ),
        "ReportStoreUnavailable": error(
            "no_report_store: no [reports] store is configured or running;"
            " report_store_unavailable: the store failed (the message says how)."
        ),
        "AdminUnauthorized": error("unauthorized: send Authorization: Bearer <admin.token>."),
        "AdminDisabled": error("admin_disabled: no admin.token is configured."),
    }


def security_schemes() -> dict[str, Schema]:
    return {
        "writeKeyBasic": {
            "type": "http",
            "scheme": "basic",
            "description": (
                "The source's write key as the HTTP Basic username, empty password"
                " (with or without the colon). Alternatively send it as `writeKey` in"
                " the JSON body, which OpenAPI cannot express as a scheme: operations"
                " list an empty requirement `{}` for that case. The body key wins when"
                " both are sent. `Authorization: Bearer` is not a write key."
            ),
        },
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "`admin.token` from the config. Without one the admin API is off (403).",
        },
        "consoleSession": {
            "type": "apiKey",
            "in": "cookie",
            "name": "eventd_session",
            "description": (
                "The web console's session (set by POST /console/login), instead of the"
                " bearer token. A request that changes something (POST) must also send the"
                " session's CSRF token (the page's csrf-token meta tag) in X-CSRF-Token."
            ),
        },
    }


WRITE_KEY: list[Schema] = [{"writeKeyBasic": []}, {}]
ADMIN: list[Schema] = [{"adminToken": []}, {"consoleSession": []}]
ADMIN_ERRORS: Schema = {"401": response("AdminUnauthorized"), "403": response("AdminDisabled")}


# -- paths ------------------------------------------------------------------------------


def tracking_body(s: Schema, what: str) -> Schema:
    return {
        "required": True,
        "description": (
            f"{what} Parsed as JSON whatever the Content-Type (analytics-next sends"
            " text/plain); `Content-Encoding: gzip` or `deflate` is accepted. Integers"
            " of any width keep every digit; a lone UTF-16 surrogate or an invalid"
            " UTF-8 byte becomes U+FFFD (counted as invalid_unicode)."
        ),
        "content": {
            "application/json": {"schema": s},
            "text/plain": {"schema": {"type": "string", "description": "The same JSON, as text."}},
        },
    }


WRITE_KEY_QUERY: Schema = {
    "name": "writeKey",
    "in": "query",
    "required": False,
    "description": "The source's write key, when neither the body nor Basic auth has it.",
    "schema": {"type": "string"},
}


# The /v1 paths other routes serve (the ingest's single-event and batch paths, the
# telemetry path "m", the project settings): the fallback's `tail` is never one of
# them. Found by the random fuzz: POST /v1/{tail} with tail "t" reached the track handler.
SERVED_V1 = {
    "post": {"not": {"enum": [*SINGLE_PATHS, *BATCH_PATHS, "m"]}},
    "get": {"not": {"pattern": "^projects/[^/]+/settings$"}},
}


def unknown_v1_operations() -> dict[str, Schema]:
    """Any method but OPTIONS on a /v1 path no other route serves."""
    out: dict[str, Schema] = {}
    for method in ("get", "post", "put", "patch", "delete"):
        tail: Schema = {"type": "string", "pattern": "^[^\\n]*$", **SERVED_V1.get(method, {})}
        out[method] = {
            "operationId": f"unknownV1{method.capitalize()}",
            "tags": ["tracking"],
            "summary": "Any other /v1 path: a JSON 404 (405 for a known path's wrong method)",
            "parameters": [{"name": "tail", "in": "path", "required": True, "schema": tail}],
            "responses": {
                "404": {
                    "description": "not_found: no such Tracking API path.",
                    "content": json_content(schema("Error")),
                },
                "405": {
                    "description": "method_not_allowed: a Tracking API path, another method.",
                    "headers": {"Allow": {"schema": {"type": "string"}}},
                    "content": json_content(schema("Error")),
                },
            },
        }
    return out


def preflight_operation(op_id: str) -> Schema:
    return {
        "operationId": op_id,
        "tags": ["browser"],
        "summary": "CORS preflight (as for /v1 paths)",
        "parameters": [
            {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"}}
        ],
        "responses": {
            "204": {"description": "Allowed."},
            "403": {
                "description": "origin_not_allowed: the Origin is not allowed by any source.",
                "content": json_content(schema("Error")),
            },
        },
    }


def rudderstack_paths(common_errors: Schema) -> dict[str, Schema]:
    """RudderStack's browser SDK (@rudderstack/analytics-js 3.x): beacon, pixel, config."""
    paths: dict[str, Schema] = {}
    paths["/beacon/v1/batch"] = {
        "post": {
            "operationId": "beaconBatch",
            "tags": ["tracking"],
            "summary": "RudderStack's beacon mode: a batch by navigator.sendBeacon",
            "description": (
                "The same as /v1/batch; the write key comes as ?writeKey= (a beacon"
                " sends no Authorization header), the body as text/plain."
            ),
            "security": WRITE_KEY,
            "parameters": [WRITE_KEY_QUERY],
            "requestBody": tracking_body(schema("Batch"), "A batch of messages."),
            "responses": {
                "200": response("BatchSuccess"),
                "400": response("BadRequest"),
                **common_errors,
            },
        }
    }
    for t in ("page", "track"):
        named = "name (default 'Unknown Page')" if t == "page" else "event (required)"
        paths[f"/pixel/v1/{t}"] = {
            "get": {
                "operationId": f"pixel{t.capitalize()}",
                "tags": ["tracking"],
                "summary": f"RudderStack's pixel: a {t} from a query string",
                "description": (
                    "For e-mails and pages without JavaScript. writeKey, anonymousId"
                    f" or userId, {named}; any other parameter is a field, dotted"
                    " names nested (properties.plan=pro), values strings. Answers a"
                    " 1x1 GIF once the event is stored."
                ),
                "security": WRITE_KEY,
                "parameters": [
                    WRITE_KEY_QUERY,
                    {"name": "anonymousId", "in": "query", "schema": {"type": "string"}},
                    {"name": "userId", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "name" if t == "page" else "event",
                        "in": "query",
                        "required": t == "track",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Stored.",
                        "content": {"image/gif": {"schema": {"type": "string"}}},
                    },
                    "400": response("BadRequest"),
                    **{k: v for k, v in common_errors.items() if k != "413"},
                },
            }
        }
    config_op: Schema = {
        "tags": ["browser"],
        "summary": "RudderStack's source configuration (the SDK's configUrl points here)",
        "description": (
            "What @rudderstack/analytics-js 3.x fetches before it sends anything"
            " (`{configUrl}/sourceConfig/?p=npm&v=...&writeKey=...`, Basic auth). No"
            " device-mode destinations: eventd routes events itself."
        ),
        "security": WRITE_KEY,
        "parameters": [WRITE_KEY_QUERY],
        "responses": {
            "200": {
                "description": "The source, enabled.",
                "content": json_content(schema("SourceConfig")),
            },
            "401": response("WriteKeyRequired"),
        },
    }
    paths["/sourceConfig"] = {"get": {"operationId": "sourceConfig", **config_op}}
    paths["/sourceConfig/"] = {"get": {"operationId": "sourceConfigSlash", **config_op}}
    return paths


def tracking_paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    common_errors = {
        "401": response("WriteKeyRequired"),
        "403": response("OriginNotAllowed"),
        "413": response("PayloadTooLarge"),
        "429": response("TooManyRequests"),
        "503": response("StorageUnavailable"),
    }
    for t in CALL_TYPES:
        name = t.capitalize()
        for path, alias in ((f"/v1/{t}", False), (f"/v1/{t[0]}", True)):
            what = f"One {t} message; its `type`, if any, is ignored (the path decides)."
            paths[path] = {
                "post": {
                    "operationId": f"{t}Short" if alias else t,
                    "tags": ["tracking"],
                    "summary": (
                        f"{name}: analytics-next's one-letter path for /v1/{t}"
                        if alias
                        else f"{name}: send one {t} message"
                    ),
                    "security": WRITE_KEY,
                    "requestBody": tracking_body(schema(name), what),
                    "responses": {
                        "200": response("Success"),
                        "400": response("BadRequest"),
                        **common_errors,
                    },
                }
            }
    for path, op_id, summary in (
        ("/v1/batch", "batch", "Send a batch of messages"),
        ("/v1/import", "import", "Send a batch of messages (same as /v1/batch)"),
        ("/v1/b", "batchShort", "analytics-next's batching-mode path for /v1/batch"),
    ):
        paths[path] = {
            "post": {
                "operationId": op_id,
                "tags": ["tracking"],
                "summary": summary,
                "description": (
                    "Valid items are stored and invalid ones dropped (see X-Eventd-Rejected);"
                    " a batch whose items are all invalid is a 400 naming the first error,"
                    " an empty one a 400 (empty_batch)."
                ),
                "security": WRITE_KEY,
                "requestBody": tracking_body(schema("Batch"), "A batch of messages."),
                "responses": {
                    "200": response("BatchSuccess"),
                    "400": response("BadRequest"),
                    **common_errors,
                },
            }
        }
    paths["/v1/m"] = {
        "post": {
            "operationId": "telemetry",
            "tags": ["browser"],
            "summary": "analytics-next's own telemetry: accepted and discarded",
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"series": {"type": "array"}}}
                    },
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            "responses": {"200": response("Success"), "413": response("PayloadTooLarge")},
        }
    }
    paths["/v1/projects/{write_key}/settings"] = {
        "get": {
            "operationId": "projectSettings",
            "tags": ["browser"],
            "summary": "Settings for analytics-next (its cdnURL points here)",
            "parameters": [
                {"name": "write_key", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "The source's settings.",
                    "content": json_content(schema("ProjectSettings")),
                },
                "404": {
                    "description": "unknown_write_key: no source has this write key.",
                    "content": json_content(schema("Error")),
                },
            },
        }
    }
    paths["/v1/{tail}"] = {
        "options": {
            "operationId": "preflight",
            "tags": ["browser"],
            "summary": "CORS preflight for every /v1/ path",
            "description": (
                "`tail` is the rest of the path and may contain '/'. Allowed when any"
                " source accepts every origin (no allowed_origins), or when Origin is"
                " in some source's allowed_origins."
            ),
            "parameters": [
                {
                    "name": "tail",
                    "in": "path",
                    "required": True,
                    # the route is /v1/{tail:.*}, and '.' stops at a newline
                    "schema": {"type": "string", "pattern": "^[^\\n]*$"},
                },
                {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "204": {
                    "description": "Allowed.",
                    "headers": {
                        "Access-Control-Allow-Origin": {
                            "description": "The request's Origin (or *).",
                            "schema": {"type": "string"},
                        },
                        "Access-Control-Allow-Methods": {"schema": {"type": "string"}},
                        "Access-Control-Allow-Headers": {
                            "description": (
                                "Authorization, Content-Type, X-Retry-Count, and the"
                                " headers Access-Control-Request-Headers asked for"
                                " (RudderStack's SDK sends AnonymousId, SentAt, Rsa-*)."
                            ),
                            "schema": {"type": "string"},
                        },
                        "Access-Control-Max-Age": {"schema": {"type": "integer"}},
                    },
                },
                "403": {
                    "description": "origin_not_allowed: the Origin is not allowed by any source.",
                    "content": json_content(schema("Error")),
                },
            },
        }
    }
    paths["/v1/{tail}"].update(unknown_v1_operations())
    paths.update(rudderstack_paths(common_errors))
    paths["/sourceConfig"]["options"] = preflight_operation("sourceConfigPreflight")
    paths["/sourceConfig/"]["options"] = preflight_operation("sourceConfigSlashPreflight")
    js = {"application/javascript": {"schema": {"type": "string"}}}
    not_configured = (
        " analytics_js_not_configured: server.analytics_js is not set (the message says how)."
    )
    paths["/analytics.js/v1/{write_key}/analytics.min.js"] = {
        "get": {
            "operationId": "analyticsJs",
            "tags": ["browser"],
            "summary": "analytics.js for the Segment snippet, served without a CDN",
            "description": (
                "server.analytics_js (analytics-next's dist/umd/standalone.js) with this"
                " write key in place of __WRITE_KEY__, behind a preamble that makes the"
                " library fetch its settings and bundles from eventd. Gzipped when the"
                " client accepts gzip."
            ),
            "parameters": [
                {"name": "write_key", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The script.",
                    "headers": {
                        "ETag": {"schema": {"type": "string"}},
                        "Cache-Control": {"schema": {"type": "string"}},
                    },
                    "content": js,
                },
                "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                "404": {
                    "description": "unknown_write_key: no source has this write key;"
                    + not_configured,
                    "content": json_content(schema("Error")),
                },
            },
        }
    }
    paths["/analytics-next/bundles/{name}"] = {
        "get": {
            "operationId": "analyticsJsChunk",
            "tags": ["browser"],
            "summary": "analytics.js's on-demand chunks (content-hashed file names)",
            "description": (
                "Files named like `queryString.bundle.34b1f2a9.js` in the directory of"
                " server.analytics_js. Conditional and Range requests are answered as for"
                " any static file."
            ),
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The chunk.", "content": js},
                "206": {"description": "Part of the chunk (a Range request).", "content": js},
                "304": {"description": "Not modified."},
                "404": {
                    "description": "not_found: no such chunk;" + not_configured,
                    "content": json_content(schema("Error")),
                },
                "416": {"description": "The Range cannot be satisfied."},
            },
        }
    }
    return paths


def operations_paths() -> dict[str, Schema]:
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "tags": ["operations"],
                "summary": "Liveness: the process answers",
                "responses": {
                    "200": {"description": "Alive.", "content": json_content(schema("Health"))}
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "tags": ["operations"],
                "summary": "Readiness: storage writable and dispatcher running",
                "responses": {
                    "200": {"description": "Ready.", "content": json_content(schema("Ready"))},
                    "503": {
                        "description": "Not ready; the body says which check fails.",
                        "content": json_content(schema("Ready")),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text exposition format)",
                "description": (
                    "Needs the admin token unless admin.metrics_auth = false (then no"
                    " Authorization is needed)."
                ),
                "security": [{"adminToken": []}, {}],
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **ADMIN_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": json_content({"type": "object"}),
                    }
                },
            }
        },
    }


def admin_op(
    op_id: str,
    summary: str,
    ok: Schema,
    *,
    params: list[Schema] | None = None,
    body: str | None = None,
    bad_request: bool = True,
    extra: Schema | None = None,
) -> Schema:
    op: Schema = {
        "operationId": op_id,
        "tags": ["admin"],
        "summary": summary,
        "security": ADMIN,
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": False,
            "description": "JSON; an empty body means {}.",
            "content": json_content(schema(body)),
        }
    op["responses"] = {
        "200": ok,
        **({"400": response("AdminBadRequest")} if bad_request else {}),
        **ADMIN_ERRORS,
        **(extra or {}),
    }
    return op


def ok_json(description: str, s: Schema) -> Schema:
    return {"description": description, "content": json_content(s)}


def query(name: str, s: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": s, "description": description}


def admin_paths() -> dict[str, Schema]:
    destinations = {"type": "array", "items": schema("DestinationStatus")}
    return {
        "/admin/runtime": {
            "get": admin_op(
                "runtime",
                "Version, uptime, storage and dispatcher state",
                ok_json("Runtime facts.", schema("Runtime")),
                bad_request=False,
            )
        },
        "/admin/sources": {
            "get": admin_op(
                "sources",
                "Configured sources (never their write keys)",
                ok_json("Sources.", {"type": "array", "items": schema("Source")}),
                bad_request=False,
            )
        },
        "/admin/destinations": {
            "get": admin_op(
                "destinations",
                "Per destination: cursor, lag, delivered, retrying, dead",
                ok_json("Destinations, by name.", destinations),
                bad_request=False,
            )
        },
        "/admin/dead-letters": {
            "get": admin_op(
                "listDeadLetters",
                "List dead letters",
                ok_json(
                    "Dead letters, oldest first.", {"type": "array", "items": schema("DeadLetter")}
                ),
                params=[
                    query("destination", {"type": "string"}, "Only this destination's."),
                    query(
                        "since",
                        {"type": "string"},
                        "Failed at or after: ISO-8601 time or a duration ago ('2h').",
                    ),
                    query(
                        "limit",
                        {"type": "integer", "default": 100, "minimum": 0},
                        "At most this many (capped at 10000).",
                    ),
                ],
            )
        },
        "/admin/dead-letters/{id}": {
            "get": admin_op(
                "showDeadLetter",
                "One dead letter with its stored event",
                ok_json("The dead letter.", schema("DeadLetterDetail")),
                params=[
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "description": "Digits only (other paths are not routed here).",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
                bad_request=False,
                extra={
                    "404": {
                        "description": "not_found: no dead letter has this id.",
                        "content": json_content(schema("Error")),
                    }
                },
            )
        },
        "/admin/dead-letters/redrive": {
            "post": admin_op(
                "redriveDeadLetters",
                "Put dead letters back in front of their destination",
                ok_json(
                    "How many were queued for redelivery.",
                    {
                        "type": "object",
                        "required": ["redriven"],
                        "properties": {"redriven": {"type": "integer"}},
                    },
                ),
                body="RedriveRequest",
                extra={
                    "409": {
                        "description": (
                            "conflict: a letter asked for by id belongs to a node-local"
                            " destination's node gone for good (its consumer removed"
                            " after storage.retention); nothing was queued, the message"
                            " names the node. Purge such letters."
                        ),
                        "content": json_content(schema("Error")),
                    }
                },
            )
        },
        "/admin/dead-letters/purge": {
            "post": admin_op(
                "purgeDeadLetters",
                "Delete dead letters",
                ok_json(
                    "How many were deleted.",
                    {
                        "type": "object",
                        "required": ["purged"],
                        "properties": {"purged": {"type": "integer"}},
                    },
                ),
                body="PurgeRequest",
            )
        },
        "/admin/suppressions": {
            "get": admin_op(
                "listSuppressions",
                "Suppressed users",
                ok_json(
                    "Every suppressed userId.", {"type": "array", "items": schema("Suppression")}
                ),
            ),
            "post": admin_op(
                "suppress",
                "Suppress a userId: its events are acknowledged and not stored or delivered;"
                " with erase, what is stored of it is deleted",
                ok_json("The suppression, after any erasure.", schema("Suppression")),
                body="SuppressRequest",
            ),
        },
        "/admin/suppressions/{user_id}": {
            "get": admin_op(
                "showSuppression",
                "A suppression and its erasure's deletion status per destination",
                ok_json("The suppression with its deletions.", schema("SuppressionStatus")),
                params=[
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    },
                    query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": 300, "default": 0},
                        "Seconds to wait until no deletion is still requested.",
                    ),
                ],
                extra={
                    "404": {
                        "description": "not_found: the userId is not suppressed.",
                        "content": json_content(schema("Error")),
                    },
                    "501": {
                        "description": "not_supported: the storage backend keeps no deletion"
                        " requests, so erasures are not forwarded to destinations.",
                        "content": json_content(schema("Error")),
                    },
                },
            )
        },
        "/admin/audit": {
            "get": admin_op(
                "audit",
                "A data audit of the stored events: per call type and event, volume and"
                " every property's types, null/missing shares, distinct values, examples;"
                " tracking plan violations",
                ok_json("The audit.", schema("Audit")),
                params=[
                    query("source", {"type": "string"}, "One source (default: every source)."),
                    query(
                        "since",
                        {"type": "string"},
                        "Received at or after: ISO-8601 time or a duration ago ('7d').",
                    ),
                ],
            )
        },
        "/admin/suppressions/remove": {
            "post": admin_op(
                "unsuppress",
                "Take a userId's events again",
                ok_json(
                    "Whether it was suppressed.",
                    {
                        "type": "object",
                        "required": ["removed"],
                        "properties": {"removed": {"type": "boolean"}},
                    },
                ),
                body="UnsuppressRequest",
            )
        },
        "/admin/replay": {
            "post": admin_op(
                "replay",
                "Re-send stored events received in a time range to one destination",
                ok_json("The replay is queued.", schema("ReplayResult")),
                body="ReplayRequest",
            )
        },
        "/admin/live": {
            "get": admin_op(
                "live",
                "Accepted and rejected events as they arrive (never ends)",
                {
                    "description": (
                        "A stream: Server-Sent Events (`data: {json}`, with `: keep-alive`"
                        " comments every 15 s), or JSON lines with format=json. Items are"
                        " {rejected: false, source, message} or {rejected: true, source,"
                        " code, reason, message}."
                    ),
                    "content": {
                        "text/event-stream": {"schema": {"type": "string"}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
                params=[
                    query("source", {"type": "string"}, "Only this source's events."),
                    query(
                        "format",
                        {"type": "string", "enum": ["sse", "json"], "default": "sse"},
                        "json for JSON lines; anything else is SSE.",
                    ),
                ],
            )
        },
        "/admin/outcomes": {
            "get": admin_op(
                "eventOutcomes",
                "What each destination did with one stored event (the live debugger's detail)",
                ok_json(
                    "The event's seq and an outcome per running destination.",
                    schema("EventOutcomes"),
                ),
                params=[
                    query("source", {"type": "string"}, "The event's source (required)."),
                    query("message_id", {"type": "string"}, "Its messageId (required)."),
                ],
            )
        },
        "/admin/drain": {
            "post": admin_op(
                "drain",
                "Wait until every destination has passed every stored event",
                ok_json("Destinations, once drained.", destinations),
                params=[
                    query(
                        "timeout",
                        {"type": "number", "default": 60},
                        "Seconds to wait before answering 504.",
                    )
                ],
                extra={
                    "504": {
                        "description": "drain_timeout: destinations still behind at the timeout.",
                        "content": json_content(schema("Error")),
                    }
                },
            )
        },
    }


def webhook_paths() -> dict[str, Schema]:
    """eventd/webhooks.py: the cloud-app sources' endpoint."""

    def error(description: str) -> Schema:
        return {"description": description, "content": json_content(schema("Error"))}

    return {
        "/v1/webhooks/{write_key}": {
            "post": {
                "operationId": "webhook",
                "tags": ["sources"],
                "summary": "A cloud-app source's notification (Intercom, Stripe, any webhook)",
                "description": (
                    "The write key in the path names a source whose `type` is not"
                    " `segment` (senders of webhooks cannot set Basic auth). Its type checks"
                    " the signature (Intercom: X-Hub-Signature; Stripe: Stripe-Signature,"
                    " at most 300 s old; webhook: its signature_header, when set) and maps"
                    " the JSON body to Segment messages, with the provider's event id as"
                    " messageId so a retried notification is stored once. The messages go"
                    " through the Tracking API's pipeline (tracking plan, suppressions)."
                ),
                "parameters": [
                    {
                        "name": "write_key",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "description": "The provider's notification, as it sent it (signed bytes).",
                    "content": {"application/json": {"schema": {}}},
                },
                "responses": {
                    "200": {
                        "description": (
                            "Stored (committed), or already stored (a retry). `events` is"
                            " how many messages the notification became (0: a topic the"
                            " source does not map, acknowledged so the sender does not"
                            " retry, counted as ignored). Messages the pipeline refused"
                            " are counted in X-Eventd-Rejected."
                        ),
                        "headers": {
                            "X-Eventd-Rejected": {
                                "description": "How many messages were invalid or blocked.",
                                "schema": {"type": "integer", "minimum": 1},
                            }
                        },
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["success", "events"],
                                "properties": {
                                    "success": {"const": True},
                                    "events": {"type": "integer", "minimum": 0},
                                },
                            }
                        ),
                    },
                    "400": error("invalid_json: a correctly signed body that is not JSON."),
                    "401": error(
                        "invalid_signature: the body is not signed with the source's secret"
                        " (or, for Stripe, the signature is over 300 s old). Counted."
                    ),
                    "404": error("unknown_write_key: no cloud-app source has this write key."),
                    "413": response("PayloadTooLarge"),
                    "429": response("TooManyRequests"),
                    "500": error(
                        "mapping_failed: the source's mapper raised. Not acknowledged, so"
                        " the sender retries; the error is logged."
                    ),
                    "503": response("StorageUnavailable"),
                },
            }
        }
    }


def outcome_schemas() -> dict[str, Schema]:
    outcomes = [
        "delivered",
        "skipped",
        "dead_lettered",
        "pending",
        "not_routed",
        "not_recorded",
        "not_stored",
    ]
    return {
        "EventOutcomes": {
            "type": "object",
            "required": ["source", "message_id", "seq", "destinations"],
            "properties": {
                "source": {"type": "string"},
                "message_id": {"type": "string"},
                "seq": {
                    "type": ["integer", "null"],
                    "description": (
                        "null: no such event is stored (not committed yet, or never sent)."
                    ),
                },
                "destinations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["destination", "outcome", "reason", "at"],
                        "properties": {
                            "destination": {"type": "string"},
                            "outcome": {
                                "type": "string",
                                "enum": outcomes,
                                "description": (
                                    "delivered, skipped (reason) and dead_lettered (error) are"
                                    " remembered for the newest 10,000 events, in memory;"
                                    " pending: the destination has not reached it; not_routed:"
                                    " its sources exclude the event's; not_recorded: passed"
                                    " before the record began (a restart) or forgotten;"
                                    " not_stored: seq is null."
                                ),
                            },
                            "reason": {"type": ["string", "null"]},
                            "at": {"type": ["string", "null"], "format": "date-time"},
                        },
                    },
                },
            },
        },
        "ConsoleHistory": {
            "type": "object",
            "required": ["interval", "samples"],
            "properties": {
                "interval": {"type": "number", "description": "Seconds between samples."},
                "samples": {
                    "type": "array",
                    "description": "The last hour, oldest first, then one taken now.",
                    "items": {
                        "type": "object",
                        "required": ["t", "ingested", "rejected", "lag_events", "lag_seconds"],
                        "properties": {
                            "t": {"type": "number", "description": "Unix seconds."},
                            "ingested": {
                                "type": "object",
                                "additionalProperties": {"type": "integer"},
                                "description": "Events stored so far, by source (a running total).",
                            },
                            "rejected": {"type": "integer", "description": "Running total."},
                            "lag_events": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                            "lag_seconds": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                        },
                    },
                },
            },
        },
    }


HTML = {"text/html": {"schema": {"type": "string"}}}
TO_LOGIN = {
    "description": "Not signed in: to /console/login.",
    "headers": {"Location": {"schema": {"type": "string", "const": "/console/login"}}},
}


def console_page(op_id: str, summary: str, params: list[Schema] | None = None) -> Schema:
    op: Schema = {
        "operationId": op_id,
        "tags": ["console"],
        "summary": summary,
        "security": [{"consoleSession": []}, {}],
        "responses": {
            "200": {
                "description": "The page (its data is fetched from /admin/*).",
                "content": HTML,
            },
            "303": TO_LOGIN,
        },
    }
    if params:
        op["parameters"] = params
    return op


def path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def console_paths() -> dict[str, Schema]:
    form = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"token": {"type": "string"}, "csrf": {"type": "string"}},
                }
            }
        },
    }
    report = console_page(
        "consoleReport",
        "A report's chart and table; the query is GET /admin/reports/{report}'s",
        [path_param("report", "funnel, retention, engagement, churn or revenue")],
    )
    report["responses"]["404"] = {
        "description": "No such report.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "/": {
            "get": {
                "operationId": "root",
                "tags": ["console"],
                "summary": "To the console",
                "responses": {"303": {"description": "To /console."}},
            }
        },
        "/console": {"get": console_page("console", "Overview: sources, destinations, storage")},
        "/console/login": {
            "get": {
                "operationId": "consoleLoginForm",
                "tags": ["console"],
                "summary": "The sign-in form (sets its own CSRF cookie, eventd_login)",
                "responses": {
                    "200": {"description": "The form.", "content": HTML},
                    "303": {"description": "Already signed in: to /console."},
                },
            },
            "post": {
                "operationId": "consoleLogin",
                "tags": ["console"],
                "summary": "Sign in with the admin token (form field token)",
                "requestBody": form,
                "responses": {
                    "303": {
                        "description": (
                            "Signed in (HttpOnly, SameSite=Strict cookie eventd_session):"
                            " to /console."
                        )
                    },
                    "400": {
                        "description": "The form's csrf does not match its cookie.",
                        "content": HTML,
                    },
                    "401": {"description": "Not the admin token.", "content": HTML},
                    "403": {"description": "No admin.token is configured.", "content": HTML},
                },
            },
        },
        "/console/logout": {
            "post": {
                "operationId": "consoleLogout",
                "tags": ["console"],
                "summary": "Sign out (form field csrf: the session's CSRF token)",
                "requestBody": form,
                "responses": {
                    "303": {"description": "Signed out: to /console/login."},
                    "403": {
                        "description": "csrf: the form's token is not the session's.",
                        "content": json_content(schema("Error")),
                    },
                },
            }
        },
        "/console/live": {
            "get": console_page("consoleLive", "Live debugger (query: source, type, event)")
        },
        "/console/dead-letters": {
            "get": console_page(
                "consoleDeadLetters", "Dead letters (query: destination, since, limit)"
            )
        },
        "/console/profiles/{id}": {
            "get": console_page(
                "consoleProfile", "One profile", [path_param("id", "A userId or anonymousId.")]
            )
        },
        "/console/reports/{report}": {"get": report},
        "/console/api/history": {
            "get": {
                "operationId": "consoleHistory",
                "tags": ["console"],
                "summary": "The overview's last hour of samples (ingest by source, rejects, lag)",
                "security": [{"consoleSession": []}],
                "responses": {
                    "200": ok_json("Samples.", schema("ConsoleHistory")),
                    "401": {
                        "description": "unauthorized: not signed in.",
                        "content": json_content(schema("Error")),
                    },
                },
            }
        },
        "/console/static/{path}": {
            "get": {
                "operationId": "consoleAsset",
                "tags": ["console"],
                "summary": "The console's scripts, styles and vendored Chart.js (with its licence)",
                "parameters": [path_param("path", "A file under eventd/console/static/.")],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    "404": {
                        "description": "No such asset.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
    }


# -- reports (eventd/reports/: each module's PARAMS and run(); test_reports checks the
# parameter names agree) ------------------------------------------------------------

_T = "A duration back from now ('2h', '7d') or an ISO-8601 date or date-time."
_RANGE = [
    ("since", {"type": "string"}, f"Only events at or after this time. {_T}"),
    ("until", {"type": "string"}, f"Only events before this time. {_T}"),
]
_COUNT = {"type": "integer", "minimum": 1, "maximum": 366}
REPORT_PARAMS: dict[str, list[tuple[str, Schema, str]]] = {
    "funnel": [
        ("steps", {"type": "string"}, "Required: 1 to 20 distinct event names, comma-separated."),
        ("by", {"type": "string"}, "Split by this property of each person's step-1 event."),
        ("within", {"type": "string", "default": "1d"}, "All steps within this of step 1."),
        *_RANGE,
    ],
    "retention": [
        ("start", {"type": "string"}, "Required: the event that puts a person in a cohort."),
        ("return", {"type": "string", "default": "any"}, "The return event, or 'any'."),
        ("period", {"type": "string", "enum": ["day", "week"], "default": "day"}, "Periods."),
        ("periods", {**_COUNT, "default": 7}, "Periods after the cohort's."),
        *_RANGE,
    ],
    "engagement": [
        (
            "period",
            {"type": "string", "enum": ["day", "week", "month"], "default": "day"},
            "Periods.",
        ),
        *_RANGE,
    ],
    "churn": [
        (
            "period",
            {"type": "string", "enum": ["day", "week", "month"], "default": "week"},
            "Periods.",
        ),
        ("inactive", {**_COUNT, "default": 1}, "Inactive periods that make a person churned."),
        *_RANGE,
    ],
    "revenue": [
        ("event", {"type": "string", "default": "Order Completed"}, "The purchase event."),
        ("property", {"type": "string", "default": "revenue"}, "Its numeric amount property."),
        (
            "period",
            {"type": "string", "enum": ["day", "week", "month"], "default": "month"},
            "Periods.",
        ),
        *_RANGE,
    ],
}
REPORT_SUMMARIES = {
    "funnel": "People who did the steps in order within a window, split by a property",
    "retention": "Cohorts by first start event, and who returned in each period after",
    "engagement": "Active people per period, events per active person, stickiness",
    "churn": "Per period: active people, and those inactive for the next N periods",
    "revenue": "Revenue, paying people, ARPU, ARPPU per period; revenue per person by cohort",
}


def report_schemas() -> dict[str, Schema]:
    def obj(**props: Schema) -> Schema:
        return {"type": "object", "required": list(props), "properties": props}

    def rows(**props: Schema) -> Schema:
        return {"type": "array", "items": obj(**props)}

    counts = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    day = {"type": "string", "format": "date"}
    num = {"type": "number"}
    count = {"type": "integer", "minimum": 0}
    text = {"type": "string"}
    return {
        "FunnelReport": obj(
            steps={"type": "array", "items": text},
            total=counts,
            by={
                "type": "object",
                "additionalProperties": counts,
                "description": "Per value of the by property; a missing value is '(none)'.",
            },
        ),
        "RetentionReport": obj(period=text, cohorts=rows(start=day, size=count, returned=counts)),
        "EngagementReport": obj(
            period=text,
            periods=rows(
                start=day, active_users=count, events=count, events_per_user=num, stickiness=num
            ),
        ),
        "ChurnReport": obj(
            period=text,
            inactive=count,
            periods=rows(start=day, active_users=count, churned=count, churn_rate=num),
        ),
        "RevenueReport": obj(
            period=text,
            event=text,
            property=text,
            periods=rows(
                start=day,
                revenue=num,
                paying_users=count,
                active_users=count,
                arpu=num,
                arppu=num,
            ),
            cohorts=rows(start=day, users=count, revenue=num, revenue_per_user=num),
        ),
    }


def report_paths() -> dict[str, Schema]:
    paths = {}
    for name, params in REPORT_PARAMS.items():
        op = admin_op(
            f"{name}Report",
            REPORT_SUMMARIES[name],
            ok_json(
                "The report, as `eventd report " + name + " --format json` prints it.",
                schema(name.capitalize() + "Report"),
            ),
            params=[{**query(n, s, d), "required": d.startswith("Required")} for n, s, d in params],
            bad_request=False,
            extra={"503": response("ReportStoreUnavailable")},
        )
        op["tags"] = ["reports"]
        op["responses"]["400"] = response("ReportBadParameter")
        paths[f"/admin/reports/{name}"] = {"get": op}
    return paths


def identity_schemas() -> dict[str, Schema]:
    ids = {"type": "array", "items": {"type": "string"}}
    when = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Profile": {
            "type": "object",
            "description": (
                "One person as the identity graph knows them: the userIds and anonymousIds"
                " linked together (only alias merges two userIds), traits merged from"
                " identify traits and context.traits (latest timestamp wins per trait)."
            ),
            "required": [
                "profile_id",
                "user_ids",
                "anonymous_ids",
                "traits",
                "first_seen",
                "last_seen",
                "event_count",
                "events_by_type",
                "revenue",
                "groups",
            ],
            "additionalProperties": False,
            "properties": {
                "profile_id": {"type": "string"},
                "user_ids": ids,
                "anonymous_ids": ids,
                "traits": {"type": "object"},
                "first_seen": {**when, "description": "The earliest event timestamp."},
                "last_seen": {**when, "description": "The latest event timestamp."},
                "event_count": {"type": "integer", "minimum": 0},
                "events_by_type": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
                "revenue": {
                    "type": "number",
                    "description": "The sum of properties.revenue of track events.",
                },
                "groups": {**ids, "description": "groupIds of group calls."},
            },
        },
        "ProfileEvents": {
            "type": "object",
            "required": ["profile_id", "events", "next_before"],
            "properties": {
                "profile_id": {"type": "string"},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["seq", "source", "received_at", "event"],
                        "properties": {
                            "seq": {"type": "integer"},
                            "source": {"type": "string"},
                            "received_at": {"type": "string", "format": "date-time"},
                            "event": {"type": "object", "description": "The event as stored."},
                        },
                    },
                },
                "next_before": {
                    "type": ["integer", "null"],
                    "description": "Pass as before= for the next page; null on the last.",
                },
            },
        },
    }


def identity_paths() -> dict[str, Schema]:
    path_id: Schema = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "A userId (tried first) or an anonymousId.",
        "schema": {"type": "string"},
    }
    kind = query(
        "kind",
        {"type": "string", "enum": ["user_id", "anonymous_id"]},
        "Look the id up as this kind only.",
    )
    not_found = {
        "404": {
            "description": (
                "not_found: no profile has this id; identity_disabled: identity.enabled is false."
            ),
            "content": json_content(schema("Error")),
        },
        "503": {
            "description": (
                "identity_unavailable: the identity graph has not opened identity.db yet"
                " (a full disk: it retries in the background; the message says why)."
            ),
            "content": json_content(schema("Error")),
        },
    }
    return {
        "/admin/profiles/{id}": {
            "get": admin_op(
                "showProfile",
                "The profile of a userId or an anonymousId",
                ok_json("The profile.", schema("Profile")),
                params=[path_id, kind],
                extra=not_found,
            )
        },
        "/admin/profiles/{id}/events": {
            "get": admin_op(
                "profileEvents",
                "A profile's stitched timeline: its stored events (within retention), newest first",
                ok_json("The events.", schema("ProfileEvents")),
                params=[
                    path_id,
                    kind,
                    query(
                        "limit",
                        {"type": "integer", "default": 100, "minimum": 1, "maximum": 1000},
                        "At most this many.",
                    ),
                    query(
                        "before",
                        {"type": "integer", "minimum": 1},
                        "Only events with a seq below this one.",
                    ),
                ],
                extra=not_found,
            )
        },
    }


def build(version: str) -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventd",
            "version": version,
            "summary": "Self-hosted, Segment-compatible customer-data router",
            "description": (
                "eventd speaks Segment's Tracking API (`/v1/*`), so Segment and"
                " RudderStack SDKs work by changing their host. A 200 means the events"
                ' are committed to disk. Errors are `{"code", "message"}`; 400 is'
                " dropped by clients, 429 and 5xx are retried. Operations endpoints"
                " (`/health`, `/ready`, `/metrics`), the admin API (`/admin/*`,"
                " bearer token or the console's session) and the web console's pages"
                " (`/console/*`) are described here too."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "tracking", "description": "Segment's Tracking API."},
            {"name": "browser", "description": "What analytics-next needs besides tracking."},
            {"name": "sources", "description": "Cloud-app sources: apps that send webhooks."},
            {"name": "operations", "description": "Health, readiness, metrics."},
            {"name": "admin", "description": "The admin API the CLI's daemon verbs use."},
            {"name": "console", "description": "The web console's pages (HTML)."},
            {
                "name": "reports",
                "description": "eventd report's answers, from the [reports] store (admin token).",
            },
        ],
        "paths": {
            **tracking_paths(),
            **webhook_paths(),
            **operations_paths(),
            **admin_paths(),
            **report_paths(),
            **identity_paths(),
            **console_paths(),
        },
        "components": {
            "schemas": {
                **message_schemas(),
                **response_schemas(),
                **outcome_schemas(),
                **report_schemas(),
                **identity_schemas(),
            },
            "responses": responses(),
            "securitySchemes": security_schemes(),
        },
    }


def render(version: str) -> str:
    return json.dumps(build(version), indent=2, ensure_ascii=False) + "\n"


def current_version() -> str:
    """eventd's version, read from eventd/__init__.py without importing it."""
    for line in (ROOT / "eventd" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit("eventd/__init__.py has no __version__")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if eventd/openapi.json is not up to date"
    )
    args = parser.parse_args(argv)
    text = render(current_version())
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python tools/gen_openapi.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
