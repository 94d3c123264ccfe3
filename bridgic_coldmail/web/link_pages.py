"""A one-click link's page: ``/l/<token>`` opens one run's current pause, with no login.

For a genuine, unexpired link (see :mod:`..notify.links` and ``ColdMailAgent.open_link``)
the page shows:

* while the run waits at the link's pause: the brief, the draft and the audience question, or
  the sequence under review (the changes since the round before marked) and the four
  decisions, with the checks before sending;
* while an answer to that pause is being applied: that it is;
* once the pause is answered: what was decided, by whom and when — only that.

It links to nothing else (no inbox, no other run, no history), sets no cookie, and needs no
``COLDMAIL_WEB_TOKEN`` (``TokenGuard`` lets :data:`LINK_PATH` through): the signed token is
the credential, and it grants this pause and nothing more.

Opening it (GET, HEAD) never changes anything: mail scanners and chat previews open links,
and nothing on the page submits by itself. A form on it (``POST /l/<token>/<answer>``) is
applied by the run page's own code (:func:`.answers.apply_decision`: ``decide``, the store's
claim, lease and fencing, the same validation, the same explanation of a race) once the
form token it carries proves it came from this link's page; a decision is taken for the
link's round, whatever the form says. The answer then leads back to the link (303), which
shows what was decided. The same form sent again once the pause is answered (a retry after
its answer was lost) gets that same 303, the recorded result; any other answer is refused.

Refusals carry no run data: a forged, edited or truncated link, or a form from elsewhere,
403; an expired link 410; a run no longer stored 404; a form sent once the pause is answered
410; a form the link's pause does not have 404 — a page, or JSON for a client that asks
for it (``responses.wants_json``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..agent import ColdMailAgent
from ..errors import InvalidInput, LinkAnswered, LinkRunGone, RunNotFound
from ..models import RunEvent, RunStatus
from ..notify.links import LINK_PATH, RUN_GONE, OpenedLink, check_run
from .answers import apply_decision, decision_form
from .dependencies import Agent
from .responses import WebError, templates
from .security import relative_location
from .views import (
    Applied,
    FormState,
    clip,
    decision_at,
    describe_decision,
    form_text,
    pause_context,
    same_decision,
)

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

ANSWERS = ("feedback", "approve", "revise", "edit", "reject")
"""The forms a link's page may carry: feedback at the audience question, the four decisions
at a review round."""
MAX_FORM_FIELDS = 16
_TIME = "%Y-%m-%d %H:%M:%S"

# The page's sentences, in one place.
ANSWERED_TITLE = "Already answered"
ANSWERING_TITLE = "Being answered"
ANSWERING = (
    "An answer to this question is being applied right now. Open this link again in a "
    "moment to see what was decided."
)
NOTHING_MORE = "This link can change nothing more."
ANSWERED_UNKNOWN = "This question was already answered."
NO_SUCH_FORM = "this link's page has no such form; open the link again and answer there"
ANSWERED_REFUSAL = (
    "this link's question was already answered, so nothing was changed; open the link again "
    "to see what was decided"
)


@router.api_route(LINK_PATH + "{token}", methods=["GET", "HEAD"])  # link checkers send HEAD
async def link_page(request: Request, token: str, agent: Agent) -> Response:
    """The link's pause and its forms; or what was decided. Changes nothing."""
    try:
        return await _show(request, agent, token, await agent.open_link(token))
    except RunNotFound:  # purged since the link was opened
        raise _gone() from None


@router.post(LINK_PATH + "{token}/{answer}")
async def answer_link(request: Request, token: str, answer: str, agent: Agent) -> Response:
    """Apply the answer a form of the link's page sent; then back to the link."""
    if answer not in ANSWERS:
        raise WebError(404, NO_SUCH_FORM)
    try:
        return await _answer_link(request, token, answer, agent)
    except RunNotFound:  # purged since the link was opened
        raise _gone() from None


async def _answer_link(request: Request, token: str, answer: str, agent: ColdMailAgent) -> Response:
    async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS) as submitted:
        fields = {name: form_text(submitted, name) for name in submitted}
    opened = await agent.open_link(token, form_token=fields.get("csrf_token", ""))
    claim, run = opened.claim, opened.run
    if (answer == "feedback") != (claim.round is None):
        raise WebError(404, NO_SUCH_FORM)
    if not (opened.is_open or _being_answered(opened)):
        if await _repeats_the_answer(agent, opened, answer, fields):
            # The same form again (its answer was lost): the recorded result, not a refusal.
            return RedirectResponse(relative_location(LINK_PATH + token), 303)
        raise LinkAnswered(ANSWERED_REFUSAL, topic="answered")
    decision = decision_form(answer, _with_round(fields, claim.round))
    outcome = await apply_decision(agent, run.interaction_id, decision)
    if isinstance(outcome, Applied):
        return RedirectResponse(relative_location(LINK_PATH + token), 303)
    now = replace(opened, run=outcome.run, is_open=check_run(claim, outcome.run, to_act=False))
    return await _show(
        request,
        agent,
        token,
        now,
        status=outcome.status,
        message=outcome.message,
        form=outcome.form,
    )


def _gone() -> LinkRunGone:
    return LinkRunGone(RUN_GONE, topic="not_found")


async def _repeats_the_answer(
    agent: ColdMailAgent, opened: OpenedLink, answer: str, fields: dict[str, str]
) -> bool:
    """Whether the form repeats what answered the link's pause, by the store's rule for a
    repeat (``Decision.same_as``: the same feedback, or the same decision for that round,
    whoever sends it)."""
    run, round = opened.run, opened.claim.round
    try:
        decision = decision_form(answer, _with_round(fields, round)).decision()
    except InvalidInput:
        return False
    if decision.kind == "feedback":
        return run.feedback == decision.text and run.status is not RunStatus.AWAITING_FEEDBACK
    taken = decision_at(await agent.history(run.interaction_id), round)
    return taken is not None and same_decision(taken, decision)


def _with_round(fields: dict[str, str], round: int | None) -> dict[str, str]:
    """The form's fields with the link's round: a decision is taken for the link's round,
    whatever the form says (feedback, at the audience question, has none)."""
    return fields if round is None else {**fields, "round": str(round)}


def _being_answered(opened: OpenedLink) -> bool:
    """An answer to the link's own pause is being applied (it may yet fail and give the run
    back): a form sent now goes to the agent, which waits and says whose answer counted."""
    run = opened.run
    pause = run.pause_id or run.interaction_id
    return run.status is RunStatus.RESUMING and pause == opened.claim.pause_id


async def _show(
    request: Request,
    agent: ColdMailAgent,
    token: str,
    opened: OpenedLink,
    *,
    status: int = 200,
    message: str | None = None,
    form: FormState | None = None,
) -> Response:
    """The link's page for the run as ``opened`` found it."""
    run, claim = opened.run, opened.claim
    context: dict[str, Any] = {"message": message, "message_kind": "error"}
    if opened.is_open:
        history = await agent.history(run.interaction_id)
        issues = await agent.lint(run.interaction_id)
        context |= {
            "view": "pause",
            "title": run.brief.product,
            "base": LINK_PATH + token,
            "expires_at": claim.expires_at,
        }

        def render() -> Response:  # the change highlighting is CPU work: off the event loop
            shown = pause_context(
                run, history, issues, csrf=opened.form_token, form=form or FormState()
            )
            return templates.TemplateResponse(request, "link.html", context | shown, status)

        return await asyncio.to_thread(render)
    if _being_answered(opened):
        context |= {"view": "answering", "title": ANSWERING_TITLE, "outcome": ANSWERING}
    else:
        answered = _answer(await agent.history(run.interaction_id), claim.round)
        context |= {"view": "answered", "title": ANSWERED_TITLE, "outcome": answered}
    context["after"] = NOTHING_MORE
    return templates.TemplateResponse(request, "link.html", context, status)


def _answer(history: list[RunEvent], round: int | None) -> str:
    """What answered the link's pause, by whom and when, in one sentence: the feedback at
    the audience question (``round`` None), else the decision of that review round."""
    if round is None:
        given = [event for event in history if event.kind == "feedback"]
        if not given:
            return ANSWERED_UNKNOWN
        event = given[-1]  # any earlier one failed and gave the run back
        who, audience = event.actor or "A reviewer", clip(event.detail or "")
        return f"{who} answered with the audience “{audience}”, at {event.at:{_TIME}} UTC."
    decided = decision_at(history, round)
    if decided is None:
        return ANSWERED_UNKNOWN
    said = describe_decision(decided, "A reviewer")
    return f"Round {round}: {said}, at {decided.at:{_TIME}} UTC."
