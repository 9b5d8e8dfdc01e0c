"""Generate ``eventd/openapi.json``, the OpenAPI 3.1 document eventd serves at ``/openapi.json``.

The document is written from this script rather than by hand because the Tracking
API repeats itself (six call types, each at a long and a one-letter path, plus
three batch paths); here each shape is written once. The JSON file is what ships
and what tests read; ``tests/test_openapi.py`` fails when it differs from what
this script produces, so edit this script, then run::

    python tools/gen_openapi.py          # rewrite eventd/openapi.json
    python tools/gen_openapi.py --check  # exit 1 if the file is stale

Everything here is read off the handlers (eventd/ingest.py, eventd/admin.py,
eventd/app.py, eventd/bundle.py): statuses, error codes, limits and shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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

ID_DOC = "A string or a number (numbers are stored as strings); null or empty means absent."


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
                "An ISO-8601 time. Without a timezone it is taken as UTC. Any other"
                " type, or a string that is not ISO-8601, makes the message invalid"
                " (invalid_timestamp)."
            ),
            "type": ["string", "null"],
            "format": "date-time",
        },
        "Context": {
            "description": (
                "Free-form context. eventd fills context.ip from the request (the"
                " peer, or X-Forwarded-For from a server.trusted_proxies peer) when"
                " it is absent. Batch-level context is merged under each item's."
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
                "Destination name -> true/false or an options object. 'All' is the"
                " default for names not listed (true when absent); a destination is"
                " skipped for this message when its name resolves to false."
            ),
            "type": ["object", "null"],
            "additionalProperties": {"type": ["boolean", "object"]},
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
                        " Generated when absent."
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
                f" At most {MAX_MESSAGE_BYTES} bytes once serialized."
            ),
            "oneOf": [schema(f"{t.capitalize()}Item") for t in CALL_TYPES],
        },
        "Batch": {
            "description": (
                f"At most {MAX_BATCH_EVENTS} messages and {MAX_BATCH_BYTES} bytes. Batch-level"
                " sentAt applies to every item; batch-level context and integrations are"
                " merged under each item's own."
            ),
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {
                    "type": "array",
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
                " batch_too_large, body_too_large, message_too_large, invalid_message,"
                " invalid_type, missing_user, missing_event, missing_group,"
                " missing_alias_ids, invalid_field, invalid_timestamp, unplanned_event,"
                " tracking_plan_violation (400, a source's tracking plan blocking it);"
                " missing_write_key, invalid_write_key (401); origin_not_allowed (403);"
                " body_too_large (413); overloaded (429); storage_unavailable (503);"
                " http_error (other"
                " HTTP errors while a /v1 request is read). Admin codes: bad_request (400),"
                " unauthorized (401), admin_disabled (403), not_found (404),"
                " drain_timeout (504)."
            ),
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
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
            "properties": dead_letter_fields,
        },
        "DeadLetterDetail": {
            "type": "object",
            "required": [*dead_letter_fields, "received_at", "event"],
            "properties": {
                **dead_letter_fields,
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
            f"body_too_large: over {MAX_BATCH_BYTES} bytes (a batch), or over what the"
            " server reads at all."
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
    }


WRITE_KEY: list[Schema] = [{"writeKeyBasic": []}, {}]
ADMIN: list[Schema] = [{"adminToken": []}]
ADMIN_ERRORS: Schema = {"401": response("AdminUnauthorized"), "403": response("AdminDisabled")}


# -- paths ------------------------------------------------------------------------------


def tracking_body(s: Schema, what: str) -> Schema:
    return {
        "required": True,
        "description": (
            f"{what} Parsed as JSON whatever the Content-Type (analytics-next sends"
            " text/plain); `Content-Encoding: gzip` is accepted."
        ),
        "content": {
            "application/json": {"schema": s},
            "text/plain": {"schema": {"type": "string", "description": "The same JSON, as text."}},
        },
    }


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
                        "400": {
                            "description": (
                                f"Invalid JSON or message, or a body over {MAX_MESSAGE_BYTES}"
                                " bytes (body_too_large)."
                            ),
                            "content": json_content(schema("Error")),
                        },
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
                    " a batch whose items are all invalid is a 400 naming the first error."
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
                            "description": "Authorization, Content-Type, X-Retry-Count.",
                            "schema": {"type": "string"},
                        },
                        "Access-Control-Max-Age": {"schema": {"type": "integer"}},
                    },
                },
                "403": {
                    "description": "The Origin is not allowed by any source.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            },
        }
    }
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
                " (`/health`, `/ready`, `/metrics`) and the admin API (`/admin/*`,"
                " bearer token) are described here too."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "tracking", "description": "Segment's Tracking API."},
            {"name": "browser", "description": "What analytics-next needs besides tracking."},
            {"name": "operations", "description": "Health, readiness, metrics."},
            {"name": "admin", "description": "The admin API the CLI's daemon verbs use."},
        ],
        "paths": {**tracking_paths(), **operations_paths(), **admin_paths()},
        "components": {
            "schemas": {**message_schemas(), **response_schemas()},
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
