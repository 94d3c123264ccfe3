"""The reviewer's inbox: server-rendered pages and a JSON API over :class:`ColdMailAgent`.

Safety, in one place:

* Loopback by default; ``coldmail serve`` refuses any other address unless
  ``COLDMAIL_WEB_TOKEN`` is set, and then every request must carry the token (an
  ``Authorization: Bearer`` header, or the cookie that ``/?token=…`` sets once).
* The feedback form carries a CSRF token that must match a ``SameSite=Strict`` cookie, and a
  cross-origin ``Origin`` header is refused. The JSON API accepts only ``application/json``
  bodies, which a cross-site form cannot send.
* Jinja2 autoescapes everything a brief or the LLM wrote; the change highlighting escapes each
  word before wrapping it in ``<ins>``.
* Submitting the same feedback twice resumes once (the store's claim); the second submit waits
  for the first and shows its result.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import BaseModel, Field

from ..agent import ColdMailAgent
from ..errors import (
    ColdmailError,
    ConfigurationError,
    InvalidInput,
    LlmError,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
)
from ..models import MAX_FEEDBACK_CHARS, Brief, EmailSequence, Run, RunStatus

TOKEN_ENV = "COLDMAIL_WEB_TOKEN"
PAGE_SIZE = 20
CSRF_COOKIE = "coldmail_csrf"
TOKEN_COOKIE = "coldmail_token"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_STATUS = {
    InvalidInput: 422,
    RunNotFound: 404,
    RunConflict: 409,
    RunBeingResumed: 409,
    LlmError: 502,
    ConfigurationError: 503,
}

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def http_status(exc: ColdmailError) -> int:
    """The HTTP status for an error of this package."""
    for kind, status in _STATUS.items():
        if isinstance(exc, kind):
            return status
    return 500


def check_bind_address(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if host not in LOOPBACK and not token:
        raise ConfigurationError(
            f"refusing to listen on {host} without {TOKEN_ENV}: anyone who can reach it could "
            f"read every draft; set {TOKEN_ENV} to a long random value, or use 127.0.0.1"
        )


class RunOut(BaseModel):
    """A run as the JSON API returns it."""

    interaction_id: str
    status: RunStatus
    brief: Brief
    question: str
    draft: EmailSequence
    final: EmailSequence | None
    feedback: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls.model_validate(run.model_dump())


class FeedbackIn(BaseModel):
    feedback: str = Field(
        description=f"Who the emails should really target (≤ {MAX_FEEDBACK_CHARS} characters)."
    )


class ErrorOut(BaseModel):
    error: dict[str, str]


def age(moment: datetime) -> str:
    """'3 min', '2 h', '5 d' since ``moment``."""
    seconds = max(0, int((datetime.now(timezone.utc) - moment).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def highlight_changes(before: str, after: str) -> Markup:
    """``after`` with the words that differ from ``before`` in ``<ins>``, everything escaped."""
    old, new = re.split(r"(\s+)", before), re.split(r"(\s+)", after)
    parts: list[str] = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        chunk = "".join(str(escape(token)) for token in new[j1:j2])
        parts.append(chunk if op == "equal" else f"<ins>{chunk}</ins>" if chunk.strip() else chunk)
    return Markup("".join(parts))


def create_app(
    db_path: str | os.PathLike[str] | None = None,
    *,
    llm: Any = None,
    token: str | None = None,
) -> FastAPI:
    """The ASGI app. ``token`` (default ``COLDMAIL_WEB_TOKEN``) guards every request when set."""
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ColdMailAgent.open(db_path, llm=llm) as agent:
            app.state.agent = agent
            yield

    app = FastAPI(
        title="bridgic-coldmail",
        summary="Cold-email sequences that wait for a reviewer's audience feedback.",
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads scripts from a CDN; /openapi.json is served
        redoc_url=None,
    )

    def agent_of(request: Request) -> ColdMailAgent:
        agent: ColdMailAgent = request.app.state.agent
        return agent

    # ------------------------------------------------------------------ access control

    @app.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not token:
            return await call_next(request)
        offered = request.query_params.get("token")
        if offered and hmac.compare_digest(offered, token):
            # Exchange the token in the URL for a cookie, and drop it from the address bar.
            response = RedirectResponse(str(request.url.remove_query_params("token")), 303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        header = request.headers.get("authorization", "")
        presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        presented = presented or request.cookies.get(TOKEN_COOKIE, "")
        if presented and hmac.compare_digest(presented, token):
            return await call_next(request)
        message = f"this server needs its access token ({TOKEN_ENV}); open /?token=… once"
        if request.url.path.startswith("/api") or request.url.path == "/openapi.json":
            return JSONResponse({"error": {"type": "Unauthorized", "message": message}}, 401)
        return templates.TemplateResponse(
            request, "error.html", {"title": "Access token needed", "message": message}, 401
        )

    def csrf_cookie(request: Request) -> str:
        return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return origin.split("://", 1)[-1] == request.headers.get("host", "")

    # ------------------------------------------------------------------ pages

    def render_run(
        request: Request,
        run: Run,
        history: list[Any],
        *,
        status: int = 200,
        message: str | None = None,
        message_kind: str = "notice",
        feedback_text: str | None = None,
    ) -> HTMLResponse:
        csrf = csrf_cookie(request)
        diffs = None
        if run.final is not None:
            diffs = [
                {
                    "subject": highlight_changes(old.subject, new.subject),
                    "body": highlight_changes(old.body, new.body),
                }
                for old, new in zip(run.draft.steps, run.final.steps, strict=True)
            ]
        response = templates.TemplateResponse(
            request,
            "run.html",
            {
                "run": run,
                "history": history,
                "diffs": diffs,
                "age": age,
                "csrf_token": csrf,
                "max_feedback": MAX_FEEDBACK_CHARS,
                "message": message,
                "message_kind": message_kind,
                "feedback_text": feedback_text,
            },
            status,
        )
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    def error_page(request: Request, exc: ColdmailError) -> HTMLResponse:
        titles = {404: "No such run", 409: "Already decided", 502: "The LLM failed"}
        status = http_status(exc)
        title = titles.get(status, "Something went wrong")
        return templates.TemplateResponse(
            request, "error.html", {"title": title, "message": str(exc)}, status
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def inbox(request: Request, tab: str = "awaiting", page: int = Query(1, ge=1)) -> Any:
        status = RunStatus.COMPLETED if tab == "completed" else RunStatus.AWAITING_FEEDBACK
        runs = await agent_of(request).list(
            status, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE
        )
        return templates.TemplateResponse(
            request,
            "inbox.html",
            {
                "runs": runs[:PAGE_SIZE],
                "has_more": len(runs) > PAGE_SIZE,
                "page": page,
                "tab": "completed" if status is RunStatus.COMPLETED else "awaiting",
                "age": age,
            },
        )

    @app.get("/runs/{interaction_id}", response_class=HTMLResponse, include_in_schema=False)
    async def run_page(request: Request, interaction_id: str) -> Any:
        agent = agent_of(request)
        try:
            run = await agent.get(interaction_id)
            history = await agent.history(interaction_id)
        except ColdmailError as exc:
            return error_page(request, exc)
        return render_run(request, run, history)

    @app.post(
        "/runs/{interaction_id}/feedback", response_class=HTMLResponse, include_in_schema=False
    )
    async def submit_feedback(
        request: Request,
        interaction_id: str,
        feedback: str = Form(""),
        csrf_token: str = Form(""),
    ) -> Any:
        agent = agent_of(request)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not (cookie and hmac.compare_digest(cookie, csrf_token) and same_origin(request)):
            return templates.TemplateResponse(
                request,
                "error.html",
                {
                    "title": "Form expired",
                    "message": "This form did not come from this page (missing or wrong CSRF "
                    "token). Reload the run page and submit again; nothing was changed.",
                },
                403,
            )
        try:
            await agent.resume(interaction_id, feedback)
        except RunBeingResumed:
            # Most likely the same form submitted twice: wait for the first submit's result.
            await _wait_until_settled(agent, interaction_id)
        except (InvalidInput, LlmError) as exc:
            try:
                run = await agent.get(interaction_id)
                history = await agent.history(interaction_id)
            except ColdmailError as missing:
                return error_page(request, missing)
            return render_run(
                request,
                run,
                history,
                status=http_status(exc),
                message=str(exc),
                message_kind="error",
                feedback_text=feedback,
            )
        except ColdmailError as exc:
            return error_page(request, exc)
        return RedirectResponse(f"/runs/{interaction_id}", 303)

    # ------------------------------------------------------------------ JSON API

    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorOut, "description": description}
        for status, description in (
            (404, "No run under this interaction id"),
            (409, "Completed with other feedback, or being resumed"),
            (415, "The body is not application/json"),
            (422, "Bad brief, feedback or id"),
            (502, "The LLM failed; the run stays resumable"),
        )
    }

    def require_json(request: Request) -> None:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _UnsupportedMedia()

    @app.exception_handler(ColdmailError)
    async def coldmail_error(request: Request, exc: ColdmailError) -> Response:
        body = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        return JSONResponse(body, http_status(exc))

    @app.exception_handler(_UnsupportedMedia)
    async def unsupported(request: Request, exc: _UnsupportedMedia) -> Response:
        message = "send the body as JSON with Content-Type: application/json"
        return JSONResponse({"error": {"type": "UnsupportedMediaType", "message": message}}, 415)

    @app.post("/api/runs", status_code=201, response_model=RunOut, responses=errors)
    async def api_start(request: Request, brief: Brief) -> RunOut:
        """Draft a sequence from a brief and pause for audience feedback."""
        require_json(request)
        return RunOut.of(await agent_of(request).start(brief))

    @app.get("/api/runs/{interaction_id}", response_model=RunOut, responses=errors)
    async def api_get(request: Request, interaction_id: str) -> RunOut:
        """One run."""
        return RunOut.of(await agent_of(request).get(interaction_id))

    @app.get("/api/runs", response_model=list[RunOut], responses=errors)
    async def api_list(
        request: Request,
        status: RunStatus | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[RunOut]:
        """Runs, newest first, optionally of one status."""
        runs = await agent_of(request).list(status, limit=limit, offset=offset)
        return [RunOut.of(run) for run in runs]

    @app.post("/api/runs/{interaction_id}/feedback", response_model=RunOut, responses=errors)
    async def api_feedback(request: Request, interaction_id: str, body: FeedbackIn) -> RunOut:
        """Resume a paused run with feedback on the audience; returns it completed."""
        require_json(request)
        return RunOut.of(await agent_of(request).resume(interaction_id, body.feedback))

    return app


class _UnsupportedMedia(Exception):
    """A JSON API call whose body is not JSON."""


async def _wait_until_settled(agent: ColdMailAgent, interaction_id: str) -> None:
    """Poll until the run is no longer being resumed (bounded by the LLM timeout)."""
    deadline = asyncio.get_running_loop().time() + 2 * agent.llm_timeout
    while asyncio.get_running_loop().time() < deadline:
        if (await agent.get(interaction_id)).status is not RunStatus.RESUMING:
            return
        await asyncio.sleep(0.2)
