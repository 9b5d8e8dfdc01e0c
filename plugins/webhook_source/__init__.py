"""The ``webhook`` source type: any app's webhook, turned into Segment calls by a mapper.

The mapper is a function ``(payload) -> Iterable[message]`` that an installed
package declares in the ``eventd.source_mappers`` entry-point group; the
source's ``mapper`` names it by entry-point name or by ``module:function``
(``mapper = "acme_mappers:crm"``). It should give each message the sender's
event id as ``messageId`` (so the sender's retries are stored once) and may
return nothing for a notification it does not take (acknowledged, counted as
ignored). eventd ships one mapper, ``segment``, for senders whose body already
is a Segment message or ``{"batch": [...]}``.

A sender that signs its requests is checked when ``signature_header`` and
``signature_secret`` are set: the header holds HMAC-``signature_algorithm``
(sha256 by default) of the raw body, as hex or base64, optionally after
``<algorithm>=`` (GitHub's ``sha256=...``). Without them every request with the
write key is taken: the key in the URL is then the only secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventd import Message, Source, hmac_matches, hookimpl, load_mapper

ALGORITHMS = ("sha1", "sha256", "sha512")


class WebhookSource(Source):
    type_name = "webhook"
    description = "any app's webhook, mapped by an installed mapper (eventd.source_mappers)"
    settings_schema = {
        "type": "object",
        "required": ["mapper"],
        "properties": {
            "mapper": {
                "type": "string",
                "minLength": 1,
                "description": "An eventd.source_mappers entry point: its name or module:function",
            },
            "signature_header": {
                "type": "string",
                "minLength": 1,
                "description": "Header carrying the HMAC of the body (needs signature_secret)",
            },
            "signature_algorithm": {
                "type": "string",
                "enum": list(ALGORITHMS),
                "default": "sha256",
                "description": "HMAC hash: sha1, sha256 or sha512",
            },
            "signature_secret": {
                "type": "string",
                "minLength": 1,
                "description": "The HMAC key the sender signs with (needs signature_header)",
            },
        },
        "dependentRequired": {
            "signature_header": ["signature_secret"],
            "signature_secret": ["signature_header"],
        },
        "additionalProperties": False,
    }

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        load_mapper(settings["mapper"], f"sources.{name}.mapper")

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.mapper = load_mapper(self.settings["mapper"], f"sources.{name}.mapper")

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        header = self.settings.get("signature_header")
        if header is None:
            return True  # an unsigned sender: the write key in the URL is the secret
        return hmac_matches(
            self.settings["signature_secret"],
            body,
            self.settings["signature_algorithm"],
            headers.get(header),
        )

    def map(self, payload: Any) -> list[Message]:
        return list(self.mapper(payload))


@hookimpl
def eventd_source_types() -> list[type[Source]]:
    return [WebhookSource]
