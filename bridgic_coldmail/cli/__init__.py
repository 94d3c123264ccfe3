"""The ``coldmail`` command: a thin layer over :class:`ColdMailAgent`.

Errors are one line on stderr with a documented exit code (``errors.EXIT_CODES``); the
library's message says what happened, and this layer adds the hint that names a command or a
flag. Everything printed goes through ``text.terminal_safe`` (or ``json_for_terminal``).
Set ``COLDMAIL_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import stat
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn

from .._version import __version__
from ..agent import MAX_PAGE, ColdMailAgent
from ..errors import (
    INTERRUPTED,
    OUTPUT_CLOSED,
    ColdmailError,
    ConfigurationError,
    DatabaseNotFound,
    InvalidInput,
)
from ..export.profiles import NAMES as PROFILE_NAMES
from ..models import (
    CLI_JSON_KEYS,
    DamagedRun,
    Decision,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
    make_brief,
    make_decision,
    validate_feedback,
    validate_interaction_id,
    validate_page,
)
from ..settings import BACKENDS, ENV, Settings, default_db_path, redact_url
from ..store import Action, IfMissing
from ..store.outbox import wait_state
from ..text import terminal_safe
from .demo import run_demo
from .fork import add_commands as add_fork_commands
from .fork import export_variants, family_json, format_family, run_fork
from .notifications import add_commands as add_notification_commands
from .notifications import (
    check_notifications_args,
    format_deliveries,
    notifications_command,
    run_worker,
)
from .personalize import add_commands as add_personalize_commands
from .personalize import run_personalize
from .render import (
    format_history,
    format_run,
    format_run_line,
    format_sequence,
    full_location,
    json_for_terminal,
    resume_hint,
)

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


def _execute(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "demo":
        return run_demo(args, settings)
    if args.command == "serve":
        return _serve(args, settings)
    if args.command == "worker":
        return run_worker(args, settings)
    if args.command == "fork":
        return run_fork(args, settings)
    if args.command == "personalize":
        return run_personalize(args, settings)
    text = asyncio.run(_run_command(args, settings))
    if text is not None:
        _print(text)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from ..web.serve import serve

    return serve(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        worker=not args.no_worker,
    )


def _wait_args(args: argparse.Namespace) -> dict[str, Any]:
    """``start``'s deadline flags, as ``ColdMailAgent.start`` takes them."""
    return {
        "respond_within": args.respond_within,
        "remind_every": args.remind_every,
        "on_timeout": args.on_timeout,
        "escalate_to": args.escalate_to,
    }


async def _run_command(args: argparse.Namespace, settings: Settings) -> str | None:
    # Bad input is refused before the database is even opened.
    command = args.command
    if command == "start":
        brief = make_brief(
            product=args.product,
            offer=args.offer,
            sender=args.sender,
            audience=args.audience,
            cta=args.cta,
            postal_address=args.postal_address,
            opt_out=args.opt_out,
        )
        from ..notify.policy import notify_policy

        notify_policy(settings, args.notify, **_wait_args(args))  # before the database opens
    if hasattr(args, "interaction_id"):
        args.interaction_id = validate_interaction_id(args.interaction_id)
    if command == "resume":
        args.feedback = validate_feedback(args.feedback)
    if command == "list":
        validate_page(args.limit, 0, MAX_PAGE)
    if command == "link" and args.origin is not None:
        settings = _with_origin(settings, args.origin)
    if command == "notifications":
        check_notifications_args(args)
    decision = _decision(args) if command in ("approve", "revise", "edit", "reject") else None
    if command == "trust-unsigned":
        ids = [validate_interaction_id(i) for i in args.interaction_ids]
        if bool(ids) == bool(args.all):
            raise InvalidInput("name the runs to trust, or give --all (not both)")
        if not args.yes:
            raise InvalidInput(
                "signing a run lets its snapshot be loaded, and loading a snapshot can run "
                "code: add --yes if you trust whoever could write this database"
            )

    fields: tuple[str, ...] = ()
    if command == "start" and args.leads is not None:
        from ..export.leads import read_header

        fields = read_header(args.leads).fields

    # Only `start` creates the database (now: an unusable path or key fails before the LLM
    # is paid); the others read or change runs, which must exist.
    missing: IfMissing = "create" if command == "start" else "refuse"
    async with ColdMailAgent.open(settings=settings, missing=missing) as agent:
        if command == "export":
            return await _export(agent, args)
        if command == "notifications":
            return await notifications_command(args, agent)
        if command == "start":
            run = await agent.start(
                brief, review=args.review, fields=fields, notify=args.notify, **_wait_args(args)
            )
            return _emit(
                args,
                run,
                f"{format_sequence(run.draft)}\n\n"
                f"Paused and saved as {run.interaction_id} in {full_location(agent.db_path)}.\n"
                f"{resume_hint(run, db=settings.db)}",
            )
        if command == "resume" or decision is not None:
            run = await _apply(agent, args, decision)
            return _emit(args, run, format_run(run))
        if command == "show":
            run = await agent.get(args.interaction_id)
            if args.sequence:
                sequence = run.sequence or run.draft
                return json_for_terminal(sequence.model_dump(mode="json"))
            history = format_history(await agent.history(args.interaction_id))
            deliveries = await agent.notifications(args.interaction_id, limit=MAX_PAGE)
            sent = f"{format_deliveries(deliveries)}\n\n" if deliveries else ""
            waiting = wait_state(run.pause_id if run.status.is_paused else None, deliveries)
            family = await agent.family(args.interaction_id)
            if args.json:
                shown = _json_of(run)
                if waiting.timed:
                    shown["wait"] = waiting.to_public_dict()
                if not family.is_alone:
                    shown["family"] = family_json(family)
                return json_for_terminal(shown)
            kin = "" if family.is_alone else f"{format_family(family)}\n\n"
            wait = f"WAITING: {waiting.describe()}\n\n" if waiting.timed else ""
            return _emit(args, run, f"{format_run(run)}\n\n{wait}{sent}{kin}{history}")
        if command == "link":
            return await _link(agent, args, settings)
        if command == "purge":
            statuses = sorted(set(args.status or [RunStatus.COMPLETED.value]))
            deleted = await agent.purge(args.older_than, statuses)
            if args.json:
                return json.dumps({"deleted": deleted, "statuses": statuses})
            return f"Deleted {deleted} run(s) ({', '.join(statuses)}) from {agent.db_path}."
        if command == "trust-unsigned":
            signed = await agent.trust_unsigned(None if args.all else ids)
            if args.json:
                return json.dumps({"signed": signed})
            if not signed:
                return "No unsigned runs to sign."
            return f"Signed {len(signed)} run(s): {', '.join(signed)}"
        runs = await agent.list(args.status, limit=args.limit)
        if args.json:
            return json_for_terminal([_json_of(r) for r in runs])
        if not runs:
            which = f" with status {args.status}" if args.status else ""
            return f"No runs{which} in {agent.db_path}."
        return "\n".join(format_run_line(r) for r in runs)


async def _link(agent: ColdMailAgent, args: argparse.Namespace, settings: Settings) -> str:
    """The link to the run's current pause, and until when it works."""
    from ..notify.links import link_expiry

    now = datetime.now(timezone.utc)
    if args.expires_in is not None:
        expires_at = now + args.expires_in
    else:
        expires_at = link_expiry(now, settings.link_ttl)
    url = await agent.link(args.interaction_id, expires_at=expires_at)
    if args.json:
        return json.dumps(
            {
                "interaction_id": args.interaction_id,
                "link": url,
                "expires_at": expires_at.isoformat(),
            }
        )
    return (
        f"{url}\n"
        f"It opens this run's current question with no login, until "
        f"{expires_at:%Y-%m-%d %H:%M} UTC or until the question is answered; anyone who has "
        "it can answer, so send it only to the reviewer."
    )


async def _export(agent: ColdMailAgent, args: argparse.Namespace) -> str | None:
    """Run the export; SIGTERM stops it like Ctrl-C (the previous file kept, no temporary
    file left). With ``--out -`` the file goes to stdout and the summary to stderr."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated: list[bool] = []

    def terminate() -> None:
        terminated.append(True)
        if task is not None:
            task.cancel()

    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, terminate)
        handled = True
    try:
        report = await agent.export(
            args.interaction_id,
            args.leads,
            args.out,
            format=args.format,
            strict=args.strict,
            overwrite=args.overwrite,
            profile=args.profile,
            variants=await export_variants(agent, args),
            disabled_rules=_rule_list(args.disabled_rules),
            template=args.template,
        )
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    except InvalidInput as exc:
        if exc.topic == "out_exists":
            raise InvalidInput(
                f"{args.out} already exists; add --overwrite to replace it, or choose another --out"
            ) from None
        if exc.topic == "template_exists":
            raise InvalidInput(
                f"{exc}; add --overwrite to replace it, or choose another --template"
            ) from None
        if exc.topic == "stdout_closed":
            # The reader is gone: what is still buffered for stdout must not fail at exit.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)
    summary = _export_summary(args, report)
    if report.out is None:  # the file went to stdout
        _print(summary, stream=sys.stderr)
        return None
    return summary


class _Interrupted(Exception):
    """Ctrl-C stopped a feedback or a decision; the message says what the store holds."""


async def _apply(agent: ColdMailAgent, args: argparse.Namespace, decision: Decision | None) -> Run:
    """Resume the run with ``args.feedback``, or apply ``decision``. The run is read first, so
    that what is said afterwards comes from the store: that the command changed nothing (it
    repeated what the run already took), a retry that is safe if the result could not be
    confirmed, or, after Ctrl-C, whether the step was recorded."""
    interaction_id = args.interaction_id
    before = await agent.get(interaction_id)
    args.safe_retry = _safe_retry(args, before)
    try:
        if decision is None:
            run = await agent.resume(interaction_id, args.feedback, reviewer=args.reviewer)
        else:
            run = await agent.decide(interaction_id, decision)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
        raise _Interrupted(await _after_interrupt(agent, args, before, decision)) from None
    if decision is not None and run.updated_at == before.updated_at:
        _print(f"coldmail: {_nothing_changed(args, before)}", stream=sys.stderr)
    return run


def _nothing_changed(args: argparse.Namespace, before: Run) -> str:
    """The note for a decision the run had already taken (the stored result was printed)."""
    interaction_id, kind = args.interaction_id, args.command
    taken = "already took this decision; nothing changed"
    if args.round is not None:
        return f"round {args.round} of run {interaction_id} {taken}"
    if before.status is RunStatus.AWAITING_REVIEW and before.round is not None:
        return (
            f"round {before.round - 1} of run {interaction_id} {taken}. To {kind} round "
            f"{before.round} the same way, add --round {before.round}"
        )
    state = before.describe_state()
    return f"run {interaction_id} was already {state} by this decision; nothing changed"


async def _after_interrupt(
    agent: ColdMailAgent, args: argparse.Namespace, before: Run, decision: Decision | None
) -> str:
    """What to say after Ctrl-C stopped a step: read from the store, never assumed."""
    interaction_id = args.interaction_id
    what = "feedback" if decision is None else "decision"
    try:
        after = await agent.get(interaction_id)
        history = await agent.history(interaction_id)
    except ColdmailError:
        return f"interrupted; see coldmail show {interaction_id} for where the run is"
    if after.status is RunStatus.RESUMING:
        return (
            f"interrupted; run {interaction_id} is being worked on by another process; see "
            f"coldmail show {interaction_id} in a moment"
        )
    if (after.status, after.round) == (before.status, before.round):
        return (
            f"interrupted before the {what} was recorded: run {interaction_id} is unchanged, "
            f"{after.describe_state()}; run the command again to apply it"
        )
    ours = (
        after.feedback == args.feedback
        if decision is None
        else _took(history, before.round, decision)
    )
    if not ours:
        return (
            f"interrupted; run {interaction_id} took another {what} meanwhile and is "
            f"{after.describe_state()}; see coldmail show {interaction_id}"
        )
    return (
        f"interrupted, but the {what} was recorded: run {interaction_id} is "
        f"{after.describe_state()}; see coldmail show {interaction_id}"
    )


def _took(history: list[RunEvent], round: int | None, decision: Decision) -> bool:
    """Whether the decision recorded for ``round`` is ``decision`` (whoever sent it)."""
    decisions = ("approved", "revised", "edited", "rejected")
    taken = [e for e in history if e.kind in decisions and e.round == round]
    if not taken or taken[-1].kind != Action.of(decision).event_kind:
        return False
    last = taken[-1]
    if decision.kind == "edit":
        return last.sequence == decision.sequence
    return decision.kind == "approve" or last.detail == decision.text


def _safe_retry(args: argparse.Namespace, before: Run) -> str:
    """The command that finishes this step safely if its result could not be confirmed: the
    same feedback again, or the same decision for the round it was for (either returns the
    recorded result if there is one, and applies the step once if not)."""
    words = ["coldmail"]
    if args.db:
        words += ["--db", redact_url(args.db)]
    words += [args.command, args.interaction_id]
    words += {
        "resume": ["--feedback", getattr(args, "feedback", "")],
        "revise": ["--feedback", getattr(args, "feedback", "")],
        "reject": ["--reason", getattr(args, "reason", "")],
        "edit": ["--file", str(getattr(args, "file", ""))],
    }.get(args.command, [])
    if args.reviewer:
        words += ["--reviewer", args.reviewer]
    round = getattr(args, "round", None) or before.round
    if args.command != "resume" and round is not None:
        words += ["--round", str(round)]
    return " ".join(shlex.quote(word) for word in words)


def _rule_list(given: list[str] | None) -> list[str] | None:
    """``--disable-rule a --disable-rule b,c`` as one list (None: the setting's)."""
    if given is None:
        return None
    return [rule for item in given for rule in item.split(",") if rule.strip()]


def _export_summary(args: argparse.Namespace, report: Any) -> str:
    if args.json:
        return json_for_terminal(
            {
                "out": "-" if report.out is None else str(report.out),
                "format": report.format,
                "profile": report.profile,
                "template": None if report.template is None else str(report.template),
                "rows_written": report.rows_written,
                "variants": dict(report.variants),
                "skipped": [
                    {"row": s.row, "email": s.email, "reason": s.reason} for s in report.skipped
                ],
                "lint": [
                    {
                        "code": i.code,
                        "severity": i.severity.value,
                        "step": i.step,
                        "part": i.part,
                        "variant": i.variant,
                        "message": i.message,
                        "source": i.source,
                    }
                    for i in report.lint
                ],
                "lead_findings": [
                    {
                        "code": f.code,
                        "severity": f.severity.value,
                        "step": f.step,
                        "part": f.part,
                        "variant": f.variant,
                        "message": f.message,
                        "count": f.count,
                        "rows": list(f.rows),
                        "source": f.source,
                    }
                    for f in report.lead_findings
                ],
            }
        )
    where = "standard output" if report.out is None else report.out
    shaped = "" if report.profile == "generic" else f", for {report.profile}"
    lines = [f"Wrote {report.rows_written} lead(s) to {where} ({report.format}{shaped})."]
    if report.variants:
        split = ", ".join(f"{label}: {count}" for label, count in report.variants)
        lines.append(f"A/B variants by a hash of each address (the variant column): {split}.")
    if report.template is not None:
        lines.append(f"Paste-ready template: {report.template}")
    if report.skipped:
        lines.append(f"Skipped {len(report.skipped)} lead(s), not sent with a hole:")
        lines += [f"  {s}" for s in report.skipped[:20]]
        if len(report.skipped) > 20:
            lines.append(f"  … and {len(report.skipped) - 20} more (see --json)")
    warnings = [i for i in report.lint if i.severity.value != "info"]
    notes = [i for i in report.lint if i.severity.value == "info"]
    if warnings or report.lead_findings:
        lines.append("Warnings (--strict makes them errors; --disable-rule RULE turns one off):")
        lines += [f"  {issue}" for issue in warnings]
        lines += [f"  {finding}" for finding in report.lead_findings]
    if notes:
        lines.append("Notes:")
        lines += [f"  {issue}" for issue in notes]
    return "\n".join(lines)


def _decision(args: argparse.Namespace) -> Decision:
    common = {"reviewer": args.reviewer, "round": args.round}
    if args.command == "revise":
        return make_decision("revise", text=args.feedback, **common)
    if args.command == "reject":
        return make_decision("reject", text=args.reason, **common)
    if args.command == "edit":
        return make_decision("edit", sequence=_read_sequence(args.file), **common)
    return make_decision("approve", **common)


MAX_SEQUENCE_FILE_BYTES = 1024 * 1024
"""An edited sequence is two emails; a file larger than this is not one."""


def _read_sequence(path: Path) -> Any:
    try:
        # Non-blocking, then checked: a FIFO or a device (/dev/zero) would never end.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InvalidInput(f"{path} does not exist; write the emails there as JSON") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{path} is not a regular file; write the emails to a file")
        os.set_blocking(fd, True)
        raw = os.read(fd, MAX_SEQUENCE_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_SEQUENCE_FILE_BYTES:
        raise InvalidInput(f"{path} is over 1 MiB; an edited sequence is two short emails")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path} is not JSON ({exc.msg} at line {exc.lineno}); start from the output of "
            "`coldmail show ID --sequence`"
        ) from None


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


def _with_origin(settings: Settings, origin: str) -> Settings:
    """The settings with ``--origin`` as the public origin, checked as the setting is."""
    try:
        return settings.with_overrides(public_origin=origin)
    except ConfigurationError as exc:
        raise InvalidInput(str(exc).replace("public_origin=", "--origin ", 1)) from None


def _parse_round(text: str) -> int:
    if not re.fullmatch(r"\s*\d{1,6}\s*", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a round number (1, 2, 3…)")
    return int(text)


def _json_of(run: ListedRun) -> dict[str, Any]:
    if isinstance(run, DamagedRun):
        return run.to_public_dict()
    data = run.to_public_dict()
    return {key: data[key] for key in CLI_JSON_KEYS}


def _emit(args: argparse.Namespace, run: Run, text: str) -> str:
    if args.json:
        return json_for_terminal(_json_of(run))
    return text


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


def _print(text: str, *, stream: Any = None) -> None:
    print(terminal_safe(text), file=stream or sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = False
    try:
        settings = Settings.resolve(db=args.db, llm=args.llm)
        debug = settings.debug
        return _execute(args, settings)
    except ColdmailError as exc:
        _print(f"coldmail: error: {exc}{_hint(exc, args)}", stream=sys.stderr)
        return exc.exit_code
    except _Interrupted as interrupted:
        _print(f"coldmail: {interrupted}", stream=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        _print("coldmail: interrupted; stored runs are unchanged or resumable", stream=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if debug:
            raise
        _print(
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
