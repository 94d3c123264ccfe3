"""Export: one row per lead, skipped rows reported, no formulas, atomic, strict, streamed."""

from __future__ import annotations

import csv
import json
import os
import stat
import tracemalloc
from pathlib import Path

import pytest

from bridgic_coldmail import InvalidInput
from bridgic_coldmail.export import (
    OUTPUT_COLUMNS,
    ExportReport,
    SkippedRow,
    export_sequence,
    neutralize_cell,
    preview_export,
)
from bridgic_coldmail.export.lint import COMPLIANCE_RULES
from bridgic_coldmail.models import EmailSequence, EmailStep

HEADER = "email,First Name,Company"
OFF = COMPLIANCE_RULES
"""Tests of other rules turn the compliance rules off (tests/integration/test_compliance.py has
them)."""


def sequence(
    subject: str = "A question about {{company|your clinic}}",
    body: str = "Hi {{first_name|there}},\n\nWould a short call help {{company|you}}?\n\nDana",
    follow_up: str = "Hi {{first_name|there}}, bumping this up.",
    wait_days: int = 4,
) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(subject=subject, body=body, wait_days=0),
        follow_up=EmailStep(subject="Re: a question", body=follow_up, wait_days=wait_days),
    )


def leads(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "leads.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --- the CSV --------------------------------------------------------------------------------


def test_each_lead_gets_its_own_columns_then_the_rendered_steps(tmp_path: Path) -> None:
    source = leads(tmp_path, "ana@x.com,Ana,Acme Health", "bo@y.io,,")
    report = export_sequence(sequence(), source, tmp_path / "campaign.csv", disabled_rules=OFF)
    assert read_csv(tmp_path / "campaign.csv") == [
        ["email", "First Name", "Company", *OUTPUT_COLUMNS],
        [
            "ana@x.com",
            "Ana",
            "Acme Health",
            "A question about Acme Health",
            "Hi Ana,\n\nWould a short call help Acme Health?\n\nDana",
            "",
            "Hi Ana, bumping this up.",
            "4",
        ],
        [
            "bo@y.io",
            "",
            "",
            "A question about your clinic",
            "Hi there,\n\nWould a short call help you?\n\nDana",
            "",
            "Hi there, bumping this up.",
            "4",
        ],
    ]
    assert report == ExportReport(
        out=tmp_path / "campaign.csv",
        format="csv",
        columns=("email", "First Name", "Company", *OUTPUT_COLUMNS),
        rows_written=2,
        skipped=(),
        lint=(),
    )


def test_the_csv_is_utf8_without_bom_with_crlf_rows_and_owner_only(tmp_path: Path) -> None:
    export_sequence(sequence(), leads(tmp_path, "zoe@x.com,Zoë,Café"), tmp_path / "out.csv")
    data = (tmp_path / "out.csv").read_bytes()
    mode = stat.S_IMODE((tmp_path / "out.csv").stat().st_mode)
    assert (data[:6], data.count(b"\r\n") >= 2, "Zoë".encode() in data, mode) == (
        b"email,",
        True,
        True,
        0o600,
    )


def test_bad_rows_are_skipped_and_reported_with_row_numbers_and_reasons(tmp_path: Path) -> None:
    source = leads(
        tmp_path,
        "ana@x.com,Ana,Acme",
        "not-an-email,Bo,B",
        "ANA@x.com,Ann,A2",
        "cy@x.com,Cy,C",
    )
    report = export_sequence(
        sequence(follow_up="{{first_name}}, bumping this."), source, tmp_path / "out.csv"
    )
    assert report.skipped == (
        SkippedRow(3, "not-an-email", "'not-an-email' is not a valid email address"),
        SkippedRow(4, "ANA@x.com", "duplicate of row 2 (same address)"),
    )
    assert [row[0] for row in read_csv(tmp_path / "out.csv")[1:]] == ["ana@x.com", "cy@x.com"]


def test_a_lead_with_an_empty_field_and_no_fallback_is_skipped_not_sent_with_a_hole(
    tmp_path: Path,
) -> None:
    source = leads(tmp_path, "ana@x.com,Ana,Acme", "bo@y.io,,Beta")
    report = export_sequence(
        sequence(follow_up="{{first_name}}, bumping this."), source, tmp_path / "out.csv"
    )
    assert report.skipped == (
        SkippedRow(
            3,
            "bo@y.io",
            "no value for 'First Name' and {{first_name}} has no fallback; fill the cell, "
            "or give a fallback such as {{first_name|…}}",
        ),
    )
    assert len(read_csv(tmp_path / "out.csv")) == 2


def test_a_reason_naming_many_columns_stays_bounded(tmp_path: Path) -> None:
    """A lead missing forty long-named fields gets a reason of bounded length, not all forty."""
    names = [f"field_{i:02d}_" + "x" * 50 for i in range(40)]
    header = "email," + ",".join(names)
    body = " ".join(f"{{{{{name}}}}}" for name in names)
    full = "bo@y.io," + ",".join("x" for _ in names)
    source = leads(tmp_path, "ana@x.com" + "," * len(names), full, header=header)
    texts = sequence(subject="A question", body=body, follow_up="Bumping this up.")
    report = export_sequence(texts, source, tmp_path / "out.csv")
    (skipped,) = report.skipped
    assert "and 30 more" in skipped.reason
    assert len(skipped.reason) < 800


def test_a_cell_with_braces_used_in_a_text_is_skipped(tmp_path: Path) -> None:
    source = leads(tmp_path, "ana@x.com,Ana,{{unsubscribe}}", "bo@y.io,Bo,Beta")
    report = export_sequence(sequence(), source, tmp_path / "out.csv")
    assert [(s.row, s.reason[:29]) for s in report.skipped] == [
        (2, "the 'Company' cell contains {")
    ]


def test_a_line_break_that_would_land_in_the_subject_is_skipped(tmp_path: Path) -> None:
    source = leads(tmp_path, 'ana@x.com,Ana,"Acme\nHealth"', "bo@y.io,Bo,Beta")
    report = export_sequence(sequence(), source, tmp_path / "out.csv")
    assert [s.row for s in report.skipped] == [2]


def test_lint_warnings_are_reported_but_do_not_stop_the_export(tmp_path: Path) -> None:
    report = export_sequence(
        sequence(subject="AMAZING: a question"),
        leads(tmp_path, "a@x.com,A,B"),
        tmp_path / "o.csv",
        disabled_rules=OFF,
    )
    assert ([i.code for i in report.lint], report.rows_written) == (["capitals"], 1)


# --- formulas -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+31 6 1234", "'+31 6 1234"),
        ("-5", "'-5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=1", "a=1"),
        ("", ""),
        ("'quoted", "'quoted"),
    ],
)
def test_neutralize_prefixes_cells_a_spreadsheet_would_run(cell: str, written: str) -> None:
    assert neutralize_cell(cell) == written


def test_every_exported_cell_is_neutralised_lead_cells_and_rendered_texts(tmp_path: Path) -> None:
    source = leads(
        tmp_path,
        'ana@x.com,"=HYPERLINK(""http://evil"")",@SUM(A1)',
        header="email,=First Name,Company",
    )
    export_sequence(
        sequence(subject="{{company}}", body="{{first_name}} hi", follow_up="-{{company}}"),
        source,
        tmp_path / "out.csv",
    )
    header, row = read_csv(tmp_path / "out.csv")
    assert (header[1], row[1:5], row[6]) == (
        "'=First Name",
        ['\'=HYPERLINK("http://evil")', "'@SUM(A1)", "'@SUM(A1)", '\'=HYPERLINK("http://evil") hi'],
        "'-@SUM(A1)",
    )


def test_json_is_not_neutralised_and_keeps_the_exact_text(tmp_path: Path) -> None:
    source = leads(tmp_path, "ana@x.com,=Ana,Zoë Café")
    report = export_sequence(sequence(), source, tmp_path / "out.json", format="json")
    records = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert records == [
        {
            "email": "ana@x.com",
            "First Name": "=Ana",
            "Company": "Zoë Café",
            "step1_subject": "A question about Zoë Café",
            "step1_body": "Hi =Ana,\n\nWould a short call help Zoë Café?\n\nDana",
            "step2_subject": "",
            "step2_body": "Hi =Ana, bumping this up.",
            "step2_delay_days": 4,
        }
    ]
    assert (report.format, "Zoë".encode() in (tmp_path / "out.json").read_bytes()) == (
        "json",
        True,
    )


# --- refused before anything is written -----------------------------------------------------


@pytest.mark.parametrize("column", ["step1_subject", "Step1 Subject", "STEP2_DELAY_DAYS"])
def test_a_lead_column_named_like_an_output_column_is_refused(tmp_path: Path, column: str) -> None:
    source = leads(tmp_path, "ana@x.com,x", header=f"email,{column}")
    with pytest.raises(InvalidInput, match=f"already has the column\\(s\\) '{column}'"):
        export_sequence(sequence(subject="Hi", body="Hi", follow_up="Hi"), source, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_field_the_list_lacks_is_refused_with_a_bounded_list_of_columns(
    tmp_path: Path,
) -> None:
    header = "email," + ",".join(f"column_{i:03d}" for i in range(300))
    source = leads(tmp_path, "ana@x.com" + "," * 300, header=header)
    with pytest.raises(InvalidInput, match="and 291 more") as refused:
        export_sequence(sequence(subject="Hi", follow_up="Bump."), source, tmp_path / "out.csv")
    assert len(str(refused.value)) < 1000


def test_a_sequence_using_a_field_the_list_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot be rendered.*\{\{title\}\} is not a column"):
        export_sequence(
            sequence(body="Hi {{title}}"), leads(tmp_path, "a@x.com,A,B"), tmp_path / "o.csv"
        )
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"name,company\nAna,Acme\n", "has no email column"),
        ("email,first_name,company\nana@x.com,Zoë,A\n".encode("latin-1"), "save the file as UTF-8"),
        (b"", "is empty"),
        (b"email,first_name,company\n", "has a header but no lead rows"),
    ],
)
def test_an_unusable_lead_list_leaves_no_file(tmp_path: Path, content: bytes, hint: str) -> None:
    (tmp_path / "leads.csv").write_bytes(content)
    with pytest.raises(InvalidInput, match=hint):
        export_sequence(sequence(), tmp_path / "leads.csv", tmp_path / "o.csv")
    assert (sorted(p.name for p in tmp_path.iterdir())) == ["leads.csv"]


def test_a_byte_order_mark_is_not_exported_into_the_first_column_name(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_bytes(
        b"\xef\xbb\xbfemail,first_name,company\nana@x.com,Ana,Acme\n"
    )
    export_sequence(sequence(), tmp_path / "leads.csv", tmp_path / "o.csv")
    assert read_csv(tmp_path / "o.csv")[0][0] == "email"


def test_when_no_lead_can_be_exported_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidInput, match="none of the leads .* could be exported: row 2 \\(bad\\)"
    ):
        export_sequence(sequence(), leads(tmp_path, "bad,A,B"), tmp_path / "o.csv")
    assert (not (tmp_path / "o.csv").exists(), leftovers(tmp_path)) == (True, [])


@pytest.mark.parametrize(
    ("out", "hint"),
    [
        ("folder", "is a folder"),
        ("missing/out.csv", "does not exist"),
        ("leads.csv", "is the lead list itself"),
    ],
)
def test_an_unusable_target_is_refused(tmp_path: Path, out: str, hint: str) -> None:
    (tmp_path / "folder").mkdir()
    source = leads(tmp_path, "ana@x.com,Ana,Acme")
    with pytest.raises(InvalidInput, match=hint):
        export_sequence(sequence(), source, tmp_path / out)
    assert source.read_text(encoding="utf-8").startswith(HEADER)


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown export format 'xlsx'; use csv or json"):
        source = leads(tmp_path, "a@x.com,A,B")
        export_sequence(sequence(), source, tmp_path / "o", format="xlsx")  # type: ignore[arg-type]


# --- strict ---------------------------------------------------------------------------------


def test_strict_refuses_lint_warnings_and_skipped_rows_in_one_error(tmp_path: Path) -> None:
    out = tmp_path / "campaign.csv"
    out.write_text("the previous export\n", encoding="utf-8")
    source = leads(tmp_path, "ana@x.com,Ana,Acme", "bad,Bo,B")
    with pytest.raises(InvalidInput) as caught:
        export_sequence(
            sequence(subject="AMAZING question"),
            source,
            out,
            strict=True,
            overwrite=True,
            disabled_rules=OFF,
        )
    message = str(caught.value)
    assert message.startswith("export refused (strict): 1 lint issue(s): opener subject: words")
    assert "1 row(s) of" in message and "row 3 (bad): 'bad' is not a valid email" in message
    assert (out.read_text(encoding="utf-8"), leftovers(tmp_path)) == ("the previous export\n", [])


def test_strict_refuses_skipped_rows_alone_and_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "campaign.csv"
    out.write_text("the previous export\n", encoding="utf-8")
    source = leads(tmp_path, "ana@x.com,Ana,Acme", "ana@x.com,Ann,Acme")
    with pytest.raises(InvalidInput, match=r"row 3 \(ana@x.com\): duplicate of row 2"):
        export_sequence(sequence(), source, out, strict=True, overwrite=True)
    assert (out.read_text(encoding="utf-8"), leftovers(tmp_path)) == ("the previous export\n", [])


def test_strict_passes_a_clean_sequence_and_list(tmp_path: Path) -> None:
    report = export_sequence(
        sequence(),
        leads(tmp_path, "ana@x.com,Ana,Acme"),
        tmp_path / "o.csv",
        strict=True,
        disabled_rules=OFF,
    )
    assert (report.rows_written, report.skipped, report.lint) == (1, (), ())


# --- atomic ---------------------------------------------------------------------------------


def test_a_failure_half_way_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "campaign.csv"
    out.write_text("the previous export\n", encoding="utf-8")
    rows = [f"lead{i}@x.com,N{i},C{i}" for i in range(50)] + ["ragged@x.com,only two"]
    with pytest.raises(InvalidInput, match="row 52 .* has 2 cells"):
        export_sequence(sequence(), leads(tmp_path, *rows), out, overwrite=True)
    assert (out.read_text(encoding="utf-8"), leftovers(tmp_path)) == ("the previous export\n", [])


def test_a_full_disk_at_the_end_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InvalidInput, match="cannot write .*: No space left on device; nothing was"):
        export_sequence(sequence(), leads(tmp_path, "a@x.com,A,B"), tmp_path / "o.csv")
    assert (not (tmp_path / "o.csv").exists(), leftovers(tmp_path)) == (True, [])


# --- preview --------------------------------------------------------------------------------


def test_preview_finds_what_an_export_would_and_writes_nothing(tmp_path: Path) -> None:
    source = leads(tmp_path, "ana@x.com,Ana,Acme", "bad,Bo,B")
    report = preview_export(sequence(subject="AMAZING question"), source, disabled_rules=OFF)
    assert (report.out, report.rows_written, [s.row for s in report.skipped]) == (None, 1, [3])
    assert [i.code for i in report.lint] == ["capitals"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]


def test_preview_reports_unrenderable_placeholders_instead_of_raising(tmp_path: Path) -> None:
    report = preview_export(
        sequence(body="Hi {{title}}"), leads(tmp_path, "a@x.com,A,B"), disabled_rules=OFF
    )
    assert ([i.code for i in report.lint], report.rows_written) == (["unknown-field"], 0)


# --- streamed -------------------------------------------------------------------------------

STREAM_ROWS = 30_000
STREAM_BOUND = 8_000_000
"""Bytes: the duplicate index (~140 bytes a lead, 4.2 MB here) plus slack for one row and
the writer's buffers. Input and output are each larger than the bound (see the asserts), so
an export that held either in memory could not stay under it."""


@pytest.mark.slow
def test_an_export_streams_in_bounded_memory(tmp_path: Path) -> None:
    source = tmp_path / "leads.csv"
    note = "n" * 250
    with source.open("w", encoding="utf-8") as handle:
        handle.write("email,first_name,company,notes\n")
        for i in range(STREAM_ROWS):
            handle.write(f"lead{i}@example.com,Name{i},Company {i},{note}\n")
    out = tmp_path / "campaign.csv"
    tracemalloc.start()
    try:
        report = export_sequence(sequence(), source, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.rows_written == STREAM_ROWS
    assert min(source.stat().st_size, out.stat().st_size) > STREAM_BOUND
    assert peak < STREAM_BOUND, f"peak {peak:,} bytes"
