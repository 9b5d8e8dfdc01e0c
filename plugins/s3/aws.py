"""What the ``s3`` destination takes from botocore: credentials and Signature V4.

botocore is an optional dependency (``pip install 'eventd[s3]'``) and this
package is imported at every eventd start (entry points), so botocore is
imported here only when an s3 destination is checked or used: eventd without it
still runs every other destination, and an s3 destination without it is a
ConfigError saying what to install.

Credentials are either the settings' keys or botocore's chain (environment,
``~/.aws``, container and instance roles), resolved once off the event loop;
each request signs with a frozen copy, so role credentials that botocore
refreshes are picked up without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from eventd import ConfigError, optional_import


def botocore_module(name: str) -> ModuleType:
    """``botocore.<name>``, or a ConfigError naming what to install."""
    return optional_import(f"botocore.{name}", "s3", "the s3 destination")


def require_botocore(where: str) -> None:
    """Raise ConfigError naming ``where`` (the destination) when botocore is missing."""
    try:
        for name in ("auth", "awsrequest", "credentials", "session"):
            botocore_module(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class NoCredentials(Exception):
    """Neither the settings nor botocore's chain gave credentials."""


class Signer:
    """Signs S3 requests with Signature V4 (``botocore.auth.S3SigV4Auth``)."""

    def __init__(
        self,
        region: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
    ) -> None:
        self.region = region
        self._keys = (access_key_id, secret_access_key, session_token)
        self._credentials: Any = None
        self._lock = asyncio.Lock()

    async def frozen(self) -> Any:
        """Credentials for one request (a ``ReadOnlyCredentials``)."""
        credentials = self._credentials
        if credentials is None:
            async with self._lock:  # one chain lookup however many batches are in flight
                if self._credentials is None:
                    # The chain may read files and call the instance metadata service.
                    self._credentials = await asyncio.to_thread(self._resolve)
                credentials = self._credentials
        refreshable = botocore_module("credentials").RefreshableCredentials
        if isinstance(credentials, refreshable):
            # A refresh (an STS or metadata call) blocks: not on the event loop.
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        return credentials.get_frozen_credentials()

    def _resolve(self) -> Any:
        access_key_id, secret_access_key, session_token = self._keys
        if access_key_id and secret_access_key:
            return botocore_module("credentials").Credentials(
                access_key_id, secret_access_key, session_token
            )
        found = botocore_module("session").get_session().get_credentials()
        if found is None:
            raise NoCredentials(
                "no AWS credentials: set access_key_id and secret_access_key, or give the "
                "AWS credential chain some (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "~/.aws/credentials with AWS_PROFILE, an instance or container role)"
            )
        return found

    def sign(
        self, frozen: Any, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """The headers to send: ``headers`` plus X-Amz-Date, X-Amz-Content-SHA256,
        Authorization (and X-Amz-Security-Token with a session token)."""
        request = botocore_module("awsrequest").AWSRequest(
            method=method, url=url, data=body, headers=dict(headers)
        )
        botocore_module("auth").S3SigV4Auth(frozen, "s3", self.region).add_auth(request)
        return {str(k): str(v) for k, v in request.headers.items()}
