"""``coldmail personalize``: one first line per lead of an approved run, signed off on a
sample first (issue 23).

``coldmail personalize ID --leads L`` shows the estimate, writes the sample and shows it
with the commands that answer it; ``--approve-sample`` writes the rest with a progress bar
(plain lines off a terminal); ``--guidance "…"`` rewrites the sample; ``--status`` says
where the batch is. Running the command again resumes wherever the batch stopped.

``--workers N`` (``COLDMAIL_PERSONALIZE_WORKERS``) writes the approved batch's lines with N
processes: this one and N - 1 children running ``coldmail personalize ID --approve-sample``
on the same batch (approving an approved batch goes on writing it). They share the batch as
any processes do — leads leased, each recorded fenced by its lease, so each is written once —
and the concurrency and the tokens-a-minute budget are their **total**, split between them:
one event loop spends about 1.3 ms of CPU on each call's client work, so a single process
cannot keep many calls a second in flight on a busy core (``benchmarks/NOTES.md``).
When this process is the one approving the sample, the children start before the approval
and wait for a line on their standard input before they write, so their start-up (the
interpreter, the package, the OpenAI SDK: about a second) overlaps the approval instead of
following it; a child whose parent goes away before saying so writes nothing and ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ..agent import ColdMailAgent
from ..errors import ColdmailError, InvalidInput
from ..llm import build_llm, close_llm
from ..models import validate_feedback, validate_interaction_id
from ..personalize.batch import BatchReport
from ..personalize.progress import Progress
from ..personalize.writer import LineResult
from ..settings import MAX_PERSONALIZE_WORKERS, Settings
from ..store.batches import BatchCounts
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
    sub.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes writing the lines, sharing the concurrency (default: the setting, 1)",
    )
    # How a --workers child is told to begin (see the module docstring); not for people.
    sub.add_argument("--after-parent", action="store_true", help=argparse.SUPPRESS)


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
    workers = check_workers(args.workers, settings)
    return asyncio.run(_personalize(args, interaction_id, guidance, settings, workers))


def check_workers(given: int | None, settings: Settings) -> int:
    """The processes to write with (``--workers``, else the setting), checked against the
    concurrency and the token budget they split.

    Raises:
        InvalidInput: out of range, or more processes than calls in flight (or than
            thousands of tokens a minute) to share.
    """
    workers = settings.personalize_workers if given is None else given
    if isinstance(workers, bool) or not 1 <= workers <= MAX_PERSONALIZE_WORKERS:
        raise InvalidInput(
            f"--workers is the number of processes writing the lines, from 1 to "
            f"{MAX_PERSONALIZE_WORKERS}, not {workers}"
        )
    concurrency = settings.personalize_concurrency
    if workers > concurrency:
        raise InvalidInput(
            f"--workers {workers} splits the {concurrency} calls in flight "
            "(COLDMAIL_PERSONALIZE_CONCURRENCY) between the processes, and each needs at "
            f"least one: use at most {concurrency} workers, or raise the concurrency"
        )
    budget = settings.personalize_tokens_per_minute
    if budget is not None and budget // workers < 1000:
        raise InvalidInput(
            f"--workers {workers} splits the budget of {budget:,} tokens a minute "
            "(COLDMAIL_PERSONALIZE_TPM) between the processes, at least 1,000 each: use "
            f"at most {budget // 1000} workers, or raise the budget"
        )
    return workers


def shares(total: int, workers: int) -> list[int]:
    """``total`` split between ``workers`` as evenly as it goes (the first ones get the
    rest): ``shares(32, 3)`` is ``[11, 11, 10]``."""
    return [total // workers + (i < total % workers) for i in range(workers)]


async def _personalize(
    args: argparse.Namespace,
    interaction_id: str,
    guidance: str | None,
    settings: Settings,
    workers: int,
) -> int:
    own = _own_share(settings, workers)
    if args.after_parent:
        return await _child(args, own)
    if args.approve_sample:  # the children start first, and get ready while this one approves
        async with _children(args, settings, workers) as children:
            return await _approve(args, interaction_id, own, children)
    async with ColdMailAgent.open(settings=own, missing="refuse") as agent:
        if args.status:
            report = await agent.batch_status(interaction_id, leads=args.leads)
        elif guidance is not None:
            report = await agent.guide_sample(interaction_id, guidance, leads=args.leads)
        else:
            if not args.json:
                estimate = await agent.estimate_lines(interaction_id, args.leads)
                _err(f"Estimate: {estimate.describe()}")
            report = await agent.personalize(interaction_id, args.leads, sample=args.sample)
            if report.batch.status == "writing":  # approved before: the rest is written now
                progress = _progress(args, report.counts.open)
                async with _children(args, settings, workers) as children:
                    report = await _write(
                        lambda on_line: agent.personalize(
                            interaction_id, args.leads, on_line=on_line
                        ),
                        agent,
                        args,
                        children,
                        progress,
                    )
    print(json_for_terminal(report_json(report)) if args.json else describe(report, args))
    return 0


async def _approve(
    args: argparse.Namespace, interaction_id: str, settings: Settings, children: _Children
) -> int:
    """``--approve-sample``: approve, then write this process's share beside ``children``."""
    async with ColdMailAgent.open(settings=settings, missing="refuse") as agent:
        if children.processes:
            await agent.approve_sample(interaction_id, leads=args.leads, write_rest=False)
        status = await agent.batch_status(interaction_id, leads=args.leads)
        progress = _progress(args, status.counts.open - status.counts.claimed)
        report = await _write(
            lambda on_line: agent.approve_sample(interaction_id, leads=args.leads, on_line=on_line),
            agent,
            args,
            children,
            progress,
        )
    print(json_for_terminal(report_json(report)) if args.json else describe(report, args))
    return 0


async def _child(args: argparse.Namespace, settings: Settings) -> int:
    """A ``--workers`` child: everything a writer needs is made ready (the store opened, the
    LLM built), then it waits for its parent's :data:`GO` and writes its share. Without it
    (the approval failed, the parent was stopped or killed) it writes nothing."""
    if sys.stdin.isatty():
        raise InvalidInput(
            "--after-parent is how coldmail personalize --workers starts its own processes; "
            "to write a batch with several, use --workers N"
        )
    llm = build_llm(settings)
    try:
        async with ColdMailAgent.open(settings=settings, llm=llm, missing="refuse") as agent:
            told = await asyncio.to_thread(sys.stdin.buffer.readline)
            if told != GO:
                return 0
            report = await agent.approve_sample(args.interaction_id, leads=args.leads)
    finally:
        await close_llm(llm)
    print(json_for_terminal(report_json(report)))
    return 0


def _own_share(settings: Settings, workers: int) -> Settings:
    """This process's settings: its share of the concurrency and of the token budget."""
    if workers == 1:
        return settings
    budget = settings.personalize_tokens_per_minute
    return settings.with_overrides(
        personalize_concurrency=shares(settings.personalize_concurrency, workers)[0],
        personalize_tokens_per_minute=None if budget is None else shares(budget, workers)[0],
    )


Writing = Callable[[Callable[[LineResult], None] | None], Awaitable[BatchReport]]
"""This process's share of the batch, given what to call with each line (or None)."""
POLL_SECONDS = 1.0
"""How often the progress of a batch written by several processes is read from the store."""
GO = b"go\n"
"""What a parent writes to a ``--workers`` child's standard input when it may write."""


@contextlib.asynccontextmanager
async def _children(
    args: argparse.Namespace, settings: Settings, workers: int
) -> AsyncIterator[_Children]:
    """The started children, ended without writing (or stopped writing) if the block fails:
    the one place that cleans up after a refused approval, an error, Ctrl-C."""
    children = await _Children.start(args, settings, workers)
    try:
        yield children
    except BaseException:
        await children.stop()
        raise


class _Children:
    """The ``workers - 1`` child processes of ``--workers``: started waiting, then told to
    write (:meth:`go`) or to end without writing (:meth:`stop`)."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes

    @classmethod
    async def start(cls, args: argparse.Namespace, settings: Settings, workers: int) -> _Children:
        """``coldmail personalize ID --approve-sample --after-parent`` on the same database
        and LLM, each with its share of the concurrency and of the token budget."""
        if workers == 1:
            return cls([])
        command = [sys.executable, "-m", "bridgic_coldmail", "personalize", args.interaction_id]
        command += ["--approve-sample", "--json", "--workers", "1", "--after-parent"]
        if args.leads is not None:
            command += ["--leads", str(args.leads)]
        env = {**os.environ, "COLDMAIL_PERSONALIZE_WORKERS": "1"}
        if getattr(args, "db", None) is not None:  # by the environment: a URL's password stays
            env["COLDMAIL_DB"] = str(args.db)  # out of the process list
        if getattr(args, "llm", None) is not None:
            env["COLDMAIL_LLM"] = str(args.llm)
        calls = shares(settings.personalize_concurrency, workers)
        budget = settings.personalize_tokens_per_minute
        children = cls([])
        try:
            for i in range(1, workers):
                env["COLDMAIL_PERSONALIZE_CONCURRENCY"] = str(calls[i])
                if budget is not None:
                    env["COLDMAIL_PERSONALIZE_TPM"] = str(shares(budget, workers)[i])
                children.processes.append(
                    await asyncio.create_subprocess_exec(
                        *command,
                        env=dict(env),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE,
                    )
                )
        except BaseException:
            await children.stop()
            raise
        return children

    async def go(self) -> None:
        """Let every child write. One that has already ended is reported by :meth:`wait`."""
        for child in self.processes:
            await self._tell(child, GO)

    async def stop(self) -> None:
        """End every child: those still waiting write nothing; any writing is terminated
        (what it recorded stays, its leases lapse)."""
        for child in self.processes:
            await self._tell(child, b"")
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        await asyncio.shield(asyncio.gather(*(c.wait() for c in self.processes)))

    async def wait(self) -> None:
        """Wait for every child to end; say which ended with an error."""
        for child in self.processes:
            _, err = await child.communicate()
            if child.returncode != 0:
                last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
                _err(f"A worker process stopped (exit {child.returncode}): {last[0]}")

    @staticmethod
    async def _tell(child: asyncio.subprocess.Process, line: bytes) -> None:
        if child.stdin is None or child.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError):  # it ended already
            child.stdin.write(line)
            await child.stdin.drain()
            child.stdin.close()


async def _write(
    writing: Writing,
    agent: ColdMailAgent,
    args: argparse.Namespace,
    children: _Children,
    progress: Progress | None,
) -> BatchReport:
    """This process's share of the batch (``writing``) beside the ``children`` writing the
    same batch. With one process the progress counts its lines as they come; with several it
    reads every process's from the store."""
    if not children.processes:
        try:
            return await writing(progress.add if progress is not None else None)
        finally:
            if progress is not None:
                progress.close()
    before = (await agent.batch_status(args.interaction_id, leads=args.leads)).counts
    await children.go()
    poller = asyncio.create_task(_poll(agent, args, progress, before)) if progress else None
    try:
        report = await writing(None)
    finally:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    await children.wait()
    if progress is not None:
        _count_into(progress, report.counts, before)
        progress.close()
    return report


async def _poll(
    agent: ColdMailAgent, args: argparse.Namespace, progress: Progress, before: BatchCounts
) -> None:
    while True:
        await asyncio.sleep(POLL_SECONDS)
        with contextlib.suppress(ColdmailError):  # shown at the next poll
            report = await agent.batch_status(args.interaction_id, leads=args.leads)
            _count_into(progress, report.counts, before)


def _count_into(progress: Progress, counts: BatchCounts, before: BatchCounts) -> None:
    """Show the leads every process finished since this command started."""
    progress.written = max(0, counts.written - before.written)
    progress.skipped = max(0, counts.skipped - before.skipped)
    progress.show()


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
