"""The ``coldmail`` subcommands that work on the stored runs: one function per subcommand.

Each takes the parsed arguments, the open agent and the settings, and returns the text to
print (``None``: nothing more). What a command checks before the database is opened — bad
input is refused before the database is even opened — is its ``check_*`` function, which
leaves what it validated on ``args``; ``cli.main`` runs the check, opens the agent, then the
command (its dispatch table says which).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..agent import ColdMailAgent
from ..errors import ColdmailError, ConfigurationError, InvalidInput
from ..models import (
    CLI_JSON_KEYS,
    MAX_PAGE,
    DamagedRun,
    Decision,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
    make_brief,
    make_decision,
    validate_interaction_id,
    validate_page,
)
from ..settings import Settings, redact_url
from ..store.outbox import wait_state
from .fork import export_variants, family_json, format_family
from .notifications import check_notifications_args, format_deliveries, notifications_command
from .render import (
    format_history,
    format_run,
    format_run_line,
    format_sequence,
    full_location,
    json_for_terminal,
    print_safe,
    resume_hint,
)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """``coldmail serve``: the inbox (it opens the database itself)."""
    from ..web.serve import serve as serve_inbox  # the web extra, needed by this command only

    return serve_inbox(
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


def check_start(args: argparse.Namespace, settings: Settings) -> Settings:
    """The brief, the notify and deadline flags and the lead list's header, before the
    database is created (an unusable path or key then fails before the LLM is paid)."""
    args.brief = make_brief(
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
    args.fields = ()
    if args.leads is not None:
        from ..export.leads import read_header

        args.fields = read_header(args.leads).fields
    return settings


async def start(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail start``: draft, pause, and say how to resume."""
    run = await agent.start(
        args.brief, review=args.review, fields=args.fields, notify=args.notify, **_wait_args(args)
    )
    return _emit(
        args,
        run,
        f"{format_sequence(run.draft)}\n\n"
        f"Paused and saved as {run.interaction_id} in {full_location(agent.db_path)}.\n"
        f"{resume_hint(run, db=settings.db)}",
    )


def check_resume(args: argparse.Namespace, settings: Settings) -> Settings:
    """The feedback, as a decision (checked like every other answer, before the database
    opens)."""
    args.decision = make_decision("feedback", text=args.feedback, reviewer=args.reviewer)
    args.feedback = args.decision.text
    return settings


async def resume(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail resume``: the audience feedback."""
    run = await _apply(agent, args, args.decision)
    return _emit(args, run, format_run(run))


def check_decision(args: argparse.Namespace, settings: Settings) -> Settings:
    """The decision, ``--file``'s sequence read and checked."""
    args.decision = _decision(args)
    return settings


async def decide(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail approve``, ``revise``, ``edit`` and ``reject``: a review round's decision."""
    run = await _apply(agent, args, args.decision)
    return _emit(args, run, format_run(run))


async def show(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail show``: the run, its wait, its notifications, its family and its history."""
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


def check_link(args: argparse.Namespace, settings: Settings) -> Settings:
    """``--origin`` as the public origin, checked as the setting is."""
    if args.origin is not None:
        return _with_origin(settings, args.origin)
    return settings


async def link(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
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


def check_list(args: argparse.Namespace, settings: Settings) -> Settings:
    validate_page(args.limit, 0, MAX_PAGE)
    return settings


async def list_runs(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail list``: newest first."""
    runs = await agent.list(args.status, limit=args.limit)
    if args.json:
        return json_for_terminal([_json_of(r) for r in runs])
    if not runs:
        which = f" with status {args.status}" if args.status else ""
        return f"No runs{which} in {agent.db_path}."
    return "\n".join(format_run_line(r) for r in runs)


async def purge(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail purge``: by default only completed runs."""
    statuses = sorted(set(args.status or [RunStatus.COMPLETED.value]))
    deleted = await agent.purge(args.older_than, statuses)
    if args.json:
        return json.dumps({"deleted": deleted, "statuses": statuses})
    return f"Deleted {deleted} run(s) ({', '.join(statuses)}) from {agent.db_path}."


def check_trust_unsigned(args: argparse.Namespace, settings: Settings) -> Settings:
    """The ids (or ``--all``), and ``--yes``: signing a run lets its snapshot be loaded."""
    args.interaction_ids = [validate_interaction_id(i) for i in args.interaction_ids]
    if bool(args.interaction_ids) == bool(args.all):
        raise InvalidInput("name the runs to trust, or give --all (not both)")
    if not args.yes:
        raise InvalidInput(
            "signing a run lets its snapshot be loaded, and loading a snapshot can run "
            "code: add --yes if you trust whoever could write this database"
        )
    return settings


async def trust_unsigned(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail trust-unsigned``: sign runs stored unsigned (by release 0.1)."""
    signed = await agent.trust_unsigned(None if args.all else args.interaction_ids)
    if args.json:
        return json.dumps({"signed": signed})
    if not signed:
        return "No unsigned runs to sign."
    return f"Signed {len(signed)} run(s): {', '.join(signed)}"


def check_notifications(args: argparse.Namespace, settings: Settings) -> Settings:
    check_notifications_args(args)
    return settings


async def notifications(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str:
    """``coldmail notifications``: the deliveries, or a failed one queued again."""
    return await notifications_command(args, agent)


async def export(args: argparse.Namespace, agent: ColdMailAgent, settings: Settings) -> str | None:
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
        print_safe(summary, stream=sys.stderr)
        return None
    return summary


class Interrupted(Exception):
    """Ctrl-C stopped a feedback or a decision; the message says what the store holds."""


async def _apply(agent: ColdMailAgent, args: argparse.Namespace, decision: Decision) -> Run:
    """Apply ``decision``: the feedback, or a review decision. The run is read first, so
    that what is said afterwards comes from the store: that the command changed nothing (it
    repeated what the run already took), a retry that is safe if the result could not be
    confirmed, or, after Ctrl-C, whether the step was recorded."""
    interaction_id = args.interaction_id
    before = await agent.get(interaction_id)
    args.safe_retry = _safe_retry(args, before)
    try:
        run = await agent.decide(interaction_id, decision)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
        raise Interrupted(await _after_interrupt(agent, args, before, decision)) from None
    if decision.kind != "feedback" and run.updated_at == before.updated_at:
        print_safe(f"coldmail: {_nothing_changed(args, before)}", stream=sys.stderr)
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
    agent: ColdMailAgent, args: argparse.Namespace, before: Run, decision: Decision
) -> str:
    """What to say after Ctrl-C stopped a step: read from the store, never assumed."""
    interaction_id = args.interaction_id
    what = "feedback" if decision.kind == "feedback" else "decision"
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
        after.feedback == decision.text
        if decision.kind == "feedback"
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
    if not taken or taken[-1].kind != decision.event_kind:
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


def _with_origin(settings: Settings, origin: str) -> Settings:
    """The settings with ``--origin`` as the public origin, checked as the setting is."""
    try:
        return settings.with_overrides(public_origin=origin)
    except ConfigurationError as exc:
        raise InvalidInput(str(exc).replace("public_origin=", "--origin ", 1)) from None


def _json_of(run: ListedRun) -> dict[str, Any]:
    if isinstance(run, DamagedRun):
        return run.to_public_dict()
    data = run.to_public_dict()
    return {key: data[key] for key in CLI_JSON_KEYS}


def _emit(args: argparse.Namespace, run: Run, text: str) -> str:
    if args.json:
        return json_for_terminal(_json_of(run))
    return text
