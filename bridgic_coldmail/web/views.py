"""What the run page shows, built from a run, its history and its lint: the review rounds, the
words each version changed, and the forms with whatever the reviewer typed.

The rounds come from the history alone: each ``review`` event is a round (its sequence and
when it was put up), and the decision event of the same round (``approved``, ``revised``,
``edited``, ``rejected``) says who ended it, how and when.
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from markupsafe import Markup
from rapidfuzz.distance import Indel

from ..agent import ColdMailAgent
from ..export.lint import RULES, LintIssue
from ..export.profiles import PROFILES
from ..export.writer import MAX_VARIANTS
from ..models import (
    MAX_FEEDBACK_CHARS,
    MAX_PAGE,
    MAX_REASON_CHARS,
    MAX_REVIEWER_CHARS,
    Decision,
    EmailSequence,
    EmailStep,
    Run,
    RunEvent,
    RunStatus,
)
from ..notify.policy import OUTCOME_WORDS
from .responses import templates
from .security import CSRF_COOKIE, WebPolicy, csrf_token, set_private_cookie
from .uploads import ExportRefused, ExportShown

if TYPE_CHECKING:
    from ..store.forks import Family
    from ..store.outbox import Delivery

DECISION_OF_EVENT = {
    "approved": "approve",
    "revised": "revise",
    "edited": "edit",
    "rejected": "reject",
}
"""History event kind → the decision it records."""

EVENT_LABELS = {
    "paused": "paused for audience feedback",
    "feedback": "feedback received",
    "failed": "failed and given back",
    "review": "put up for review",
    "approved": "approved",
    "revised": "revision asked",
    "edited": "edited by the reviewer",
    "rejected": "rejected",
    "completed": "completed",
}


def _max_length(name: str) -> int:
    limits = [getattr(m, "max_length", None) for m in EmailStep.model_fields[name].metadata]
    return next(limit for limit in limits if isinstance(limit, int))


SUBJECT_LIMIT = _max_length("subject")
BODY_LIMIT = _max_length("body")
"""The edit form's ``maxlength``: the sequence schema's own limits."""
MAX_DIFF_CELLS = (BODY_LIMIT // 2 + 1) ** 2
"""The most word pairs (words before × words after, common ends trimmed) the change
highlighting aligns: every valid body fits, as it has at most ``BODY_LIMIT // 2 + 1`` words.
The work is at most ``MAX_DIFF_CELLS / 64`` steps (about 0.1 million)."""
_WORD = re.compile(r"\S+")
"""A word: what ``str.split()`` separates (both take the same characters for spaces)."""
MAX_SHOWN_ROUNDS = 20
"""Decided rounds the run page shows with their emails, the newest; it counts the others."""
MAX_SHOWN_EVENTS = 60
"""History events the run page lists, the newest; it counts the others. With the rounds'
cap, a page stays the same size however many rounds a run has been through."""
MAX_SHOWN_ROWS = 100
"""Rows an export leaves out listed with their address and why; the others by number."""
MAX_LISTED_ROW_NUMBERS = 5000
"""Row numbers listed after those rows; past them the page counts the rest."""


def age(moment: datetime) -> str:
    """'3 min', '2 h', '5 d' since ``moment``."""
    seconds = max(0, int((datetime.now(timezone.utc) - moment).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def highlight_changes(before: str, after: str) -> Markup:
    """``after`` with the words that differ from ``before`` in ``<ins>``, everything escaped.

    Words are compared, not the spaces between them (a change of spacing alone is no change).
    The unmarked words are a longest common subsequence of the two texts' words, found by
    rapidfuzz's bit-parallel LCS in ``ceil(n / 64) * m`` steps whatever the words are; once
    the common ends are trimmed, a middle of more than :data:`MAX_DIFF_CELLS` word pairs is
    marked whole instead. Each run of changed words is escaped and wrapped as one piece.
    """
    words = list(_WORD.finditer(after))
    changed = _changed_words(before.split(), [word.group() for word in words])
    parts: list[str] = []
    shown = 0  # where the text not yet in ``parts`` starts
    index = 0
    while index < len(words):
        if not changed[index]:
            index += 1
            continue
        last = index
        while last + 1 < len(words) and changed[last + 1]:
            last += 1
        start, end = words[index].start(), words[last].end()
        parts += [html.escape(after[shown:start]), "<ins>", html.escape(after[start:end])]
        parts.append("</ins>")
        shown, index = end, last + 1
    parts.append(html.escape(after[shown:]))
    return Markup("".join(parts))


def _changed_words(old: list[str], new: list[str]) -> list[bool]:
    """For each word of ``new``, whether it is outside a longest common subsequence with
    ``old`` (or, past the bound, inside the middle that differs)."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old), len(new)
    while end_old > start and end_new > start and old[end_old - 1] == new[end_new - 1]:
        end_old, end_new = end_old - 1, end_new - 1
    changed = [False] * len(new)
    middle_old, middle_new = old[start:end_old], new[start:end_new]
    if not middle_new:
        return changed
    if not middle_old or len(middle_old) * len(middle_new) > MAX_DIFF_CELLS:
        changed[start:end_new] = [True] * len(middle_new)
        return changed
    ids: dict[str, int] = {}  # small integers: rapidfuzz would compare other objects by hash
    a = [ids.setdefault(word, len(ids)) for word in middle_old]
    b = [ids.setdefault(word, len(ids)) for word in middle_new]
    for op in Indel.opcodes(a, b):
        if op.tag != "equal":
            changed[start + op.dest_start : start + op.dest_end] = [True] * (
                op.dest_end - op.dest_start
            )
    return changed


def diff(before: EmailSequence, after: EmailSequence) -> list[dict[str, Markup]]:
    """Each email of ``after`` with what changed since ``before`` marked."""
    return [
        {
            "subject": highlight_changes(old.subject, new.subject),
            "body": highlight_changes(old.body, new.body),
        }
        for old, new in zip(before.steps, after.steps, strict=True)
    ]


@dataclass(frozen=True)
class ReviewRound:
    """One review round: the sequence put up, and the decision that ended it (if any yet)."""

    number: int
    sequence: EmailSequence
    at: datetime
    decision: RunEvent | None
    verified: bool


def review_rounds(history: list[RunEvent]) -> list[ReviewRound]:
    """The rounds in order, each with its decision."""
    rounds: list[ReviewRound] = []
    for event in history:
        if event.kind == "review" and event.sequence is not None and event.round is not None:
            rounds.append(ReviewRound(event.round, event.sequence, event.at, None, event.verified))
        elif event.kind in DECISION_OF_EVENT and rounds and rounds[-1].number == event.round:
            last = rounds[-1]
            rounds[-1] = ReviewRound(
                last.number, last.sequence, last.at, event, last.verified and event.verified
            )
    return rounds


def decision_at(history: list[RunEvent], round: int | None) -> RunEvent | None:
    """The decision event of ``round`` (None: the latest decision), if one was taken."""
    decisions = [e for e in history if e.kind in DECISION_OF_EVENT]
    if round is not None:
        decisions = [e for e in decisions if e.round == round]
    return decisions[-1] if decisions else None


def same_decision(event: RunEvent, mine: Decision) -> bool:
    """Whether the recorded decision is the one ``mine`` would make (whoever made it)."""
    kind = DECISION_OF_EVENT[event.kind]
    text = event.detail if kind in ("revise", "reject") else None
    recorded = Decision(kind=kind, text=text, sequence=event.sequence)  # type: ignore[arg-type]
    return recorded.same_as(mine)


def describe_decision(event: RunEvent, who: str | None = None) -> str:
    """'Ann asked for a revision: “shorter”', for the rounds list and conflict messages."""
    actor = event.actor or who or "a reviewer"
    detail = clip(event.detail or "")
    return {
        "approved": f"{actor} approved it",
        "revised": f"{actor} asked for a revision: “{detail}”",
        "edited": f"{actor} edited the emails",
        "rejected": f"{actor} rejected the run: “{detail}”",
    }[event.kind]


def event_label(event: RunEvent) -> str:
    """One history line's label: what happened, in which round, by whom."""
    label = EVENT_LABELS[event.kind]
    if event.round is not None and event.kind != "completed":
        label += f" (round {event.round})"
    if event.actor:
        label += f" by {event.actor}"
    return label


def clip(text: str, width: int = 200) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class FormState:
    """What a reviewer submitted, shown again when it was not applied: which form, and its
    fields as typed."""

    open: str | None = None
    """``feedback``, ``new``, ``approve``, ``revise``, ``edit``, ``reject`` or ``export``."""
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """A submitted answer (feedback or a decision) is applied: here is the run after it."""

    run: Run


@dataclass(frozen=True)
class NotApplied:
    """A submitted answer changed nothing: the page says why (``message``, with ``status``),
    shows ``run`` as it is now, and what was typed (``form``) when it can be sent again."""

    run: Run
    status: int
    message: str
    form: FormState | None = None


Outcome = Applied | NotApplied
"""What submitting an answer came to, for whichever page shows it (the run page, a link's)."""


def edit_values(sequence: EmailSequence) -> dict[str, str]:
    """The edit form's fields, prefilled from ``sequence``."""
    return {
        "opener_subject": sequence.opener.subject,
        "opener_body": sequence.opener.body,
        "follow_up_subject": sequence.follow_up.subject,
        "follow_up_body": sequence.follow_up.body,
        "follow_up_wait_days": str(sequence.follow_up.wait_days),
    }


async def show_run(
    request: Request,
    agent: ColdMailAgent,
    policy: WebPolicy,
    run: Run,
    *,
    status: int = 200,
    message: str | None = None,
    message_kind: str = "notice",
    form: FormState | None = None,
    export_problem: ExportRefused | None = None,
    export_shown: ExportShown | None = None,
    lines: Any = None,
) -> Response:
    """The run page, with its history and lint; sets the CSRF cookie its forms need.
    ``lines``: the first-lines section as a form left it (``lines.lines_section``).

    The page is built on a worker thread (the change highlighting and the template are the
    CPU work of a page): however long it takes, the event loop answers other requests.
    """
    history = await agent.history(run.interaction_id)
    issues = await agent.lint(run.interaction_id)
    family = await agent.family(run.interaction_id)
    deliveries = await agent.notifications(run.interaction_id, limit=MAX_PAGE)
    if lines is None:
        from .lines import lines_section

        lines = await lines_section(request, agent, run)
    csrf = csrf_token(request)
    response = await asyncio.to_thread(
        _render_run_page,
        request,
        run,
        history,
        issues,
        policy=policy,
        default_disabled_rules=agent.settings.disabled_rules,
        csrf=csrf,
        status=status,
        message=message,
        message_kind=message_kind,
        form=form or FormState(),
        export_problem=export_problem,
        export_shown=export_shown,
        family=None if family.is_alone else family,
        deliveries=deliveries,
        lines=lines,
    )
    set_private_cookie(response, request, policy, CSRF_COOKIE, csrf)
    return response


def _render_run_page(
    request: Request,
    run: Run,
    history: list[RunEvent],
    issues: list[LintIssue],
    *,
    policy: WebPolicy,
    default_disabled_rules: tuple[str, ...],
    csrf: str,
    status: int,
    message: str | None,
    message_kind: str,
    form: FormState,
    export_problem: ExportRefused | None,
    export_shown: ExportShown | None,
    family: Family | None = None,
    deliveries: list[Delivery] | None = None,
    lines: Any = None,
) -> Response:
    rounds = review_rounds(history)
    decided = [r for r in rounds if r.decision is not None]
    context = pause_context(run, history, issues, csrf=csrf, form=form)
    context["limits"] |= {
        "upload_mb": _megabytes(policy.max_upload_bytes),
        "export_mb": _megabytes(policy.max_export_bytes),
        "variants": MAX_VARIANTS_TEXT,
    }
    values = context["values"]
    context |= {
        "history": history,
        "event_label": event_label,
        "rounds": rounds,
        "decided": decided,
        "shown_rounds": decided[-MAX_SHOWN_ROUNDS:],
        "hidden_rounds": max(0, len(decided) - MAX_SHOWN_ROUNDS),
        "shown_history": history[-MAX_SHOWN_EVENTS:],
        "hidden_events": max(0, len(history) - MAX_SHOWN_EVENTS),
        "describe_decision": describe_decision,
        "final_diffs": diff(run.draft, run.final) if run.final is not None else None,
        "last_diffs": diff(run.draft, run.sequence) if run.sequence is not None else None,
        "age": age,
        "message": message,
        "message_kind": message_kind,
        "export_problem": export_problem,
        "export_shown": export_shown,
        "max_shown_rows": MAX_SHOWN_ROWS,
        "max_listed_row_numbers": MAX_LISTED_ROW_NUMBERS,
        "sending_tools": SENDING_TOOLS,
        "tool_titles": {name: profile.title for name, profile in PROFILES.items()},
        "rules_to_turn_off": RULES_TO_TURN_OFF,
        "family": family,
        **deliveries_context(run, deliveries or []),
        "lines": lines,
        "disabled_rules": (
            set(values["disabled_rules"].split(",")) - {""}
            if "disabled_rules" in values
            else set(default_disabled_rules)
        ),
    }
    return templates.TemplateResponse(request, "run.html", context, status)


SENDING_TOOLS = tuple(
    (name, "Any tool (generic CSV)" if profile.is_generic else profile.title)
    for name, profile in PROFILES.items()
)
"""The export form's choices: a profile's name and what the form shows for it."""
MAX_VARIANTS_TEXT = (MAX_VARIANTS + 1) * 40
"""The longest variants field the export form takes: room for every id with separators."""
RULES_TO_TURN_OFF = tuple(rule for rule in RULES.values() if rule.can_disable)
"""The export form's boxes: the checks a person may turn off where they do not apply."""


def pause_context(
    run: Run, history: list[RunEvent], issues: list[LintIssue], *, csrf: str, form: FormState
) -> dict[str, Any]:
    """What the pause's part of a page (``_pause.html``) needs: the run, its lint, the
    sequence under review with the changes since the round before (or the draft) marked, and
    the forms' limits and values (what was typed, else the sequence to edit)."""
    decided = [r for r in review_rounds(history) if r.decision is not None]
    under_review = run.sequence if run.status is RunStatus.AWAITING_REVIEW else None
    base = decided[-1].sequence if decided else run.draft
    values: dict[str, str] = {}
    if run.sequence is not None:
        values.update(edit_values(run.sequence))
    values.update(form.values)
    return {
        "run": run,
        "under_review": under_review,
        "review_diffs": diff(base, under_review) if under_review is not None else None,
        "review_base": "the draft" if not decided else f"round {decided[-1].number}",
        "can_revise": run.round is not None
        and run.max_rounds is not None
        and run.round < run.max_rounds,
        "lint": issues,
        "csrf_token": csrf,
        "fork_key": secrets.token_urlsafe(16),  # a form sent twice forks once
        "limits": {
            "feedback": MAX_FEEDBACK_CHARS,
            "reason": MAX_REASON_CHARS,
            "reviewer": MAX_REVIEWER_CHARS,
            "subject": SUBJECT_LIMIT,
            "body": BODY_LIMIT,
        },
        "form": form,
        "values": values,
    }


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.3g} MB"


def form_text(values: Mapping[str, Any], name: str) -> str:
    """A submitted form field as text ('' when absent or a file)."""
    value = values.get(name)
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------- deliveries

MAX_SHOWN_DELIVERIES = 50
"""Notifications (and timers) the run page lists, the newest; it counts the others."""


def deliveries_context(run: Run, deliveries: list[Delivery]) -> dict[str, Any]:
    """What the run page's wait and notifications sections need: the current pause's wait
    (:func:`~bridgic_coldmail.store.outbox.wait_state`), the newest deliveries, and how
    many more there are."""
    from ..store.outbox import wait_state

    waiting = wait_state(run.pause_id if run.status.is_paused else None, deliveries)
    return {
        "wait": waiting if waiting.timed else None,
        "outcome_words": OUTCOME_WORDS,
        "deliveries": deliveries[:MAX_SHOWN_DELIVERIES],
        "hidden_deliveries": max(0, len(deliveries) - MAX_SHOWN_DELIVERIES),
        "delivery_what": delivery_what,
        "delivery_state": delivery_state,
        "moment": moment,
        "clip": clip,
    }


def delivery_what(delivery: Delivery) -> str:
    """What a row is: its event, or for a timer what it fires (and what a deadline does)."""
    timer = delivery.timer
    if timer is None:
        return delivery.event
    if timer.kind == "reminder":
        return f"reminder {timer.n}"
    return f"deadline, then {OUTCOME_WORDS[timer.wait.on_timeout]}"


def delivery_state(delivery: Delivery) -> str:
    """A row's state: a notification's status; a timer's due, fired, not needed or failed."""
    return delivery.state


def moment(at: datetime | None) -> str:
    """``2026-03-01 09:30:00 UTC`` (empty for None)."""
    return f"{at:%Y-%m-%d %H:%M:%S} UTC" if at is not None else ""
