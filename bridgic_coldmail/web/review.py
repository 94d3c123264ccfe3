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

:func:`decision_form` reads a submitted form and :func:`apply_decision` applies it and
explains a race, whichever page the form was on: the run page here, a one-click link's page
in :mod:`.link_pages`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from ..agent import ColdMailAgent
from ..errors import InvalidInput, LlmError, RunBeingResumed, RunConflict
from ..models import Decision, RunStatus, make_decision
from .dependencies import Agent, Policy
from .pages import answer_on_run_page, form_expired, wait_until_settled
from .security import WebPolicy, csrf_matches
from .views import (
    Applied,
    FormState,
    NotApplied,
    Outcome,
    decision_at,
    describe_decision,
    same_decision,
)

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

DECISION_FIELDS = {
    "approve": (),
    "revise": ("guidance",),
    "edit": (
        "opener_subject",
        "opener_body",
        "follow_up_subject",
        "follow_up_body",
        "follow_up_wait_days",
    ),
    "reject": ("reason",),
}
"""Each decision form's own fields (besides ``reviewer``, ``round`` and the CSRF token)."""


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


class DecisionForm:
    """One submitted decision form: its kind, fields as typed, and what the agent gets."""

    def __init__(
        self,
        kind: str,
        reviewer: str,
        round: str,
        typed: dict[str, str],
        *,
        text: str | None = None,
        sequence: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.reviewer = reviewer
        self.round_text = round
        self.text = text
        self.sequence = sequence
        self.kept = FormState(kind, {**typed, "reviewer": reviewer})

    def round(self) -> int | None:
        """The round the form was shown for (None when it carries none)."""
        text = self.round_text.strip()
        if not text:
            return None
        if not re.fullmatch(r"[0-9]{1,9}", text):  # not isdigit(): "²" and "١" are digits
            raise InvalidInput("the form's round is not a number; reload the run page")
        return int(text)

    def name(self) -> str | None:
        """The reviewer's name, or None when left blank."""
        return self.reviewer if self.reviewer.strip() else None

    def decision(self) -> Decision:
        """The decision as the agent takes it (validated: ``InvalidInput`` when it is not)."""
        return make_decision(
            self.kind,
            text=self.text,
            sequence=self.sequence,
            reviewer=self.name(),
            round=self.round(),
        )


def decision_form(kind: str, fields: Mapping[str, str]) -> DecisionForm:
    """The ``kind`` decision (approve, revise, edit, reject) a form submitted, from its
    fields as typed (a missing field is empty)."""
    typed = {name: fields.get(name, "") for name in DECISION_FIELDS[kind]}
    reviewer, round = fields.get("reviewer", ""), fields.get("round", "")
    if kind in ("revise", "reject"):
        text = typed["guidance" if kind == "revise" else "reason"]
        return DecisionForm(kind, reviewer, round, typed, text=text)
    if kind == "edit":
        sequence = {
            "opener": {
                "subject": _one_line(typed["opener_subject"]),
                "body": _as_typed(typed["opener_body"]),
                "wait_days": 0,
            },
            "follow_up": {
                "subject": _one_line(typed["follow_up_subject"]),
                "body": _as_typed(typed["follow_up_body"]),
                "wait_days": typed["follow_up_wait_days"].strip(),
            },
        }
        return DecisionForm(kind, reviewer, round, typed, sequence=sequence)
    return DecisionForm(kind, reviewer, round, typed)


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


async def apply_decision(
    agent: ColdMailAgent, interaction_id: str, decision: DecisionForm
) -> Outcome:
    """Apply the decision through the agent's claim; when it was not applied, say why: it
    does not validate, does not fit the run, or lost a race (and to which decision)."""
    try:
        run = await agent.decide(interaction_id, decision.decision())
    except RunBeingResumed:
        return await _after_a_simultaneous_decision(agent, interaction_id, decision)
    except RunConflict as exc:
        return await _not_applied(agent, interaction_id, decision, str(exc))
    except (InvalidInput, LlmError) as exc:
        run = await agent.get(interaction_id)
        return NotApplied(run, exc.http_status, str(exc), decision.kept)
    return Applied(run)


async def _after_a_simultaneous_decision(
    agent: ColdMailAgent, interaction_id: str, decision: DecisionForm
) -> Outcome:
    """Another decision holds the run: wait for it, then say whether it was this one."""
    # The agent accepted this decision before finding the run taken: it validates again.
    mine = decision.decision()
    run = await wait_until_settled(agent, interaction_id)
    history = await agent.history(interaction_id)
    taken = decision_at(history, mine.round)
    if taken is not None and same_decision(taken, mine):
        return Applied(run)  # the same form twice: the first submission is ours
    if taken is not None:
        return await _not_applied(agent, interaction_id, decision, "")
    if run.status is RunStatus.RESUMING:
        message = (
            "Your decision was not applied: another reviewer's decision is being applied right "
            "now. Look at the run again in a moment."
        )
        kept = None
    else:
        message = (
            "Your decision was not applied: another decision was being applied at the same "
            "moment and failed. What you typed is still in the form; submit it again."
        )
        kept = decision.kept
    return NotApplied(run, 409, message, kept)


async def _not_applied(
    agent: ColdMailAgent, interaction_id: str, decision: DecisionForm, reason: str
) -> NotApplied:
    """The 409: which decision this round took instead, or the agent's ``reason``."""
    run = await agent.get(interaction_id)
    history = await agent.history(interaction_id)
    round = decision.round()
    taken = decision_at(history, round) if round is not None else None
    if taken is not None:
        message = (
            f"Your decision was not applied: round {taken.round} was already decided — "
            f"{describe_decision(taken, 'another reviewer')}, at "
            f"{taken.at:%Y-%m-%d %H:%M:%S} UTC. The run as it is now is shown below."
        )
    else:
        message = f"Your decision was not applied: {reason}."
    kept = decision.kept if run.status is RunStatus.AWAITING_REVIEW else None
    return NotApplied(run, 409, message, kept)


def _as_typed(text: str) -> str:
    """A textarea's text as the reviewer typed it: browsers send each line break as CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _one_line(text: str) -> str:
    """A subject: one line, without the spaces around it."""
    return text.strip()
