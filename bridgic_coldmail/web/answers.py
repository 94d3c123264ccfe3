"""A person's answer sent from a page — the run page's forms, a one-click link's — read into
the one :class:`~bridgic_coldmail.models.Decision` type, applied, and explained.

:func:`decision_form` reads a submitted form (feedback, approve, revise, edit, reject) and
:func:`apply_decision` applies it through ``ColdMailAgent.decide``, the path every front end
takes, so the store's claim decides which answer counts:

* the same form submitted twice (a double click) applies once and both answers show the
  result — the second waits for the first, or gets the stored result;
* a different answer for a pause that was already answered changes nothing and gets a 409
  page saying which answer was taken (the feedback used; the decision, by whom and when;
  the deadline's outcome, in the agent's words, when the deadline answered for the person);
* an answer that does not fit the run's state (a decision while the run still waits for
  audience feedback, past its round limit, or not started for review) changes nothing and
  gets a 409 page with the agent's reason.

A refused answer shows the page again with what the person typed still in its form: an edit
whose emails do not validate as an ``EmailSequence`` keeps every field as typed. (The JSON
API answers a race with the agent's own error, 409, worded by the agent.)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from ..agent import ColdMailAgent
from ..errors import InvalidInput, LlmError, RunBeingResumed, RunConflict
from ..models import Decision, Run, RunStatus, make_decision
from .views import (
    Applied,
    FormState,
    NotApplied,
    Outcome,
    decision_at,
    describe_decision,
    same_decision,
)

ANSWER_FIELDS = {
    "feedback": ("feedback",),
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
"""Each answer form's own fields (besides ``reviewer``, ``round`` and the CSRF token)."""


class DecisionForm:
    """One submitted answer form: its kind, fields as typed, and the decision it makes."""

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
    """The ``kind`` answer (feedback, approve, revise, edit, reject) a form submitted, from
    its fields as typed (a missing field is empty). Feedback answers the audience question:
    it carries no round."""
    typed = {name: fields.get(name, "") for name in ANSWER_FIELDS[kind]}
    reviewer = fields.get("reviewer", "")
    round = "" if kind == "feedback" else fields.get("round", "")
    if kind in ("feedback", "revise", "reject"):
        text = typed[{"feedback": "feedback", "revise": "guidance", "reject": "reason"}[kind]]
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


async def apply_decision(
    agent: ColdMailAgent, interaction_id: str, decision: DecisionForm
) -> Outcome:
    """Apply the answer through ``agent.decide``; when it was not applied, say why: it does
    not validate, does not fit the run, or lost a race (and to which answer)."""
    try:
        run = await agent.decide(interaction_id, decision.decision())
    except RunBeingResumed:
        if decision.kind == "feedback":
            return await _after_simultaneous_feedback(agent, interaction_id, decision)
        return await _after_a_simultaneous_decision(agent, interaction_id, decision)
    except RunConflict as exc:
        if decision.kind == "feedback" and exc.topic == "deadline":
            # The deadline answered (or is answering) for the person: the agent's words say
            # so, and when; "refined with other feedback" would be untrue of a rejected run.
            run = await agent.get(interaction_id)
            return NotApplied(run, 409, f"Your feedback was not used: {exc}.")
        if decision.kind == "feedback":
            run = await agent.get(interaction_id)
            message = (
                "Your feedback was not used: this run was already refined with other feedback, "
                "shown below. Start a new run to try another audience."
            )
            return NotApplied(run, 409, message)
        return await _not_applied(agent, interaction_id, decision, str(exc))
    except (InvalidInput, LlmError) as exc:
        run = await agent.get(interaction_id)
        return NotApplied(run, exc.http_status, str(exc), decision.kept)
    return Applied(run)


async def wait_until_settled(agent: ColdMailAgent, interaction_id: str) -> Run:
    """The run once it is no longer being worked on, or as it is after twice the LLM timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * agent.llm_timeout
    while True:
        run = await agent.get(interaction_id)
        if run.status is not RunStatus.RESUMING or loop.time() >= deadline:
            return run
        await asyncio.sleep(0.2)


async def _after_simultaneous_feedback(
    agent: ColdMailAgent, interaction_id: str, feedback: DecisionForm
) -> Outcome:
    """Another submission holds the run: wait for it, then say whose feedback was used."""
    mine = feedback.decision().text  # decide() accepted it before finding the run taken
    run = await wait_until_settled(agent, interaction_id)
    if run.feedback == mine and run.status is not RunStatus.AWAITING_FEEDBACK:
        # The same text submitted twice (a double click): the first submission is ours.
        return Applied(run)
    if run.status is RunStatus.AWAITING_FEEDBACK:
        message = (
            "Your feedback was not used: another submission was being refined at the same "
            "moment and failed. Your text is still in the form; submit it again."
        )
        return NotApplied(run, 409, message, feedback.kept)
    if run.status is RunStatus.RESUMING:
        message = (
            "Your feedback was not used: another reviewer's feedback, shown below, is being "
            "applied right now."
        )
    else:
        message = (
            "Your feedback was not used: another reviewer sent different feedback at the same "
            "moment, and the run was refined with theirs, shown below."
        )
    return NotApplied(run, 409, message)


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
