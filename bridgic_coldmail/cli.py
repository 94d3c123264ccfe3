"""The ``coldmail`` command: a thin layer over :class:`ColdMailAgent`.

Errors are one line on stderr with a documented exit code (see ``errors.EXIT_CODES``);
set ``COLDMAIL_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from . import __version__
from .agent import MAX_PAGE, ColdMailAgent
from .demo import run_demo
from .errors import ColdmailError, ConfigurationError
from .llm import BACKENDS
from .models import Run, RunStatus, make_brief, validate_feedback, validate_interaction_id
from .render import format_history, format_run, format_run_line, format_sequence, resume_hint


def _add_db(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=default,
        help="SQLite file (default: $COLDMAIL_DB or snapshots/coldmail.db)",
    )


def _add_llm(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--llm",
        choices=BACKENDS,
        default=default,
        help="which LLM (default: $COLDMAIL_LLM, else openai when configured, else local)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so the README's reference can be checked against it)."""
    parser = argparse.ArgumentParser(
        prog="coldmail",
        description="Draft a two-email cold sequence, pause for audience feedback, resume later.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_db(parser, None)
    _add_llm(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, json_output: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_db(sub, argparse.SUPPRESS)  # --db and --llm are accepted after the command too
        _add_llm(sub, argparse.SUPPRESS)
        if json_output:
            sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        return sub

    demo = command("demo", "the whole job, interactively, in this terminal", json_output=False)
    for flag, help_text in (
        ("--product", "what you sell"),
        ("--offer", "the value it brings the reader"),
        ("--sender", "who signs the emails"),
        ("--audience", "your first guess at the audience"),
        ("--cta", "the one action the reader should take"),
        ("--feedback", "answer the audience question without being asked"),
    ):
        demo.add_argument(flag, help=f"{help_text} (asked for if missing)")

    start = command("start", "draft a sequence and pause for audience feedback")
    start.add_argument("--product", required=True, help="what you sell")
    start.add_argument("--offer", required=True, help="the value it brings the reader")
    start.add_argument("--sender", required=True, help="who signs the emails")
    start.add_argument("--audience", help="your first guess at the audience")
    start.add_argument("--cta", help="the one action the reader should take")

    resume = command("resume", "resume a paused run with feedback on the audience")
    resume.add_argument("interaction_id", metavar="INTERACTION_ID")
    resume.add_argument("--feedback", required=True, help="who the emails should really target")

    show = command("show", "show one run")
    show.add_argument("interaction_id", metavar="INTERACTION_ID")

    serve = command("serve", "the reviewer's inbox in the browser", json_output=False)
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    purge = command("purge", "delete old runs (by default only completed ones)")
    purge.add_argument(
        "--older-than",
        required=True,
        type=_parse_age,
        metavar="AGE",
        help="age since the run last changed: 30d, 12h, 90m or 45s",
    )
    purge.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in RunStatus],
        help="which runs (repeatable; default completed); awaiting runs only when named",
    )

    listing = command("list", "list runs, newest first")
    listing.add_argument("--status", choices=[s.value for s in RunStatus])
    listing.add_argument("--limit", type=int, default=50, help=f"at most this many (1-{MAX_PAGE})")
    return parser


def _execute(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return run_demo(args)
    if args.command == "serve":
        return _serve(args)
    print(asyncio.run(_run_command(args)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .web.app import TOKEN_ENV, check_bind_address, create_app
    except ImportError:
        raise ConfigurationError(
            "coldmail serve needs the web extra: pip install 'bridgic-coldmail[web]'"
        ) from None
    check_bind_address(args.host, os.environ.get(TOKEN_ENV))
    print(f"Serving the inbox on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(
        create_app(args.db, llm=args.llm), host=args.host, port=args.port, log_level="warning"
    )
    return 0


async def _run_command(args: argparse.Namespace) -> str:
    # Bad input is refused before the database is even opened.
    if args.command == "start":
        brief = make_brief(
            product=args.product,
            offer=args.offer,
            sender=args.sender,
            audience=args.audience,
            cta=args.cta,
        )
    if args.command in ("resume", "show"):
        args.interaction_id = validate_interaction_id(args.interaction_id)
    if args.command == "resume":
        args.feedback = validate_feedback(args.feedback)
    async with ColdMailAgent.open(args.db, llm=args.llm) as agent:
        if args.command == "start":
            run = await agent.start(brief)
            return _emit(
                args,
                run,
                f"{format_sequence(run.draft)}\n\n"
                f"Paused and saved as {run.interaction_id} in {agent.db_path}.\n"
                f"{resume_hint(run)}",
            )
        if args.command == "resume":
            run = await agent.resume(args.interaction_id, args.feedback)
            return _emit(args, run, format_run(run))
        if args.command == "show":
            run = await agent.get(args.interaction_id)
            history = format_history(await agent.history(args.interaction_id))
            return _emit(args, run, f"{format_run(run)}\n\n{history}")
        if args.command == "purge":
            statuses = sorted(set(args.status or [RunStatus.COMPLETED.value]))
            deleted = await agent.purge(args.older_than, statuses)
            if args.json:
                return json.dumps({"deleted": deleted, "statuses": statuses})
            return f"Deleted {deleted} run(s) ({', '.join(statuses)}) from {agent.db_path}."
        runs = await agent.list(args.status, limit=args.limit)
        if args.json:
            return json.dumps([r.to_public_dict() for r in runs], indent=2, ensure_ascii=False)
        if not runs:
            which = f" with status {args.status}" if args.status else ""
            return f"No runs{which} in {agent.db_path}."
        return "\n".join(format_run_line(r) for r in runs)


_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def _parse_age(text: str) -> timedelta:
    """``30d`` → 30 days (for ``--older-than``)."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhms])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age; use e.g. 30d, 12h, 90m or 45s")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


def _emit(args: argparse.Namespace, run: Run, text: str) -> str:
    if args.json:
        return json.dumps(run.to_public_dict(), indent=2, ensure_ascii=False)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _execute(args)
    except ColdmailError as exc:
        print(f"coldmail: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("coldmail: interrupted; stored runs are unchanged or resumable", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("COLDMAIL_DEBUG"):
            raise
        print(
            f"coldmail: unexpected error: {type(exc).__name__}: {exc} "
            "(set COLDMAIL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
