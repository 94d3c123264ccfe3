"""The ``coldmail`` command line's parser: every subcommand, its options and their help.

``docs/generate.py`` writes the command-line reference from it, so a help text changed here
comes with its page.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from .._version import __version__
from ..export.profiles import NAMES as PROFILE_NAMES
from ..models import MAX_PAGE, RunStatus
from ..settings import BACKENDS, ENV, default_db_path
from ..text import terminal_safe
from .fork import add_commands as add_fork_commands
from .notifications import add_commands as add_notification_commands
from .personalize import add_commands as add_personalize_commands

MAX_AGE_DAYS = 100 * 365
"""``--older-than`` beyond a century is a typo (and would overflow the date)."""


def _add_db(parser: argparse.ArgumentParser, default: Any) -> None:
    shown = str(default_db_path()).replace("%", "%%")  # argparse formats help with %
    parser.add_argument(
        "--db",
        metavar="PATH_OR_URL",
        default=default,
        help=f"SQLite file or postgresql:// URL (default: $COLDMAIL_DB, else {shown})",
    )


def _add_llm(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--llm",
        choices=BACKENDS,
        default=default,
        help="which LLM (default: $COLDMAIL_LLM, else openai when configured, else local)",
    )


_WHERE_RUNS_ARE = """\
Runs are kept in
  {db}
unless --db or COLDMAIL_DB names another database. `start` and `demo` create
it with the first run they store (so does `serve`, when a run is started from
the inbox); no other command creates one."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error) and says where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, terminal_safe(f"{self.prog}: error: {message}; see {self.prog} --help\n"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so the README's reference can be checked against it)."""
    parser = _Parser(
        prog="coldmail",
        description="Draft a two-email cold sequence, pause for audience feedback, resume later.",
        epilog=_WHERE_RUNS_ARE.format(db=default_db_path()).replace("%", "%%"),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the path stays on one line
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

    def decision(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("interaction_id", metavar="INTERACTION_ID")
        sub.add_argument("--reviewer", metavar="NAME", help="who decides (kept in the history)")
        sub.add_argument(
            "--round",
            type=_parse_round,
            metavar="N",
            help="the round this decision answers; repeating it then changes nothing",
        )

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
    demo.add_argument("--review", action="store_true", help="review rounds after refining")

    start = command("start", "draft a sequence and pause for audience feedback")
    start.add_argument("--product", required=True, help="what you sell")
    start.add_argument("--offer", required=True, help="the value it brings the reader")
    start.add_argument("--sender", required=True, help="who signs the emails")
    start.add_argument("--audience", help="your first guess at the audience")
    start.add_argument("--cta", help="the one action the reader should take")
    start.add_argument(
        "--postal-address",
        help="the sender's postal address, appended to every exported email "
        "(default: $COLDMAIL_POSTAL_ADDRESS)",
    )
    start.add_argument(
        "--opt-out",
        help="one sentence on how to opt out, appended to every exported email "
        "(default: $COLDMAIL_OPT_OUT)",
    )
    start.add_argument(
        "--review", action="store_true", help="pause for review rounds after the refinement"
    )
    start.add_argument(
        "--leads",
        type=Path,
        metavar="CSV",
        help="the lead list the emails will go to: its columns become {{merge_fields}}",
    )
    start.add_argument(
        "--notify",
        action="append",
        default=[],
        metavar="DEST",
        help="also tell DEST when the run waits or ends: an email address, an https:// "
        "webhook or Slack URL (added to $COLDMAIL_NOTIFY)",
    )
    start.add_argument(
        "--respond-within",
        metavar="DURATION",
        help="each pause's deadline: 90s, 36h, 3d, 1h30m (default $COLDMAIL_RESPOND_WITHIN)",
    )
    start.add_argument(
        "--remind-every",
        metavar="DURATION",
        help="remind the destinations this often while a pause waits "
        "(default $COLDMAIL_REMIND_EVERY)",
    )
    start.add_argument(
        "--on-timeout",
        choices=("wait", "proceed", "reject"),
        help="what the deadline does: keep waiting and escalate, go on without the answer "
        "(the brief's audience; approve the version under review), or reject the run "
        "(default $COLDMAIL_ON_TIMEOUT, else wait)",
    )
    start.add_argument(
        "--escalate-to",
        action="append",
        default=[],
        metavar="DEST",
        help="tell DEST when a deadline passes (default $COLDMAIL_ESCALATE_TO)",
    )

    resume = command("resume", "resume a paused run with feedback on the audience")
    resume.add_argument("interaction_id", metavar="INTERACTION_ID")
    resume.add_argument("--feedback", required=True, help="who the emails should really target")
    resume.add_argument("--reviewer", metavar="NAME", help="who gives it (kept in the history)")

    approve = command("approve", "approve the sequence under review; the run completes")
    decision(approve)
    revise = command("revise", "ask for another version with guidance (next review round)")
    decision(revise)
    revise.add_argument("--feedback", required=True, help="what the next version should change")
    edit = command("edit", "put your own emails under review (next review round)")
    decision(edit)
    edit.add_argument(
        "--file",
        required=True,
        type=Path,
        help="a JSON sequence, as `coldmail show ID --sequence` prints it",
    )
    reject = command("reject", "end the run as rejected (kept with its history)")
    decision(reject)
    reject.add_argument("--reason", required=True, help="why (kept in the history)")

    show = command("show", "show one run and its history")
    show.add_argument("interaction_id", metavar="INTERACTION_ID")
    show.add_argument(
        "--sequence",
        action="store_true",
        help="print only the newest sequence as JSON (the file `coldmail edit` takes)",
    )

    link = command(
        "link", "a signed one-click link that opens the run's current question (no login)"
    )
    link.add_argument("interaction_id", metavar="INTERACTION_ID")
    link.add_argument(
        "--expires-in",
        type=_parse_link_lifetime,
        metavar="DURATION",
        help="how long the link works: 7d, 36h, 90m or 45s "
        f"(default: ${ENV['link_ttl']}, else a week)",
    )
    link.add_argument(
        "--origin",
        metavar="URL",
        help="the address browsers reach the inbox at, e.g. https://review.example.com "
        f"(default: ${ENV['public_origin']})",
    )

    listing = command("list", "list runs, newest first")
    listing.add_argument("--status", choices=[s.value for s in RunStatus])
    listing.add_argument("--limit", type=int, default=50, help=f"at most this many (1-{MAX_PAGE})")

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
        help="which runs (repeatable; default completed); paused runs only when named",
    )

    export = command("export", "render a completed run's emails for every lead of a CSV list")
    export.add_argument("interaction_id", metavar="INTERACTION_ID")
    export.add_argument("--leads", required=True, type=Path, metavar="CSV", help="the lead list")
    export.add_argument(
        "--out", required=True, metavar="FILE", help="file to write, or - for standard output"
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace FILE if it exists (only a regular file; never the database or its key)",
    )
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="default csv")
    export.add_argument(
        "--strict", action="store_true", help="refuse on any lint warning or skipped lead"
    )
    export.add_argument(
        "--for",
        dest="profile",
        choices=PROFILE_NAMES,
        default="generic",
        help="the sending tool the file is for: its column names, and a template beside it",
    )
    export.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="INTERACTION_ID",
        help="another approved run to export as an A/B variant; one --variant per run",
    )
    export.add_argument(
        "--family",
        action="store_true",
        help="also export every other approved run of this run's family (its forks, its "
        "parent…) as A/B variants",
    )
    export.add_argument(
        "--template",
        metavar="FILE",
        help="where to write the paste-ready template (default: beside --out, for a tool)",
    )
    export.add_argument(
        "--disable-rule",
        dest="disabled_rules",
        action="append",
        metavar="RULE",
        help="a check rule that does not apply, e.g. can-spam-address; one --disable-rule per rule",
    )

    trust = command(
        "trust-unsigned",
        "sign runs stored unsigned (by release 0.1): only if you trust whoever wrote the db",
    )
    trust.add_argument("interaction_ids", metavar="INTERACTION_ID", nargs="*")
    trust.add_argument("--all", action="store_true", help="every unsigned run")
    trust.add_argument("--yes", action="store_true", help="confirm: loading them can run code")

    serve = command("serve", "the reviewer's inbox in the browser", json_output=False)
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="print a line per request (one-click link tokens are redacted)",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not deliver notifications from this process (run `coldmail worker` instead)",
    )
    add_notification_commands(command)
    add_fork_commands(command)
    add_personalize_commands(command)
    return parser


_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_AGE_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _parse_age(text: str) -> timedelta:
    """``30d`` → 30 days (for ``--older-than``)."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhms])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age; use e.g. 30d, 12h, 90m or 45s")
    amount, unit = int(match.group(1)), match.group(2)
    if amount * _AGE_SECONDS[unit] > MAX_AGE_DAYS * 86400:
        raise argparse.ArgumentTypeError(
            f"{text.strip()!r} is more than {MAX_AGE_DAYS // 365} years; give a shorter age"
        )
    return timedelta(**{_AGE_UNITS[unit]: amount})


def _parse_link_lifetime(text: str) -> timedelta:
    """``--expires-in``: an age (``36h``), more than nothing and at most a link's longest."""
    from ..notify.links import MAX_LINK_DAYS

    lifetime = _parse_age(text)
    if not lifetime:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is no time at all; use e.g. 7d or 36h")
    if lifetime > timedelta(days=MAX_LINK_DAYS):
        raise argparse.ArgumentTypeError(
            f"{text.strip()!r} is longer than a link may work ({MAX_LINK_DAYS}d); give less"
        )
    return lifetime


def _parse_round(text: str) -> int:
    if not re.fullmatch(r"\s*\d{1,6}\s*", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a round number (1, 2, 3…)")
    return int(text)
