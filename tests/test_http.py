"""eventd.http and eventd.redact: what HTTP destinations share (regions, classify with
a destination's 401/403 reason and 413 halving, one scrub) and the one list of
secret words (settings errors, logs and outcome reasons all use it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from eventd import (
    OK,
    SECRET_WORDS,
    TOO_LARGE,
    HttpDestination,
    Permanent,
    Response,
    Retry,
    Skip,
    classify,
    is_secret,
    redact,
    scrub,
)
from eventd.logs import _mask_secrets


def resp(status: int, body: bytes = b"nope", **headers: str) -> Response:
    return Response(status, headers, body)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, OK),
        (204, OK),
        (400, Permanent("HTTP 400: nope")),
        (401, Permanent("HTTP 401: nope")),
        (413, Permanent("HTTP 413: nope")),
        (408, Retry("HTTP 408: nope")),
        (429, Retry("HTTP 429: nope")),
        (503, Retry("HTTP 503: nope")),
    ],
)
def test_the_usual_contract(status: int, expected: object) -> None:
    assert classify(resp(status)) == expected


def test_overrides_for_refused_credentials_and_too_large() -> None:
    def refused(r: Response) -> Permanent:
        return Permanent(f"check api_key ({r.status})")

    assert classify(resp(401), refused=refused) == Permanent("check api_key (401)")
    assert classify(resp(403), refused=refused) == Permanent("check api_key (403)")
    assert classify(resp(413), halve=True) is TOO_LARGE
    assert classify(resp(200), refused=refused, halve=True) == OK
    assert classify(resp(429, **{"Retry-After": "7"}), halve=True) == Retry("HTTP 429: nope", 7.0)


class Regional(HttpDestination):
    type_name = "regional"
    regions = {"us": "https://api.example.com/", "eu": "https://api-eu.example.com"}


class Plain(HttpDestination):
    type_name = "plain"
    default_endpoint = "https://plain.example.com/"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_endpoint_from_the_setting_the_region_or_the_default(
    session: aiohttp.ClientSession,
) -> None:
    assert Regional("r", {"region": "us"}, session).endpoint == "https://api.example.com"
    assert Regional("r", {"region": "eu"}, session).endpoint == "https://api-eu.example.com"
    explicit = Regional("r", {"region": "eu", "endpoint": "http://127.0.0.1:9/"}, session)
    assert explicit.endpoint == "http://127.0.0.1:9"
    assert Plain("p", {}, session).endpoint == "https://plain.example.com"


async def test_one_scrub_takes_secrets_out_as_they_are_and_url_encoded(
    session: aiohttp.ClientSession,
) -> None:
    d = Plain("p", {"api_secret": "s3cr3t+/=x", "api_key": "k-123456", "region": "eu"}, session)
    assert sorted(d.secret_values) == ["k-123456", "s3cr3t+/=x"]
    reason = "HTTP 403: /collect?api_secret=s3cr3t%2B%2F%3Dx&key=k-123456"
    assert d.scrub(Permanent(reason)) == Permanent("HTTP 403: /collect?api_secret=***&key=***")
    assert d.scrub([Retry("s3cr3t+/=x", 3.0), Skip("k-123456"), OK]) == [
        Retry("***", 3.0),
        Skip("***"),
        OK,
    ]
    assert scrub(None, ["whatever"]) is None
    assert redact("short abc stays", ["abc"]) == "short abc stays"  # under 6: not a secret


def test_one_list_of_secret_words_for_settings_and_logs() -> None:
    assert SECRET_WORDS == ("key", "secret", "token", "password", "authorization")
    for name in ("write_key", "writeKey", "api_key", "api_secret", "access_token", "password"):
        assert is_secret(name), name
    assert not is_secret("region") and not is_secret("destination")
    masked = _mask_secrets(None, "info", {"write_key": "wk", "Authorization": "B", "seq": 1})
    assert masked == {"write_key": "***", "Authorization": "***", "seq": 1}


def test_secret_names_are_words_so_counts_of_keys_stay_readable() -> None:
    # A word of the name ends with a secret word, or is its plural (not "keys" alone).
    secret = ["writekey", "APIKey", "X-Api-Key", "secret_key", "secretKey", "tls_key",
              "api_token", "tokens", "client_secret", "secrets", "passwords", "api_keys",
              "writeKeys", "proxy-authorization", "project_token"]  # fmt: skip
    for name in secret:
        assert is_secret(name), name
    counts = ["rebuilt_keys", "keys", "rebuiltKeys", "row_keys", "own_keys", "keyed", "seq"]
    for name in counts:
        assert not is_secret(name), name
    fields = {"rebuilt_keys": 12, "keys": 3, "api_key": "k", "secret_key": "s", "token": "t"}
    masked = _mask_secrets(None, "info", dict(fields))
    assert masked == {"rebuilt_keys": 12, "keys": 3, "api_key": "***", "secret_key": "***",
                      "token": "***"}  # fmt: skip
