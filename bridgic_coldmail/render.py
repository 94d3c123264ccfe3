"""Plain-text rendering of runs and sequences for terminals (CLI and resume script)."""

from __future__ import annotations

import textwrap

from .models import EmailSequence, Run, RunEvent, RunStatus

_WIDTH = 78


def _rule(title: str) -> str:
    return f"── {title} " + "─" * max(3, _WIDTH - len(title) - 4)


def format_sequence(sequence: EmailSequence) -> str:
    """Both emails, with their send day, subject and body."""
    blocks = []
    day = 0
    for number, step in enumerate(sequence.steps, start=1):
        day += step.wait_days
        header = _rule(f"Email {number} · day {day}")
        blocks.append(f"{header}\nSubject: {step.subject}\n\n{step.body.strip()}")
    return "\n\n".join(blocks)


def resume_command(run: Run, feedback: str = "CTOs at mid-size hospitals") -> str:
    """The command that resumes a paused run."""
    return f'coldmail resume {run.interaction_id} --feedback "{feedback}"'


def resume_hint(run: Run) -> str:
    """How to resume a paused run from the command line."""
    return (
        f"{run.question}\n"
        "Resume with your answer, from any process, any time:\n"
        f"  {resume_command(run)}"
    )


def format_run(run: Run) -> str:
    """A run as a person wants to read it: status, brief, draft, feedback and refinement."""
    brief = run.brief
    lines = [
        f"Run {run.interaction_id} · {run.status.value}",
        f"Product: {brief.product}",
        f"Sender: {brief.sender}",
        f"Audience (first guess): {brief.audience or '—'}",
        f"Started: {run.created_at:%Y-%m-%d %H:%M:%S} UTC",
        "",
        "DRAFT" if run.final is None else "DRAFT (before feedback)",
        format_sequence(run.draft),
    ]
    if run.final is not None:
        lines += ["", f"FEEDBACK: {run.feedback}", "", "REFINED", format_sequence(run.final)]
    if run.status is RunStatus.AWAITING_FEEDBACK:
        if run.last_error:
            lines += ["", f"The last resume failed: {run.last_error}"]
        lines += ["", resume_hint(run)]
    elif run.status is RunStatus.RESUMING:
        lines += ["", "Being resumed right now; show it again in a moment."]
    return "\n".join(lines)


def format_run_line(run: Run) -> str:
    """One line per run, for listings."""
    audience = run.brief.audience or "—"
    summary = textwrap.shorten(f"{run.brief.product} → {audience}", width=44, placeholder="…")
    started = f"{run.created_at:%Y-%m-%d %H:%M}"
    return f"{run.interaction_id}  {run.status.value:<17}  {started}  {summary}"


_EVENT_LABELS = {
    "paused": "paused for feedback",
    "feedback": "feedback received",
    "failed": "resume failed",
    "completed": "completed",
}


def format_history(events: list[RunEvent]) -> str:
    """The run's history, one event per line, oldest first."""
    lines = ["HISTORY"]
    for event in events:
        detail = f": {event.detail}" if event.detail and event.kind != "completed" else ""
        detail = textwrap.shorten(detail, width=100, placeholder="…") if detail else ""
        lines.append(f"  {event.at:%Y-%m-%d %H:%M:%S} UTC  {_EVENT_LABELS[event.kind]}{detail}")
    return "\n".join(lines)
