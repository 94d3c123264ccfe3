"""Personalization batches (internal): one first line per lead of an approved run, a sample
paused for a person first.

:meth:`~.agent.ColdMailAgent.personalize`, ``approve_sample``, ``guide_sample``,
``batch_status``, ``batch_reports``, ``batch_lines`` and ``estimate_lines`` hand their
arguments here. This module finds the run (completed) and its batch (by id, by lead list, or
the one there is), takes the batch's claim in the store, and drives it as far as it goes
without a person: the sample, then — once approved — every other lead, through
``personalize/``, which writes the lines and knows nothing of runs.

The personalization modules are imported where they are used: ``import bridgic_coldmail``
starts without loading them (about 30 ms).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import _wording as wording
from ._runner import Runner
from .errors import InvalidInput, RunBeingResumed, RunConflict
from .models import MAX_PAGE, Run, RunStatus, validate_feedback, validate_interaction_id
from .store.batches import Batch, BatchAction, BatchClaim, BatchLeadRow, BatchRefusalReason

if TYPE_CHECKING:
    from .personalize.batch import BatchPlan, BatchReport
    from .personalize.estimate import BatchEstimate
    from .personalize.writer import LineResult


async def personalize(
    runner: Runner,
    interaction_id: str,
    leads: str | os.PathLike[str],
    *,
    sample: int | None,
    guidance: str | None,
    on_line: Callable[[LineResult], None] | None,
) -> BatchReport:
    """:meth:`~.agent.ColdMailAgent.personalize`."""
    from .personalize.batch import new_batch, read_lead_list

    run = await _approved_run(runner, interaction_id)
    size = _sample_size(sample, runner.settings.personalize_sample_size)
    first = validate_feedback(guidance) if guidance is not None else None
    lead_list = await asyncio.to_thread(read_lead_list, Path(leads))
    if lead_list.usable == 0:
        raise InvalidInput(f"{leads} holds no usable lead; fix the rows it reports")
    settings = {"sample": size, "guidance": [first] if first else []}
    new = new_batch(run.interaction_id, lead_list, size, settings)
    batch, created = await runner.store.create_batch(new)
    if not created and first is not None and batch.status == "awaiting_approval":
        return await guide_sample(runner, interaction_id, first, leads=leads, batch=None)
    return await _drive_batch(runner, run, batch, new.token if created else None, on_line)


async def approve_sample(
    runner: Runner,
    interaction_id: str,
    *,
    leads: str | os.PathLike[str] | None,
    on_line: Callable[[LineResult], None] | None,
    write_rest: bool,
    batch: str | None,
) -> BatchReport:
    """:meth:`~.agent.ColdMailAgent.approve_sample`."""
    run = await _approved_run(runner, interaction_id)
    found = await _find_batch(runner, run.interaction_id, leads, batch)
    found = await _answer_sample(runner, run, found, BatchAction("approve"))
    if not write_rest:
        from .personalize.batch import report_of

        return await report_of(runner.store, found, started=time.monotonic())
    return await _drive_batch(runner, run, found, None, on_line)


async def guide_sample(
    runner: Runner,
    interaction_id: str,
    guidance: str,
    *,
    leads: str | os.PathLike[str] | None,
    batch: str | None,
) -> BatchReport:
    """:meth:`~.agent.ColdMailAgent.guide_sample`."""
    from .personalize.batch import report_of

    text = validate_feedback(guidance)
    run = await _approved_run(runner, interaction_id)
    found = await _find_batch(runner, run.interaction_id, leads, batch)
    started = time.monotonic()
    found = await _answer_sample(runner, run, found, BatchAction("guide", text))
    return await report_of(runner.store, found, started=started)


async def batch_status(
    runner: Runner,
    interaction_id: str,
    *,
    leads: str | os.PathLike[str] | None,
    batch: str | None,
) -> BatchReport:
    """:meth:`~.agent.ColdMailAgent.batch_status`."""
    from .personalize.batch import report_of

    interaction_id = validate_interaction_id(interaction_id)
    found = await _find_batch(runner, interaction_id, leads, batch)
    return await report_of(runner.store, found, started=time.monotonic())


async def batch_reports(runner: Runner, interaction_id: str) -> list[BatchReport]:
    """:meth:`~.agent.ColdMailAgent.batch_reports`."""
    from .personalize.batch import report_of

    interaction_id = validate_interaction_id(interaction_id)
    batches = sorted(
        await runner.store.batches(interaction_id), key=lambda b: b.created_at, reverse=True
    )
    return [await report_of(runner.store, b, started=time.monotonic()) for b in batches]


async def batch_lines(
    runner: Runner,
    interaction_id: str,
    batch: str,
    *,
    after: int,
    limit: int,
) -> list[BatchLeadRow]:
    """:meth:`~.agent.ColdMailAgent.batch_lines`."""
    interaction_id = validate_interaction_id(interaction_id)
    found = await _find_batch(runner, interaction_id, None, batch)
    limit = max(1, min(limit, MAX_PAGE))
    return await runner.store.batch_leads(
        found.batch_id, states=["written"], after=after, limit=limit
    )


async def estimate_lines(
    runner: Runner, interaction_id: str, leads: str | os.PathLike[str]
) -> BatchEstimate:
    """:meth:`~.agent.ColdMailAgent.estimate_lines`."""
    from .personalize import LineContext, LineTask, estimate_batch, prices_for
    from .personalize.batch import read_lead_list

    run = await _approved_run(runner, interaction_id)
    lead_list = await asyncio.to_thread(read_lead_list, Path(leads))
    plan = _batch_plan(runner, run, None)
    assert run.final is not None
    context = LineContext(run.brief, run.final)
    tasks = (
        LineTask(context, {k: v for k, v in lead.values.items() if v != lead.email}, lead.row)
        for lead in lead_list.leads
        if lead.problem is None
    )
    return estimate_batch(tasks, plan.writer, prices_for(runner.settings))


async def _approved_run(runner: Runner, interaction_id: str) -> Run:
    run = await runner.get(validate_interaction_id(interaction_id))
    if run.status is not RunStatus.COMPLETED or run.final is None:
        raise RunConflict(
            f"run {run.interaction_id} is {run.status.value}, not approved: lines are "
            "written for an approved sequence only; finish the run first (coldmail show "
            f"{run.interaction_id})",
            topic="not_completed",
        )
    return run


async def _find_batch(
    runner: Runner,
    interaction_id: str,
    leads: str | os.PathLike[str] | None,
    batch_id: str | None = None,
) -> Batch:
    from .personalize.batch import batch_id_for, read_lead_list

    store = runner.store
    if batch_id is not None:
        by_id = await store.get_batch(batch_id) if _BATCH_ID.fullmatch(batch_id) else None
        if by_id is None or by_id.interaction_id != interaction_id:
            raise InvalidInput(
                f"run {interaction_id} has no personalization batch {batch_id[:40]!r}; "
                f"see its batches with coldmail personalize {interaction_id} --status",
                topic="no_batch",
            )
        return by_id
    if leads is not None:
        lead_list = await asyncio.to_thread(read_lead_list, Path(leads))
        found = await store.get_batch(batch_id_for(interaction_id, lead_list.digest))
        if found is None:
            raise InvalidInput(
                f"run {interaction_id} has no personalization batch for {leads}; start "
                f"one with coldmail personalize {interaction_id} --leads {leads}",
                topic="no_batch",
            )
        return found
    batches = await store.batches(interaction_id)
    if not batches:
        raise InvalidInput(
            f"run {interaction_id} has no personalization batch; start one with "
            f"coldmail personalize {interaction_id} --leads LEADS.csv",
            topic="no_batch",
        )
    waiting = [b for b in batches if b.status == "awaiting_approval"]
    if len(waiting) > 1 or (not waiting and len(batches) > 1):
        raise InvalidInput(
            f"run {interaction_id} has {len(batches)} personalization batches; name the "
            "lead list of the one you mean (--leads)"
        )
    return waiting[0] if waiting else batches[0]


def _batch_plan(
    runner: Runner, run: Run, on_line: Callable[[LineResult], None] | None
) -> BatchPlan:
    from .personalize import line_writer, pacer_for
    from .personalize.batch import BatchPlan

    assert run.final is not None
    writer = line_writer(runner.llm(), runner.settings, pacer_for(runner.settings))
    return BatchPlan(
        store=runner.store,
        brief=run.brief,
        sequence=run.final,
        writer=writer,
        lease_seconds=runner.store.lease_seconds,
        window=runner.settings.personalize_concurrency,
        on_result=on_line,
    )


async def _answer_sample(runner: Runner, run: Run, batch: Batch, action: BatchAction) -> Batch:
    """Take the paused sample for ``action`` and run it; the batch it leaves."""
    if not batch.verified:
        raise wording.batch_tampered(batch.batch_id)
    outcome = await runner.store.take_batch(batch.batch_id, action, token=uuid.uuid4().hex)
    if isinstance(outcome, BatchClaim):
        return await _sample_step(runner, run, outcome)
    if outcome.batch is not None and outcome.batch.status in ("writing", "done"):
        if action.kind == "approve":
            return outcome.batch  # approved before: the retry finds it so
    raise wording.batch_refusal(run.interaction_id, outcome)


async def _sample_step(runner: Runner, run: Run, hold: BatchClaim) -> Batch:
    from .personalize.batch import run_sample_step

    plan = _batch_plan(runner, run, None)
    try:
        stepped = await run_sample_step(plan, hold)
    except BaseException as exc:
        note = wording.failure_note(exc)
        await asyncio.shield(runner.store.release_batch(hold, note))
        raise
    if stepped is None:
        raise RunBeingResumed(
            f"another process took run {run.interaction_id}'s batch over while this one "
            "wrote its sample (its lease ran out); see where it is with coldmail "
            f"personalize {run.interaction_id} --status"
        )
    return stepped


async def _drive_batch(
    runner: Runner,
    run: Run,
    batch: Batch,
    token: str | None,
    on_line: Callable[[LineResult], None] | None,
) -> BatchReport:
    """Take the batch as far as it goes without a person: its sample, or its leads."""
    from .personalize.batch import report_of, write_leads

    store = runner.store
    started = time.monotonic()
    if not batch.verified:
        raise wording.batch_tampered(batch.batch_id)
    if batch.status == "sampling":
        outcome = await store.take_batch(batch.batch_id, None, token=token or uuid.uuid4().hex)
        if isinstance(outcome, BatchClaim):
            _batch_plan(runner, run, on_line)  # a missing LLM setting: before any work
            batch = await _sample_step(runner, run, outcome)
        elif outcome.reason is BatchRefusalReason.HELD and outcome.batch is not None:
            return await report_of(store, outcome.batch, started=started, held_elsewhere=True)
        elif outcome.batch is not None and outcome.reason is not BatchRefusalReason.TAMPERED:
            batch = outcome.batch
        else:
            raise wording.batch_refusal(run.interaction_id, outcome)
    if batch.status == "writing":
        plan = _batch_plan(runner, run, on_line)
        await write_leads(plan, batch.batch_id, batch.round, batch.guidance)
        batch = await store.finish_batch(batch.batch_id) or batch
    return await report_of(store, batch, started=started)


_BATCH_ID = re.compile(r"[0-9a-f]{32}")
"""A batch's id (``batch_id_for``): 32 hexadecimal digits."""


def _sample_size(sample: int | None, default: int) -> int:
    """The sample's size: ``sample`` (1 to 1000), else the setting."""
    if sample is None:
        return default
    if isinstance(sample, bool) or not isinstance(sample, int) or not 1 <= sample <= 1000:
        raise InvalidInput(f"the sample must be a number of leads from 1 to 1000, not {sample!r}")
    return sample
