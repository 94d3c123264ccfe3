"""``coldmail personalize``: one first line per lead of an approved run, signed off on a
sample first (issue 23).

``coldmail personalize ID --leads L`` shows the estimate, writes the sample and shows it
with the commands that answer it; ``--approve-sample`` writes the rest with a progress bar
(plain lines off a terminal); ``--guidance "…"`` rewrites the sample; ``--status`` says
where the batch is. Running the command again resumes wherever the batch stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agent import ColdMailAgent
from ..errors import InvalidInput
from ..models import validate_feedback, validate_interaction_id
from ..personalize.batch import BatchReport
from ..personalize.progress import Progress
from ..settings import Settings
from ..text import terminal_safe
from .render import json_for_terminal

MAX_SKIPPED_SHOWN = 20


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``personalize`` with the CLI's ``command(name, help, json)``."""
    sub = command(
        "personalize",
        "write one first line per lead of an approved run ({{icebreaker}}), a sample first",
    )
    sub.add_argument("interaction_id", metavar="INTERACTION_ID")
    sub.add_argument("--leads", type=Path, metavar="CSV", help="the lead list")
    sub.add_argument(
        "--sample", type=int, metavar="N", help="leads in the sample (default: the setting, 5)"
    )
    answer = sub.add_mutually_exclusive_group()
    answer.add_argument(
        "--approve-sample", action="store_true", help="approve the sample; write every lead"
    )
    answer.add_argument("--guidance", metavar="TEXT", help="rewrite the sample with this note")
    answer.add_argument("--status", action="store_true", help="where the batch is")


def run_personalize(args: argparse.Namespace, settings: Settings) -> int:
    """``coldmail personalize``."""
    interaction_id = validate_interaction_id(args.interaction_id)
    guidance = validate_feedback(args.guidance) if args.guidance is not None else None
    answering = args.approve_sample or guidance is not None or args.status
    if not answering and args.leads is None:
        raise InvalidInput(
            "give the lead list: coldmail personalize ID --leads LEADS.csv (or answer a "
            "sample with --approve-sample, --guidance or --status)"
        )
    return asyncio.run(_personalize(args, interaction_id, guidance, settings))


async def _personalize(
    args: argparse.Namespace, interaction_id: str, guidance: str | None, settings: Settings
) -> int:
    async with ColdMailAgent.open(settings=settings, missing="refuse") as agent:
        if args.status:
            report = await agent.batch_status(interaction_id, leads=args.leads)
        elif guidance is not None:
            report = await agent.guide_sample(interaction_id, guidance, leads=args.leads)
        elif args.approve_sample:
            status = await agent.batch_status(interaction_id, leads=args.leads)
            progress = _progress(args, status.counts.open - status.counts.claimed)
            try:
                report = await agent.approve_sample(
                    interaction_id, leads=args.leads, on_line=progress.add if progress else None
                )
            finally:
                if progress is not None:
                    progress.close()
        else:
            if not args.json:
                estimate = await agent.estimate_lines(interaction_id, args.leads)
                _err(f"Estimate: {estimate.describe()}")
            report = await agent.personalize(interaction_id, args.leads, sample=args.sample)
            if report.batch.status == "writing":  # approved before: the rest is written now
                progress = _progress(args, report.counts.open)
                try:
                    report = await agent.personalize(
                        interaction_id, args.leads, on_line=progress.add if progress else None
                    )
                finally:
                    if progress is not None:
                        progress.close()
    print(json_for_terminal(report_json(report)) if args.json else describe(report, args))
    return 0


def _progress(args: argparse.Namespace, total: int) -> Progress | None:
    if args.json or total <= 0:
        return None
    return Progress(total, out=sys.stderr)


def describe(report: BatchReport, args: argparse.Namespace) -> str:
    """The report for a person: where the batch is and what to do next."""
    batch, counts = report.batch, report.counts
    run = batch.interaction_id
    leads = f" --leads {args.leads}" if args.leads is not None else ""
    lines: list[str] = []
    if report.held_elsewhere:
        lines.append(
            "Another process is writing this batch's sample right now; run the command again "
            "in a moment to see it."
        )
    elif report.waiting_for_approval:
        guidance = "; ".join(batch.guidance)
        lines.append(
            f"Sample, round {batch.round}"
            + (f" (guidance: {guidance})" if guidance else "")
            + f" — {len(report.sample)} of {batch.lead_count} leads:"
        )
        for lead in report.sample:
            text = lead.line if lead.line is not None else f"(no line: {lead.error})"
            writer = f" [{lead.writer}]" if lead.writer and "without" in lead.writer else ""
            lines.append(f"  row {lead.row} {lead.email}: {text}{writer}")
        lines.append("")
        lines.append(
            f"Approve it and write every lead:  coldmail personalize {run}{leads} --approve-sample"
        )
        lines.append(
            f'Or rewrite it with a note:        coldmail personalize {run}{leads} --guidance "…"'
        )
    else:
        state = {"done": "Done", "writing": "Writing", "sampling": "Writing the sample"}
        lines.append(
            f"{state.get(batch.status, batch.status)}: {counts.written:,} of "
            f"{batch.lead_count:,} leads have a line, {counts.skipped:,} skipped, "
            f"{counts.open:,} left; {counts.calls:,} LLM calls, about {counts.tokens:,} tokens "
            f"(estimated); this command took {report.seconds:,.1f} s."
        )
        if batch.status == "writing" and counts.open:
            lines.append(f"Run `coldmail personalize {run}{leads}` again to go on.")
        if batch.status == "done":
            lines.append(
                f"Use {{{{icebreaker}}}} in the sequence and export: coldmail export {run} "
                f"--leads LEADS.csv --out FILE"
            )
    if report.skipped and not report.waiting_for_approval:
        lines.append(
            f"Skipped leads ({len(report.skipped)}{'+' if len(report.skipped) >= 200 else ''}):"
        )
        for lead in report.skipped[:MAX_SKIPPED_SHOWN]:
            lines.append(f"  row {lead.row} {lead.email}: {lead.error}")
        if len(report.skipped) > MAX_SKIPPED_SHOWN:
            lines.append(f"  and {len(report.skipped) - MAX_SKIPPED_SHOWN} more")
    if batch.last_error and report.waiting_for_approval:
        lines.append(f"The last attempt failed: {batch.last_error}")
    return terminal_safe("\n".join(lines))


def report_json(report: BatchReport) -> dict[str, Any]:
    batch, counts = report.batch, report.counts

    def lead(row: Any) -> dict[str, Any]:
        return {
            "row": row.row,
            "email": row.email,
            "state": row.state,
            "line": row.line,
            "writer": row.writer,
            "error": row.error,
            "verified": row.verified,
        }

    return {
        "batch_id": batch.batch_id,
        "interaction_id": batch.interaction_id,
        "status": batch.status,
        "sample_approved": batch.sample_approved,
        "round": batch.round,
        "guidance": list(batch.guidance),
        "leads": batch.lead_count,
        "counts": {
            "pending": counts.pending,
            "claimed": counts.claimed,
            "written": counts.written,
            "skipped": counts.skipped,
            "calls": counts.calls,
            "tokens": counts.tokens,
        },
        "sample": [lead(r) for r in report.sample],
        "skipped": [lead(r) for r in report.skipped],
        "held_elsewhere": report.held_elsewhere,
        "seconds": round(report.seconds, 3),
        "last_error": batch.last_error,
    }


def _err(text: str) -> None:
    print(terminal_safe(text), file=sys.stderr, flush=True)
