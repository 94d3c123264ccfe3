"""The review decisions from the run page: approve, revise, edit, reject.

Each form carries the round it was shown for. The agent applies one decision per round
through the store's claim, so:

* the same form submitted twice (a double click) applies once and both answers show the
  result — the second waits for the first, or gets the stored result;
* a different decision for a round that was already decided changes nothing and gets a
  409 page saying which decision was taken, by whom and when;
* a decision that does not fit the run's state (it still waits for audience feedback, is past
  its round limit, or was not started for review) changes nothing and gets a 409 page with
  the agent's reason.

A refused decision shows the run page again with what the reviewer typed still in its form:
an edit whose emails do not validate as an ``EmailSequence`` keeps every field as typed.

Reading the form, applying it and explaining a race are :mod:`.answers`' (the same for the
audience feedback, and for a one-click link's page in :mod:`.link_pages`).
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from ..agent import ColdMailAgent
from .answers import DecisionForm, apply_decision, decision_form
from .dependencies import Agent, Policy
from .pages import answer_on_run_page, form_expired
from .security import WebPolicy, csrf_matches

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


@router.post("/runs/{interaction_id}/approve")
async def approve(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    reviewer: str = Form(""),
    round: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Approve the sequence under review; the run completes with it."""
    decision = decision_form("approve", {"reviewer": reviewer, "round": round})
    return await _decide(request, agent, policy, interaction_id, csrf_token, decision)


@router.post("/runs/{interaction_id}/revise")
async def revise(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    guidance: str = Form(""),
    reviewer: str = Form(""),
    round: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Ask the LLM for another version with the reviewer's guidance."""
    typed = {"guidance": guidance, "reviewer": reviewer, "round": round}
    decision = decision_form("revise", typed)
    return await _decide(request, agent, policy, interaction_id, csrf_token, decision)


@router.post("/runs/{interaction_id}/edit")
async def edit(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    opener_subject: str = Form(""),
    opener_body: str = Form(""),
    follow_up_subject: str = Form(""),
    follow_up_body: str = Form(""),
    follow_up_wait_days: str = Form(""),
    reviewer: str = Form(""),
    round: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """Put the reviewer's own emails under review as the next round."""
    typed = {
        "opener_subject": opener_subject,
        "opener_body": opener_body,
        "follow_up_subject": follow_up_subject,
        "follow_up_body": follow_up_body,
        "follow_up_wait_days": follow_up_wait_days,
        "reviewer": reviewer,
        "round": round,
    }
    decision = decision_form("edit", typed)
    return await _decide(request, agent, policy, interaction_id, csrf_token, decision)


@router.post("/runs/{interaction_id}/reject")
async def reject(
    request: Request,
    interaction_id: str,
    agent: Agent,
    policy: Policy,
    reason: str = Form(""),
    reviewer: str = Form(""),
    round: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    """End the run as rejected, with the reviewer's reason."""
    typed = {"reason": reason, "reviewer": reviewer, "round": round}
    decision = decision_form("reject", typed)
    return await _decide(request, agent, policy, interaction_id, csrf_token, decision)


async def _decide(
    request: Request,
    agent: ColdMailAgent,
    policy: WebPolicy,
    interaction_id: str,
    csrf: str,
    decision: DecisionForm,
) -> Response:
    """Apply the decision; on success back to the run page, else the page saying why."""
    if not csrf_matches(request, csrf):
        return form_expired(request)
    outcome = await apply_decision(agent, interaction_id, decision)
    return await answer_on_run_page(request, agent, policy, outcome)
