"""Rendering one reviewed sequence for every lead of a list, as a file sending tools import.

``export_sequence(sequence, leads_path, out)`` writes one row per lead: the lead's own
columns as they are in the list, then :data:`OUTPUT_COLUMNS` — the opener's subject and
body, a blank follow-up subject (so the follow-up threads as a reply), the follow-up's body
and its delay in days. In Smartlead, Instantly, lemlist or Apollo the step templates are
then just ``{{step1_subject}}``, ``{{step1_body}}``, … (see docs/export.md).

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
* **Atomic.** Rows stream into a temporary file beside ``out``, which replaces ``out`` only
  when everything succeeded (``os.replace``); any failure — a bad row, a full disk,
  Ctrl-C — removes the temporary file and leaves ``out`` as it was. The file is created
  readable by its owner only (it holds personal data).
* **Streamed.** Leads are read and written one at a time; memory does not grow with the
  list except for the duplicate check in :mod:`bridgic_coldmail.leads` and the list of
  skipped rows.
* **No formulas.** In the CSV every cell — the lead's own cells and the rendered subjects
  and bodies — that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets
  a leading ``'`` (OWASP's CSV-injection rule), so a spreadsheet shows it as text and never
  runs it. Addresses never need it (see ``leads.is_valid_email``). JSON is not
  neutralised: it is not opened by spreadsheets, and its consumers want the exact text.
* **Column names.** A lead column whose field name is one of :data:`OUTPUT_COLUMNS` (e.g.
  "Step1 Subject") is refused rather than overwritten or duplicated.
* **CSV dialect.** UTF-8 without a byte-order mark (a BOM can end up in the first column's
  name in importers), comma-separated, RFC 4180 quoting, CRLF line ends. JSON: one array of
  objects with the same keys as the CSV's columns, ``step2_delay_days`` a number.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from .errors import InvalidInput
from .leads import Lead, LeadHeader, LeadReader, RowProblem
from .lint import DEFAULT_ACRONYMS, FORMULA_PREFIXES, LintIssue, lint_sequence
from .merge import Missing, Template
from .models import EmailSequence

OUTPUT_COLUMNS = ("step1_subject", "step1_body", "step2_subject", "step2_body", "step2_delay_days")
"""The columns an export adds after the lead's own, in this order."""
FORMULA_TRIGGERS = FORMULA_PREFIXES
"""A cell starting with one of these is prefixed with ``'`` in a CSV export."""
MAX_LISTED = 10
"""How many rows and issues an error message lists before saying "and N more"."""

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


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote (or, from :func:`preview_export`, would write)."""

    out: Path | None
    """The file written; None for a preview."""
    format: ExportFormat
    columns: tuple[str, ...]
    """The exported columns: the lead list's own, then :data:`OUTPUT_COLUMNS`."""
    rows_written: int
    """Leads written (for a preview: leads that would be written)."""
    skipped: tuple[SkippedRow, ...]
    lint: tuple[LintIssue, ...]
    """Lint findings (warnings; errors would have refused the export)."""


def neutralize_cell(value: str) -> str:
    """``value`` prefixed with ``'`` when a spreadsheet would read it as a formula."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def export_sequence(
    sequence: EmailSequence,
    leads_path: str | Path,
    out: str | Path,
    *,
    format: ExportFormat = "csv",
    strict: bool = False,
    acronyms: Iterable[str] = DEFAULT_ACRONYMS,
    max_bytes: int | None = None,
) -> ExportReport:
    """Render ``sequence`` for every lead of the CSV at ``leads_path`` into ``out``.

    Args:
        sequence: the reviewed sequence (a completed run's ``final``).
        leads_path: the lead list, a UTF-8 CSV with an email column (see ``leads``).
        out: the file to write; replaced atomically, only on success.
        format: ``"csv"`` (for import into a sending tool) or ``"json"``.
        strict: refuse on any lint warning or skipped row instead of reporting it.
        acronyms: upper-case words the capitals rule accepts (e.g. the product's name).
        max_bytes: the largest file to write; past it the export stops, removes what it
            wrote and raises (``topic="export_too_large"``). None: no limit.

    Returns:
        The report: rows written, rows skipped with their reasons, lint warnings.

    Raises:
        InvalidInput: the lead list, ``out`` or the sequence cannot be used, or (strict)
            there was a warning or a skipped row; ``out`` is then untouched.
    """
    if format not in FORMATS:
        raise InvalidInput(f"unknown export format {format!r}; use csv or json")
    target = Path(out)
    _check_target(target, Path(leads_path))
    with LeadReader(leads_path) as reader:
        issues = _checked_lint(sequence, reader.header, strict=strict, acronyms=acronyms)
        if strict and issues:
            skipped = [s for s in _render_all(sequence, reader) if isinstance(s, SkippedRow)]
            raise InvalidInput(_refusal(issues, skipped, reader.path))
        columns = (*reader.header.columns, *OUTPUT_COLUMNS)
        rows = _render_all(sequence, reader)
        delay = sequence.follow_up.wait_days
        written, skipped = _write_atomically(
            target,
            format,
            columns,
            rows,
            delay,
            strict=strict,
            leads_path=reader.path,
            issues=issues,
            max_bytes=max_bytes,
        )
    return ExportReport(target, format, columns, written, tuple(skipped), tuple(issues))


def preview_export(
    sequence: EmailSequence,
    leads_path: str | Path,
    *,
    acronyms: Iterable[str] = DEFAULT_ACRONYMS,
) -> ExportReport:
    """Everything :func:`export_sequence` would find, without writing: lint issues (errors
    included, unlike an export) and the rows that would be skipped.

    Raises:
        InvalidInput: the lead list itself cannot be used (encoding, header, shape).
    """
    with LeadReader(leads_path) as reader:
        issues = lint_sequence(sequence, reader.header.fields, acronyms=acronyms)
        reserved = _reserved_columns(reader.header)
        if reserved:
            raise InvalidInput(reserved)
        columns = (*reader.header.columns, *OUTPUT_COLUMNS)
        if any(issue.code in _UNRENDERABLE for issue in issues):
            return ExportReport(None, "csv", columns, 0, (), tuple(issues))
        ready = 0
        skipped: list[SkippedRow] = []
        for item in _render_all(sequence, reader):
            if isinstance(item, SkippedRow):
                skipped.append(item)
            else:
                ready += 1
    return ExportReport(None, "csv", columns, ready, tuple(skipped), tuple(issues))


def _check_target(target: Path, leads_path: Path) -> None:
    if target.is_dir():
        raise InvalidInput(f"{target} is a folder; give the file to write, e.g. campaign.csv")
    parent = target.parent
    if not parent.is_dir():
        raise InvalidInput(f"the folder {parent} does not exist; create it or choose another")
    with contextlib.suppress(OSError):
        if target.exists() and target.samefile(leads_path):
            raise InvalidInput(
                f"{target} is the lead list itself; write the export to another file"
            )


def _reserved_columns(header: LeadHeader) -> str | None:
    clashes = [header.columns[i] for i, name in enumerate(header.fields) if name in OUTPUT_COLUMNS]
    if not clashes:
        return None
    return (
        f"the lead list already has the column(s) {', '.join(repr(c) for c in clashes)}, "
        f"which the export adds ({', '.join(OUTPUT_COLUMNS)}); rename or delete them"
    )


def _checked_lint(
    sequence: EmailSequence, header: LeadHeader, *, strict: bool, acronyms: Iterable[str]
) -> list[LintIssue]:
    """Lint issues; raises at once for reserved columns or placeholders that cannot render."""
    reserved = _reserved_columns(header)
    if reserved:
        raise InvalidInput(reserved)
    issues = lint_sequence(sequence, header.fields, strict=strict, acronyms=acronyms)
    unrenderable = [i for i in issues if i.code in _UNRENDERABLE]
    if unrenderable:
        listed = "; ".join(f"{i.step} {i.part}: {i.message}" for i in unrenderable)
        raise InvalidInput(f"the sequence cannot be rendered for this lead list: {listed}")
    return issues


def _render_all(
    sequence: EmailSequence, reader: LeadReader
) -> Iterator[tuple[Lead, tuple[str, str, str]] | SkippedRow]:
    """Each lead rendered (subject, body, follow-up body), or the reason it is skipped."""
    templates = [
        Template(text)
        for text in (sequence.opener.subject, sequence.opener.body, sequence.follow_up.body)
    ]
    used = list(dict.fromkeys(name for template in templates for name in template.fields))
    column_of = dict(zip(reader.header.fields, reader.header.columns, strict=True))
    for item in reader:
        if isinstance(item, RowProblem):
            yield SkippedRow(item.row, item.email, item.reason)
            continue
        braces = [
            column_of[name] for name in used if "{" in item.values[name] or "}" in item.values[name]
        ]
        if braces:
            yield SkippedRow(
                item.row,
                item.email,
                f"the {', '.join(repr(c) for c in braces)} cell contains {{ or }}, which the "
                "sending tool would read as one of its variables; remove them",
            )
            continue
        rendered: list[str] = []
        missing: dict[str, None] = {}
        for template in templates:
            result = template.render(item.values)
            if isinstance(result, Missing):
                missing.update(dict.fromkeys(result.fields))
            else:
                rendered.append(result)
        if missing:
            names = list(missing)
            yield SkippedRow(
                item.row,
                item.email,
                f"no value for {', '.join(repr(column_of[n]) for n in names)} and "
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
        yield item, (subject, body, follow_up)


def _write_atomically(
    target: Path,
    format: ExportFormat,
    columns: tuple[str, ...],
    rows: Iterator[tuple[Lead, tuple[str, str, str]] | SkippedRow],
    delay_days: int,
    *,
    strict: bool,
    leads_path: Path,
    issues: list[LintIssue],
    max_bytes: int | None = None,
) -> tuple[int, list[SkippedRow]]:
    try:
        fd, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise InvalidInput(
            f"cannot write {target}: {exc.strerror or exc}; choose a folder you can write to"
        ) from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            sink = handle if max_bytes is None else _Capped(handle, max_bytes)
            written, skipped = _write_rows(sink, format, columns, rows, delay_days)
            if strict and skipped:
                raise InvalidInput(_refusal(issues, skipped, leads_path))
            if written == 0:
                raise InvalidInput(
                    f"none of the leads in {leads_path} could be exported: " + _list_rows(skipped)
                )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InvalidInput(
            f"cannot write {target}: {exc.strerror or exc}; nothing was written (check the "
            "disk and the folder)"
        ) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)
    return written, skipped


class _Capped:
    """A text file that refuses to grow past ``limit`` bytes of UTF-8 (before writing them)."""

    def __init__(self, handle: IO[str], limit: int) -> None:
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
    handle: IO[str] | _Capped,
    format: ExportFormat,
    columns: tuple[str, ...],
    rows: Iterator[tuple[Lead, tuple[str, str, str]] | SkippedRow],
    delay_days: int,
) -> tuple[int, list[SkippedRow]]:
    """Stream the rows into ``handle``; returns how many were written and those skipped."""
    written = 0
    skipped: list[SkippedRow] = []
    writer = csv.writer(handle) if format == "csv" else None
    if writer is not None:
        writer.writerow([neutralize_cell(c) for c in columns])
    else:
        handle.write("[")
    for item in rows:
        if isinstance(item, SkippedRow):
            skipped.append(item)
            continue
        lead, (subject, body, follow_up) = item
        if writer is not None:
            cells = (*lead.cells, subject, body, "", follow_up, str(delay_days))
            writer.writerow([neutralize_cell(c) for c in cells])
        else:
            record: dict[str, str | int] = dict(
                zip(columns[: len(lead.cells)], lead.cells, strict=True)
            )
            record.update(
                step1_subject=subject,
                step1_body=body,
                step2_subject="",
                step2_body=follow_up,
                step2_delay_days=delay_days,
            )
            handle.write(",\n" if written else "\n")
            handle.write(json.dumps(record, ensure_ascii=False))
        written += 1
    if writer is None:
        handle.write("\n]\n" if written else "]\n")
    return written, skipped


def _refusal(issues: list[LintIssue], skipped: list[SkippedRow], leads_path: Path) -> str:
    parts = []
    if issues:
        shown = "; ".join(f"{i.step} {i.part}: {i.message}" for i in issues[:MAX_LISTED])
        more = f"; and {len(issues) - MAX_LISTED} more" if len(issues) > MAX_LISTED else ""
        parts.append(f"{len(issues)} lint issue(s): {shown}{more}")
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


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); best effort elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
