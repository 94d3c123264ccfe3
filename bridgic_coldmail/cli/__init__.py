"""The ``coldmail`` command: a thin layer over :class:`ColdMailAgent`.

Errors are one line on stderr with a documented exit code (``errors.EXIT_CODES``); the
library's message says what happened, and this layer adds the hint that names a command or a
flag. Everything printed goes through ``text.terminal_safe`` (or ``json_for_terminal``).
Set ``COLDMAIL_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..agent import ColdMailAgent
from ..errors import INTERRUPTED, OUTPUT_CLOSED, ColdmailError, DatabaseNotFound
from ..models import validate_interaction_id
from ..settings import Settings, default_db_path
from ..store import IfMissing
from . import commands
from .commands import Interrupted
from .demo import run_demo
from .fork import run_fork
from .notifications import run_worker
from .parser import build_parser
from .personalize import run_personalize
from .render import print_safe

__all__ = ["build_parser", "entry_point", "main"]


def _keep(args: argparse.Namespace, settings: Settings) -> Settings:
    return settings


@dataclass(frozen=True)
class Command:
    """A subcommand that works on the stored runs: its checks, then its work with the agent."""

    run: Callable[[argparse.Namespace, ColdMailAgent, Settings], Awaitable[str | None]]
    check: Callable[[argparse.Namespace, Settings], Settings] = _keep
    """Refuses bad input before the database is opened (and may adjust the settings)."""
    creates_database: bool = False
    """Only ``start`` creates the database; the others read or change runs, which must exist."""


COMMANDS: dict[str, Command] = {
    "start": Command(commands.start, commands.check_start, creates_database=True),
    "resume": Command(commands.resume, commands.check_resume),
    "approve": Command(commands.decide, commands.check_decision),
    "revise": Command(commands.decide, commands.check_decision),
    "edit": Command(commands.decide, commands.check_decision),
    "reject": Command(commands.decide, commands.check_decision),
    "show": Command(commands.show),
    "link": Command(commands.link, commands.check_link),
    "list": Command(commands.list_runs, commands.check_list),
    "purge": Command(commands.purge),
    "export": Command(commands.export),
    "trust-unsigned": Command(commands.trust_unsigned, commands.check_trust_unsigned),
    "notifications": Command(commands.notifications, commands.check_notifications),
}
"""The subcommands run with an open agent, by name."""

STANDALONE: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "demo": run_demo,
    "serve": commands.serve,
    "worker": run_worker,
    "fork": run_fork,
    "personalize": run_personalize,
}
"""The subcommands that run by themselves (their own loop, prompts or server)."""


def _execute(args: argparse.Namespace, settings: Settings) -> int:
    standalone = STANDALONE.get(args.command)
    if standalone is not None:
        return standalone(args, settings)
    text = asyncio.run(_run_command(COMMANDS[args.command], args, settings))
    if text is not None:
        print_safe(text)
    return 0


async def _run_command(
    command: Command, args: argparse.Namespace, settings: Settings
) -> str | None:
    # Bad input is refused before the database is even opened.
    if hasattr(args, "interaction_id"):
        args.interaction_id = validate_interaction_id(args.interaction_id)
    settings = command.check(args, settings)
    missing: IfMissing = "create" if command.creates_database else "refuse"
    async with ColdMailAgent.open(settings=settings, missing=missing) as agent:
        return await command.run(args, agent, settings)


_HINTS = {
    "not_found": "check the id, or point --db / COLDMAIL_DB at the database that holds it",
    "bad_id": "see `coldmail list` for the ids",
    "held": "run `coldmail show {id}` in a moment to see the result",
    "unsigned": "if you trust whoever could write this database: coldmail trust-unsigned {id} "
    "--yes",
    "awaiting_feedback": "coldmail resume {id} --feedback '…' first",
    "not_final": "see `coldmail show {id}`",
    "not_paused": "see `coldmail show {id}`",
    "public_origin": "or give it once: coldmail link {id} --origin https://…",
    "store_path": "choose another --db path",
    "unconfirmed": "run {retry}",
}


def _hint(exc: ColdmailError, args: argparse.Namespace | None) -> str:
    if isinstance(exc, DatabaseNotFound):
        if exc.location == str(default_db_path()):
            return (
                " (the default location); `coldmail start` or `coldmail demo` creates it, "
                "or point --db / COLDMAIL_DB at another database"
            )
        return (
            "; check --db / COLDMAIL_DB, or run `coldmail start` to create one there "
            f"(the default is {default_db_path()})"
        )
    template = _HINTS.get(exc.topic or "")
    if template is None:
        return ""
    return "; " + template.format(
        id=getattr(args, "interaction_id", None) or "ID",
        retry=getattr(args, "safe_retry", None) or "the same command again",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = False
    try:
        settings = Settings.resolve(db=args.db, llm=args.llm)
        debug = settings.debug
        return _execute(args, settings)
    except ColdmailError as exc:
        print_safe(f"coldmail: error: {exc}{_hint(exc, args)}", stream=sys.stderr)
        return exc.exit_code
    except Interrupted as interrupted:
        print_safe(f"coldmail: {interrupted}", stream=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print_safe(
            "coldmail: interrupted; stored runs are unchanged or resumable", stream=sys.stderr
        )
        return INTERRUPTED
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if debug:
            raise
        print_safe(
            f"coldmail: unexpected error: {type(exc).__name__}: {exc} "
            "(set COLDMAIL_DEBUG=1 for the traceback)",
            stream=sys.stderr,
        )
        return 1


def _reader_went_away() -> int:
    """Standard output's reader closed the pipe (``coldmail list --json | head``): end
    quietly, with the status of a process that SIGPIPE ended, as ``yes | head`` does. What
    Python would still flush at exit goes nowhere, so no "Exception ignored" either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file descriptor (a test's captured output)
        pass
    return OUTPUT_CLOSED


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
