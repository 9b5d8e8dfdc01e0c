"""The console's HTTP routes: sign-in and sign-out, the page shells, static assets.

Pages are rendered on the server from Jinja2 templates (autoescaped) and carry no
data: ``static/console.js`` fetches it from the admin API (``/admin/*``) with the
session cookie, and writes it into the page as text. So the console sees exactly
what the CLI sees, and a hostile event payload never becomes markup.

Every response here carries the console's security headers (:data:`HEADERS`): a
Content-Security-Policy that allows only the package's own scripts and styles, no
framing, no referrer, no caching of pages.
"""

from __future__ import annotations

import hmac
import mimetypes
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import jinja2
import structlog
from aiohttp import web

from eventd import __version__
from eventd.console.sampler import Sampler
from eventd.console.session import COOKIE, LOGIN_COOKIE, SESSIONS, Session, Sessions

log = structlog.get_logger("eventd.console")

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none';"
        " frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Each report's query parameters (those of GET /admin/reports/{report} and the CLI's
# `eventd report` flags), with a hint shown in the empty field.
REPORT_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "funnel": (("steps", "A,B,C"), ("by", "property"), ("within", "1d")),
    "retention": (
        ("start", "event"),
        ("return", "event or any"),
        ("period", "day|week"),
        ("periods", "N"),
    ),
    "engagement": (("period", "day|week|month"),),
    "churn": (("period", "week"), ("inactive", "N")),
    "revenue": (("event", "Order Completed"), ("property", "revenue"), ("period", "month")),
}
COMMON_PARAMS = (("since", "7d or 2026-11-01"), ("until", "date"))
REPORTS = tuple(REPORT_PARAMS)
SAMPLER = web.AppKey("console_sampler", Sampler)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("eventd.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file under static/ by its path there: (bytes, content type); read once."""
    found: dict[str, tuple[bytes, str]] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                kind = mimetypes.guess_type(child.name)[0] or "application/octet-stream"
                found[prefix + child.name] = (child.read_bytes(), kind)

    walk(resources.files("eventd.console").joinpath("static"), "")
    return found


def _secured(resp: web.Response) -> web.Response:
    resp.headers.update(HEADERS)
    return resp


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    html = _templates.get_template(template).render(version=__version__, **context)
    resp = web.Response(text=html, status=status, content_type="text/html")
    resp.headers["Cache-Control"] = "no-store"
    _secured(resp)
    return resp


def _redirect(location: str) -> web.Response:
    resp = web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
    _secured(resp)
    return resp


class Console:
    """The console's routes for one server (admin token from its config)."""

    def __init__(self, token: str | None, sessions: Sessions, sampler: Sampler) -> None:
        self.token = token
        self.sessions = sessions
        self.sampler = sampler
        self.static = _static_files()

    def add_routes(self, app: web.Application) -> None:
        app[SESSIONS] = self.sessions
        app[SAMPLER] = self.sampler
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/console", self._signed_in(self.overview))
        r.add_get("/console/login", self.login_form)
        r.add_post("/console/login", self.login)
        r.add_post("/console/logout", self.logout)
        r.add_get("/console/live", self._signed_in(self.live))
        r.add_get("/console/dead-letters", self._signed_in(self.dead_letters))
        r.add_get("/console/profiles/{id}", self._signed_in(self.profile))
        r.add_get("/console/reports/{report}", self._signed_in(self.report))
        r.add_get("/console/api/history", self._signed_in(self.history))
        r.add_get("/console/static/{path:.+}", self.asset)

    def _signed_in(
        self, handler: Callable[[web.Request, Session], Awaitable[web.Response]]
    ) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request)
            if session is None:
                if request.path.startswith("/console/api/"):
                    resp = web.json_response(
                        {"code": "unauthorized", "message": "sign in at /console/login"},
                        status=401,
                    )
                    return _secured(resp)
                return _redirect("/console/login")
            return await handler(request, session)

        return route

    # -- signing in and out ---------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return _redirect("/console")

    async def login_form(self, request: web.Request) -> web.Response:
        if self.sessions.get(request) is not None:
            return _redirect("/console")
        return self._login_page(request, None, 200)

    def _login_page(self, request: web.Request, error: str | None, status: int) -> web.Response:
        form_token = secrets.token_urlsafe(24)
        resp = _page(
            request,
            "login.html",
            status,
            error=error,
            form_token=form_token,
            enabled=bool(self.token),
        )
        self.sessions.set_cookie(request, resp, LOGIN_COOKIE, form_token)
        return resp

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("token")
        csrf = form.get("csrf")
        expected_csrf = request.cookies.get(LOGIN_COOKIE, "")
        if (
            not isinstance(csrf, str)
            or not expected_csrf
            or not hmac.compare_digest(csrf.encode(), expected_csrf.encode())
        ):
            return self._login_page(request, "The form expired: please sign in again.", 400)
        if not self.token:
            return self._login_page(request, "The console is off: set admin.token.", 403)
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), self.token.encode()
        ):
            log.warning("console sign-in refused", remote=request.remote)
            return self._login_page(request, "That is not the admin token.", 401)
        sid, _ = self.sessions.create()
        resp = _redirect("/console")
        self.sessions.set_cookie(request, resp, COOKIE, sid)
        resp.del_cookie(LOGIN_COOKIE, path="/")
        log.info("console sign-in", remote=request.remote)
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request)
        form = await request.post()
        csrf = form.get("csrf")
        if session is not None and (
            not isinstance(csrf, str)
            or not hmac.compare_digest(csrf.encode(), session.csrf.encode())
        ):
            return _secured(
                web.json_response(
                    {"code": "csrf", "message": "sign out from the console's own button"},
                    status=403,
                )
            )
        self.sessions.drop(request)
        resp = _redirect("/console/login")
        resp.del_cookie(COOKIE, path="/")
        return resp

    # -- pages ----------------------------------------------------------------------

    def _shell(
        self, request: web.Request, session: Session, page: str, **context: Any
    ) -> web.Response:
        return _page(
            request,
            f"{page}.html",
            page=page,
            csrf=session.csrf,
            reports=REPORTS,
            **context,
        )

    async def overview(self, request: web.Request, session: Session) -> web.Response:
        return self._shell(request, session, "overview")

    async def live(self, request: web.Request, session: Session) -> web.Response:
        return self._shell(request, session, "live")

    async def dead_letters(self, request: web.Request, session: Session) -> web.Response:
        return self._shell(request, session, "dead_letters")

    async def profile(self, request: web.Request, session: Session) -> web.Response:
        return self._shell(request, session, "profile", profile_id=request.match_info["id"])

    async def report(self, request: web.Request, session: Session) -> web.Response:
        report = request.match_info["report"]
        if report not in REPORTS:
            raise web.HTTPNotFound(text=f"no report {report!r}: one of {', '.join(REPORTS)}")
        params = [
            (name, hint, request.query.get(name, ""))
            for name, hint in (*REPORT_PARAMS[report], *COMMON_PARAMS)
        ]
        return self._shell(request, session, "report", report=report, params=params)

    async def history(self, request: web.Request, session: Session) -> web.Response:
        return web.json_response(
            await self.sampler.history(), headers={"Cache-Control": "no-store"}
        )

    async def asset(self, request: web.Request) -> web.Response:
        found = self.static.get(request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound(text="no such console asset")
        body, kind = found
        resp = web.Response(body=body, content_type=kind)
        resp.headers["Cache-Control"] = "public, max-age=3600"
        _secured(resp)
        return resp
