"""``coldmail demo``: the whole job in one terminal.

Asks for the brief (or takes flags), drafts, shows the draft and its interaction id, asks who
the emails are really for, refines, and prints both versions side by side. The paused run is
in SQLite *before* the question is asked, so Ctrl-C, a closed terminal or a crash at that
point leaves it resumable with ``coldmail resume ID``, and the demo says so.

The question is asked outside the event loop (plain ``input()``), so an interrupt there is an
ordinary ``KeyboardInterrupt`` and never leaves a thread blocked on the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import textwrap
import time
from collections.abc import Awaitable
from typing import TextIO, TypeVar

from ..agent import ColdMailAgent
from ..errors import INTERRUPTED, InvalidInput
from ..models import (
    Brief,
    EmailSequence,
    Run,
    RunStatus,
    make_brief,
    make_decision,
    validate_feedback,
)
from ..settings import Settings
from ..text import terminal_safe
from .render import (
    format_sequence,
    full_location,
    next_steps,
    resume_command,
    review_hint,
    terminal_width,
    text_width,
    wrap,
)

T = TypeVar("T")


def _ask(prompt: str, required: bool) -> str | None:
    while True:
        answer = input(prompt).strip()
        if answer or not required:
            return answer or None
        print("  An answer is needed here.")


def read_brief(args: argparse.Namespace, interactive: bool) -> Brief:
    """The brief from the flags, asking on the terminal for what is missing."""
    given = {
        name: getattr(args, name) for name in ("product", "offer", "sender", "audience", "cta")
    }
    missing = [name for name in ("product", "offer", "sender") if not given[name]]
    if missing and not interactive:
        raise InvalidInput(
            "coldmail demo has no terminal to ask on; pass --product, --offer and --sender "
            "(and --feedback), or run it in a terminal"
        )
    if missing:
        print("Tell me about the product (Ctrl-C to quit).")
        labels = {
            "product": ("Product", True),
            "offer": ("What it brings the reader", True),
            "sender": ("Sender (signs the emails)", True),
            "audience": ("Your first guess at the audience", False),
            "cta": ("Call to action", False),
        }
        for name, (label, required) in labels.items():
            if given[name] is None:
                given[name] = _ask(f"{label}{'' if required else ' (optional)'}: ", required)
    return make_brief(**given)


async def with_progress(label: str, work: Awaitable[T], out: TextIO) -> T:
    """Await ``work`` showing elapsed seconds: a live line on a TTY, plain lines otherwise."""
    started = time.monotonic()
    if not out.isatty():
        print(f"{label}…", file=out, flush=True)
        result = await work
        print(f"{label} done in {time.monotonic() - started:.1f} s.", file=out, flush=True)
        return result

    async def tick() -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            print(f"\r{frame} {label}… {time.monotonic() - started:4.0f} s", end="", file=out)
            out.flush()
            await asyncio.sleep(0.25)

    ticker = asyncio.create_task(tick())
    try:
        return await work
    finally:
        ticker.cancel()
        elapsed = time.monotonic() - started
        print(f"\r{label} took {elapsed:.1f} s.{' ' * 12}", file=out, flush=True)


def side_by_side(before: EmailSequence, after: EmailSequence, width: int | None = None) -> str:
    """Draft and refinement in two columns, email by email, as wide as the terminal."""
    width = width or terminal_width()
    column = max(20, (width - 3) // 2)

    def block(title: str, subject: str, body: str) -> list[str]:
        lines = [title, *textwrap.wrap(f"Subject: {terminal_safe(subject)}", column), ""]
        for paragraph in terminal_safe(body.strip()).splitlines():
            lines += textwrap.wrap(paragraph, column) or [""]
        return [line[:column] for line in lines]

    out = [f"{'DRAFT':<{column}} │ REFINED", f"{'─' * column}─┼─{'─' * column}"]
    day_before = day_after = 0
    for number, (old, new) in enumerate(zip(before.steps, after.steps, strict=True), start=1):
        day_before += old.wait_days
        day_after += new.wait_days
        left = block(f"Email {number} · day {day_before}", old.subject, old.body)
        right = block(f"Email {number} · day {day_after}", new.subject, new.body)
        for a, b in itertools.zip_longest(left, right, fillvalue=""):
            out.append(f"{a:<{column}} │ {b}")
        out.append(f"{'':<{column}} │")
    return "\n".join(out)


def run_demo(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """The demo; returns the exit code. Errors propagate as ``ColdmailError``."""
    interactive = sys.stdin.isatty()
    brief = read_brief(args, interactive)
    feedback = validate_feedback(args.feedback) if args.feedback is not None else None
    review = bool(getattr(args, "review", False))

    async def draft() -> tuple[Run, str]:
        async with ColdMailAgent.open(settings=settings, missing="create") as agent:
            run = await with_progress("Drafting", agent.start(brief, review=review), out)
            return run, agent.db_path

    try:
        pending, db_path = asyncio.run(draft())
    except KeyboardInterrupt:
        print("\nStopped before the draft was saved; nothing was stored.", file=out)
        return INTERRUPTED

    print(f"\n{format_sequence(pending.draft)}\n", file=out)  # format_sequence is terminal-safe
    print(f"Saved as {pending.interaction_id} in {full_location(db_path)}.", file=out)
    resume = resume_command(pending, db=settings.db)
    print(f"If you stop now, resume any time with:\n  {resume}\n", file=out)

    if feedback is None:
        if not interactive:
            print("No terminal to ask on: the run waits for feedback (see above).", file=out)
            return 0
        try:
            print(wrap(terminal_safe(pending.question), text_width()), file=out)
            feedback = _ask("> ", True)
        except (KeyboardInterrupt, EOFError):
            print(
                f"\nStopped. The run is saved and waiting; resume it with:\n  {resume}",
                file=out,
            )
            return INTERRUPTED
        assert feedback is not None

    async def refine() -> Run:
        async with ColdMailAgent.open(settings=settings) as agent:
            return await with_progress(
                "Refining", agent.resume(pending.interaction_id, feedback), out
            )

    try:
        done = asyncio.run(refine())
    except KeyboardInterrupt:
        print(f"\nStopped; the run is still resumable:\n  {resume}", file=out)
        return INTERRUPTED
    assert done.sequence is not None
    print(f"\n{wrap(terminal_safe(f'Feedback: {done.feedback}'), text_width())}\n", file=out)
    print(side_by_side(done.draft, done.sequence), file=out)
    if done.status is RunStatus.AWAITING_REVIEW:
        return _review_rounds(done, settings, db_path, interactive, out)
    print(f"\n{next_steps(done, db_path, db=settings.db)}", file=out)
    return 0


_CHOICES = {"a": "approve", "r": "revise", "x": "reject"}


def _review_rounds(
    run: Run, settings: Settings, db_path: str, interactive: bool, out: TextIO
) -> int:
    """Ask for review decisions on the terminal until the run is approved or rejected."""
    while run.status is RunStatus.AWAITING_REVIEW:
        hint = review_hint(run, db=settings.db)
        if not interactive:
            print(f"\nNo terminal to ask on: the run waits for review.\n{hint}", file=out)
            return 0
        try:
            print(f"\n{hint}", file=out)
            answer = (_ask("Approve (a), revise (r) or reject (x)? ", True) or "").lower()
            kind = _CHOICES.get(answer[:1])
            if kind is None:
                print("  Type a, r or x (or Ctrl-C to decide later).", file=out)
                continue
            text = None
            if kind == "revise":
                text = _ask("What should the next version change? ", True)
            elif kind == "reject":
                text = _ask("Why is it rejected? ", True)
        except (KeyboardInterrupt, EOFError):
            print(f"\nStopped. The run waits for review:\n{hint}", file=out)
            return INTERRUPTED
        run = asyncio.run(_decide(run, kind, text, settings, out))
        if run.sequence is not None and run.status is RunStatus.AWAITING_REVIEW:
            print(f"\n{format_sequence(run.sequence)}", file=out)
    print(f"\n{next_steps(run, db_path, db=settings.db)}", file=out)
    return 0


async def _decide(run: Run, kind: str, text: str | None, settings: Settings, out: TextIO) -> Run:
    decision = make_decision(kind, text=text, round=run.round)
    async with ColdMailAgent.open(settings=settings) as agent:
        work = agent.decide(run.interaction_id, decision)
        return await (with_progress("Revising", work, out) if kind == "revise" else work)
