"""First lines for every lead (issue 23) in the inbox and the JSON API.

On an approved run's page, the "First lines for every lead" section: choose the lead list,
see the estimate (``agent.estimate_lines``: leads, tokens, the cost when prices are set),
then write the sample (``agent.personalize``), which pauses for a person as in the CLI; the
page shows it with the approve and give-guidance forms. Approving records the approval and
writes the rest **in the background** of this server process (:class:`LineWriters`); the
page shows the progress (reload it; it refreshes itself while lines are written) and, at
the end, what it took, the lines and the leads skipped with why.

A sample is only written for a list whose estimate the page showed: the start form carries
the list's digest from the estimate (``estimate_seen``), and a file that does not match gets
its estimate instead, as the export will not download rows the person was not shown.

The background writer is this process's task; the batch itself is durable. A server that
stops mid-batch leaves the leads to the next writer: the page's "Continue writing" (or
``coldmail personalize ID --leads L`` anywhere) goes on where it stopped, and no lead with a
stored line is written twice.

Every form carries the page's CSRF token and is checked like the page's other forms (the
Origin check is the app's, for every POST).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from ..agent import ColdMailAgent
from ..errors import (
    ColdmailError,
    ConfigurationError,
    InvalidInput,
    LlmError,
    RunBeingResumed,
    RunConflict,
    SnapshotIntegrityError,
)
from ..models import Run, RunStatus
from ..personalize.batch import BatchReport
from ..personalize.estimate import BatchEstimate
from ..store.batches import BatchLeadRow
from .api import JsonBodyRoute, exportable
from .dependencies import Agent, Policy
from .pages import form_expired
from .responses import WebError
from .security import csrf_matches, relative_location
from .uploads import private_folder, read_chunks, save_upload
from .views import show_run

log = logging.getLogger(__name__)

LINES_SHOWN = 50
"""Written lines the run page lists (the export has them all)."""
REFRESH_SECONDS = 3
"""How often the run page reloads itself while lines are being written."""
MAX_SAMPLE = 50
FORM_FIELDS = 8
REFUSED = (
    InvalidInput,
    RunConflict,
    RunBeingResumed,
    LlmError,
    SnapshotIntegrityError,
    ConfigurationError,
)
"""What a start or an answer can be refused with; the page says it in the section."""

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
api_router = APIRouter(prefix="/api", route_class=JsonBodyRoute)


# ---------------------------------------------------------------------------- the writers


class LineWriters:
    """The batches this server process is writing in the background, one task per batch;
    the error a task ended with, until it is started again."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.errors: dict[str, str] = {}

    def running(self, batch_id: str) -> bool:
        task = self.tasks.get(batch_id)
        return task is not None and not task.done()

    def start(self, agent: ColdMailAgent, interaction_id: str, batch_id: str) -> None:
        """Write the rest of an approved batch, unless this process is at it already."""
        if self.running(batch_id):
            return
        self.errors.pop(batch_id, None)

        async def write() -> None:
            try:
                await agent.approve_sample(interaction_id, batch=batch_id)
            except ColdmailError as exc:
                self.errors[batch_id] = str(exc)
            except Exception as exc:  # noqa: BLE001 - shown on the page, logged whole
                log.exception("writing the lines of batch %s failed", batch_id)
                self.errors[batch_id] = f"writing the lines stopped: {type(exc).__name__}"

        self.tasks[batch_id] = asyncio.create_task(write())

    async def close(self) -> None:
        """Stop every writer (the server is stopping; the batches resume later)."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()


def writers_of(request: Request) -> LineWriters:
    found: LineWriters | None = getattr(request.app.state, "line_writers", None)
    if found is None:
        found = request.app.state.line_writers = LineWriters()
    return found


# ---------------------------------------------------------------------------- the section


@dataclass(frozen=True)
class BatchView:
    """One batch as the run page shows it."""

    report: BatchReport
    lines: tuple[BatchLeadRow, ...]
    writing_here: bool
    stopped: str | None

    @property
    def batch_id(self) -> str:
        return self.report.batch.batch_id

    @property
    def state(self) -> str:
        status = self.report.batch.status
        if status == "writing" and not self.writing_here:
            return "stopped"
        return status


@dataclass(frozen=True)
class LinesSection:
    """The run page's "First lines for every lead" section."""

    batches: tuple[BatchView, ...]
    estimate: BatchEstimate | None = None
    estimate_digest: str | None = None
    file_name: str | None = None
    message: str | None = None
    message_kind: str = "notice"
    sample: str = ""
    guidance: str = ""

    @property
    def refresh(self) -> int | None:
        """Seconds to the page's next reload: while a batch is written here."""
        return REFRESH_SECONDS if any(b.state == "writing" for b in self.batches) else None


async def lines_section(
    request: Request, agent: ColdMailAgent, run: Run, **shown: Any
) -> LinesSection | None:
    """The section for an approved run (None for any other)."""
    if run.status is not RunStatus.COMPLETED or run.final is None:
        return None
    writers = writers_of(request)
    views = []
    for report in await agent.batch_reports(run.interaction_id):
        batch_id = report.batch.batch_id
        lines = await agent.batch_lines(run.interaction_id, batch_id, limit=LINES_SHOWN)
        views.append(
            BatchView(
                report,
                tuple(lines),
                writing_here=writers.running(batch_id),
                stopped=writers.errors.get(batch_id),
            )
        )
    return LinesSection(tuple(views), **shown)


def to_section(run_id: str) -> Response:
    return RedirectResponse(relative_location(f"/runs/{run_id}") + "#lines", 303)


async def _page(
    request: Request,
    agent: ColdMailAgent,
    policy: Any,
    run: Run,
    *,
    status: int = 200,
    **shown: Any,
) -> Response:
    section = await lines_section(request, agent, run, **shown)
    return await show_run(request, agent, policy, run, status=status, lines=section)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _sample_size(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_SAMPLE:
        raise InvalidInput(f"the sample is a number of leads from 1 to {MAX_SAMPLE}")
    return int(text)


# ---------------------------------------------------------------------------- the forms


@router.post("/runs/{interaction_id}/lines")
async def start_lines(
    request: Request, interaction_id: str, agent: Agent, policy: Policy
) -> Response:
    """Estimate a lead list (``estimate``), or write its sample when the form carries the
    digest of this very list's estimate; the sample then waits on the run page."""
    run = await exportable(agent, interaction_id)
    async with request.form(max_files=1, max_fields=FORM_FIELDS) as submitted:
        if not csrf_matches(request, _text(submitted, "csrf_token")):
            return form_expired(request)
        upload = submitted.get("leads")
        sample_text = _text(submitted, "sample")[:10]
        guidance = _text(submitted, "guidance")
        wants_estimate = bool(_text(submitted, "estimate"))
        seen = _text(submitted, "estimate_seen")
        kept: dict[str, Any] = {"sample": sample_text, "guidance": guidance[:2000]}
        if not isinstance(upload, UploadFile) or not upload.filename:
            return await _page(
                request,
                agent,
                policy,
                run,
                status=422,
                message_kind="error",
                message="choose the lead list's CSV file",
                **kept,
            )
        name = Path(upload.filename).name[:200]
        with private_folder() as folder:
            leads = await save_upload(read_chunks(upload.file), folder)
            await upload.close()
            try:
                sample = _sample_size(sample_text)
                digest = await asyncio.to_thread(_file_digest, leads)
                if wants_estimate or seen != digest:
                    estimate = await agent.estimate_lines(run.interaction_id, leads)
                    note = (
                        None
                        if wants_estimate
                        else (
                            "This list's estimate is shown first; choose the file again and "
                            "press Write the sample to start."
                        )
                    )
                    return await _page(
                        request,
                        agent,
                        policy,
                        run,
                        estimate=estimate,
                        estimate_digest=digest,
                        file_name=name,
                        message=note,
                        **kept,
                    )
                await agent.personalize(
                    run.interaction_id, leads, sample=sample, guidance=guidance or None
                )
            except REFUSED as exc:
                return await _page(
                    request,
                    agent,
                    policy,
                    run,
                    status=exc.http_status,
                    message=f"No lines were written: {exc}",
                    message_kind="error",
                    **kept,
                )
    return to_section(run.interaction_id)


@router.post("/runs/{interaction_id}/lines/{batch_id}/approve")
async def approve_lines(
    request: Request,
    interaction_id: str,
    batch_id: str,
    agent: Agent,
    policy: Policy,
    csrf_token: str = Form(""),
) -> Response:
    """Approve the sample; the rest is written in the background (the page shows it)."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    run = await exportable(agent, interaction_id)
    try:
        await agent.approve_sample(run.interaction_id, batch=batch_id, write_rest=False)
    except REFUSED as exc:
        return await _page(
            request,
            agent,
            policy,
            run,
            status=exc.http_status,
            message=f"The sample was not approved: {exc}",
            message_kind="error",
        )
    writers_of(request).start(agent, run.interaction_id, batch_id)
    return to_section(run.interaction_id)


@router.post("/runs/{interaction_id}/lines/{batch_id}/guide")
async def guide_lines(
    request: Request,
    interaction_id: str,
    batch_id: str,
    agent: Agent,
    policy: Policy,
    guidance: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Rewrite the sample with the guidance; it waits on the page again."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    run = await exportable(agent, interaction_id)
    try:
        await agent.guide_sample(run.interaction_id, guidance, batch=batch_id)
    except REFUSED as exc:
        return await _page(
            request,
            agent,
            policy,
            run,
            status=exc.http_status,
            message=f"The sample was not rewritten: {exc}",
            message_kind="error",
            guidance=guidance[:2000],
        )
    return to_section(run.interaction_id)


@router.post("/runs/{interaction_id}/lines/{batch_id}/continue")
async def continue_lines(
    request: Request,
    interaction_id: str,
    batch_id: str,
    agent: Agent,
    policy: Policy,
    csrf_token: str = Form(""),
) -> Response:
    """Go on writing an approved batch that stopped (a halt, or a server restart)."""
    if not csrf_matches(request, csrf_token):
        return form_expired(request)
    run = await exportable(agent, interaction_id)
    try:
        report = await agent.batch_status(run.interaction_id, batch=batch_id)
    except REFUSED as exc:
        return await _page(
            request,
            agent,
            policy,
            run,
            status=exc.http_status,
            message=str(exc),
            message_kind="error",
        )
    if report.batch.status != "writing":
        return await _page(
            request,
            agent,
            policy,
            run,
            status=409,
            message_kind="error",
            message="That batch is not approved and unfinished; nothing to continue.",
        )
    writers_of(request).start(agent, run.interaction_id, batch_id)
    return to_section(run.interaction_id)


def _text(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------- the API


def report_json(report: BatchReport, lines: list[BatchLeadRow] | None = None) -> dict[str, Any]:
    """A batch's report as the API returns it."""
    batch, counts = report.batch, report.counts
    body: dict[str, Any] = {
        "batch_id": batch.batch_id,
        "interaction_id": batch.interaction_id,
        "status": batch.status,
        "sample_approved": batch.sample_approved,
        "round": batch.round,
        "guidance": list(batch.guidance),
        "last_error": batch.last_error,
        "leads": batch.lead_count,
        "counts": {
            "pending": counts.pending,
            "claimed": counts.claimed,
            "written": counts.written,
            "skipped": counts.skipped,
            "calls": counts.calls,
            "tokens": counts.tokens,
        },
        "sample": [_lead_json(row) for row in report.sample],
        "skipped": [_lead_json(row) for row in report.skipped],
        "created_at": batch.created_at.isoformat(),
        "updated_at": batch.updated_at.isoformat(),
    }
    if lines is not None:
        body["lines"] = [_lead_json(row) for row in lines]
    return body


def _lead_json(row: BatchLeadRow) -> dict[str, Any]:
    return {
        "position": row.position,
        "row": row.row,
        "email": row.email,
        "state": row.state,
        "line": row.line,
        "writer": row.writer,
        "error": row.error,
        "calls": row.calls,
        "tokens": row.tokens,
        "verified": row.verified,
    }


def estimate_json(estimate: BatchEstimate) -> dict[str, Any]:
    return {
        "leads": estimate.leads,
        "prompt_tokens": estimate.tokens.prompt,
        "answer_tokens": estimate.tokens.answer,
        "tries": estimate.tries,
        "writer": estimate.writer,
        "cost": estimate.cost,
        "most_cost": estimate.most_cost,
        "text": estimate.describe(),
    }


def _csv_body(request: Request) -> None:
    kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if kind != "text/csv":
        raise WebError(415, "send the lead list as CSV with Content-Type: text/csv")


@api_router.post("/runs/{interaction_id}/lines/estimate")
async def api_estimate_lines(interaction_id: str, request: Request, agent: Agent) -> Response:
    """What writing a line for every lead of the CSV body would take (no LLM call)."""
    run = await exportable(agent, interaction_id)
    _csv_body(request)
    with private_folder() as folder:
        leads = await save_upload(request.stream(), folder)
        estimate = await agent.estimate_lines(run.interaction_id, leads)
    return JSONResponse(estimate_json(estimate))


@api_router.post("/runs/{interaction_id}/lines", status_code=201)
async def api_start_lines(
    interaction_id: str,
    request: Request,
    agent: Agent,
    sample: int | None = None,
    guidance: str | None = None,
) -> Response:
    """Write the sample for the CSV body's leads (or resume the batch for that list); the
    batch waits for ``approve`` or ``guide``."""
    run = await exportable(agent, interaction_id)
    _csv_body(request)
    if sample is not None and not 1 <= sample <= MAX_SAMPLE:
        raise InvalidInput(f"the sample is a number of leads from 1 to {MAX_SAMPLE}")
    with private_folder() as folder:
        leads = await save_upload(request.stream(), folder)
        report = await agent.personalize(
            run.interaction_id, leads, sample=sample, guidance=guidance
        )
    return JSONResponse(report_json(report), status_code=201)


@api_router.get("/runs/{interaction_id}/lines")
async def api_list_lines(interaction_id: str, agent: Agent) -> Response:
    """The run's batches, newest first."""
    reports = await agent.batch_reports(interaction_id)
    return JSONResponse([report_json(r) for r in reports])


@api_router.get("/runs/{interaction_id}/lines/{batch_id}")
async def api_get_lines(
    interaction_id: str, batch_id: str, agent: Agent, after: int = -1, limit: int = 100
) -> Response:
    """One batch, with a page of its written lines (by position, after ``after``)."""
    report = await agent.batch_status(interaction_id, batch=batch_id)
    lines = await agent.batch_lines(interaction_id, batch_id, after=after, limit=limit)
    return JSONResponse(report_json(report, lines))


@api_router.post("/runs/{interaction_id}/lines/{batch_id}/approve", status_code=202)
async def api_approve_lines(
    interaction_id: str, batch_id: str, request: Request, agent: Agent
) -> Response:
    """Approve the sample; the rest is written in the background of this server (202)."""
    report = await agent.approve_sample(interaction_id, batch=batch_id, write_rest=False)
    writers_of(request).start(agent, report.batch.interaction_id, batch_id)
    return JSONResponse(report_json(report), status_code=202)


@api_router.post("/runs/{interaction_id}/lines/{batch_id}/guide")
async def api_guide_lines(
    interaction_id: str, batch_id: str, body: dict[str, Any], agent: Agent
) -> Response:
    """Rewrite the sample with ``{"guidance"}``; it waits again."""
    guidance = body.get("guidance")
    if not isinstance(guidance, str):
        raise InvalidInput('send {"guidance": "…"}: what to change in the sample')
    report = await agent.guide_sample(interaction_id, guidance, batch=batch_id)
    return JSONResponse(report_json(report))
