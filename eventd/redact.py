"""Secrets out of what eventd shows: one list of the words that mark a secret, and
the replacement of secret values in text. The log processor (logs.py), settings
errors (destination.py) and outcome reasons (http.py's scrub) all use these."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

# A setting or log field whose name contains one of these holds a secret
# ("key" covers write_key, writekey, api_key; "authorization" the header).
SECRET_WORDS = ("key", "secret", "token", "password", "authorization")

# A password inside a URL (https://user:pass@host) is a secret whatever the key.
URL_PASSWORD = re.compile(r"://[^/@:\s]*:([^/@\s]+)@")


def is_secret(name: str) -> bool:
    """Does a setting or field named ``name`` hold a secret?"""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value, as it is and URL-encoded (a query string
    echoed back), replaced by ``***`` (vendors echo keys in errors)."""
    forms = {form for s in secrets for form in (s, urllib.parse.quote_plus(s))}
    # Values under 6 characters are no real secret, and replacing them would mangle text.
    for secret in sorted({s for s in forms if len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
