"""Console sessions: sign-in with the admin token, the session cookie, CSRF tokens.

A session is a random id (the cookie) mapped, in this process's memory, to its CSRF
token and expiry; signing out forgets it, so does a restart (sign in again). The
cookie is HttpOnly, SameSite=Strict, ``Path=/`` (the console's pages call ``/admin/*``
with it), and Secure when the request came over https, directly or through a proxy in
``server.trusted_proxies`` that says so with ``X-Forwarded-Proto: https``.

:func:`admin_session_ok` is the one place the admin API accepts the cookie instead of
``Authorization: Bearer``; a request that changes something (any method but GET/HEAD)
must also carry the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

COOKIE = "eventd_session"
LOGIN_COOKIE = "eventd_login"  # the sign-in form's own CSRF token (double submit)
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000  # sign-ins kept at once; the oldest is dropped past it
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    csrf: str
    expires: float  # time.monotonic()


class Sessions:
    """Signed-in browsers of one server: session id -> :class:`Session`."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self._by_id: dict[str, Session] = {}
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def create(self) -> tuple[str, Session]:
        now = time.monotonic()
        for sid in [s for s, v in self._by_id.items() if v.expires <= now]:
            del self._by_id[sid]
        if len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]  # dicts keep insertion order
        sid = secrets.token_urlsafe(32)
        session = self._by_id[sid] = Session(secrets.token_urlsafe(32), now + SESSION_SECONDS)
        return sid, session

    def get(self, request: web.Request) -> Session | None:
        """The request's live session, or None."""
        sid = request.cookies.get(COOKIE)
        session = self._by_id.get(sid) if sid else None
        if session is None or session.expires <= time.monotonic():
            return None
        return session

    def drop(self, request: web.Request) -> None:
        self._by_id.pop(request.cookies.get(COOKIE, ""), None)

    def secure(self, request: web.Request) -> bool:
        """Did the browser reach us over https (directly, or through a trusted proxy)?"""
        if request.secure:  # aiohttp's own TLS (it reads no header for this)
            return True
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if not peer or not self._trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer[0])
        except ValueError:  # a unix socket
            return False
        if not any(addr in net for net in self._trusted):
            return False
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"

    def set_cookie(
        self, request: web.Request, response: web.StreamResponse, name: str, value: str
    ) -> None:
        response.set_cookie(
            name,
            value,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.secure(request),
            max_age=SESSION_SECONDS if name == COOKIE else 3600,
        )


SESSIONS = web.AppKey("console_sessions", Sessions)


def admin_session_ok(request: web.Request) -> bool:
    """May this request use the admin API on the strength of a console session?

    True when the console is installed, the request carries a live session cookie,
    and, unless the method is GET/HEAD/OPTIONS, an ``X-CSRF-Token`` header equal to
    the session's CSRF token. Called by the admin API's auth check when the bearer
    token is absent or wrong.
    """
    sessions = request.app.get(SESSIONS)
    if sessions is None:
        return False
    session = sessions.get(request)
    if session is None:
        return False
    if request.method in SAFE_METHODS:
        return True
    given = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(given.encode(), session.csrf.encode())
