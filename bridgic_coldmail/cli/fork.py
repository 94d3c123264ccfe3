"""``coldmail fork``: a variant started from one of a run's pauses, and the family it makes
(shown by ``coldmail show`` too)."""

from __future__ import annotations

import argparse
import asyncio
import re
import textwrap
from collections.abc import Callable
from typing import Any

from ..agent import ColdMailAgent
from ..models import (
    CLI_JSON_KEYS,
    Run,
    make_decision,
    validate_feedback,
    validate_interaction_id,
    validate_reviewer,
)
from ..settings import Settings
from ..store.forks import Family, FamilyMember
from ..text import terminal_safe
from .render import format_run, json_for_terminal


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``fork`` with the CLI's ``command(name, help, json)``."""
    fork = command(
        "fork",
        "start a variant from one of a run's pauses with other feedback (the audience "
        "question) or guidance (a review round); the run itself is not changed",
    )
    fork.add_argument("interaction_id", metavar="INTERACTION_ID")
    fork.add_argument(
        "--round",
        type=_parse_fork_round,
        default=0,
        metavar="N",
        help="the pause to fork: 0 (default) the audience question, N review round N",
    )
    given = fork.add_mutually_exclusive_group(required=True)
    given.add_argument("--feedback", help="for round 0: who the emails should target instead")
    given.add_argument(
        "--guidance", help="for a review round: what the variant's next version should change"
    )
    fork.add_argument("--reviewer", metavar="NAME", help="who forks it (kept in the history)")


def run_fork(args: argparse.Namespace, settings: Settings) -> int:
    """``coldmail fork``: checked before the database is opened, as every command is."""
    args.interaction_id = validate_interaction_id(args.interaction_id)
    validate_reviewer(args.reviewer)
    if args.round == 0 and args.guidance is not None:
        from ..errors import InvalidInput

        raise InvalidInput(
            "--guidance forks a review round: add --round N, or give --feedback to fork the "
            "audience question"
        )
    if args.round > 0 and args.feedback is not None:
        from ..errors import InvalidInput

        raise InvalidInput(
            f"round {args.round} is a review round: give --guidance, or drop --round to fork "
            "the audience question with --feedback"
        )
    if args.feedback is not None:
        args.feedback = validate_feedback(args.feedback)
    else:
        make_decision("revise", text=args.guidance, round=args.round)
    text = asyncio.run(_fork(args, settings))
    print(terminal_safe(text))
    return 0


async def _fork(args: argparse.Namespace, settings: Settings) -> str:
    async with ColdMailAgent.open(settings=settings, missing="refuse") as agent:
        run = await agent.fork(
            args.interaction_id,
            round=args.round,
            feedback=args.feedback,
            guidance=args.guidance,
            reviewer=args.reviewer,
        )
        family = await agent.family(run.interaction_id)
    if args.json:
        data = run.to_public_dict()
        member = family.member(run.interaction_id)
        return json_for_terminal(
            {
                **{key: data[key] for key in CLI_JSON_KEYS},
                "fork": member.link.to_public_dict() if member and member.link else None,
            }
        )
    where = "the audience question" if args.round == 0 else f"review round {args.round}"
    return (
        f"{format_run(run)}\n\n"
        f"Forked run {args.interaction_id} at {where} as {run.interaction_id}; "
        f"see both with: coldmail show {run.interaction_id}"
    )


async def export_variants(agent: ColdMailAgent, args: argparse.Namespace) -> list[str]:
    """``coldmail export``'s variants: each ``--variant``, then with ``--family`` every other
    approved run of the family not named already."""
    named = list(args.variants)
    if not args.family:
        return named
    family = await agent.family_variants(args.interaction_id)
    return [*named, *(v for v in family if v not in named)]


def format_family(family: Family) -> str:
    """The ``FAMILY`` section of ``coldmail show``: every member on a line, root first."""
    lines = ["FAMILY"]
    if family.parent_gone:
        lines.append(f"  (forked from run {family.parent_gone}, which is no longer stored)")
    for member in family.members:
        mark = "  <- this run" if member.interaction_id == family.interaction_id else ""
        lines.append(f"  {member.interaction_id}  {_state(member):<28}{_origin(member)}{mark}")
    if family.truncated:
        lines.append("  … (more forks than are listed here)")
    return terminal_safe("\n".join(lines))


def family_json(family: Family) -> dict[str, Any]:
    """The family as ``coldmail show --json`` adds it."""
    return family.to_public_dict()


def _state(member: FamilyMember) -> str:
    run = member.run
    return run.describe_state() if isinstance(run, Run) else "damaged"


def _origin(member: FamilyMember) -> str:
    if member.altered:
        return "its fork link was changed outside bridgic-coldmail"
    link = member.link
    if link is None:
        return "root"
    where = "question" if link.round == 0 else f"round {link.round}"
    angle = textwrap.shorten(link.angle, width=70, placeholder="…")
    return f"fork of {link.parent_id[:8]}… at {where}, {angle}"


def _parse_fork_round(text: str) -> int:
    if not re.fullmatch(r"\s*\d{1,5}\s*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a round: 0 for the audience question, 1, 2… for a review round"
        )
    return int(text)
