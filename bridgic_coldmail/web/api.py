"""The JSON API: the Python API's start, get, list, resume, review decisions and export over
HTTP, described at ``/openapi.json``.

A run is always :meth:`Run.to_public_dict` — the one JSON shape of a run, of which
``coldmail … --json`` prints a subset — and :class:`RunOut` describes exactly those keys for
the OpenAPI document (a test holds the two together).

Every error is ``{"error": {"type", "message"}}`` (see :mod:`.responses`). A route that takes
a JSON body refuses any content type but ``application/json`` with 415 before FastAPI reads
the body, so a cross-site HTML form (which cannot send JSON) never reaches the agent, and a
wrong content type is never mistaken for a malformed body. The export takes the lead list as
a ``text/csv`` body, refused the same way when it is anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from ..agent import ColdMailAgent
from ..errors import InvalidInput, RunConflict
from ..models import (
    MAX_FEEDBACK_CHARS,
    MAX_PAGE,
    MAX_REASON_CHARS,
    MAX_REVIEWER_CHARS,
    MAX_ROUND_NUMBER,
    Brief,
    DamagedRun,
    Decision,
    EmailSequence,
    Run,
    RunStatus,
    make_brief,
    make_decision,
)
from .dependencies import Agent, Policy
from .responses import WebError
from .uploads import MEDIA_TYPES, UNNAMED, download, export_upload, private_folder, save_upload

API_MAX_OFFSET = 1_000_000_000
"""The largest ``offset`` the API accepts (larger ones are a 422, not a database error)."""


class RunOut(BaseModel):
    """A run as the JSON API returns it: exactly the keys of ``Run.to_public_dict()``."""

    interaction_id: str
    status: RunStatus
    draft: EmailSequence
    final: EmailSequence | None = Field(
        description="The finished sequence: the refinement, or in review mode the approved one."
    )
    feedback: str | None = Field(description="The audience feedback the refinement used.")
    round: int | None = Field(description="The review round the run is at; null before review.")
    review: bool = Field(description="Whether the run pauses for review rounds.")
    max_rounds: int | None = Field(description="Rounds a reviewer may reach by revising.")
    sequence: EmailSequence | None = Field(
        description="The newest sequence after the draft: under review, final, or rejected."
    )
    rejection: str | None = Field(description="Why a reviewer rejected the run.")
    brief: Brief
    question: str
    fields: list[str] = Field(description="Merge fields (lead-list columns) the emails may use.")
    last_error: str | None
    verified: bool = Field(description="False for a run stored unsigned by a release before 0.5.")
    created_at: datetime
    updated_at: datetime


class DamagedRunOut(BaseModel):
    """A stored run that cannot be shown (altered, or unreadable), listed so it is not hidden:
    exactly the keys of ``DamagedRun.to_public_dict()``."""

    interaction_id: str
    status: str
    damaged: str
    created_at: datetime | None


def run_json(run: Run | DamagedRun, status: int = 200) -> JSONResponse:
    """A run's one JSON shape (``to_public_dict``), not re-serialised by a model."""
    return JSONResponse(run.to_public_dict(), status)


class StartIn(Brief):
    """A brief; optionally review mode and the lead list's columns."""

    review: bool = Field(
        default=False,
        description="After the refinement, pause for review rounds until a reviewer approves.",
    )
    fields: list[str] = Field(
        default_factory=list,
        description="The lead list's column names; the emails may use them as {{merge_fields}}.",
    )
    notify: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Where this run's notifications go besides COLDMAIL_NOTIFY: email "
        "addresses, https:// webhook URLs, Slack webhook URLs.",
    )
    respond_within: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None,
        description="How long each pause waits for its person: 90s, 36h, 3d, 1h30m or "
        "seconds (default COLDMAIL_RESPOND_WITHIN, else no deadline).",
    )
    remind_every: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None,
        description="How often a waiting pause reminds its destinations, before its "
        "deadline (default COLDMAIL_REMIND_EVERY, else never).",
    )
    on_timeout: str | None = Field(
        default=None,
        description="What the deadline does: wait (keep waiting and escalate), proceed "
        "(refine with the brief's audience guess; approve at a review round) or reject "
        "(default COLDMAIL_ON_TIMEOUT, else wait).",
    )
    escalate_to: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Who is told when a deadline passes (default COLDMAIL_ESCALATE_TO).",
    )


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feedback: str = Field(
        description=f"Who the emails should really target (≤ {MAX_FEEDBACK_CHARS} characters)."
    )

    def decision(self) -> Decision:
        """The body as the one type every front end hands ``decide``."""
        return make_decision("feedback", text=self.feedback)


class DecisionIn(BaseModel):
    """What every review decision may carry (an approval carries nothing else: ``{}``)."""

    model_config = ConfigDict(extra="forbid")

    reviewer: str | None = Field(
        default=None,
        description=f"Who decides (≤ {MAX_REVIEWER_CHARS} characters); kept in the history.",
    )
    round: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ROUND_NUMBER,
        strict=True,
        description="The round this decision answers (default: the run's current round). "
        "Sending the decision that round already took returns the run; another is a 409.",
    )

    def decision(self) -> Decision:
        """The body as the one type every front end hands ``decide`` (an approval here)."""
        return make_decision("approve", reviewer=self.reviewer, round=self.round)


class ReviseIn(DecisionIn):
    guidance: str = Field(
        description=f"What the next version should change (≤ {MAX_FEEDBACK_CHARS} characters)."
    )

    def decision(self) -> Decision:
        return make_decision("revise", text=self.guidance, reviewer=self.reviewer, round=self.round)


class EditIn(DecisionIn):
    sequence: EmailSequence = Field(
        description="The reviewer's own emails; they go under review as the next round."
    )

    def decision(self) -> Decision:
        return make_decision(
            "edit", sequence=self.sequence, reviewer=self.reviewer, round=self.round
        )


class RejectIn(DecisionIn):
    reason: str = Field(description=f"Why the run is rejected (≤ {MAX_REASON_CHARS} characters).")

    def decision(self) -> Decision:
        return make_decision("reject", text=self.reason, reviewer=self.reviewer, round=self.round)


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
        (
            409,
            "The run cannot take this now: another feedback or decision was applied (to this "
            "round), it is in another state, past its round limit, or being worked on",
        ),
        (
            413,
            "The body is larger than COLDMAIL_MAX_BODY_BYTES (an export's lead list: "
            "COLDMAIL_MAX_UPLOAD_BYTES)",
        ),
        (415, "The body is not application/json (an export's lead list: not text/csv)"),
        (421, "The Host is not one this server answers"),
        (
            422,
            "Bad brief, feedback, decision, id, query parameter or lead list; an export with "
            "nothing to export, or larger than COLDMAIL_MAX_EXPORT_BYTES",
        ),
        (500, "Unexpected error, or a stored snapshot that cannot be used"),
        (502, "The LLM failed; the run stays as it was"),
        (503, "The database or a setting cannot be used"),
    )
}

router = APIRouter(prefix="/api", route_class=JsonBodyRoute, responses=ERRORS)


@router.post("/runs", status_code=201, response_model=RunOut)
async def api_start(body: StartIn, agent: Agent) -> Response:
    """Draft a sequence from a brief and pause for audience feedback (201).

    ``review: true`` makes the run pause for review rounds after the refinement; ``fields``
    names the lead list's columns the emails may use as merge fields; ``notify`` lists
    where the run's notifications go (besides ``COLDMAIL_NOTIFY``).
    """
    brief = make_brief(**body.model_dump(include=set(Brief.model_fields)))
    run = await agent.start(
        brief,
        review=body.review,
        fields=body.fields,
        notify=body.notify,
        respond_within=body.respond_within,
        remind_every=body.remind_every,
        on_timeout=body.on_timeout,
        escalate_to=body.escalate_to,
    )
    return run_json(run, 201)


class WaitOut(BaseModel):
    """What a waiting run's person has left (``WaitState.to_public_dict``)."""

    deadline: datetime | None = Field(description="When the current pause's deadline falls.")
    on_timeout: str | None = Field(description="What the deadline does: wait, proceed, reject.")
    next_reminder: datetime | None
    reminders_sent: int = Field(description="Reminders sent at the current pause.")


class RunWithWaitOut(RunOut):
    """A run, with ``wait`` when it has a deadline or reminders (as ``coldmail show --json``)."""

    wait: WaitOut | None = Field(default=None, description="Only when the run has timers.")


@router.get("/runs/{interaction_id}", response_model=RunWithWaitOut)
async def api_get(interaction_id: str, agent: Agent) -> Response:
    """One run; ``wait`` says its deadline, what happens then, its next reminder and the
    reminders sent, when it has any."""
    from ..store.outbox import wait_state

    run = await agent.get(interaction_id)
    shown = run.to_public_dict()
    deliveries = await agent.notifications(run.interaction_id, limit=MAX_PAGE)
    waiting = wait_state(run.pause_id if run.status.is_paused else None, deliveries)
    if waiting.timed:
        shown["wait"] = waiting.to_public_dict()
    return JSONResponse(shown)


@router.get("/runs", response_model=list[RunOut | DamagedRunOut])
async def api_list(
    agent: Agent,
    status: RunStatus | None = None,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, le=API_MAX_OFFSET),
) -> Response:
    """Runs, newest first, optionally of one status; a damaged one says what is wrong."""
    runs = await agent.list(status, limit=limit, offset=offset)
    return JSONResponse([run.to_public_dict() for run in runs])


class TimerOut(BaseModel):
    kind: Literal["reminder", "deadline"]
    due_at: str
    round: int | None = Field(description="The review round waiting; null: the audience.")
    on_timeout: str | None = Field(description="A deadline's outcome: wait, proceed, reject.")


class DeliveryOut(BaseModel):
    """One notification and its delivery (``Delivery.to_public_dict``): the destination in
    its display form, never its URL."""

    id: str
    interaction_id: str
    event: str
    destination: str
    status: str = Field(description="pending, delivered or failed.")
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    verified: bool = Field(description="False: made or edited outside bridgic-coldmail.")
    timer: TimerOut | None = Field(
        default=None,
        description="For a timer row (destination 'timer'): the reminder or deadline it "
        "fires. Its status reads pending (not fired yet), delivered (fired, or not needed: "
        "last_error says which) or failed.",
    )


@router.get("/runs/{interaction_id}/notifications", response_model=list[DeliveryOut])
async def api_notifications(
    interaction_id: str, agent: Agent, limit: int = Query(50, ge=1, le=MAX_PAGE)
) -> Response:
    """The run's notifications, newest first: where each went and how its delivery went."""
    await agent.get(interaction_id)  # 404 for an unknown run, as every run route
    deliveries = await agent.notifications(interaction_id, limit=limit)
    return JSONResponse([d.to_public_dict() for d in deliveries])


@router.post("/notifications/{notification_id}/retry", response_model=DeliveryOut)
async def api_retry_notification(notification_id: str, agent: Agent) -> Response:
    """Queue a failed notification again, due now (a pending or delivered one is returned
    unchanged)."""
    return JSONResponse((await agent.retry_notification(notification_id)).to_public_dict())


class ForkIn(BaseModel):
    """A fork: ``feedback`` for round 0 (the audience question), ``guidance`` for a review
    round."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(default=0, description="0: the audience question; N: review round N.")
    feedback: str | None = Field(default=None, description="For round 0: the new audience.")
    guidance: str | None = Field(default=None, description="For a review round: what to change.")
    reviewer: str | None = Field(default=None, description="Who forks it (kept in the history).")
    key: str | None = Field(
        default=None,
        description="Makes a retry safe: the same key forks once and returns that fork.",
    )


@router.post("/runs/{interaction_id}/fork", response_model=RunOut)
async def api_fork(interaction_id: str, body: ForkIn, agent: Agent) -> Response:
    """Start a variant from one of the run's pauses (the run itself is not changed): a new
    run, linked to it, given ``feedback`` or ``guidance`` there; returned as a resume or a
    revision returns a run. Each call makes another fork, unless it repeats a ``key``."""
    run = await agent.fork(
        interaction_id,
        round=body.round,
        feedback=body.feedback,
        guidance=body.guidance,
        reviewer=body.reviewer,
        key=body.key,
    )
    return run_json(run)


@router.get("/runs/{interaction_id}/family")
async def api_family(interaction_id: str, agent: Agent) -> Response:
    """The run's family: its first run, then every fork below it (status, round, what each
    fork tried), and ``variants``: the family's other approved runs, to export with it."""
    family = await agent.family(interaction_id)
    variants = await agent.family_variants(interaction_id)
    return JSONResponse({**family.to_public_dict(), "variants": variants})


@router.post("/runs/{interaction_id}/feedback", response_model=RunOut)
async def api_feedback(interaction_id: str, body: FeedbackIn, agent: Agent) -> Response:
    """Resume a paused run with feedback on the audience; returns it completed, or in review
    mode awaiting review at round 1."""
    return run_json(await agent.decide(interaction_id, body.decision()))


@router.post("/runs/{interaction_id}/approve", response_model=RunOut)
async def api_approve(interaction_id: str, body: DecisionIn, agent: Agent) -> Response:
    """Approve the sequence under review: the run completes with it as ``final``."""
    return run_json(await agent.decide(interaction_id, body.decision()))


@router.post("/runs/{interaction_id}/revise", response_model=RunOut)
async def api_revise(interaction_id: str, body: ReviseIn, agent: Agent) -> Response:
    """Ask the LLM for another version with this guidance; the run pauses at the next round.
    Refused (409) once the run reached ``max_rounds``."""
    return run_json(await agent.decide(interaction_id, body.decision()))


@router.post("/runs/{interaction_id}/edit", response_model=RunOut)
async def api_edit(interaction_id: str, body: EditIn, agent: Agent) -> Response:
    """Put the reviewer's own emails under review as the next round (no LLM call)."""
    return run_json(await agent.decide(interaction_id, body.decision()))


@router.post("/runs/{interaction_id}/reject", response_model=RunOut)
async def api_reject(interaction_id: str, body: RejectIn, agent: Agent) -> Response:
    """End the run as ``rejected`` with this reason; it is kept with its history."""
    return run_json(await agent.decide(interaction_id, body.decision()))


CSV_BODY = {
    "requestBody": {
        "required": True,
        "description": "The lead list: a UTF-8 CSV with a header row and an email column.",
        "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
    }
}


VARIANT_HELP = (
    "Another approved run exported with this one as an A/B test (repeatable): this run is "
    "variant A, the others B, C… in order; each lead gets one by a hash of its address, in a "
    "`variant` column."
)
DISABLED_RULE_HELP = (
    "A check rule that does not apply, e.g. can-spam-address (repeatable); none given: "
    "COLDMAIL_DISABLED_RULES."
)

PART_HELP = (
    "file: the exported file; template: the sending tool's paste-ready template written with "
    "it (coldmail-ID.TOOL.txt, text/plain; not for the generic profile)."
)


@router.post(
    "/runs/{interaction_id}/export",
    response_class=Response,
    openapi_extra=CSV_BODY,
    responses={
        200: {
            "description": "The exported file, one row per lead that can be sent. Headers "
            "X-Coldmail-Rows-Written, X-Coldmail-Rows-Skipped and X-Coldmail-Lint-Warnings "
            "count what the export found.",
            "content": {MEDIA_TYPES["csv"]: {}, MEDIA_TYPES["json"]: {}},
        },
    },
)
async def api_export(
    interaction_id: str,
    request: Request,
    agent: Agent,
    policy: Policy,
    format: Literal["csv", "json"] = "csv",
    strict: bool = False,
    profile: Literal["generic", "smartlead", "instantly", "lemlist", "apollo"] = "generic",
    variant: Annotated[list[str], Query(description=VARIANT_HELP)] = [],  # noqa: B006
    disabled_rule: Annotated[list[str], Query(description=DISABLED_RULE_HELP)] = [],  # noqa: B006
    part: Annotated[Literal["file", "template"], Query(description=PART_HELP)] = "file",
) -> Response:
    """Render a completed run's final sequence for every lead of the CSV body and return the
    file. 409 when the run (or a ``variant``) has no final sequence; 404 when a variant does
    not exist; 422 when nothing can be exported (or, with ``strict``, when any lead is skipped
    or a check warns), naming every problem, or when the file would be larger than
    ``COLDMAIL_MAX_EXPORT_BYTES``."""
    run = await exportable(agent, interaction_id)  # its id, normalised, names the download
    if (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower() != "text/csv":
        raise WebError(415, "send the lead list as CSV with Content-Type: text/csv")
    with private_folder() as folder:
        leads = await save_upload(request.stream(), folder)
        result = await export_upload(
            agent,
            interaction_id,
            leads,
            format=format,
            strict=strict,
            profile=profile,
            variants=variant,
            disabled_rules=disabled_rule or None,
            part=part,
            shown_as=UNNAMED,
            max_bytes=policy.max_export_bytes,
        )
        if not isinstance(result, tuple):
            raise InvalidInput(result.message)
        report, handle = result
    return download(
        handle, report, interaction_id=run.interaction_id, format=format, folder=folder, part=part
    )


async def exportable(agent: ColdMailAgent, interaction_id: str) -> Run:
    """The run, if it can be exported: checked before a lead list is read.

    Raises:
        RunNotFound, InvalidInput: as ``get``.
        RunConflict: the run has no final sequence (yet, or ever).
    """
    run = await agent.get(interaction_id)
    if run.final is not None:
        return run
    if run.status is RunStatus.AWAITING_REVIEW:
        why = f"is awaiting review at round {run.round}; approve it before exporting"
    elif run.status is RunStatus.REJECTED:
        why = "was rejected; there is nothing to export"
    else:
        why = f"is {run.status.value.replace('_', ' ')} and has no final sequence yet"
    raise RunConflict(f"run {run.interaction_id} {why}", topic="not_final")
