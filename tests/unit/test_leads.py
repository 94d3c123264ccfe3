"""Reading lead lists: the email column, encodings, bad rows and files, 100,000 rows streamed."""

from __future__ import annotations

import codecs
import tracemalloc
from pathlib import Path

import pytest

from bridgic_coldmail import InvalidInput
from bridgic_coldmail.export import leads as leads_module
from bridgic_coldmail.export.leads import (
    MAX_LINE_BYTES,
    Lead,
    RowProblem,
    is_valid_email,
    open_leads,
    read_header,
)


def write(tmp_path: Path, content: str | bytes, name: str = "leads.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read_all(path: Path) -> list[Lead | RowProblem]:
    with open_leads(path) as reader:
        return list(reader)


def refusal(path: Path) -> str:
    with pytest.raises(InvalidInput) as caught:
        read_all(path)
    return str(caught.value)


# --- the header -----------------------------------------------------------------------------


def test_a_simple_list_gives_its_header_and_leads_with_spreadsheet_row_numbers(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "Email,First Name\nana@x.com,Ana\nbo@y.io,Bo\n")
    with open_leads(path) as reader:
        header = reader.header
        leads = list(reader)
    assert (header.columns, header.fields, header.email_column) == (
        ("Email", "First Name"),
        ("email", "first_name"),
        "Email",
    )
    assert [(lead.row, lead.email, lead.values) for lead in leads if isinstance(lead, Lead)] == [
        (2, "ana@x.com", {"email": "ana@x.com", "first_name": "Ana"}),
        (3, "bo@y.io", {"email": "bo@y.io", "first_name": "Bo"}),
    ]


@pytest.mark.parametrize(
    "column", ["email", "Email", "EMAIL", "E-mail", "Email Address", "e-mail address"]
)
def test_the_email_column_is_found_by_its_documented_names(tmp_path: Path, column: str) -> None:
    path = write(tmp_path, f"name,{column}\nAna,ana@x.com\n")
    assert read_header(path).email_index == 1


def test_a_list_without_an_email_column_names_the_headers_it_has(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, "name,mail_addr\nAna,ana@x.com\n"))
    assert "has no email column (its headers are 'name', 'mail_addr'); name the column" in message


def test_a_list_with_two_email_columns_is_refused(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, "Email,E-mail\nana@x.com,ana@y.com\n"))
    assert "more than one email column ('Email' and 'E-mail')" in message


def test_a_header_with_an_empty_name_is_refused(tmp_path: Path) -> None:
    assert "column 2 of the header has no name" in refusal(write(tmp_path, "email,,company\n"))


def test_a_header_with_a_repeated_name_is_refused(tmp_path: Path) -> None:
    assert "'company' appears twice" in refusal(write(tmp_path, "email,company,company\n"))


def test_a_semicolon_separated_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, "email;name\nana@x.com;Ana\n"))
    assert "containing semicolons: the file is not comma-separated" in message


def test_reading_the_header_does_not_read_the_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\nana@x.com,Ana\nragged\n")
    assert read_header(path).fields == ("email", "name")


# --- encodings ------------------------------------------------------------------------------


def test_a_utf8_byte_order_mark_is_accepted_and_not_part_of_the_first_column(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, codecs.BOM_UTF8 + "email,name\nana@x.com,Zoë\n".encode())
    with open_leads(path) as reader:
        leads = list(reader)
    assert (reader.header.columns[0], leads[0]) == (
        "email",
        Lead(2, "ana@x.com", ("ana@x.com", "Zoë"), ("email", "name")),
    )


def test_a_latin1_file_is_refused_with_line_byte_and_fix(tmp_path: Path) -> None:
    content = "email,name\nana@x.com,Ana\nbo@x.com,Zoë\n".encode("latin-1")
    message = refusal(write(tmp_path, content))
    byte = content.index(b"\xeb")
    assert f"is not UTF-8 (byte 0xeb at {tmp_path / 'leads.csv'}, line 3, byte {byte})" in message
    assert "save the file as UTF-8" in message


def test_a_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, "email\nana@x.com\n".encode("utf-16")))
    assert "is UTF-16 (Excel's 'Unicode Text'); save the file as UTF-8" in message


# --- bad files ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", codecs.BOM_UTF8, b"\n\n"])
def test_an_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    assert "is empty; it needs a header row" in refusal(write(tmp_path, content))


def test_a_header_without_rows_is_refused(tmp_path: Path) -> None:
    assert "has a header but no lead rows" in refusal(write(tmp_path, "email,name\n"))


@pytest.mark.parametrize(("row", "cells"), [("ana@x.com,Ana,extra", 3), ("bo@x.com", 1)])
def test_a_ragged_row_is_refused_with_its_row_number(tmp_path: Path, row: str, cells: int) -> None:
    message = refusal(write(tmp_path, f"email,name\nzed@x.com,Zed\n{row}\n"))
    assert f"row 3 of {tmp_path / 'leads.csv'} (line 3) has {cells} cells but the header has 2" in (
        message
    )


def test_an_unclosed_quote_is_refused_as_invalid_csv(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, 'email,name\nana@x.com,"Ana\n'))
    assert "is not valid CSV" in message


def test_a_nul_byte_is_refused_as_not_a_text_csv(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, "email,name\nana@x.com,A\x00na\n"))
    assert "line 2 of" in message and "contains a NUL byte (byte 22)" in message


def test_a_file_with_bare_carriage_returns_is_refused(tmp_path: Path) -> None:
    assert "is not valid CSV" in refusal(write(tmp_path, "email,name\rana@x.com,Ana\r"))


def test_an_overlong_line_is_refused_before_it_is_held_in_memory(tmp_path: Path) -> None:
    path = write(tmp_path, "email,notes\nana@x.com," + "x" * (MAX_LINE_BYTES + 10) + "\n")
    assert "line 2 of" in refusal(path)


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no lead list at .*nope.csv; check the path"):
        read_header(tmp_path / "nope.csv")


# --- rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "ana",
        "ana@",
        "@x.com",
        "ana@x",
        "ana..lee@x.com",
        ".ana@x.com",
        "ana.@x.com",
        "ana@-x.com",
        "ana@x-.com",
        "ana@x..com",
        "ana@x.c",
        "ana@x.c0m",
        "ana lee@x.com",
        "ana@x@y.com",
        "añа@x.com",
        "=cmd@x.com",
        "+ana@x.com",
        "-ana@x.com",
        "a" * 65 + "@x.com",
        "ana@" + "x" * 250 + ".com",
    ],
)
def test_invalid_addresses_are_refused(address: str) -> None:
    assert is_valid_email(address) is False


@pytest.mark.parametrize(
    "address",
    ["ana@x.com", "Ana.Lee+tag@sub.example.co.uk", "o'brien@x.ie", "_x@x.io", "a%b-c@x-y.com"],
)
def test_valid_addresses_are_accepted(address: str) -> None:
    assert is_valid_email(address) is True


def test_an_invalid_address_is_reported_with_its_row_not_dropped(tmp_path: Path) -> None:
    rows = read_all(write(tmp_path, "email,name\nana@x.com,Ana\nnot-an-email,Bo\n,Cy\n"))
    assert rows[1:] == [
        RowProblem(3, "not-an-email", "'not-an-email' is not a valid email address"),
        RowProblem(4, "", "the email cell is empty"),
    ]


def test_a_duplicate_address_is_reported_case_insensitively_with_the_first_row(
    tmp_path: Path,
) -> None:
    rows = read_all(write(tmp_path, "email,name\nana@x.com,Ana\nbo@x.com,Bo\n ANA@X.com ,Ann\n"))
    assert rows[2] == RowProblem(4, "ANA@X.com", "duplicate of row 2 (same address)")


def test_duplicates_are_found_where_the_native_hash_is_only_32_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leads_module, "_NATIVE_64_BIT_HASH", False)
    rows = read_all(write(tmp_path, "email\nana@x.com\nbo@x.com\nAna@X.com\n"))
    assert rows[2] == RowProblem(4, "Ana@X.com", "duplicate of row 2 (same address)")


def test_whitespace_around_an_address_is_stripped(tmp_path: Path) -> None:
    (lead,) = read_all(write(tmp_path, "email,name\n  ana@x.com ,Ana\n"))
    assert isinstance(lead, Lead) and lead.cells == ("ana@x.com", "Ana")


def test_a_multi_line_cell_is_one_row_as_in_a_spreadsheet(tmp_path: Path) -> None:
    rows = read_all(write(tmp_path, 'email,note\nana@x.com,"two\nlines"\nbad,x\n'))
    assert rows[1] == RowProblem(3, "bad", "'bad' is not a valid email address")


def test_a_blank_line_is_skipped_but_counted_as_a_row(tmp_path: Path) -> None:
    rows = read_all(write(tmp_path, "email\n\nana@x.com\n"))
    assert [row.row for row in rows] == [3]


# --- 100,000 rows ---------------------------------------------------------------------------

ROWS = 100_000
MEMORY_BOUND = 20_000_000
"""Bytes. The duplicate index keeps one 64-bit hash and a row number per address: measured
at about 140 bytes a lead, 14 MB for 100,000 (dict entries, two int objects, one resize).
Everything else is one line at a time. The file is made bigger than the bound (about 30 MB
of text), so a reader that held it — even as one string — could not stay under it."""


@pytest.mark.slow
def test_a_hundred_thousand_rows_are_streamed_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    note = "n" * 250
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,first_name,company,notes\n")
        for i in range(ROWS):
            handle.write(f"lead{i}@example{i % 97}.com,Name{i},Company {i},{note}\n")
    assert path.stat().st_size > MEMORY_BOUND
    tracemalloc.start()
    try:
        count = last_row = 0
        with open_leads(path) as reader:
            for item in reader:
                count += 1
                last_row = item.row
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last_row) == (ROWS, ROWS + 1)
    assert peak < MEMORY_BOUND, f"peak {peak:,} bytes"
