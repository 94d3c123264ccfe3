"""Plain-text rendering of runs and sequences for terminals (CLI, demo, resume script).

Everything shown may come from a brief, an LLM or a database file, so :func:`terminal_safe`
is applied to every line before it is printed: control and escape sequences (ESC, OSC 52
clipboard writes, NUL, a lone carriage return that would overwrite the line, C1 controls)
and bidi overrides are shown as visible ``\\x1b``-style escapes instead of being obeyed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

from ..models import DamagedRun, EmailSequence, ListedRun, Run, RunEvent, RunStatus
from ..settings import default_db_path, is_postgres_url, redact_url
from ..text import terminal_safe

MAX_TEXT_WIDTH = 100
"""Emails wrap at the terminal's width, but never wider than this: long lines are hard to read."""
FEEDBACK_PLACEHOLDER = "<who the emails are really for>"
"""What the printed ``resume`` command holds where the person's answer goes."""


def json_for_terminal(value: Any) -> str:
    """JSON text, readable (non-ASCII kept) yet with no raw control character in it.

    ``json.dumps`` escapes only C0 controls; DEL, C1 controls (``\\x9b`` acts as ESC [ in
    some terminals) and bidi overrides are escaped here too. They occur only inside strings,
    where a ``\\uXXXX`` escape is valid JSON for the same character.
    """
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return re.sub(
        "[\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]",
        lambda m: f"\\u{ord(m.group()):04x}",
        text,
    )


def print_safe(text: str, *, stream: Any = None) -> None:
    """Print ``text`` made terminal-safe (to standard output unless ``stream``)."""
    print(terminal_safe(text), file=stream or sys.stdout)


def terminal_width() -> int:
    """The terminal's columns (``$COLUMNS``, else the terminal's, else 80)."""
    return shutil.get_terminal_size((80, 24)).columns


def text_width(width: int | None = None) -> int:
    """How wide text is wrapped: ``width`` or the terminal's, at most :data:`MAX_TEXT_WIDTH`."""
    return max(20, min(width or terminal_width(), MAX_TEXT_WIDTH))


def wrap(text: str, width: int) -> str:
    """Each line of ``text`` wrapped to ``width``; line breaks and blank lines are kept and
    words are never split (a link or a ``{{merge_field}}`` stays whole)."""
    lines: list[str] = []
    for line in text.splitlines():
        lines += textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join(lines)


def _rule(title: str, width: int) -> str:
    return f"── {title} " + "─" * max(3, width - len(title) - 4)


def format_sequence(sequence: EmailSequence, width: int | None = None) -> str:
    """Both emails, with their send day, subject and body, wrapped to the terminal
    (:func:`text_width`)."""
    width = text_width(width)
    blocks = []
    day = 0
    for number, step in enumerate(sequence.steps, start=1):
        day += step.wait_days
        header = _rule(f"Email {number} · day {day}", width)
        subject = wrap(terminal_safe(f"Subject: {step.subject}"), width)
        blocks.append(f"{header}\n{subject}\n\n{wrap(terminal_safe(step.body.strip()), width)}")
    return "\n\n".join(blocks)


def full_location(db: str) -> str:
    """A database as printed for people: an SQLite file's absolute path (so a command that
    names it works from any folder), a URL without its password."""
    return redact_url(db) if is_postgres_url(db) else str(Path(db).expanduser().absolute())


def coldmail_command(db: str | None = None) -> str:
    """``coldmail``, with ``--db`` when the runs are not in the default database, so a printed
    command finds them again from any folder (a URL's password is shown as ``***``)."""
    if db is None or full_location(db) == str(default_db_path()):
        return "coldmail"
    return f"coldmail --db {shlex.quote(full_location(db))}"


def resume_command(run: Run, feedback: str = FEEDBACK_PLACEHOLDER, db: str | None = None) -> str:
    """The command that resumes a paused run, quoted for a POSIX shell."""
    return f"{coldmail_command(db)} resume {run.interaction_id} --feedback {shlex.quote(feedback)}"


def resume_hint(run: Run, db: str | None = None) -> str:
    """How to resume a paused run from the command line."""
    return (
        f"{run.question}\n"
        "Resume with your answer, from any process, any time:\n"
        f"  {resume_command(run, db=db)}"
    )


def next_steps(run: Run, location: str, db: str | None = None) -> str:
    """Where a finished run is kept and the commands that use it next (after the demo)."""
    rid = run.interaction_id
    command = coldmail_command(db)
    steps = [("See it again, with its history", f"{command} show {rid}")]
    if run.status is RunStatus.COMPLETED:
        steps.append(
            (
                "Fill it in for a lead list (CSV)",
                f"{command} export {rid} --leads leads.csv --out campaign.csv",
            )
        )
    steps += [
        ("Review runs in your browser", f"{command} serve"),
        ("Start another", f"{command} demo"),
    ]
    column = max(len(what) for what, _ in steps) + 2
    stored = full_location(location)
    lines = [f"Run {rid} is {run.status.value}, stored in {stored}.", "Next, from any folder:"]
    lines += [f"  {what + ':':<{column}}{line}" for what, line in steps]
    return terminal_safe("\n".join(lines))


def review_hint(run: Run, db: str | None = None) -> str:
    """How to decide a run awaiting review from the command line."""
    rid = run.interaction_id
    command = coldmail_command(db)
    limit = f" of {run.max_rounds}" if run.max_rounds else ""
    revise = (
        f"  {command} revise {rid} --feedback 'what to change'\n"
        if run.round is not None and run.max_rounds is not None and run.round < run.max_rounds
        else ""
    )
    return (
        f"Review round {run.round}{limit}. Decide with one of:\n"
        f"  {command} approve {rid}\n"
        f"{revise}"
        f"  {command} edit {rid} --file emails.json\n"
        f"  {command} reject {rid} --reason 'why'"
    )


def format_run(run: Run) -> str:
    """A run as a person wants to read it: status, brief, draft, feedback, rounds, result."""
    brief = run.brief
    lines = [
        f"Run {run.interaction_id} · {run.status.value}"
        + (f" · review round {run.round}" if run.round else ""),
        f"Product: {brief.product}",
        f"Sender: {brief.sender}",
        f"Audience (first guess): {brief.audience or '—'}",
        f"Started: {run.created_at:%Y-%m-%d %H:%M:%S} UTC",
    ]
    if run.fields:
        lines.append(f"Merge fields: {', '.join(run.fields)}")
    if not run.verified:
        lines.append(
            "Unverified: stored by a release before 0.5, whose text was not signed; it may "
            "have been edited outside bridgic-coldmail."
        )
    lines += ["", "DRAFT" if run.sequence is None else "DRAFT (before feedback)"]
    lines.append(format_sequence(run.draft))
    if run.feedback and run.sequence is not None:
        lines += ["", f"FEEDBACK: {run.feedback}"]
    if run.sequence is not None:
        title = {
            RunStatus.COMPLETED: "FINAL" if run.review else "REFINED",
            RunStatus.REJECTED: f"REJECTED AT ROUND {run.round}",
        }.get(run.status, f"UNDER REVIEW (round {run.round})")
        lines += ["", title, format_sequence(run.sequence)]
    if run.rejection:
        lines += ["", f"Rejected: {run.rejection}"]
    if run.last_error and run.status.is_paused:
        lines += ["", f"The last resume failed: {run.last_error}"]
    if run.status is RunStatus.AWAITING_FEEDBACK:
        lines += ["", resume_hint(run)]
    elif run.status is RunStatus.AWAITING_REVIEW:
        lines += ["", review_hint(run)]
    elif run.status is RunStatus.RESUMING:
        lines += ["", "Being worked on right now; show it again in a moment."]
    return terminal_safe("\n".join(lines))


def format_run_line(run: ListedRun) -> str:
    """One line per run, for listings; a damaged run says so."""
    if isinstance(run, DamagedRun):
        started = f"{run.created_at:%Y-%m-%d %H:%M}" if run.created_at else "?"
        return terminal_safe(
            f"{run.interaction_id}  {'DAMAGED':<17}  {started}  {run.problem}"[:200]
        )
    # The audience a person gave, else the brief's first guess (as the inbox's list shows it).
    audience = run.feedback or (f"{run.brief.audience} (guess)" if run.brief.audience else "—")
    summary = textwrap.shorten(f"{run.brief.product} → {audience}", width=44, placeholder="…")
    started = f"{run.created_at:%Y-%m-%d %H:%M}"
    status = run.status.value + (f" {run.round}" if run.status is RunStatus.AWAITING_REVIEW else "")
    flag = "" if run.verified else "  (unverified)"
    return terminal_safe(f"{run.interaction_id}  {status:<17}  {started}  {summary}{flag}")


_EVENT_LABELS = {
    "paused": "paused for feedback",
    "feedback": "feedback received",
    "failed": "failed and given back",
    "review": "paused for review",
    "approved": "approved",
    "revised": "revision asked",
    "edited": "edited by the reviewer",
    "rejected": "rejected",
    "completed": "completed",
}


def format_history(events: list[RunEvent]) -> str:
    """The run's history, one event per line, oldest first."""
    lines = ["HISTORY"]
    for event in events:
        label = _EVENT_LABELS[event.kind]
        if event.round is not None and event.kind != "completed":
            label += f" (round {event.round})"
        if event.actor:
            label += f" by {event.actor}"
        detail = f": {event.detail}" if event.detail and event.kind != "completed" else ""
        detail = textwrap.shorten(detail, width=100, placeholder="…") if detail else ""
        flag = "" if event.verified else "  [unverified]"
        lines.append(f"  {event.at:%Y-%m-%d %H:%M:%S} UTC  {label}{detail}{flag}")
    return terminal_safe("\n".join(lines))
