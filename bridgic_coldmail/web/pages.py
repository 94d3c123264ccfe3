"""The reviewer's pages: the inbox, a run, and its feedback form.

Submitting feedback resumes the run through the store's claim, so one submission is used
however many arrive at once. A second submission of the *same* feedback waits for the first
and shows its result; a submission of *different* feedback that lost the race is told, with a
409 page showing the feedback that was used, that its own was not.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from datetime import datetime, timezone

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from ..agent import ColdMailAgent
from ..errors import InvalidInput, LlmError, RunBeingResumed, RunConflict
from ..models import MAX_FEEDBACK_CHARS, Run, RunEvent, RunStatus, validate_feedback
from .api import MAX_OFFSET
from .dependencies import Agent, Policy
from .responses import error_response, templates
from .security import (
    CSRF_COOKIE,
    WebPolicy,
    csrf_matches,
    csrf_token,
    relative_location,
    set_private_cookie,
)

PAGE_SIZE = 20
"""Runs per inbox page."""
MAX_INBOX_PAGE = MAX_OFFSET // PAGE_SIZE + 1

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


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


def render_run(
    request: Request,
    policy: WebPolicy,
    run: Run,
    history: list[RunEvent],
    *,
    status: int = 200,
    message: str | None = None,
    message_kind: str = "notice",
    feedback_text: str | None = None,
) -> Response:
    """The run page; sets the CSRF cookie its form needs."""
    csrf = csrf_token(request)
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
    set_private_cookie(response, request, policy, CSRF_COOKIE, csrf)
    return response


@router.get("/")
async def inbox(
    request: Request,
    agent: Agent,
    tab: str = "awaiting",
    page: int = Query(1, ge=1, le=MAX_INBOX_PAGE),
) -> Response:
    """Runs waiting for feedback (or completed ones), newest first."""
    status = RunStatus.COMPLETED if tab == "completed" else RunStatus.AWAITING_FEEDBACK
    runs = await agent.list(status, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
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


@router.get("/runs/{interaction_id}")
async def run_page(request: Request, interaction_id: str, agent: Agent, policy: Policy) -> Response:
    """A run: its brief, draft, feedback form or refinement, and history."""
    run = await agent.get(interaction_id)
    return render_run(request, policy, run, await agent.history(interaction_id))


@router.post("/runs/{interaction_id}/feedback")
async def submit_feedback(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    feedback: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Resume the run with the form's feedback; on success, back to the run page."""
    if not csrf_matches(request, csrf_token):
        message = (
            "This form did not come from this page (missing or wrong CSRF token). "
            "Reload the run page and submit again; nothing was changed."
        )
        return error_response(request.scope, 403, "Forbidden", message, title="Form expired")
    try:
        run = await agent.resume(interaction_id, feedback)
    except RunBeingResumed:
        return await _after_a_simultaneous_submit(request, agent, policy, interaction_id, feedback)
    except RunConflict:
        run = await agent.get(interaction_id)
        message = (
            "Your feedback was not used: this run was already refined with other feedback, "
            "shown below. Start a new run to try another audience."
        )
        return await _run_with_message(request, agent, policy, run, 409, message)
    except (InvalidInput, LlmError) as exc:
        run = await agent.get(interaction_id)
        return await _run_with_message(
            request, agent, policy, run, exc.http_status, str(exc), feedback_text=feedback
        )
    return RedirectResponse(relative_location(f"/runs/{run.interaction_id}"), 303)


async def _after_a_simultaneous_submit(
    request: Request, agent: ColdMailAgent, policy: WebPolicy, interaction_id: str, feedback: str
) -> Response:
    """Another submission holds the run: wait for it, then say whose feedback was used."""
    mine = validate_feedback(feedback)  # resume() accepted it before finding the run taken
    run = await _wait_until_settled(agent, interaction_id)
    if run.feedback == mine and run.status is not RunStatus.AWAITING_FEEDBACK:
        # The same text submitted twice (a double click): the first submission is ours.
        return RedirectResponse(relative_location(f"/runs/{run.interaction_id}"), 303)
    if run.status is RunStatus.COMPLETED:
        message = (
            "Your feedback was not used: another reviewer sent different feedback at the same "
            "moment, and the run was refined with theirs, shown below."
        )
        return await _run_with_message(request, agent, policy, run, 409, message)
    if run.status is RunStatus.RESUMING:
        message = (
            "Your feedback was not used: another reviewer's feedback, shown below, is being "
            "applied right now."
        )
        return await _run_with_message(request, agent, policy, run, 409, message)
    message = (
        "Your feedback was not used: another submission was being refined at the same moment "
        "and failed. Your text is still in the form; submit it again."
    )
    return await _run_with_message(
        request, agent, policy, run, 409, message, feedback_text=feedback
    )


async def _run_with_message(
    request: Request,
    agent: ColdMailAgent,
    policy: WebPolicy,
    run: Run,
    status: int,
    message: str,
    *,
    feedback_text: str | None = None,
) -> Response:
    history = await agent.history(run.interaction_id)
    return render_run(
        request,
        policy,
        run,
        history,
        status=status,
        message=message,
        message_kind="error",
        feedback_text=feedback_text,
    )


async def _wait_until_settled(agent: ColdMailAgent, interaction_id: str) -> Run:
    """The run once it is no longer being resumed, or as it is after twice the LLM timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * agent.llm_timeout
    while True:
        run = await agent.get(interaction_id)
        if run.status is not RunStatus.RESUMING or loop.time() >= deadline:
            return run
        await asyncio.sleep(0.2)
