"""Rendering one reviewed sequence for every lead of a list, as a file sending tools import.

``export_sequence(sequence, leads_path, out)`` writes one row per lead: the lead's own
columns as they are in the list, then :data:`OUTPUT_COLUMNS` — the opener's subject and
body, a blank follow-up subject (so the follow-up threads as a reply), the follow-up's body
and its delay in days. In Smartlead, Instantly, lemlist or Apollo the step templates are
then just ``{{step1_subject}}``, ``{{step1_body}}``, … (see docs/how-to/export.md).

``profile=`` shapes the file for one sending tool instead (:mod:`.profiles`: the tool's own
lead columns, the steps as custom variables named as it allows) and writes a paste-ready
template beside it. ``footer=`` (:class:`~.compliance.Footer`) is appended to every email.
A list of :class:`Variant` is an A/B export: each lead gets one variant by
:func:`variant_index`, named in a ``variant`` column.

Design decisions:

* **Checked before anything is written.** The sequence is linted against the list's fields
  first: a placeholder that cannot be rendered (malformed, or a field the list lacks) is
  always refused; with ``strict=True`` every lint warning is too. Then each lead is
  rendered; a lead that cannot be — an invalid or duplicate address, a field empty with no
  fallback, a cell with ``{``/``}`` (the sending tool would read it as its own variable), a
  line break in the subject — is *skipped and reported* with its spreadsheet row number,
  never written with a hole. ``strict=True`` turns skipped rows into an error too, so a
  strict export is all-or-nothing. All of these become one :class:`InvalidInput` whose
  message lists every problem; :func:`preview_export` gives the same findings as data
  without writing, for a page or a prompt.
* **Only a regular file, and never the store's own.** ``out`` must be a new path or an
  existing regular file; a folder, a FIFO, a device, a socket, a dangling symlink, and any
  path through ``/dev``, ``/proc`` or ``/sys`` (``/dev/stdout`` is whatever fd 1 is, perhaps
  a log file) are refused, and so are the lead list and the files in ``protected`` (the run
  database, its ``-wal``/``-shm``/``-journal`` and its key file: :func:`store_files`),
  compared by real path and by device and inode, so a symlink or a hard link to them is
  refused too. An existing file is replaced only with ``overwrite=True``. ``out="-"`` writes
  to standard output instead (not a terminal), with no temporary file.
* **Atomic.** Rows stream into a new temporary file (``O_EXCL``, mode 0600) in ``out``'s
  folder, opened once as a directory handle: the file is created, checked and renamed
  relative to that handle, so a folder swapped for a symlink meanwhile does not move the
  write. Just before the rename the target is looked at again: if something other than a
  regular file, or one of the protected files, is there now, or (without ``overwrite``) any
  file, the export is refused. A new file is put in place with ``link()``, which fails if
  the name was taken meanwhile; an existing one with ``rename()``, which replaces the name,
  never writes into what was there, and never follows a symlink. Any failure — a bad row, a
  full disk, a refusal, Ctrl-C — removes the temporary file and leaves ``out`` as it was.
  What is not promised: someone who can write that folder can still put something at the
  name between that last look and the rename (microseconds); the rename then replaces that
  name, not the file or device it pointed to.
* **Stoppable.** Another thread (the event loop, on Ctrl-C or a cancelled task) stops an
  export through its :class:`StopSignal`: the work checks it before each row and once more
  in the same lock as the rename, so a stopped export either finished before the stop or
  leaves nothing behind.
* **Streamed.** Leads are read and written one at a time; memory does not grow with the
  list except for the duplicate check in :mod:`bridgic_coldmail.leads` and the list of
  skipped rows.
* **No formulas.** Every CSV cell — the header, the lead's own cells and the rendered
  subjects and bodies — is passed through :func:`.formulas.neutralize_cell`: a ``'`` goes
  before every place where a spreadsheet could start a cell with a formula, whether it
  splits the line on ``,``, ``;`` or tabs, and after leading blanks or a full-width ``＝``
  (OWASP's CSV-injection rule, with its warning about separators). Addresses never need it
  (see ``leads.is_valid_email``). JSON is not neutralised: it is not opened by
  spreadsheets, and its consumers want the exact text.
* **Column names.** A lead column whose field name is one of :data:`OUTPUT_COLUMNS` (e.g.
  "Step1 Subject"), or that a profile would name like a column it adds, is refused rather
  than overwritten or duplicated.
* **Per lead, in bounded memory.** The checks that need a rendered lead (a subject grown past
  its limit, an empty greeting) are counted per rule with the first rows
  (:class:`~.lint.LeadFindings`); ``strict=True`` refuses on any of them too.
* **The template after the file.** Its path is checked like ``out`` before anything is
  written; it is written (atomically too) once the file is in place.
* **CSV dialect.** UTF-8 without a byte-order mark (a BOM can end up in the first column's
  name in importers), comma-separated, RFC 4180 quoting, CRLF line ends. JSON: one array of
  objects with the same keys as the CSV's columns, ``step2_delay_days`` a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import functools
import hashlib
import json
import os
import secrets
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from ..compliance import NO_FOOTER, Footer
from ..errors import InvalidInput
from ..merge import Missing, Template
from ..models import EmailSequence, validate_interaction_id
from ..signing import key_file_for
from ..store.sqlite import _file_kind
from ..text import preview_list
from .formulas import FORMULA_PREFIXES
from .formulas import neutralize_cell as neutralize_cell
from .leads import Lead, LeadHeader, LeadReader, RowProblem
from .lint import (
    DEFAULT_ACRONYMS,
    RULES,
    LeadChecks,
    LeadFinding,
    LeadFindings,
    LintIssue,
    Severity,
    blocking,
    check_rule_ids,
    lint_sequence,
)
from .profiles import (
    GENERIC_COLUMNS,
    ColumnPlan,
    Profile,
    TemplateVariant,
    profile_named,
    render_template,
)

if TYPE_CHECKING:
    from ..settings import Settings

OUTPUT_COLUMNS = GENERIC_COLUMNS
"""The columns the generic export adds after the lead's own, in this order."""
MAX_VARIANTS = 26
"""An A/B export takes at most this many variants, labelled A to Z."""
FORMULA_TRIGGERS = FORMULA_PREFIXES
"""A value starting with one of these gets a ``'`` in a CSV export (see :mod:`.formulas` for
the whole rule: also after separators and blanks)."""
STDOUT = "-"
"""``out`` that means standard output."""
SPECIAL_FOLDERS = (Path("/dev"), Path("/proc"), Path("/sys"))
"""An export never writes a path through these (``/dev/shm`` excepted: a plain file system)."""
PLAIN_FOLDERS = (Path("/dev/shm"),)
MAX_LISTED = 10
"""How many rows and issues an error message lists before saying "and N more"."""

T = TypeVar("T")
ExportFormat = Literal["csv", "json"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "json")
_UNRENDERABLE = {"bad-placeholder", "unknown-field"}


@dataclass(frozen=True)
class SkippedRow:
    """A lead that was not exported, and why (row numbers as a spreadsheet shows them)."""

    row: int
    email: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}" + (f" ({self.email})" if self.email else "") + f": {self.reason}"


ICEBREAKER = "icebreaker"
"""The merge field a personalization batch fills (issue 23; lemlist's own name for it)."""


@dataclass(frozen=True)
class Icebreakers:
    """A personalization batch's approved lines for ``{{icebreaker}}``, by lead address (lower
    case), and why the other leads have none. A lead without a line is skipped and reported,
    never exported with an empty icebreaker."""

    lines: Mapping[str, str]
    missing: Mapping[str, str] = field(default_factory=dict)

    def why_missing(self, email: str) -> str:
        why = self.missing.get(email.strip().lower(), "the lead is not in the batch's list")
        return (
            f"no personalized line for {{{{{ICEBREAKER}}}}} ({why}); write one with coldmail "
            "personalize, or leave it out of the sequence"
        )


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote (or, from :func:`preview_export`, would write)."""

    out: Path | None
    """The file written, as it was given; None for a preview or standard output."""
    format: ExportFormat
    columns: tuple[str, ...]
    """The exported columns: the lead list's own, then :data:`OUTPUT_COLUMNS`."""
    rows_written: int
    """Leads written (for a preview: leads that would be written)."""
    skipped: tuple[SkippedRow, ...]
    lint: tuple[LintIssue, ...]
    """Lint findings (warnings; errors would have refused the export)."""
    profile: str = "generic"
    """The sending tool the file is shaped for (see :mod:`.profiles`)."""
    template: Path | None = None
    """The paste-ready template written next to the file, if any."""
    variants: tuple[tuple[str, int], ...] = ()
    """Per A/B variant, its label and how many leads it was given (empty for one sequence)."""
    lead_findings: tuple[LeadFinding, ...] = ()
    """Checks that failed for some leads once rendered (a long subject, an empty greeting)."""


@dataclass(frozen=True)
class Variant:
    """One approved sequence of an A/B export: its label (the ``variant`` column), the run it
    came from, and its footer (None: the export's ``footer``)."""

    label: str
    sequence: EmailSequence
    run_id: str | None = None
    footer: Footer | None = None


def as_variants(sequence: EmailSequence | Sequence[Variant]) -> list[Variant]:
    """One sequence as the single variant ``A``, or the variants checked: 1 to
    :data:`MAX_VARIANTS`, each with a sequence and a label of its own."""
    if isinstance(sequence, EmailSequence):
        return [Variant("A", sequence)]
    if isinstance(sequence, (str, bytes)) or not isinstance(sequence, Sequence):
        raise InvalidInput("give the export one EmailSequence, or a list of Variant")
    variants = list(sequence)
    if not 1 <= len(variants) <= MAX_VARIANTS:
        raise InvalidInput(
            f"an export takes 1 to {MAX_VARIANTS} variants, not {len(variants)}; export fewer"
        )
    labels: set[str] = set()
    for variant in variants:
        if not isinstance(variant, Variant) or not isinstance(variant.sequence, EmailSequence):
            raise InvalidInput("each variant must be a Variant holding an EmailSequence")
        label = variant.label
        if not isinstance(label, str) or not label.isalnum() or not label.isascii():
            raise InvalidInput(
                f"variant label {str(label)[:20]!r} must be ASCII letters and digits, e.g. A"
            )
        if len(label) > 20 or label.upper() in labels:
            raise InvalidInput(f"variant label {label[:20]!r} is too long or used twice")
        labels.add(label.upper())
    return variants


def check_variant_ids(interaction_id: str, variants: Sequence[str]) -> list[str]:
    """The run and its A/B variants' ids, normalised: each an interaction id, each once, at
    most :data:`MAX_VARIANTS` in all. Whether each run exists and is approved is the store's
    to say.

    Raises:
        InvalidInput: which id is wrong, and what to do.
    """
    if isinstance(variants, str):
        raise InvalidInput("variants must be a list of interaction ids, not one string")
    ids = [validate_interaction_id(interaction_id)]
    for given in variants:
        variant = validate_interaction_id(given)
        if variant in ids:
            raise InvalidInput(
                f"run {variant} is named twice among the variants; name each run once"
            )
        ids.append(variant)
    if len(ids) > MAX_VARIANTS:
        raise InvalidInput(
            f"an export takes at most {MAX_VARIANTS} variants, not {len(ids)}; name fewer"
        )
    return ids


def variant_index(email: str, count: int, salt: str = "") -> int:
    """Which of ``count`` variants a lead gets: a hash of its address, trimmed and in lower
    case (as the duplicate check compares them), keyed by ``salt`` (the first variant's run):
    the same list, variants and run always give the same split."""
    if count <= 1:
        return 0
    key = f"{salt}\n{email.strip().lower()}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


class ExportStopped(Exception):
    """The export was stopped (Ctrl-C, a cancelled task) before its file was put in place."""


class StopSignal:
    """Lets another thread stop an export between two rows.

    Stopping and putting the file in place exclude each other: after :meth:`stop` returns
    True the file will never be put in place; False means it already was.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._done = False

    def stop(self) -> bool:
        """Ask the export to stop; False if it had already put its file in place."""
        with self._lock:
            if self._done:
                return False
            self._stopped = True
            return True

    def check(self) -> None:
        """Raise :class:`ExportStopped` if a stop was asked for."""
        if self._stopped:
            raise ExportStopped("the export was stopped; nothing was written")

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """Hold off :meth:`stop` while the file is put in place (raises if already stopped)."""
        with self._lock:
            self.check()
            yield
            self._done = True


EXPORT_THREADS = 2
"""How many exports (and export previews) run at once in one process; more wait their turn.
They have threads of their own: on the event loop's default executor (``min(32, cores + 4)``
threads) a burst of exports took every thread, and the inbox's pages, which build their lint
and HTML on that executor, waited for an export to finish."""
_export_threads: ThreadPoolExecutor | None = None
_export_threads_lock = threading.Lock()


def _export_executor() -> ThreadPoolExecutor:
    global _export_threads
    with _export_threads_lock:
        if _export_threads is None:
            _export_threads = ThreadPoolExecutor(
                EXPORT_THREADS, thread_name_prefix="coldmail-export"
            )
        return _export_threads


async def run_stoppable(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work(*args, stop=…, **kwargs)`` on an export thread (see :data:`EXPORT_THREADS`).
    Cancelling the caller (Ctrl-C, SIGTERM in the CLI, a cancelled request) stops it before
    its next row (or before it starts, if it was waiting its turn) and waits until it has
    removed its temporary file; if it had already put its file in place, its report is
    returned instead of the cancellation, so nobody is told "interrupted" about a file that
    was written."""
    stop = StopSignal()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(
        _export_executor(), functools.partial(work, *args, stop=stop, **kwargs)
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stopped_in_time = stop.stop()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        # exception() is asked first, so that an ExportStopped counts as retrieved.
        if not future.cancelled() and future.exception() is None and not stopped_in_time:
            return future.result()
        raise


def store_files(settings: Settings) -> dict[Path, str]:
    """The files of the run store ``settings`` name that an export must never replace: an
    SQLite database with its ``-wal``, ``-shm``, ``-journal`` and ``-writer.lock`` files (by
    the name given and its real path), and the signing key file. Path → what it is, for the
    message."""
    files: dict[Path, str] = {}
    if not settings.is_postgres:
        given = Path(settings.db)
        for db in dict.fromkeys((given, Path(os.path.realpath(given)))):
            files[db] = "the run database"
            for suffix, what in (("-wal", "write-ahead log"), ("-shm", "shared-memory file"),
                                 ("-journal", "rollback journal"),
                                 ("-writer.lock", "writer lock")):  # fmt: skip
                files[db.with_name(db.name + suffix)] = f"the run database's {what}"
    key = settings.key_file
    if key is None and not settings.is_postgres:
        key = key_file_for(Path(settings.db))
    if key is not None:
        files[Path(key)] = "the signing key file"
    return files


def export_sequence(
    sequence: EmailSequence | Sequence[Variant],
    leads_path: str | Path,
    out: str | os.PathLike[str],
    *,
    format: ExportFormat = "csv",
    strict: bool = False,
    acronyms: Iterable[str] = DEFAULT_ACRONYMS,
    overwrite: bool = False,
    protected: Mapping[Path, str] | None = None,
    stop: StopSignal | None = None,
    profile: str | Profile = "generic",
    footer: Footer = NO_FOOTER,
    disabled_rules: Iterable[str] = (),
    template: str | os.PathLike[str] | None = None,
    max_bytes: int | None = None,
    icebreakers: Icebreakers | None = None,
) -> ExportReport:
    """Render ``sequence`` for every lead of the CSV at ``leads_path`` into ``out``.

    Args:
        sequence: the reviewed sequence (a completed run's ``final``), or the approved
            variants of an A/B test (:class:`Variant`): each lead then gets one of them by
            :func:`variant_index`, named in a ``variant`` column.
        leads_path: the lead list, a UTF-8 CSV with an email column (see ``leads``).
        out: the file to write, replaced atomically and only on success; ``"-"`` for
            standard output (then nothing is written unless the export can succeed).
        format: ``"csv"`` (for import into a sending tool) or ``"json"``.
        strict: refuse on any warning (lint, per lead, compliance) or skipped row instead of
            reporting it.
        acronyms: upper-case words the capitals rule accepts (e.g. the product's name).
        overwrite: replace ``out`` (and the template) if it is an existing regular file.
        protected: files ``out`` must never be, nor ``leads_path``, with what they are
            (see :func:`store_files`).
        stop: lets another thread stop the export (see :class:`StopSignal`).
        profile: the sending tool the file is shaped for (:data:`.profiles.PROFILES`).
        footer: the postal address and opt-out sentence appended to every email; the
            compliance rules flag what it lacks.
        disabled_rules: check rule ids not to apply (``lint.RULES``).
        template: where to write the paste-ready template; default: next to ``out`` for a
            tool's profile (``campaign.smartlead.txt``), none for generic or standard output.
        max_bytes: the largest file to write; past it the export stops, removes what it
            wrote and raises (``topic="export_too_large"``). None: no limit.
        icebreakers: a personalization batch's lines, which fill ``{{icebreaker}}``.

    Returns:
        The report: rows written, rows skipped with their reasons, lint warnings, findings
        per lead, the variants' counts and the template written.

    Raises:
        InvalidInput: the lead list, ``out``, the template's path or the sequence cannot be
            used, or (strict) there was a warning or a skipped row; ``out`` is then untouched.
        ExportStopped: ``stop`` was used; ``out`` is untouched.
    """
    if format not in FORMATS:
        raise InvalidInput(f"unknown export format {format!r}; use csv or json")
    chosen = profile_named(profile)
    variants = as_variants(sequence)
    disabled = check_rule_ids(disabled_rules)
    stop = stop or StopSignal()
    protected = protected or {}
    _check_leads(Path(leads_path), protected)
    to_stdout = os.fspath(out) == STDOUT  # only a bare "-": "./-" is a file named "-"
    _check_names_a_file(os.fspath(out))
    if to_stdout:
        _check_stdout()
        target = None
    else:
        target = _Target.check(Path(out), Path(leads_path), protected, overwrite)
    sidecar = _template_target(chosen, out, template, Path(leads_path), protected, overwrite)
    with LeadReader(leads_path) as reader:
        plan = chosen.plan(reader.header, variants=len(variants) > 1)
        issues = _checked_lint(
            variants,
            footer,
            _lint_header(reader.header, icebreakers),
            strict=strict,
            acronyms=acronyms,
            disabled=disabled,
        )
        prepared = [_Prepared(v, footer, disabled) for v in variants]  # renderable: checked
        if strict and blocking(issues, strict=True):  # refused whatever the rows are
            findings = LeadFindings(strict=True)
            ready, skipped = _count(_render_all(prepared, reader, stop, findings, icebreakers))
            _refuse(ready, skipped, strict, issues, findings, reader.path)
        findings = LeadFindings(strict=strict)
        counts: dict[str, int] = {}
        file_issues: list[LintIssue] = []

        def keep(written: int, skipped: list[SkippedRow]) -> None:
            file_issues[:] = _file_issues(chosen, written, strict=strict, disabled=disabled)
            _refuse(written, skipped, strict, issues + file_issues, findings, reader.path)

        if target is not None:
            written, skipped = target.write(
                lambda handle: _write_rows(
                    handle if max_bytes is None else _Capped(handle, max_bytes),
                    format,
                    plan,
                    _render_all(prepared, reader, stop, findings, icebreakers),
                    counts,
                ),
                keep,
                stop,
            )
        else:
            # Standard output cannot be taken back: find every refusal first, then write.
            ready, skipped = _count(_render_all(prepared, reader, stop, findings, icebreakers))
            keep(ready, skipped)
    if target is None:
        with LeadReader(leads_path) as again:
            written, skipped = _write_stdout(
                lambda handle: _write_rows(
                    handle,
                    format,
                    plan,
                    _render_all(prepared, again, stop, LeadFindings(), icebreakers),
                    counts,
                )
            )
    written_template = None
    if sidecar is not None:
        text = _template_text(chosen, plan, variants, footer, out, to_stdout)
        written_template = _write_template(sidecar, text, out)
    return ExportReport(
        None if target is None else target.given,
        format,
        plan.columns,
        written,
        tuple(skipped),
        tuple(issues + file_issues),
        profile=chosen.name,
        template=written_template,
        variants=_variant_counts(variants, counts),
        lead_findings=findings.findings(),
    )


def preview_export(
    sequence: EmailSequence | Sequence[Variant],
    leads_path: str | Path,
    *,
    acronyms: Iterable[str] = DEFAULT_ACRONYMS,
    protected: Mapping[Path, str] | None = None,
    stop: StopSignal | None = None,
    profile: str | Profile = "generic",
    footer: Footer = NO_FOOTER,
    disabled_rules: Iterable[str] = (),
    icebreakers: Icebreakers | None = None,
) -> ExportReport:
    """Everything :func:`export_sequence` would find, without writing: lint issues (errors
    included, unlike an export), the rows that would be skipped, the findings per lead.

    Raises:
        InvalidInput: the lead list itself cannot be used (encoding, header, shape), or its
            columns cannot be shaped for the profile.
    """
    chosen = profile_named(profile)
    variants = as_variants(sequence)
    disabled = check_rule_ids(disabled_rules)
    _check_leads(Path(leads_path), protected or {})
    with LeadReader(leads_path) as reader:
        plan = chosen.plan(reader.header, variants=len(variants) > 1)
        issues = _lint_all(
            variants,
            footer,
            _lint_header(reader.header, icebreakers),
            strict=False,
            acronyms=acronyms,
            disabled=disabled,
        )
        if any(issue.code in _UNRENDERABLE for issue in issues):
            return ExportReport(None, "csv", plan.columns, 0, (), tuple(issues), chosen.name)
        findings = LeadFindings()
        prepared = [_Prepared(v, footer, disabled) for v in variants]
        ready, skipped = _count(_render_all(prepared, reader, stop or StopSignal(), findings))
    issues += _file_issues(chosen, ready, strict=False, disabled=disabled)
    return ExportReport(
        None,
        "csv",
        plan.columns,
        ready,
        tuple(skipped),
        tuple(issues),
        profile=chosen.name,
        variants=_variant_counts(variants, _counts_of(prepared)),
        lead_findings=findings.findings(),
    )


def _check_leads(leads: Path, protected: Mapping[Path, str]) -> None:
    """Refuse a lead list that is one of the store's files: reading the key file as a CSV
    would print the key in the message about its header."""
    with contextlib.suppress(OSError):
        found = os.stat(leads)
        for path, what in protected.items():
            with contextlib.suppress(OSError):
                if os.path.samestat(found, os.stat(path)):
                    raise InvalidInput(
                        f"{leads} is {what}, not a lead list; give the lead list's CSV"
                    )


def _count(rows: Iterator[_Rendered | SkippedRow]) -> tuple[int, list[SkippedRow]]:
    """How many rows would be written, and the rows skipped."""
    ready = 0
    skipped: list[SkippedRow] = []
    for item in rows:
        if isinstance(item, SkippedRow):
            skipped.append(item)
        else:
            ready += 1
    return ready, skipped


def _refuse(
    written: int,
    skipped: list[SkippedRow],
    strict: bool,
    issues: list[LintIssue],
    findings: LeadFindings,
    path: Path,
) -> None:
    """Raise if what was (or would be) written may not be kept."""
    refused = blocking(issues, strict=strict)
    if strict and (skipped or refused or findings):
        raise InvalidInput(_refusal(refused, findings.findings(), skipped, path))
    if written == 0:
        raise InvalidInput(f"none of the leads in {path} could be exported: " + _list_rows(skipped))


def _check_names_a_file(out: str) -> None:
    """Refuse a path that names a folder by its spelling: a trailing slash, or a last part
    ``.``. ``Path`` drops both (``Path("exports/")`` is ``exports``), so the check is made
    on the text as given, before it becomes a ``Path``: ``exports/`` would otherwise become
    a file named ``exports``, and ``campaign.csv/`` would replace ``campaign.csv``."""
    if out.endswith(("/", os.sep)) or os.path.basename(out) == ".":
        raise InvalidInput(
            f"{out} names a folder (it ends with {out[-1]!r}); an export writes one file: give "
            "its path, e.g. campaign.csv"
        )


def _check_stdout() -> None:
    if sys.stdout.isatty():
        raise InvalidInput(
            "standard output is a terminal; an export is for a file or another program: "
            "redirect it (> campaign.csv, | other-program) or write it to a file"
        )


class _Sink(Protocol):
    def write(self, text: str, /) -> int: ...


WriteRows = Callable[[_Sink], tuple[int, list[SkippedRow]]]
"""Writes the export's rows into a sink; returns how many were written and those skipped."""
KeepCheck = Callable[[int, list[SkippedRow]], None]
"""Raises if what was written may not be kept (see ``_refuse``)."""


class _Utf8Out:
    """Text written as UTF-8 to standard output's bytes, a chunk at a time (its own text
    layer may use another encoding and translate line ends)."""

    CHUNK = 64 * 1024

    def __init__(self) -> None:
        sys.stdout.flush()
        self._binary: IO[bytes] | None = getattr(sys.stdout, "buffer", None)
        self._parts: list[str] = []
        self._size = 0

    def write(self, text: str, /) -> int:
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self.CHUNK:
            self.flush()
        return len(text)

    def flush(self) -> None:
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        if self._binary is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            self._binary.write(text.encode("utf-8"))
            self._binary.flush()


def _write_stdout(write_rows: WriteRows) -> tuple[int, list[SkippedRow]]:
    handle = _Utf8Out()
    try:
        written, skipped = write_rows(handle)
        handle.flush()
    except BrokenPipeError:
        raise InvalidInput(
            "standard output was closed before the export was complete (the program reading "
            "it stopped); send it to a file instead",
            topic="stdout_closed",
        ) from None
    return written, skipped


def _template_target(
    profile: Profile,
    out: str | os.PathLike[str],
    template: str | os.PathLike[str] | None,
    leads: Path,
    protected: Mapping[Path, str],
    overwrite: bool,
) -> _Target | None:
    """Where the template goes, checked like ``out`` before anything is written: the path
    given, else beside a file ``out`` for a tool's profile; None when there is none."""
    to_stdout = os.fspath(out) == STDOUT
    if template is None:
        if profile.is_generic or to_stdout:
            return None
        given = Path(out)
        path = given.with_name(f"{given.stem or given.name}.{profile.name}.txt")
    else:
        path = Path(template)
    if not to_stdout and os.path.realpath(path) == os.path.realpath(out):
        raise InvalidInput(f"the template cannot be written to {path}, the export's own file")
    named = {**protected}
    if not to_stdout:
        named[Path(out)] = "the export's own file"
    try:
        return _Target.check(path, leads, named, overwrite)
    except InvalidInput as exc:
        if exc.topic != "out_exists":
            raise
        raise InvalidInput(
            f"{path} (the paste-ready template) already exists; an export replaces files only "
            "when asked to (overwrite=True), so choose another place for it",
            topic="template_exists",
        ) from None


def _template_text(
    profile: Profile,
    plan: ColumnPlan,
    variants: list[Variant],
    footer: Footer,
    out: str | os.PathLike[str],
    to_stdout: bool,
) -> str:
    shown = [
        TemplateVariant(
            v.label if len(variants) > 1 else None, v.sequence, v.footer or footer, v.run_id
        )
        for v in variants
    ]
    name = "the exported file" if to_stdout else Path(out).name
    return render_template(profile, plan, shown, file_name=name)


def _write_template(target: _Target, text: str, out: str | os.PathLike[str]) -> Path:
    """Write the template after the file is in place: a failure now says so."""

    def write(handle: _Sink) -> tuple[int, list[SkippedRow]]:
        handle.write(text)
        return 0, []

    try:
        target.write(write, lambda written, skipped: None, StopSignal())
    except InvalidInput as exc:
        raise InvalidInput(
            f"{out} was written, but its template was not: {exc}", topic=exc.topic
        ) from None
    return target.given


def _file_issues(
    profile: Profile, rows: int, *, strict: bool, disabled: frozenset[str]
) -> list[LintIssue]:
    """What is wrong with the file as a whole: more rows than the tool takes at once."""
    limit = profile.row_limit
    if limit is None or rows <= limit or "row-limit" in disabled:
        return []
    severity = Severity.ERROR if strict else Severity.WARNING
    return [
        LintIssue(
            "row-limit",
            "sequence",
            "file",
            f"{rows:,} rows: {profile.title} asks for at most {limit:,} per file "
            f"({RULES['row-limit'].source}); split the lead list and export each part",
            severity,
        )
    ]


def _lint_all(
    variants: list[Variant],
    footer: Footer,
    header: LeadHeader,
    *,
    strict: bool,
    acronyms: Iterable[str],
    disabled: frozenset[str],
) -> list[LintIssue]:
    """Every variant linted (labelled when there are several); the checks of a footer all
    variants share are reported once."""
    many = len(variants) > 1
    shared = len({v.footer or footer for v in variants}) == 1
    issues: list[LintIssue] = []
    for position, variant in enumerate(variants):
        found = lint_sequence(
            variant.sequence,
            header.fields,
            strict=strict,
            acronyms=acronyms,
            footer=variant.footer or footer,
            disabled=disabled,
            variant=variant.label if many else None,
        )
        for issue in found:
            if shared and issue.step == "sequence":
                if position == 0:
                    issues.append(
                        LintIssue(issue.code, issue.step, issue.part, issue.message, issue.severity)
                    )
                continue
            issues.append(issue)
    gaps = [v.sequence.follow_up.wait_days for v in variants]
    if len(set(gaps)) > 1 and "variant-delays-differ" not in disabled:
        each = ", ".join(f"{v.label} {v.sequence.follow_up.wait_days}" for v in variants)
        issues.append(
            LintIssue(
                "variant-delays-differ",
                "sequence",
                "file",
                f"the variants wait different days before the follow-up ({each}) and a "
                "campaign has one delay per step: import each variant into a campaign of its "
                "own (the template says how)",
                Severity.ERROR if strict else Severity.WARNING,
            )
        )
    return issues


def _checked_lint(
    variants: list[Variant],
    footer: Footer,
    header: LeadHeader,
    *,
    strict: bool,
    acronyms: Iterable[str],
    disabled: frozenset[str],
) -> list[LintIssue]:
    """Lint issues; raises at once for placeholders that cannot render."""
    issues = _lint_all(
        variants, footer, header, strict=strict, acronyms=acronyms, disabled=disabled
    )
    unrenderable = [i for i in issues if i.code in _UNRENDERABLE]
    if unrenderable:
        listed = "; ".join(
            (f"variant {i.variant} " if i.variant else "") + f"{i.step} {i.part}: {i.message}"
            for i in unrenderable
        )
        raise InvalidInput(f"the sequence cannot be rendered for this lead list: {listed}")
    return issues


class _Prepared:
    """One variant parsed once, to be rendered for many leads; ``written`` counts the leads
    it rendered (a preview's count per variant)."""

    def __init__(self, variant: Variant, footer: Footer, disabled: frozenset[str]) -> None:
        sequence = variant.sequence
        self.variant = variant
        self.footer = variant.footer or footer
        self.checks = LeadChecks(sequence, disabled)
        self.templates = (
            Template(sequence.opener.subject),
            Template(sequence.opener.body),
            Template(sequence.follow_up.body),
        )
        names = (name for template in self.templates for name in template.fields)
        self.used = tuple(dict.fromkeys(names))
        self.written = 0


_Rendered = tuple[Lead, tuple[str, str, str], int, str]
"""A lead ready to write: the lead, its subject, body and follow-up body (the footer
appended), the follow-up's delay in days, and its variant's label."""


def _lint_header(header: LeadHeader, icebreakers: Icebreakers | None) -> LeadHeader:
    """The header the sequence is linted against: with ``icebreaker`` when a batch fills it."""
    if icebreakers is None or ICEBREAKER in header.fields:
        return header
    return LeadHeader(
        (*header.columns, ICEBREAKER), (*header.fields, ICEBREAKER), header.email_index
    )


def _render_all(
    prepared: list[_Prepared],
    reader: LeadReader,
    stop: StopSignal,
    findings: LeadFindings,
    icebreakers: Icebreakers | None = None,
) -> Iterator[_Rendered | SkippedRow]:
    """Each lead rendered in its variant, or the reason it is skipped; the per-lead checks
    go into ``findings``."""
    column_of = dict(zip(reader.header.fields, reader.header.columns, strict=True))
    salt = prepared[0].variant.run_id or ""
    many = len(prepared) > 1
    for item in reader:
        stop.check()
        if isinstance(item, RowProblem):
            yield SkippedRow(item.row, item.email, item.reason)
            continue
        chosen = prepared[variant_index(item.email, len(prepared), salt)] if many else prepared[0]
        values = item.values
        if icebreakers is not None and ICEBREAKER in chosen.used:
            line = icebreakers.lines.get(item.email.strip().lower())
            if line is None:
                yield SkippedRow(item.row, item.email, icebreakers.why_missing(item.email))
                continue
            values = {**values, ICEBREAKER: line}
        braces = [
            column_of[name] for name in chosen.used if "{" in values[name] or "}" in values[name]
        ]
        if braces:
            yield SkippedRow(
                item.row,
                item.email,
                f"the {preview_list(braces)} cell contains {{ or }}, which the "
                "sending tool would read as one of its variables; remove them",
            )
            continue
        rendered: list[str] = []
        missing: dict[str, None] = {}
        for template in chosen.templates:
            result = template.render(values)
            if isinstance(result, Missing):
                missing.update(dict.fromkeys(result.fields))
            else:
                rendered.append(result)
        if missing:
            names = list(missing)
            yield SkippedRow(
                item.row,
                item.email,
                f"no value for {preview_list(column_of[n] for n in names)} and "
                f"{{{{{names[0]}}}}} has no fallback; fill the cell, or give a fallback "
                f"such as {{{{{names[0]}|…}}}}",
            )
            continue
        subject, body, follow_up = rendered
        if "\n" in subject or "\r" in subject:
            yield SkippedRow(
                item.row,
                item.email,
                "the subject would contain a line break from one of the lead's cells; "
                "remove it from the cell",
            )
            continue
        label = chosen.variant.label
        for code, step, part in chosen.checks.check(subject, (body, follow_up)):
            findings.add(code, step, part, item.row, label if many else None)
            if code == "lead-subject-too-long":
                findings.note_subject(len(subject))
        chosen.written += 1
        yield (
            item,
            (subject, chosen.footer.append_to(body), chosen.footer.append_to(follow_up)),
            chosen.variant.sequence.follow_up.wait_days,
            label,
        )


def _counts_of(prepared: list[_Prepared]) -> dict[str, int]:
    return {p.variant.label: p.written for p in prepared}


def _variant_counts(
    variants: list[Variant], counts: Mapping[str, int]
) -> tuple[tuple[str, int], ...]:
    if len(variants) < 2:
        return ()
    return tuple((v.label, counts.get(v.label, 0)) for v in variants)


class _Target:
    """A checked place to write: the name as given, and the real folder and file name it
    resolves to (a symlink to a regular file is followed, so the link stays)."""

    def __init__(
        self,
        given: Path,
        folder: Path,
        name: str,
        forbidden: dict[tuple[int, int], str],
        overwrite: bool,
    ) -> None:
        self.given = given
        self.folder = folder
        self.name = name
        self._forbidden = forbidden
        """(device, inode) of the protected files and the lead list → what each is."""
        self._overwrite = overwrite

    @classmethod
    def check(
        cls, given: Path, leads: Path, protected: Mapping[Path, str], overwrite: bool
    ) -> _Target:
        """Refuse ``given`` unless it is a new path or (with ``overwrite``) a regular file,
        and none of the protected files or the lead list."""
        special = _special_route(given)
        if special is not None:
            via = "" if special == os.path.abspath(given) else f" (it leads to {special})"
            raise InvalidInput(
                f"{given} is a special file{via}: an export writes only to a regular file; "
                "give a file path, or give - to write to standard output"
            )
        real = Path(os.path.realpath(given))
        named = {Path(os.path.realpath(p)): what for p, what in protected.items()}
        named[Path(os.path.realpath(leads))] = "the lead list itself"
        if real in named:
            raise InvalidInput(_protected_message(given, named[real], real))
        forbidden: dict[tuple[int, int], str] = {}
        for path, what in named.items():
            with contextlib.suppress(OSError):
                found = os.stat(path)
                forbidden[(found.st_dev, found.st_ino)] = what
        try:
            found = os.stat(given)
        except FileNotFoundError:
            if os.path.islink(given):
                raise InvalidInput(
                    f"{given} is a symbolic link to {real}, which does not exist; give the "
                    "path of the file to write"
                ) from None
        except OSError as exc:
            raise InvalidInput(f"cannot use {given}: {exc.strerror or exc}") from None
        else:
            if stat.S_ISDIR(found.st_mode):
                raise InvalidInput(
                    f"{given} is a folder; give the file to write, e.g. campaign.csv"
                )
            _check_existing(given, found, forbidden, overwrite)
        if not real.parent.is_dir():
            raise InvalidInput(
                f"the folder {given.parent} does not exist; create it or choose another"
            )
        return cls(given, real.parent, real.name, forbidden, overwrite)

    def write(
        self,
        write_rows: WriteRows,
        keep: KeepCheck,
        stop: StopSignal,
    ) -> tuple[int, list[SkippedRow]]:
        """Write the rows into a new temporary file in the folder and put it in place if
        ``keep`` does not raise; on any failure remove it and leave the target as it was."""
        with _Folder.open(self.folder, self.given) as folder:
            temp, fd = folder.create_temporary(self.name)
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                    written, skipped = write_rows(handle)
                    keep(written, skipped)
                    handle.flush()
                    os.fsync(handle.fileno())
                with stop.finishing():
                    self._put_in_place(folder, temp)
            except OSError as exc:
                folder.remove(temp)
                raise InvalidInput(
                    f"cannot write {self.given}: {exc.strerror or exc}; nothing was written "
                    "(check the disk and the folder)"
                ) from None
            except BaseException:
                folder.remove(temp)
                raise
            folder.sync()
        return written, skipped

    def _put_in_place(self, folder: _Folder, temp: str) -> None:
        """Look at the target once more, then rename (link, for a new file) onto it."""
        try:
            found = folder.lstat(self.name)
        except FileNotFoundError:
            found = None
        if found is not None:
            _check_existing(self.given, found, self._forbidden, overwrite=self._overwrite)
            folder.replace(temp, self.name)
            return
        try:
            folder.link(temp, self.name)
        except FileExistsError:
            raise InvalidInput(_exists_message(self.given), topic="out_exists") from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            folder.replace(temp, self.name)  # a file system without hard links
            return
        folder.remove(temp)


_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _check_existing(
    given: Path, found: os.stat_result, forbidden: dict[tuple[int, int], str], overwrite: bool
) -> None:
    if not stat.S_ISREG(found.st_mode):
        kind = "symbolic link" if stat.S_ISLNK(found.st_mode) else _file_kind(found.st_mode)
        raise InvalidInput(
            f"{given} is not a regular file (it is a {kind}); an export writes only to a "
            "regular file: give a file path, or - for standard output"
        )
    what = forbidden.get((found.st_dev, found.st_ino))
    if what is not None:
        raise InvalidInput(_protected_message(given, what, None))
    if not overwrite:
        raise InvalidInput(_exists_message(given), topic="out_exists")


def _exists_message(given: Path) -> str:
    return (
        f"{given} already exists; an export replaces a file only when asked to "
        "(overwrite=True), so choose another file or ask for it to be replaced"
    )


def _protected_message(given: Path, what: str, real: Path | None) -> str:
    also = f" ({real})" if real is not None and str(real) != str(given) else ""
    return f"{given} is {what}{also}; write the export to another file"


def _special_route(path: Path) -> str | None:
    """The first path under /dev, /proc or /sys that ``path`` goes through, following
    symlinks one at a time (``/dev/stdout`` resolves to fd 1's file, which may be a log)."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on symlinks in one lookup
        for candidate in (current, os.path.realpath(os.path.dirname(current))):
            if _is_special(Path(candidate)):
                return current
        try:
            link = os.readlink(current)
        except OSError:
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), link))
    return None


def _is_special(path: Path) -> bool:
    def under(folder: Path) -> bool:
        return path == folder or folder in path.parents

    return any(map(under, SPECIAL_FOLDERS)) and not any(map(under, PLAIN_FOLDERS))


class _Folder:
    """The folder an export writes into, opened once: every later step names its files
    relative to this handle (POSIX ``*at`` calls), so the folder swapped for a symlink
    meanwhile cannot move the write elsewhere."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path, given: Path) -> Iterator[_Folder]:
        fd = None
        if _AT_CALLS:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError as exc:
                raise InvalidInput(
                    f"cannot write {given}: {exc.strerror or exc}; choose a folder you can write to"
                ) from None
        try:
            yield cls(path, fd)
        finally:
            if fd is not None:
                os.close(fd)

    def _name(self, name: str) -> str:
        return name if self.fd is not None else str(self.path / name)

    def create_temporary(self, name: str) -> tuple[str, int]:
        """A new file ``.<name>.<random>.part``, only for its owner; returns its name and fd."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(100):
            temp = f".{name[:100]}.{secrets.token_hex(4)}.part"
            try:
                return temp, os.open(self._name(temp), flags, 0o600, dir_fd=self.fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise InvalidInput(
                    f"cannot write {self.path / name}: {exc.strerror or exc}; choose a folder "
                    "you can write to"
                ) from None
        raise InvalidInput(f"cannot create a temporary file in {self.path}; clean it up")

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(self._name(name), dir_fd=self.fd, follow_symlinks=False)

    def link(self, source: str, name: str) -> None:
        os.link(self._name(source), self._name(name), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def replace(self, source: str, name: str) -> None:
        os.replace(self._name(source), self._name(name), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._name(name), dir_fd=self.fd)

    def sync(self) -> None:
        """Make the rename itself durable (POSIX); best effort elsewhere."""
        with contextlib.suppress(OSError):
            if self.fd is not None:
                os.fsync(self.fd)


_AT_CALLS = {os.open, os.stat, os.link, os.unlink, os.rename} <= os.supports_dir_fd


class _Capped:
    """A text file that refuses to grow past ``limit`` bytes of UTF-8 (before writing them)."""

    def __init__(self, handle: _Sink, limit: int) -> None:
        self._handle = handle
        self._limit = limit
        self._size = 0

    def write(self, text: str) -> int:
        self._size += len(text.encode("utf-8"))
        if self._size > self._limit:
            raise InvalidInput(
                f"the export is larger than {self._limit} bytes, the limit; nothing was written",
                topic="export_too_large",
            )
        return self._handle.write(text)


def _write_rows(
    handle: _Sink,
    format: ExportFormat,
    plan: ColumnPlan,
    rows: Iterator[_Rendered | SkippedRow],
    counts: dict[str, int],
) -> tuple[int, list[SkippedRow]]:
    """Stream the rows into ``handle``; returns how many were written and those skipped.
    ``counts`` gets the rows written per variant."""
    written = 0
    skipped: list[SkippedRow] = []
    writer = csv.writer(handle) if format == "csv" else None
    if writer is not None:
        writer.writerow([neutralize_cell(c) for c in plan.columns])
    else:
        handle.write("[")
    label_counts: dict[str, int] = {}
    for item in rows:
        if isinstance(item, SkippedRow):
            skipped.append(item)
            continue
        lead, rendered, delay, label = item
        label_counts[label] = label_counts.get(label, 0) + 1
        cells = plan.row(lead.cells, rendered, delay, label)
        if writer is not None:
            writer.writerow([neutralize_cell(str(c)) for c in cells])
        else:
            handle.write(",\n" if written else "\n")
            handle.write(
                json.dumps(dict(zip(plan.columns, cells, strict=True)), ensure_ascii=False)
            )
        written += 1
    if writer is None:
        handle.write("\n]\n" if written else "]\n")
    counts.clear()
    counts.update(label_counts)
    return written, skipped


def _refusal(
    issues: list[LintIssue],
    findings: tuple[LeadFinding, ...],
    skipped: list[SkippedRow],
    leads_path: Path,
) -> str:
    parts = []
    if issues:
        shown = "; ".join(
            (f"variant {i.variant} " if i.variant else "")
            + f"{i.step} {i.part}: {i.message} [{i.code}]"  # the id --disable-rule takes
            for i in issues[:MAX_LISTED]
        )
        more = f"; and {len(issues) - MAX_LISTED} more" if len(issues) > MAX_LISTED else ""
        parts.append(f"{len(issues)} lint issue(s): {shown}{more}")
    if findings:
        shown = "; ".join(
            f"{f.count} lead(s) ({f.code}, rows {', '.join(map(str, f.rows[:5]))}"
            f"{', …' if f.count > 5 else ''}): {f.message}"
            for f in findings[:MAX_LISTED]
        )
        parts.append(f"{sum(f.count for f in findings)} finding(s) per lead: {shown}")
    if skipped:
        parts.append(f"{len(skipped)} row(s) of {leads_path} cannot be sent: {_list_rows(skipped)}")
    return (
        "export refused (strict): "
        + " | ".join(parts)
        + " — fix these, or export without strict to skip and report them"
    )


def _list_rows(skipped: list[SkippedRow]) -> str:
    shown = "; ".join(str(s) for s in skipped[:MAX_LISTED])
    more = f"; and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
    return shown + more
