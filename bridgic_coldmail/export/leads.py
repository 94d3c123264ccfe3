"""Reading a lead list: a CSV file with a header, one lead per row, streamed.

Design decisions:

* **Streamed.** :class:`LeadReader` reads the file one physical line at a time and yields
  one row at a time, so a list of any length is read in bounded memory. The only thing that
  grows with the file is the duplicate check: one 64-bit hash of each address and the row
  it was first seen on (about 140 bytes a lead, 14 MB for 100,000, measured with
  tracemalloc). A lead's ``values`` dict is only built when asked for.
* **UTF-8 only, with or without a byte-order mark.** Each line is decoded strictly; the
  first byte that is not UTF-8 stops the read with its line and byte offset and the fix
  ("save the file as CSV UTF-8"). A guess at another encoding would silently turn names
  into mojibake that then goes out in emails.
* **Comma-separated, RFC 4180 quoting.** A header that is one column containing ``;`` or a
  tab is refused with a hint, rather than read as a one-column list.
* **The email column** is the one whose header normalises (see
  :func:`bridgic_coldmail.merge.field_name`) to one of :data:`EMAIL_HEADERS`: "email",
  "E-mail", "Email Address", "e-mail address", in any case. None, or more than one, is an
  error naming the headers found.
* **Row numbers are the ones a spreadsheet shows**: the header is row 1, the first lead row
  2; a quoted cell spanning several lines is still one row. Blank lines are skipped, but
  counted, as a spreadsheet counts them.
* **Per-row problems are reported, not dropped**: an invalid or duplicate address yields a
  :class:`RowProblem` with its row number; the caller decides (export skips and reports).
  Problems with the *file* — not UTF-8, no header, no email column, a header with an empty
  or repeated name, a row with more or fewer cells than the header, broken quoting, a NUL
  byte, a line over :data:`MAX_LINE_BYTES`, no lead rows at all — raise
  :class:`InvalidInput`, because no row of such a file can be trusted.
* **Valid address** (:func:`is_valid_email`): a pragmatic subset of RFC 5321, the addresses
  people actually have: ASCII; ``local@domain``; the local part at most 64 characters of
  letters, digits and ``. _ % + ' -``, starting with a letter, digit or ``_``, with no
  ``..`` and not ending in ``.``; the domain dot-separated labels of letters, digits and
  ``-`` (not at either end of a label), ending in a top-level domain of at least two
  letters; at most 254 characters. Quoted local parts, IP-address domains and non-ASCII
  (IDN) addresses are refused. Starting the local part with a letter, digit or ``_`` also
  means an address is never one that CSV-injection neutralising would have to alter (``=``,
  ``+``, ``-``, ``@``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import InvalidInput
from ..merge import field_names
from ..text import control_chars, preview, preview_list

EMAIL_HEADERS = ("email", "e_mail", "email_address", "e_mail_address")
"""Normalised header names that mark the email column."""
MAX_LINE_BYTES = 1024 * 1024
"""A longer physical line is refused: it bounds the memory one line can take."""

_UTF8_HINT = (
    "save the file as UTF-8 (in Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; "
    "in Google Sheets: File > Download > CSV) and try again"
)

_EMAIL = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9_%+'-]*(?:\.[A-Za-z0-9_%+'-]+)*"  # local part: no "..", no end "."
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"  # labels: no "-" at either end
    r"[A-Za-z]{2,63}"  # top-level domain
)


def is_valid_email(address: str) -> bool:
    """Whether ``address`` (already stripped) is an address sending tools accept (see above)."""
    return (
        len(address) <= 254 and _EMAIL.fullmatch(address) is not None and address.index("@") <= 64
    )


@dataclass(frozen=True)
class LeadHeader:
    """A lead list's header: its columns as written, their field names, the email column."""

    columns: tuple[str, ...]
    fields: tuple[str, ...]
    """Merge-field names, one per column, in the same order."""
    email_index: int

    @property
    def email_column(self) -> str:
        """The header of the email column, as written in the file."""
        return self.columns[self.email_index]


@dataclass(frozen=True)
class Lead:
    """One lead row that passed the checks."""

    row: int
    """Its row number as a spreadsheet shows it (the header is row 1)."""
    email: str
    """Its address, stripped of surrounding whitespace."""
    cells: tuple[str, ...]
    """The cells as read, in column order (the email cell stripped like ``email``)."""
    fields: tuple[str, ...]
    """The header's field names, one per cell."""

    @cached_property
    def values(self) -> dict[str, str]:
        """Field name → cell, for :func:`bridgic_coldmail.merge.render`."""
        return dict(zip(self.fields, self.cells, strict=True))


@dataclass(frozen=True)
class RowProblem:
    """A row that is not a usable lead: why, and which row (spreadsheet numbering)."""

    row: int
    email: str
    reason: str


class LeadReader:
    """A lead CSV opened for streaming: ``header`` at once, rows as you iterate.

    Use it as a context manager; iterating yields :class:`Lead` or :class:`RowProblem` in
    file order, then raises :class:`InvalidInput` if the file had no lead row at all.

    Raises:
        InvalidInput: the file cannot be opened, is not UTF-8, or its header or a row's
            shape is unusable (see the module docstring); the message says what to do.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            # Non-blocking, then checked: a FIFO or a device would never end.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise InvalidInput(
                    f"{self.path} is not a regular file; give the lead list's CSV file"
                )
            os.set_blocking(fd, True)
            self._file: IO[bytes] = os.fdopen(fd, "rb")
        except FileNotFoundError:
            raise InvalidInput(f"no lead list at {self.path}; check the path") from None
        except IsADirectoryError:
            raise InvalidInput(f"{self.path} is a folder; give the lead list's CSV file") from None
        except OSError as exc:
            raise InvalidInput(f"cannot read the lead list {self.path}: {exc.strerror}") from None
        self._line = 0
        self._offset = 0
        self._rows = 0
        self._iterated = False
        try:
            self._reader = csv.reader(self._lines(), strict=True)
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> LeadReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (iteration stops)."""
        self._file.close()

    def _lines(self) -> Iterator[str]:
        """The file's lines, decoded one by one so that a bad byte is located exactly."""
        while raw := self._file.readline(MAX_LINE_BYTES + 1):
            self._line += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InvalidInput(
                    f"line {self._line} of {self.path} is longer than {MAX_LINE_BYTES:,} bytes; "
                    "a lead list's lines are far shorter: this is not a CSV file, or its lines "
                    "end in a bare carriage return — re-export it as 'CSV UTF-8'"
                )
            start = self._offset
            self._offset += len(raw)
            if self._line == 1 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InvalidInput(
                    f"the lead list is UTF-16 (Excel's 'Unicode Text'); {_UTF8_HINT}"
                )
            if b"\x00" in raw:
                raise InvalidInput(
                    f"line {self._line} of {self.path} contains a NUL byte (byte "
                    f"{start + raw.index(0)}): it is not a text CSV — perhaps a workbook "
                    f"(.xlsx) or UTF-16; {_UTF8_HINT}"
                )
            if self._line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
                start += len(codecs.BOM_UTF8)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(self._decode_message(raw, exc, start)) from None

    def _decode_message(self, raw: bytes, exc: UnicodeDecodeError, start: int) -> str:
        where = f"{self.path}, line {self._line}, byte {start + exc.start}"
        return f"the lead list is not UTF-8 (byte 0x{raw[exc.start]:02x} at {where}); {_UTF8_HINT}"

    def _next_record(self) -> list[str] | None:
        try:
            return next(self._reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise InvalidInput(
                f"{self.path}, row {self._rows + 1} (line {self._line}) is not valid CSV: "
                f"{exc}; check its quotes, or re-export the file as CSV"
            ) from None

    def _read_header(self) -> LeadHeader:
        while True:
            record = self._next_record()
            if record is None:
                raise InvalidInput(
                    f"the lead list {self.path} is empty; it needs a header row (e.g. "
                    "email,first_name,company) and one row per lead"
                )
            self._rows += 1
            if record:
                break
        if len(record) == 1 and ("\t" in record[0] or ";" in record[0]):
            raise InvalidInput(
                f"the header of {self.path} is one column containing "
                f"{'tabs' if chr(9) in record[0] else 'semicolons'}: the file is not "
                "comma-separated; save it as 'CSV UTF-8 (Comma delimited)'"
            )
        fields = field_names(record)
        matches = [i for i, name in enumerate(fields) if name in EMAIL_HEADERS]
        if not matches:
            raise InvalidInput(
                f"the lead list {self.path} has no email column (its headers are "
                f"{preview_list(record)}); name the column with the addresses 'email'"
            )
        if len(matches) > 1:
            both = " and ".join(preview(record[i], 40) for i in matches)  # at most four
            raise InvalidInput(
                f"the lead list {self.path} has more than one email column ({both}); "
                "keep the one to send to and rename or delete the others"
            )
        return LeadHeader(tuple(record), tuple(fields), matches[0])

    def __iter__(self) -> Iterator[Lead | RowProblem]:
        if self._iterated:
            raise RuntimeError("a LeadReader can be iterated once")
        self._iterated = True
        header = self.header
        width = len(header.columns)
        seen: dict[int, int] = {}
        leads = 0
        while (record := self._next_record()) is not None:
            self._rows += 1
            row = self._rows
            if not record:
                continue  # a blank line: a blank spreadsheet row, not a lead
            if len(record) != width:
                raise InvalidInput(
                    f"row {row} of {self.path} (line {self._line}) has {len(record)} cells but "
                    f"the header has {width} columns; a cell with a comma must be in double "
                    "quotes — fix the row or re-export the file"
                )
            leads += 1
            email = record[header.email_index].strip()
            unreadable = _control_characters(record, header)
            if unreadable:
                yield RowProblem(row, email, unreadable)
                continue
            if not email:
                yield RowProblem(row, email, "the email cell is empty")
                continue
            if not is_valid_email(email):
                yield RowProblem(row, email, f"{email!r} is not a valid email address")
                continue
            key = _email_key(email)
            first = seen.get(key)
            if first is not None:
                yield RowProblem(row, email, f"duplicate of row {first} (same address)")
                continue
            seen[key] = row
            record[header.email_index] = email
            yield Lead(row, email, tuple(record), header.fields)
        if leads == 0:
            raise InvalidInput(
                f"the lead list {self.path} has a header but no lead rows; add one row per lead"
            )


def _control_characters(record: list[str], header: LeadHeader) -> str | None:
    """Why a row cannot be used when a cell holds control characters, else None.

    Such a row is refused rather than cleaned: the characters (a terminal escape, a bell, a
    line separator…) would reach the emails and the export, and quietly removing them would
    change a lead's data without anyone knowing. Line breaks and tabs, which a quoted CSV
    cell may hold, are not control characters here."""
    for column, cell in zip(header.columns, record, strict=True):
        found = control_chars(cell)
        if found:
            return (
                f"the {preview(column, 40)} cell contains control characters "
                f"({preview_list(found, quoted=False)}); remove them from the lead list"
            )
    return None


def _email_key(email: str) -> int:
    """A 64-bit hash of the lower-cased address: a false duplicate is about 1 in 10^9 at
    100,000 rows. Python's own string hash (SipHash, salted per process) where it is 64
    bits wide, as on every 64-bit build; blake2b elsewhere, where it is only 32."""
    folded = email.lower()
    if _NATIVE_64_BIT_HASH:
        return hash(folded)
    digest = hashlib.blake2b(folded.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


_NATIVE_64_BIT_HASH = sys.hash_info.width >= 64


def open_leads(path: str | Path) -> LeadReader:
    """Open a lead CSV for streaming (see :class:`LeadReader`)."""
    return LeadReader(path)


def read_header(path: str | Path) -> LeadHeader:
    """Only the header of a lead CSV, checked: what ``coldmail start --leads`` needs."""
    with LeadReader(path) as reader:
        return reader.header
