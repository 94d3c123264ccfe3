"""Who may talk to the inbox, and what every answer carries.

The checks are plain ASGI middlewares, outermost first:

1. :class:`SecurityHeaders` puts a strict CSP (no inline script or style), ``nosniff``,
   ``frame-ancestors 'none'`` and ``Referrer-Policy: same-origin`` (no address, and so no
   ``?token=``, leaks to another site) on every response, error pages included; and
   ``Cache-Control: no-store`` on every one but the static files, as any page, API answer or
   error may carry run data (drafts, feedback, a lead list's rows). A one-click link's pages
   (:data:`LINK_PATH`) get ``Referrer-Policy: no-referrer`` instead, so the token in their
   address is sent nowhere, not even to this server's own stylesheet and script (a proxy's
   log may record referrers), and ``X-Robots-Tag: noindex``.
2. :class:`ErrorBoundary` turns an unexpected exception into the JSON or HTML 500 and logs it.
3. :class:`HostGuard` answers only the Host names of :class:`WebPolicy` (the bound address,
   loopback names, ``COLDMAIL_ALLOWED_HOSTS``, the host of ``COLDMAIL_PUBLIC_ORIGIN``), with
   421 otherwise: a DNS-rebinding page at ``http://evil.example:8000`` resolves to this server
   but says so in its Host header. A state-changing request whose ``Origin`` is not one of the
   configured origins is refused with 403; the request's own Host never vouches for it. Under
   a link's path ``Origin: null`` passes too: that is what a browser sends for the form of a
   page served with ``no-referrer``, and there the form token bound to the link
   (:mod:`.link_pages`), which no other page can know, is what proves the form came from it.
4. :class:`TokenGuard` requires ``COLDMAIL_WEB_TOKEN`` when it is set, except on a one-click
   link's pages, where the signed link is the credential (:mod:`.link_pages`).
5. :class:`BodyLimit` refuses a declared ``Content-Length`` over ``COLDMAIL_MAX_BODY_BYTES``
   before reading anything, and counts a body without one as it arrives (413 either way). The
   lead-list upload of an export (:data:`UPLOAD_PATH`) has its own, larger limit,
   ``COLDMAIL_MAX_UPLOAD_BYTES``, enforced the same two ways; its body is streamed to the
   route rather than held in memory.

Secrets are compared as bytes with :func:`hmac.compare_digest`, so a token or CSRF value with
characters outside ASCII is refused like any other wrong value.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError
from ..notify.links import LINK_PATH
from ..settings import ENV, Settings, check_web_token
from .logs import RedactLinkTokens, redact_links
from .responses import WebError, error_response

TOKEN_ENV = ENV["web_token"]
CSRF_COOKIE = "coldmail_csrf"
TOKEN_COOKIE = "coldmail_token"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
"""Addresses ``coldmail serve`` may listen on without a token."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
"""The loopback names as a Host header spells them."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UPLOAD_PATH = re.compile(r"/(?:api/)?runs/[^/]+/(?:export|lines(?:/estimate)?)")
"""The routes that take a lead list (``POST``): limited by ``max_upload_bytes``, not
``max_body_bytes``."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": with it, browsers send "Origin: null" on the form's own POST.
    "Referrer-Policy": "same-origin",
}
"""Headers on every response, errors included."""
NOT_STORED = {"Cache-Control": "no-store"}
"""Headers on every response but a static file's: no cache may keep run data."""
LINK_HEADERS = {"Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}
"""Headers of a one-click link's pages, over :data:`SECURITY_HEADERS`: their address holds
the link's token, which no Referer may carry (the form's POST then says ``Origin: null``,
which :class:`HostGuard` lets through under a link's path)."""
OPAQUE_ORIGIN = "null"
STATIC_PREFIX = "/static/"

logger = logging.getLogger(__name__)
logger.addFilter(RedactLinkTokens())  # an exception's text may quote the path


def check_bind_address(host: str, token: str | None) -> str | None:
    """Refuse to listen beyond loopback without a token, or with a weak one.

    Returns the token (stripped) when one is given.

    Raises:
        ConfigurationError: a public address without a token, or a token too weak to guard it.
    """
    if token:
        return check_web_token(token)
    if host not in LOOPBACK:
        raise ConfigurationError(
            f"refusing to listen on {host} without {TOKEN_ENV}: anyone who can reach it could "
            f"read every draft; set {TOKEN_ENV} to a long random value, or use 127.0.0.1"
        )
    return None


def host_name(value: str) -> str:
    """The host of a Host header or a bind address, lower case, an IPv6 address in brackets."""
    text = value.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    if text.count(":") > 1:  # a bare IPv6 address, as an address to bind is spelt
        return f"[{text}]"
    name, colon, port = text.rpartition(":")
    return name if colon and re.fullmatch(r"[0-9]+", port) else text


def origin(scheme: str, host: str, port: int) -> str:
    """``scheme://host[:port]`` as a browser sends it in ``Origin`` (no default port)."""
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port == default else f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class WebPolicy:
    """What the security middlewares and the pages enforce, fixed when the app is created."""

    hosts: frozenset[str]
    """Host names answered (as :func:`host_name` spells them)."""
    origins: frozenset[str]
    """Origins a state-changing request may come from."""
    token: str | None
    max_body_bytes: int
    max_upload_bytes: int
    max_export_bytes: int
    """The largest file one export may write and hold while it downloads."""
    https: bool | None
    """Whether browsers reach the app over HTTPS (from ``public_origin``); None: ask each
    request's scheme."""

    @classmethod
    def build(cls, settings: Settings, *, host: str, port: int) -> WebPolicy:
        """The policy for an app bound to ``host:port`` with these settings.

        Raises:
            ConfigurationError: a public address without a token, or a weak token.
        """
        token = check_bind_address(host, settings.web_token)
        hosts = set(LOOPBACK_HOSTS) | {host_name(host)} | set(settings.allowed_hosts)
        origins = {origin("http", name, port) for name in hosts}
        https = None
        if settings.public_origin:
            public = urlsplit(settings.public_origin)
            hosts.add(host_name(public.netloc))
            origins.add(settings.public_origin)
            https = public.scheme == "https"
        return cls(
            frozenset(hosts),
            frozenset(origins),
            token,
            settings.max_body_bytes,
            settings.max_upload_bytes,
            settings.export_limit,
            https,
        )

    def secure_cookies(self, request: Request) -> bool:
        """Whether cookies must be ``Secure``: the browser talks HTTPS."""
        return self.https if self.https is not None else request.url.scheme == "https"

    def origin_allowed(self, value: str | None, *, opaque: bool = False) -> bool:
        """No Origin (not a browser, or a same-origin GET) or a configured one; with
        ``opaque``, also ``null`` (a page that sends no referrer)."""
        if value is None:
            return True
        origin = value.strip().lower()
        return origin in self.origins or (opaque and origin == OPAQUE_ORIGIN)


def same_secret(offered: str, expected: str) -> bool:
    """Constant-time comparison of two secrets as UTF-8 bytes (any characters allowed)."""
    return hmac.compare_digest(
        offered.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def set_private_cookie(
    response: Response, request: Request, policy: WebPolicy, name: str, value: str
) -> None:
    """An ``HttpOnly``, ``SameSite=Strict`` cookie, ``Secure`` when the browser uses HTTPS."""
    response.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=policy.secure_cookies(request),
    )


def csrf_token(request: Request) -> str:
    """The form's CSRF token: the one in the browser's cookie if this app made it, else new."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return cookie if re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie) else secrets.token_urlsafe(32)


def csrf_matches(request: Request, submitted: str) -> bool:
    """Whether the form's token equals the cookie's (a cross-site form cannot read either)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and same_secret(submitted, cookie)


def relative_location(path: str, query: Iterable[tuple[str, str]] = ()) -> str:
    """A redirect target on this server: one leading slash, the path percent-encoded.

    ``//evil.example`` or ``/\\evil.example`` would send a browser to another site.
    """
    location = "/" + quote(path.lstrip("/"), safe="/")
    params = list(query)
    return f"{location}?{urlencode(params)}" if params else location


# ---------------------------------------------------------------------------- middlewares


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response, and :data:`NOT_STORED` to every
    one outside :data:`STATIC_PREFIX`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        added = dict(SECURITY_HEADERS)
        if not scope["path"].startswith(STATIC_PREFIX):
            added.update(NOT_STORED)
        if scope["path"].startswith(LINK_PATH):
            added.update(LINK_HEADERS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in added.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ErrorBoundary:
    """An unexpected exception becomes the JSON 500 (``/api``) or the HTML error page, and
    is logged; never Starlette's ``text/plain`` answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            path = redact_links(scope["path"])
            logger.exception("unexpected error answering %s %s", scope["method"], path)
            if started:
                raise
            message = "unexpected error on the server; its log has the details (please report it)"
            await error_response(scope, 500, "InternalError", message)(scope, receive, send)


class HostGuard:
    """421 for a Host this server does not answer; 403 for a state-changing request whose
    Origin is not configured."""

    def __init__(self, app: ASGIApp, policy: WebPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if host_name(headers.get("host", "")) not in self.policy.hosts:
            message = (
                "this server does not answer for that host name; open it by its own address, "
                f"or list the name in {ENV['allowed_hosts']}"
            )
            response = error_response(scope, 421, "MisdirectedRequest", message)
        elif scope["method"] not in SAFE_METHODS and not self.policy.origin_allowed(
            headers.get("origin"), opaque=scope["path"].startswith(LINK_PATH)
        ):
            message = (
                "this request came from a page of another site; nothing was changed (behind a "
                f"proxy, set {ENV['public_origin']} to the address browsers use)"
            )
            response = error_response(scope, 403, "Forbidden", message)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


class TokenGuard:
    """When a token is set, every request carries it: ``Authorization: Bearer`` (any case), or
    the cookie that opening ``/?token=…`` once sets. Static files are public, and so are a
    one-click link's pages: their signed token is their credential, and they show and accept
    nothing but that link's pause."""

    def __init__(self, app: ASGIApp, policy: WebPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.policy.token
        if (
            scope["type"] != "http"
            or token is None
            or scope["path"].startswith((STATIC_PREFIX, LINK_PATH))
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        offered = request.query_params.get("token")
        if offered is not None and scope["method"] == "GET" and same_secret(offered, token):
            # Exchange the token in the URL for a cookie, and drop it from the address bar.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            redirect = RedirectResponse(relative_location(scope["path"], rest), 303)
            set_private_cookie(redirect, request, self.policy, TOKEN_COOKIE, token)
            await redirect(scope, receive, send)
            return
        if self._presented(request, token):
            await self.app(scope, receive, send)
            return
        message = f"this server needs its access token ({TOKEN_ENV}); open /?token=… once"
        response = error_response(
            scope, 401, "Unauthorized", message, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)

    @staticmethod
    def _presented(request: Request, token: str) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and same_secret(credentials.strip(), token):
            return True
        cookie = request.cookies.get(TOKEN_COOKIE)
        return cookie is not None and same_secret(cookie, token)


class BodyLimit:
    """413 for a body over its limit: a declared length is refused before anything is read;
    a body without one (chunked) is counted as it arrives and refused at the limit.

    An ordinary body (at most ``max_body_bytes``) is read here and handed on to the app as one
    message. A lead-list upload (``POST`` to :data:`UPLOAD_PATH`, at most ``max_upload_bytes``)
    is handed on as it arrives, counted: past the limit, reading it raises a 413
    :class:`WebError`, which the route's error handler answers (the route writes the body to a
    file as it reads, so it never holds the whole upload in memory).
    """

    def __init__(self, app: ASGIApp, policy: WebPolicy) -> None:
        self.app = app
        self.limit = policy.max_body_bytes
        self.upload_limit = policy.max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and UPLOAD_PATH.fullmatch(scope["path"]) is not None
        limit, setting = (
            (self.upload_limit, ENV["max_upload_bytes"])
            if upload
            else (self.limit, ENV["max_body_bytes"])
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not re.fullmatch(r"[0-9]+", declared.strip()):
            refusal = error_response(
                scope, 400, "BadRequest", "Content-Length must be a number of bytes"
            )
            await refusal(scope, receive, send)
            return
        if declared is not None and (len(declared) > 18 or int(declared) > limit):
            await error_response(scope, 413, "PayloadTooLarge", too_large(limit, setting))(
                scope, receive, send
            )
            return
        if upload:
            await self.app(scope, _counting(receive, limit, setting), send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; there is no one to answer
            body += message.get("body", b"")
            if len(body) > limit:
                await error_response(scope, 413, "PayloadTooLarge", too_large(limit, setting))(
                    scope, receive, send
                )
                return
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def too_large(limit: int, setting: str) -> str:
    """The 413 message: the limit and the setting that sets it."""
    return f"the request body is larger than {limit} bytes, the limit ({setting}); send less"


def _counting(receive: Receive, limit: int, setting: str) -> Receive:
    """``receive``, raising a 413 :class:`WebError` once the body passes ``limit`` bytes."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise WebError(413, too_large(limit, setting))
        return message

    return counted


def install_security(app: FastAPI, policy: WebPolicy) -> None:
    """Add the middlewares; the last added runs first, hence the reverse order."""
    app.add_middleware(BodyLimit, policy=policy)
    app.add_middleware(TokenGuard, policy=policy)
    app.add_middleware(HostGuard, policy=policy)
    app.add_middleware(ErrorBoundary)
    app.add_middleware(SecurityHeaders)
