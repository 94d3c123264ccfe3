"""The JSON API: the Python API's start, get, list and resume over HTTP, described at
``/openapi.json``.

Every error is ``{"error": {"type", "message"}}`` (see :mod:`.responses`). A route that takes
a body refuses any content type but ``application/json`` with 415 before FastAPI reads the
body, so a cross-site HTML form (which cannot send JSON) never reaches the agent, and a wrong
content type is never mistaken for a malformed body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from ..agent import MAX_PAGE
from ..models import MAX_FEEDBACK_CHARS, Brief, DamagedRun, EmailSequence, Run, RunStatus
from .dependencies import Agent
from .responses import WebError

MAX_OFFSET = 1_000_000_000
"""The largest ``offset`` the API accepts (larger ones are a 422, not a database error)."""


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


class DamagedRunOut(BaseModel):
    """A stored run that cannot be shown (altered, or unreadable), listed so it is not hidden."""

    interaction_id: str
    status: str
    damaged: str
    created_at: datetime | None

    @classmethod
    def of(cls, run: DamagedRun) -> DamagedRunOut:
        return cls(
            interaction_id=run.interaction_id,
            status=run.status,
            damaged=run.problem,
            created_at=run.created_at,
        )


class FeedbackIn(BaseModel):
    feedback: str = Field(
        description=f"Who the emails should really target (≤ {MAX_FEEDBACK_CHARS} characters)."
    )


class ErrorDetail(BaseModel):
    type: str = Field(description="The error's name, e.g. RunNotFound or InvalidInput.")
    message: str = Field(description="What happened and what to do next.")


class ErrorOut(BaseModel):
    error: ErrorDetail


def is_json(content_type: str | None) -> bool:
    """``application/json``, with or without parameters such as ``charset``."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


class JsonBodyRoute(APIRoute):
    """A route whose body, if it takes one, must be declared ``application/json``: checked
    before the body is read or parsed."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def json_only(request: Request) -> Response:
            if not is_json(request.headers.get("content-type")):
                raise WebError(415, "send the body as JSON with Content-Type: application/json")
            return await handler(request)

        return json_only


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in (
        (401, "A token is set and the request does not carry it"),
        (403, "A state-changing request from an origin that is not configured"),
        (404, "No run under this interaction id, or no such route"),
        (409, "Completed with other feedback, or being resumed"),
        (413, "The body is larger than COLDMAIL_MAX_BODY_BYTES"),
        (415, "The body is not application/json"),
        (421, "The Host is not one this server answers"),
        (422, "Bad brief, feedback, id or query parameter"),
        (500, "Unexpected error, or a stored snapshot that cannot be used"),
        (502, "The LLM failed; the run stays resumable"),
        (503, "The database or a setting cannot be used"),
    )
}

router = APIRouter(prefix="/api", route_class=JsonBodyRoute, responses=ERRORS)


@router.post("/runs", status_code=201, response_model=RunOut)
async def api_start(brief: Brief, agent: Agent) -> RunOut:
    """Draft a sequence from a brief and pause for audience feedback."""
    return RunOut.of(await agent.start(brief))


@router.get("/runs/{interaction_id}", response_model=RunOut)
async def api_get(interaction_id: str, agent: Agent) -> RunOut:
    """One run."""
    return RunOut.of(await agent.get(interaction_id))


@router.get("/runs", response_model=list[RunOut | DamagedRunOut])
async def api_list(
    agent: Agent,
    status: RunStatus | None = None,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> list[RunOut | DamagedRunOut]:
    """Runs, newest first, optionally of one status; a damaged one says what is wrong."""
    runs = await agent.list(status, limit=limit, offset=offset)
    return [RunOut.of(run) if isinstance(run, Run) else DamagedRunOut.of(run) for run in runs]


@router.post("/runs/{interaction_id}/feedback", response_model=RunOut)
async def api_feedback(interaction_id: str, body: FeedbackIn, agent: Agent) -> RunOut:
    """Resume a paused run with feedback on the audience; returns it completed."""
    return RunOut.of(await agent.resume(interaction_id, body.feedback))
