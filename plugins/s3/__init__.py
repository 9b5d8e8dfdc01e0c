"""The ``s3`` destination: stored events archived to an S3 bucket as Segment's S3
destination lays them out, for Athena, Spark, Redshift Spectrum and the like.

A batch becomes one object per (source, UTC day received): the stored JSON of
each event as one line, gzip-compressed by default, under
``{prefix}/{source}/{YYYY-MM-DD}/{first received_at ms}-{first seq}-{last seq}.jsonl.gz``
(:mod:`.layout`). Each object is one ``PUT``, signed with Signature V4 by
botocore (:mod:`.aws`) and sent through eventd's shared HTTP session. Answers,
per object (so per event):

    2xx ....................................... ok
    NoSuchBucket, InvalidBucketName, AccessDenied,
    InvalidAccessKeyId, SignatureDoesNotMatch,
    wrong region, other 4xx ................... permanent, with a reason naming the setting
    SlowDown, RequestTimeout, InternalError,
    ServiceUnavailable, 408, 429, 5xx, network  retry (Retry-After honoured)

Reasons never contain the secret access key or the session token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import aiohttp

from eventd import (
    HTTP_SETTINGS,
    OK,
    ConfigError,
    Event,
    HttpDestination,
    Outcome,
    Permanent,
    Response,
    Retry,
    classify,
    hookimpl,
    retry_after,
    scrub,
)

from .aws import NoCredentials, Signer, require_botocore
from .layout import Group, group, object_body

# S3's rules for bucket names (general purpose buckets); the rest is in check_settings.
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# Characters S3 and every SigV4 implementation agree on without escaping.
PREFIX_PATTERN = r"^([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$"
AWS_REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
_KEYS = ("access_key_id", "secret_access_key")

# S3 error codes that another attempt can cure.
RETRY_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "OperationAborted"}
)
_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,1000})</Message>")
_REGION = re.compile(rb"<Region>([a-z0-9-]{1,50})</Region>")


def s3_error(body: bytes) -> tuple[str | None, str]:
    """(Code, Message) of an S3 XML error body; (None, "") when it is none."""
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    return (
        html.unescape(code.group(1).decode("utf-8", "replace")) if code else None,
        html.unescape(message.group(1).decode("utf-8", "replace"))[:300] if message else "",
    )


class S3(HttpDestination):
    type_name = "s3"
    integration_name = "Amazon S3"
    description = "archive events to an S3 bucket as gzipped JSON lines, Segment's layout"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["bucket"],
        "additionalProperties": False,
        "properties": {
            # Name rules checked in check_settings, with a message saying them.
            "bucket": {
                "type": "string",
                "description": "bucket name (3-63 lowercase letters, digits, '.', '-')",
            },
            # AWS's form is checked in check_settings: S3-compatible stores at an
            # endpoint have regions of their own ("auto" for R2, "nyc3", ...).
            "region": {
                "type": "string",
                "pattern": r"^[a-z0-9][a-z0-9-]{0,31}$",
                "default": "us-east-1",
                "description": "the bucket's region (signs the requests)",
            },
            "prefix": {
                "type": "string",
                "maxLength": 512,
                "default": "segment-logs",
                "description": "key prefix, without leading or trailing '/' ('' for none)",
            },
            "gzip": {
                "type": "boolean",
                "default": True,
                "description": "gzip the objects (.jsonl.gz; false: .jsonl)",
            },
            "access_key_id": {
                "type": "string",
                "minLength": 1,
                "description": "with secret_access_key; neither: botocore's credential chain",
            },
            "secret_access_key": {
                "type": "string",
                "minLength": 1,
                "description": "with access_key_id",
            },
            "session_token": {
                "type": "string",
                "minLength": 1,
                "description": "for temporary keys (with access_key_id and secret_access_key)",
            },
            "server_side_encryption": {
                "type": "string",
                "enum": ["AES256", "aws:kms"],
                "description": "x-amz-server-side-encryption of every object",
            },
            "max_batch_events": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100_000,
                "default": 10_000,
                "description": "events per object at most (raise the destination's batch_size too)",
            },
            "max_batch_bytes": {
                "type": "integer",
                "minimum": 1_000,
                # A batch and its object are built in memory.
                "maximum": 100_000_000,
                "default": 8_000_000,
                "description": "bytes of stored JSON per object at most (before gzip)",
            },
            **HTTP_SETTINGS,
            "endpoint": {
                **HTTP_SETTINGS["endpoint"],
                "description": "S3-compatible API (MinIO, moto, a proxy): path-style requests",
            },
            # An object is up to max_batch_bytes: more time than an API call.
            "timeout": {**HTTP_SETTINGS["timeout"], "default": 60},
        },
    }
    max_batch_events = 10_000
    max_batch_bytes = 8_000_000

    def __init__(self, name: str, settings: Mapping[str, Any], session: aiohttp.ClientSession):
        super().__init__(name, settings, session)
        s = self.settings
        self.bucket: str = s["bucket"]
        self.region: str = s["region"]
        self.prefix: str = s["prefix"]
        self.gzip = bool(s["gzip"])
        self.max_batch_events = int(s["max_batch_events"])
        self.max_batch_bytes = int(s["max_batch_bytes"])
        self.own_keys = bool(s.get("access_key_id"))
        self.signer = Signer(
            self.region, s.get("access_key_id"), s.get("secret_access_key"), s.get("session_token")
        )
        self.secrets = [s.get("secret_access_key") or "", s.get("session_token") or ""]
        self.headers = {"Content-Type": "application/gzip" if self.gzip else "application/x-ndjson"}
        if s.get("server_side_encryption"):
            self.headers["x-amz-server-side-encryption"] = s["server_side_encryption"]

    @classmethod
    def check_settings(cls, name: str, settings: Mapping[str, Any]) -> None:
        where = f"destinations.{name}.settings"
        bucket = str(settings["bucket"])
        if (
            not re.fullmatch(BUCKET_PATTERN, bucket)
            or ".." in bucket
            or re.fullmatch(r"[0-9.]+", bucket)
            or bucket.startswith("xn--")
        ):
            raise ConfigError(
                f"{where}.bucket = {bucket!r}: expected an S3 bucket name: 3-63 lowercase "
                "letters, digits, '.' and '-', starting and ending with a letter or digit, "
                "no '..', not an IP address"
            )
        region = str(settings.get("region", "us-east-1"))
        if not settings.get("endpoint") and not re.fullmatch(AWS_REGION, region):
            raise ConfigError(
                f"{where}.region = {region!r}: expected an AWS region such as 'eu-west-1' "
                "(any region name goes with an endpoint)"
            )
        given = [k for k in _KEYS if k in settings]
        if len(given) == 1:
            missing = next(k for k in _KEYS if k not in settings)
            raise ConfigError(
                f"{where}.{missing}: missing: access_key_id and secret_access_key go together "
                "(set neither to use the AWS credential chain: environment, ~/.aws, role)"
            )
        if "session_token" in settings and not given:
            raise ConfigError(
                f"{where}.session_token = ***: a session token goes with access_key_id and "
                "secret_access_key"
            )
        prefix = str(settings.get("prefix", ""))
        if not re.fullmatch(PREFIX_PATTERN, prefix) or any(
            part in (".", "..") for part in prefix.split("/")
        ):
            raise ConfigError(
                f"{where}.prefix = {prefix!r}: expected key segments of letters, digits, '_', "
                "'.' and '-' joined by '/' (not '.' or '..'), without a leading or trailing '/'"
            )
        require_botocore(f"destinations.{name}")

    @property
    def base_url(self) -> str:
        """Where the bucket's objects are: path-style at ``endpoint`` (MinIO, moto, proxies),
        else the region's virtual-hosted S3 endpoint."""
        if self.settings.get("endpoint"):
            return f"{self.endpoint}/{self.bucket}"
        domain = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        if "." in self.bucket:
            # A dotted name breaks the TLS wildcard of bucket.s3...: path-style instead.
            return f"https://s3.{self.region}.{domain}/{self.bucket}"
        return f"https://{self.bucket}.s3.{self.region}.{domain}"

    async def deliver(self, batch: Sequence[Event]) -> Sequence[Outcome] | Outcome:
        try:
            frozen = await self.signer.frozen()
        except NoCredentials as exc:
            return Permanent(str(exc))
        except Exception as exc:  # the chain: a bad profile, the metadata service down
            return Retry(f"cannot get AWS credentials: {type(exc).__name__}: {exc}"[:300])
        groups = group(batch)
        answers = await asyncio.gather(*(self._put(g, frozen) for g in groups))
        outcomes: list[Outcome] = [OK] * len(batch)
        for g, answer in zip(groups, answers, strict=True):
            for i in g.indexes:
                outcomes[i] = answer
        scrubbed = scrub(outcomes, self.secrets)  # S3 does not echo secrets: in case a proxy does
        assert scrubbed is not None
        return scrubbed

    async def _put(self, g: Group, frozen: Any) -> Outcome:
        key = g.key(self.prefix, self.gzip)
        url = f"{self.base_url}/{key}"
        # gzip, MD5 and the payload's SHA-256 of megabytes: off the event loop.
        body, headers = await asyncio.to_thread(self._prepare, g.events, frozen, url)
        resp = await self.send("PUT", url, data=body, headers=headers, allow_redirects=False)
        if isinstance(resp, Retry):
            return resp
        return self.answer(resp, key)

    def _prepare(
        self, events: Sequence[Event], frozen: Any, url: str
    ) -> tuple[bytes, dict[str, str]]:
        body = object_body(events, self.gzip)
        headers = {
            **self.headers,
            # S3 checks it: a body damaged on the way is refused, not stored.
            "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        }
        return body, self.signer.sign(frozen, "PUT", url, headers, body)

    def answer(self, resp: Response, key: str) -> Outcome:
        """The outcome of a PUT of ``key`` from S3's answer."""
        if 200 <= resp.status < 300:
            return OK
        code, message = s3_error(resp.body)
        if code is None:
            return classify(resp)  # no S3 error document: a proxy, a load balancer
        said = f"S3 {code} (HTTP {resp.status})" + (f": {message}" if message else "")
        where = f"destinations.{self.name}.settings"
        keys = f"{where}.access_key_id / secret_access_key"
        credentials = keys if self.own_keys else "the credentials of the AWS chain"
        if code in RETRY_CODES:
            return Retry(said, retry_after(resp.headers))
        if code in ("ExpiredToken", "TokenRefreshRequired") and not self.own_keys:
            return Retry(f"{said}; botocore refreshes the chain's credentials")
        if code == "RequestTimeTooSkewed":
            return Retry(f"{said}; fix this machine's clock (NTP)")
        hint = {
            "NoSuchBucket": f"bucket {self.bucket!r} does not exist: create it, or fix "
            f"{where}.bucket",
            "InvalidBucketName": f"S3 refuses the bucket name {self.bucket!r}: fix {where}.bucket",
            "InvalidAccessKeyId": f"S3 does not know the access key id: check {credentials}",
            "SignatureDoesNotMatch": f"S3 refused the signature: check the secret of {credentials}",
            "AccessDenied": f"{credentials} may not write s3://{self.bucket}/{key}: they need "
            f"s3:PutObject on arn:aws:s3:::{self.bucket}/"
            + (f"{self.prefix}/*" if self.prefix else "*")
            + (" and kms:GenerateDataKey on the bucket's key" if self.kms else ""),
            "ExpiredToken": f"the session token expired: renew {where}.session_token",
        }.get(code)
        if hint is None and code in (
            "AuthorizationHeaderMalformed",
            "PermanentRedirect",
            "IllegalLocationConstraintException",
        ):
            region = resp.headers.get("x-amz-bucket-region") or _region(resp.body)
            hint = f"the bucket is in region {region or 'another region'}, not " + (
                f"{self.region!r}: set {where}.region"
            )
        if hint is None and (resp.status in (408, 429) or resp.status >= 500):
            return Retry(said, retry_after(resp.headers))
        return Permanent(f"{said} ({hint})" if hint else said)

    @property
    def kms(self) -> bool:
        return self.settings.get("server_side_encryption") == "aws:kms"


def _region(body: bytes) -> str | None:
    found = _REGION.search(body)
    return found.group(1).decode() if found else None


@hookimpl
def eventd_destinations() -> list[type[HttpDestination]]:
    return [S3]
