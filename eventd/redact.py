"""Secrets out of what eventd shows: one list of the words that mark a secret, and
the replacement of secret values in text. The log processor (logs.py), settings
errors (destination.py) and outcome reasons (http.py's scrub) all use these."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

# A setting or log field holds a secret when a word of its name (split at _ - . and
# lower-to-upper case changes) ends with one of these ("writekey", "apikey", the "key"
# of write_key and api_key) or is their plural ("tokens", "secrets"): see is_secret.
SECRET_WORDS = ("key", "secret", "token", "password", "authorization")

# "keys" alone counts or lists eventd's own keys (dedup keys, bucket keys: the log's
# rebuilt_keys, keys): a secret only after a word that says which ("api_keys").
_SECRET_KEYS_AFTER = frozenset({"api", "write", "secret", "private", "access", "auth", "signing"})
_WORD_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+")

# A password inside a URL (https://user:pass@host) is a secret whatever the key.
URL_PASSWORD = re.compile(r"://[^/@:\s]*:([^/@\s]+)@")


def is_secret(name: str) -> bool:
    """Does a setting or field named ``name`` hold a secret? Yes for ``write_key``,
    ``writeKey``, ``apikey``, ``X-Api-Key``, ``secret_key``, ``access_token``,
    ``password``, ``Authorization``, ``tokens``, ``api_keys``; no for ``rebuilt_keys``,
    ``keys``, ``keyed``, ``region``."""
    words = [w.lower() for w in _WORD_BREAK.split(name) if w]
    for i, word in enumerate(words):
        if word.endswith(SECRET_WORDS) or (word[:-1] in SECRET_WORDS[1:] and word[-1] == "s"):
            return True
        if word == "keys" and i > 0 and words[i - 1] in _SECRET_KEYS_AFTER:
            return True
    return False


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value, as it is and URL-encoded (a query string
    echoed back), replaced by ``***`` (vendors echo keys in errors)."""
    forms = {form for s in secrets for form in (s, urllib.parse.quote_plus(s))}
    # Values under 6 characters are no real secret, and replacing them would mangle text.
    for secret in sorted({s for s in forms if len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
