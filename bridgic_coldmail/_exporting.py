"""Export, its preview and lint, from stored runs (internal); and the merge-field rules a run's
emails are held to before they can be approved.

:meth:`~.agent.ColdMailAgent.export`, ``preview_export`` and ``lint`` hand their arguments
here: this module finds the runs (the run and its A/B variants, each completed), what every
email of theirs ends with (the footer), the words their briefs write in capitals, the
personalized lines that fill ``{{icebreaker}}``, and gives them to ``export/``, which
knows nothing of the store.

The export and personalization modules are imported where they are used, so that
``import bridgic_coldmail`` does not load them (about 70 ms).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from . import _wording as wording
from ._runner import Runner
from .compliance import Footer
from .errors import InvalidInput, RunConflict
from .models import EmailSequence, Run, validate_interaction_id
from .settings import Settings

if TYPE_CHECKING:
    from .export import ExportReport
    from .export.lint import LintIssue
    from .export.writer import Icebreakers, Variant


async def export(
    runner: Runner,
    interaction_id: str,
    leads: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str,
    strict: bool,
    overwrite: bool,
    profile: str,
    variants: Sequence[str],
    disabled_rules: Iterable[str] | None,
    template: str | os.PathLike[str] | None,
    max_bytes: int | None,
) -> ExportReport:
    """:meth:`~.agent.ColdMailAgent.export`."""
    from .export import FORMATS, export_sequence, run_stoppable, store_files
    from .export.profiles import profile_named

    if format not in FORMATS:
        raise InvalidInput(f"unknown export format {format!r}; use csv or json")
    chosen = profile_named(profile)
    disabled = _disabled_rules(runner.settings, disabled_rules)
    runs = await _variant_runs(runner, interaction_id, variants)
    return await run_stoppable(
        export_sequence,
        _variants(runner.settings, runs),
        Path(leads),
        out,  # as given: Path("./-") would be "-", standard output
        format=format,
        strict=strict,
        acronyms=_acronyms(*runs),
        overwrite=overwrite,
        protected=store_files(runner.settings),
        profile=chosen,
        footer=_footer(runner.settings, runs[0]),
        disabled_rules=disabled,
        template=template,
        max_bytes=max_bytes,
        icebreakers=await _icebreakers(runner, runs, leads),
    )


async def preview(
    runner: Runner,
    interaction_id: str,
    leads: str | os.PathLike[str],
    *,
    profile: str,
    variants: Sequence[str],
    disabled_rules: Iterable[str] | None,
) -> ExportReport:
    """:meth:`~.agent.ColdMailAgent.preview_export`."""
    from .export import preview_export, run_stoppable, store_files
    from .export.profiles import profile_named

    chosen = profile_named(profile)
    disabled = _disabled_rules(runner.settings, disabled_rules)
    runs = await _variant_runs(runner, interaction_id, variants)
    return await run_stoppable(
        preview_export,
        _variants(runner.settings, runs),
        Path(leads),
        acronyms=_acronyms(*runs),
        protected=store_files(runner.settings),
        profile=chosen,
        footer=_footer(runner.settings, runs[0]),
        disabled_rules=disabled,
        icebreakers=await _icebreakers(runner, runs, leads),
    )


async def lint(
    runner: Runner, interaction_id: str, *, disabled_rules: Iterable[str] | None
) -> list[LintIssue]:
    """:meth:`~.agent.ColdMailAgent.lint`."""
    from .export.lint import lint_sequence

    disabled = _disabled_rules(runner.settings, disabled_rules)
    run = await _get(runner, interaction_id)
    sequence = run.sequence or run.draft
    # Tens of milliseconds for bodies at their limit: not on the event loop.
    return await asyncio.to_thread(
        lint_sequence,
        sequence,
        run.fields,
        acronyms=_acronyms(run),
        footer=_footer(runner.settings, run),
        disabled=disabled,
    )


def check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """The lead list's column names a new run may use as merge fields, checked."""
    if isinstance(fields, str):
        raise InvalidInput("fields must be a list of column names, not one string")
    names = list(fields)
    if not names:
        return ()
    from .merge import field_names

    return tuple(field_names(names))


def check_exportable(run: Run, sequence: EmailSequence) -> None:
    """Refuse to approve emails that no lead could be exported with (a run edited by a
    release that accepted them): an approved run can always be exported."""
    from .merge import unknown_fields

    problem: str | None = None
    try:
        EmailSequence.model_validate(sequence.model_dump())
    except ValidationError as exc:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if problem is None:
        texts = [text for step in sequence.steps for text in (step.subject, step.body)]
        unknown = unknown_fields(texts, run.fields)
        if unknown:
            problem = wording.unknown_fields_problem(unknown)
    if problem is not None:
        raise wording.not_exportable(run, problem)


def check_placeholders(sequence: EmailSequence, fields: tuple[str, ...]) -> None:
    """Refuse emails with a merge field the run's lead list lacks."""
    from .merge import unknown_fields

    texts = [text for step in sequence.steps for text in (step.subject, step.body)]
    unknown = unknown_fields(texts, fields)
    if unknown:
        raise InvalidInput(wording.unknown_fields_message(unknown, fields))


async def _get(runner: Runner, interaction_id: str) -> Run:
    return await runner.get(validate_interaction_id(interaction_id))


def _disabled_rules(settings: Settings, given: Iterable[str] | None) -> frozenset[str]:
    from .export.lint import check_rule_ids

    return check_rule_ids(settings.disabled_rules if given is None else given)


def _footer(settings: Settings, run: Run) -> Footer:
    """What every exported email of ``run`` ends with: its brief's postal address and
    opt-out sentence, else the settings' defaults."""
    return Footer.of(run.brief, settings)


async def _variant_runs(runner: Runner, interaction_id: str, variants: Sequence[str]) -> list[Run]:
    """The run and its A/B variants, each completed, each once."""
    from .export.writer import check_variant_ids

    runs = [await _get(runner, run_id) for run_id in check_variant_ids(interaction_id, variants)]
    for run in runs:
        if run.final is None:
            raise RunConflict(wording.not_final(run), topic="not_final")
    return runs


def _variants(settings: Settings, runs: list[Run]) -> list[Variant]:
    """The runs as the export's variants: A is the first, each with its own footer."""
    from .export.writer import Variant

    return [
        Variant(
            label=chr(ord("A") + position),
            sequence=run.final,  # type: ignore[arg-type]  # checked by _variant_runs
            run_id=run.interaction_id,
            footer=_footer(settings, run),
        )
        for position, run in enumerate(runs)
    ]


async def _icebreakers(
    runner: Runner, runs: list[Run], leads: str | os.PathLike[str]
) -> Icebreakers | None:
    """The lines that fill ``{{icebreaker}}`` for an export of ``runs`` (the first run's
    batch: for this lead list if it has one, else its newest): None when no sequence uses
    the field or the run has no batch whose sample a person approved."""
    from .export.writer import ICEBREAKER, Icebreakers
    from .merge import find_placeholders
    from .personalize.batch import batch_id_for, lines_of, read_lead_list

    used = {
        name
        for run in runs
        if run.final is not None
        for step in run.final.steps
        for text in (step.subject, step.body)
        for name in (p.name for p in find_placeholders(text))
    }
    if ICEBREAKER not in used:
        return None
    batches = await runner.store.batches(runs[0].interaction_id)
    approved = [b for b in batches if b.sample_approved and b.verified]
    if not approved:
        return None
    try:
        digest = (await asyncio.to_thread(read_lead_list, Path(leads))).digest
    except InvalidInput:
        digest = None  # the export reports what is wrong with the list
    same = batch_id_for(runs[0].interaction_id, digest) if digest else None
    chosen = next((b for b in approved if b.batch_id == same), approved[0])
    found = await lines_of(runner.store, chosen.batch_id)
    return Icebreakers(found.by_email, found.missing)


def _acronyms(*runs: Run) -> frozenset[str]:
    """Upper-case words the briefs themselves use (a product called ACME is not shouting)."""
    from .export.lint import DEFAULT_ACRONYMS

    text = " ".join(f"{run.brief.product} {run.brief.sender}" for run in runs)
    words = re.findall(r"[A-Za-z][A-Za-z0-9]*", text)
    return frozenset(DEFAULT_ACRONYMS) | {w for w in words if w.isupper()}
