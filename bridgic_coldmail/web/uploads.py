"""Exporting a completed run for an uploaded lead list, for the page and the API alike.

The lead list holds personal data, so it never stays on the server: it is written as it
arrives into a new private folder (mode 0700, the file 0600) under the system's temporary
directory, the export is written beside it, and the folder is deleted before the answer
starts — the download streams from a file handle opened just before (on POSIX an open file
stays readable after it is unlinked), closed when the download ends or the client goes. The
body's size is bounded by ``COLDMAIL_MAX_UPLOAD_BYTES`` in :class:`.security.BodyLimit`, as it
arrives, and the export's by ``COLDMAIL_MAX_EXPORT_BYTES`` as it is written: one export holds
at most the two on disk (and the form parser's copy of the upload) however slowly its
download is read.

Error messages name the uploaded file as the browser named it, or "the uploaded lead list",
never the temporary path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi.responses import StreamingResponse

from ..agent import ColdMailAgent
from ..errors import InvalidInput
from ..export import ExportReport, SkippedRow
from ..settings import ENV

LEADS_NAME = "leads.csv"
UNNAMED = "the uploaded lead list"
"""How messages name a lead list sent without a file name (the API's CSV body)."""
CHUNK = 64 * 1024
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
"""What an export is served as, by format."""


@dataclass(frozen=True)
class ExportRefused:
    """An export that wrote nothing: why (for people), and what a preview found (if the list
    itself could be read)."""

    message: str
    preview: ExportReport | None


@dataclass(frozen=True)
class ExportShown:
    """An export that could be written, shown as a report instead of downloaded: what it
    found, and the :func:`left_out_fingerprint` a download of it must carry."""

    report: ExportReport
    fingerprint: str


@contextmanager
def private_folder() -> Iterator[Path]:
    """A new folder only this process's user can read, deleted with its files on exit."""
    folder = Path(tempfile.mkdtemp(prefix="coldmail-export-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def save_upload(chunks: AsyncIterable[bytes], folder: Path) -> Path:
    """Write the uploaded lead list into ``folder`` as it arrives; returns its path."""
    path = folder / LEADS_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        async for chunk in chunks:
            if chunk:
                await asyncio.to_thread(handle.write, chunk)
    return path


async def read_chunks(upload: BinaryIO) -> AsyncIterator[bytes]:
    """The chunks of an already received file (a form's upload), read off the event loop."""
    while True:
        chunk = await asyncio.to_thread(upload.read, CHUNK)
        if not chunk:
            return
        yield chunk


async def export_upload(
    agent: ColdMailAgent,
    interaction_id: str,
    leads: Path,
    *,
    format: str,
    strict: bool,
    shown_as: str,
    max_bytes: int,
    profile: str = "generic",
    variants: Sequence[str] = (),
    disabled_rules: Iterable[str] | None = None,
) -> tuple[ExportReport, BinaryIO] | ExportRefused:
    """Export the run (with its A/B ``variants``) for the lead list at ``leads`` (inside a
    :func:`private_folder`), in a file of at most ``max_bytes``.

    Returns the report and the written file opened for reading, or why nothing was exported
    with the rows and lint issues a preview finds.

    Raises:
        RunConflict: the run or a variant has no final sequence.
        RunNotFound: a variant does not exist.
    """
    out = leads.with_name(f"export.{format}")
    try:
        report = await agent.export(
            interaction_id,
            leads,
            out,
            format=format,
            strict=strict,
            max_bytes=max_bytes,
            profile=profile,  # its template is written in the private folder, not served
            variants=variants,
            disabled_rules=disabled_rules,
        )
    except InvalidInput as exc:
        message = (
            export_too_large(max_bytes)
            if exc.topic == "export_too_large"
            else public_message(str(exc), leads, shown_as)
        )
        try:
            preview = await agent.preview_export(
                interaction_id,
                leads,
                profile=profile,
                variants=variants,
                disabled_rules=disabled_rules,
            )
        except InvalidInput:
            preview = None  # the list itself is unusable; the message says why
        return ExportRefused(message, preview)
    return report, out.open("rb")


def export_too_large(limit: int) -> str:
    """Why an export past ``COLDMAIL_MAX_EXPORT_BYTES`` was refused, and what to do."""
    return (
        f"the export is larger than {limit} bytes, the limit ({ENV['max_export_bytes']}); "
        "nothing was exported: export the leads in smaller lists, or raise the limit"
    )


def left_out_fingerprint(skipped: tuple[SkippedRow, ...]) -> str:
    """A digest of the rows an export leaves out, and why: the page that listed them puts it
    in its form, and a download is given only for the rows it listed."""
    listed = "\n".join(f"{row.row}\t{row.email}\t{row.reason}" for row in skipped)
    return hashlib.sha256(listed.encode("utf-8", "surrogatepass")).hexdigest()


def public_message(message: str, leads: Path, shown_as: str) -> str:
    """``message`` with the temporary path replaced by the name the uploader knows: "the lead
    list 'leads.csv' is empty", or without a file name "the uploaded lead list is empty"."""
    named = shown_as if shown_as == UNNAMED else f"the lead list {shown_as}"
    return message.replace(f"the lead list {leads}", named).replace(str(leads), shown_as)


def shown_name(filename: str | None) -> str:
    """How to name an uploaded file in a message: its name, quoted and clipped, or a phrase."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", Path(filename or "").name)[:80]
    return repr(name) if name else UNNAMED


def download(
    handle: BinaryIO, report: ExportReport, *, interaction_id: str, format: str, folder: Path
) -> StreamingResponse:
    """The exported file as an attachment, streamed from ``handle`` (closed at the end, and
    its ``folder`` deleted again where an open file could not be).

    Headers say what the report found: ``X-Coldmail-Rows-Written``,
    ``X-Coldmail-Rows-Skipped`` and ``X-Coldmail-Lint-Warnings``.
    """
    size = os.fstat(handle.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()
            shutil.rmtree(folder, ignore_errors=True)

    headers = {
        "Content-Disposition": f'attachment; filename="coldmail-{interaction_id}.{format}"',
        "Content-Length": str(size),
        "Cache-Control": "no-store",
        "X-Coldmail-Rows-Written": str(report.rows_written),
        "X-Coldmail-Rows-Skipped": str(len(report.skipped)),
        "X-Coldmail-Lint-Warnings": str(len(report.lint)),
    }
    return StreamingResponse(chunks(), media_type=MEDIA_TYPES[format], headers=headers)
