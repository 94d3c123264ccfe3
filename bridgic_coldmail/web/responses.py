"""Every error the web app answers, in one shape per audience.

A path under ``/api`` (and ``/openapi.json``) gets ``{"error": {"type", "message"}}``; a page
gets the HTML error page. That holds for the errors of this package (whose classes carry their
HTTP status), for FastAPI's own (unknown route, wrong method, request validation), for the
refusals of the security middlewares, and for an unexpected exception. No error repeats the
request's body back: validation errors name the field and the rule, never the value.

A one-click link's path (``/l/…``) gets the JSON when the client asks for it (``Accept:
application/json`` over ``text/html``), else an error page that links to nothing (the link's
holder may have no access to the inbox); a store's error there says only that the run cannot
be read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import Scope

from ..errors import (
    ColdmailError,
    LinkAnswered,
    LinkExpired,
    LinkRefused,
    LinkRunGone,
    RunNotFound,
    StoreError,
)
from ..notify.links import LINK_PATH

logger = logging.getLogger(__name__)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

KINDS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    421: "MisdirectedRequest",
    422: "InvalidInput",
    500: "InternalError",
}
"""The ``type`` of an error that is not one of this package's exceptions, by status."""

TITLES = {
    400: "Bad request",
    401: "Access token needed",
    403: "Refused",
    404: "Not found",
    405: "Not allowed",
    409: "Already decided",
    410: "No longer valid",
    413: "Too large",
    415: "Not accepted",
    421: "Wrong address",
    422: "Not accepted",
    502: "The LLM failed",
    503: "Not available",
}
"""The heading of the HTML error page, by status."""

LINK_TITLES: dict[type[ColdmailError], str] = {
    LinkRefused: "This link does not work",
    LinkExpired: "This link has expired",
    LinkRunGone: "No such run",
    LinkAnswered: "Already answered",
}
"""The heading of a one-click link's refusal, by its class."""
LINK_STORE_ERROR = (
    "the server cannot read this run right now; try the link again later (its log has the details)"
)
"""A store's error on a link's page: its message may name the database, which a link's
holder need not learn; the log keeps it."""
LINK_NOT_FOUND = "nothing here: this link is not valid; open the newest message about the run"

_FRAMEWORK_MESSAGES = {
    404: "nothing here; the inbox is at / and the API is described at /openapi.json",
    405: "this method is not allowed here; see /openapi.json",
}
_MAX_LISTED_ERRORS = 5
_MAX_PART_CHARS = 40
_MAX_MESSAGE_CHARS = 200
_MAX_ACCEPT_ITEMS = 20


class WebError(Exception):
    """A refusal of the web layer itself (not of the agent): its status, type and message."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = KINDS.get(status, "HTTPError")
        self.message = message
        self.headers = dict(headers or {})


def is_api_path(path: str) -> bool:
    """Whether ``path`` belongs to the JSON API, whose errors are JSON."""
    return path == "/api" or path.startswith("/api/") or path == "/openapi.json"


def is_link_path(path: str) -> bool:
    """Whether ``path`` is a one-click link's page (or a form on it)."""
    return path.startswith(LINK_PATH)


def wants_json(scope: Scope) -> bool:
    """Whether the error for this request is JSON: an API path, or a link's path whose client
    prefers JSON to HTML."""
    path = scope.get("path", "")
    if is_api_path(path):
        return True
    return is_link_path(path) and prefers_json(Headers(scope=scope).get("accept", ""))


def prefers_json(accept: str) -> bool:
    """Whether an ``Accept`` header weighs ``application/json`` above ``text/html``."""
    weights: dict[str, float] = {}
    for item in accept.split(",")[:_MAX_ACCEPT_ITEMS]:
        media, *parameters = (part.strip().lower() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0:  # also NaN
                    weight = 0.0
        weights[media] = max(weight, weights.get(media, 0.0))
    return weights.get("application/json", 0.0) > weights.get("text/html", 0.0)


def error_response(
    scope: Scope,
    status: int,
    kind: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Response:
    """The JSON error for an API path (see :func:`wants_json`), else the HTML error page
    (``title``: its heading)."""
    if wants_json(scope):
        body = {"error": {"type": kind, "message": message}}
        return JSONResponse(body, status, headers=dict(headers or {}))
    title = title or TITLES.get(status, "Something went wrong")
    context = {"title": title, "message": message, "inbox": not is_link_path(scope["path"])}
    return templates.TemplateResponse(Request(scope), "error.html", context, status, headers)


def describe_request_errors(errors: Sequence[Any]) -> str:
    """One line from FastAPI's validation errors: where and which rule, never the value."""
    parts: list[str] = []
    for item in errors[:_MAX_LISTED_ERRORS]:
        if item.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        location = [str(part) for part in item.get("loc", ())]
        if location and location[0] in {"body", "query", "path", "header", "cookie"}:
            location = location[1:]
        # An unknown key is part of the location: clip it, as it is the sender's text.
        where = ".".join(_clip(part, _MAX_PART_CHARS) for part in location)
        rule = _clip(str(item.get("msg", "is not valid")), _MAX_MESSAGE_CHARS)
        parts.append(f"{where}: {rule}" if where else rule)
    if len(errors) > _MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_LISTED_ERRORS} more")
    return "invalid request: " + "; ".join(parts)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every handled error in the shape :func:`error_response` gives."""

    async def coldmail_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ColdmailError)
        title = "No such run" if isinstance(exc, RunNotFound) else LINK_TITLES.get(type(exc))
        message = str(exc)
        if isinstance(exc, StoreError) and is_link_path(request.url.path):
            logger.warning("a one-click link's page could not read the store: %s", exc)
            message = LINK_STORE_ERROR
        kind = type(exc).__name__
        return error_response(request.scope, exc.http_status, kind, message, title=title)

    async def web_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebError)
        return error_response(request.scope, exc.status, exc.kind, exc.message, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        message = _FRAMEWORK_MESSAGES.get(status) or str(exc.detail)
        if status == 404 and is_link_path(request.url.path):
            message = LINK_NOT_FOUND
        kind = KINDS.get(status, "HTTPError")
        return error_response(request.scope, status, kind, message, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            request.scope, 422, "InvalidInput", describe_request_errors(exc.errors())
        )

    app.add_exception_handler(ColdmailError, coldmail_error)
    app.add_exception_handler(WebError, web_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
