"""No lead-supplied formula begins a cell, whatever separator the CSV is read with.

Excel reads a CSV with the list separator of the computer's region: ``,`` in the US, ``;`` in
most of Europe, and a tab-separated reading is one click away. Read with ``;``, the
comma-separated line ``ana@x.com,"a;=cmd|' /C calc'!A0"`` has a cell ``=cmd|' /C calc'!A0``;
and a quoted cell spanning lines is no longer quoted, so each of its lines starts a row.
OWASP: "it is not sufficient to make sure that the untrusted user input does not start with
these characters. You also need to take care of the field separator".
"""

from __future__ import annotations

import csv
import io
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridgic_coldmail import InvalidInput
from bridgic_coldmail.export import export_sequence, neutralize_cell
from bridgic_coldmail.export.formulas import TRIGGERS
from bridgic_coldmail.export.leads import read_header
from bridgic_coldmail.export.lint import lint_sequence
from bridgic_coldmail.merge import render
from bridgic_coldmail.text import control_chars

from .test_export import leads, read_csv, sequence

SEPARATORS = (",", ";", "\t")
"""What a spreadsheet may split a line on."""


def opens_formula(piece: str) -> bool:
    """Whether a spreadsheet could read ``piece`` (one cell of a split line) as a formula:
    after the blanks and quotes it skips, it starts with ``= + - @`` (or their full-width
    forms) or a tab."""
    rest = piece
    while (
        rest
        and rest[0] != "\t"
        and (rest[0] == '"' or rest[0].isspace() or unicodedata.category(rest[0]) == "Cf")
    ):
        rest = rest[1:]
    if not rest:
        return False
    return rest[0] == "\t" or unicodedata.normalize("NFKC", rest[0]) in ("=", "+", "-", "@")


def cells_opening_a_formula(text: str) -> list[tuple[str, str]]:
    """Every (separator, cell) of every line of ``text`` that opens a formula."""
    found = []
    for line in text.splitlines():
        for separator in SEPARATORS:
            found += [(separator, p) for p in line.split(separator) if opens_formula(p)]
    return found


# --- examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("a;=cmd|' /C calc'!A0", "a;'=cmd|' /C calc'!A0"),
        ("a,=1+2", "a,'=1+2"),
        ("a\t@SUM(A1)", "a\t'@SUM(A1)"),
        ("a;  =1", "a;'  =1"),
        ("   =1+2", "'   =1+2"),
        ("\u3000=1", "'\u3000=1"),  # an ideographic space
        ("\u200b=1", "'\u200b=1"),  # a zero-width space
        ('a;"=1"', 'a;\'"=1"'),
        ("＝1+2", "'＝1+2"),  # full-width equals sign
        ("＋31", "'＋31"),
        ("－5", "'－5"),
        ("＠SUM(A1)", "'＠SUM(A1)"),
        ("line one\n=2+2", "line one\n'=2+2"),
        ("line one\r\n-2", "line one\r\n'-2"),
        ("a\u2028=1", "a\u2028'=1"),  # a line separator: a line break to splitlines
        ("\nx", "'\nx"),  # OWASP: a cell must not begin with a line feed either
        ("a;b", "a;b"),
        ("a; b - c", "a; b - c"),
        ("Hi Ana,\n\nWould it help?", "Hi Ana,\n\nWould it help?"),
        ("3-4 days; 5+ people, e-mail a@b.co", "3-4 days; 5+ people, e-mail a@b.co"),
    ],
)
def test_each_cell_start_under_any_separator_is_neutralised(cell: str, written: str) -> None:
    assert (neutralize_cell(cell), cells_opening_a_formula(written)) == (written, [])


def test_neutralising_twice_changes_nothing() -> None:
    once = neutralize_cell("a;=1,\n-2\t@3")
    assert neutralize_cell(once) == once


def test_a_lead_cell_with_a_formula_after_a_semicolon_is_exported_as_text(
    tmp_path: Path,
) -> None:
    source = leads(tmp_path, "ana@x.com,Ana,\"Acme;=cmd|' /C calc'!A0\"")
    export_sequence(sequence(subject="Hi", body="Hi,\n{{company}}", follow_up="x"),
                    source, tmp_path / "o.csv")  # fmt: skip
    text = (tmp_path / "o.csv").read_text(encoding="utf-8")
    assert cells_opening_a_formula(text) == []
    assert read_csv(tmp_path / "o.csv")[1][2] == "Acme;'=cmd|' /C calc'!A0"


def test_a_header_with_a_formula_after_a_separator_is_neutralised(tmp_path: Path) -> None:
    source = leads(tmp_path, "ana@x.com,Ana,Acme", header='email,"First;=Name",Company')
    export_sequence(sequence(body="Hi {{first_name}}"), source, tmp_path / "o.csv")
    text = (tmp_path / "o.csv").read_text(encoding="utf-8")
    assert cells_opening_a_formula(text) == []
    assert read_csv(tmp_path / "o.csv")[0][1] == "First;'=Name"


# --- lint warns about exactly what the export changes ----------------------------------


@pytest.mark.parametrize(
    "body",
    ["Hi,\n- one point", "Hi,\n\n=SUM(1)", "Hi; -1", "Thanks,  @dana", "＝ ok", "a\t+b"],
)
def test_lint_warns_when_the_export_would_change_the_sequence_text(body: str) -> None:
    issues = lint_sequence(sequence(body=body), ["first_name", "company"])
    assert [i.code for i in issues] == ["formula-prefix"]
    assert neutralize_cell(body) != body


@pytest.mark.parametrize("body", ["Hi,\n\nOne point - and another.", "3-4 days, 5+ people"])
def test_lint_is_silent_when_the_export_keeps_the_text(body: str) -> None:
    assert lint_sequence(sequence(body=body), ["first_name", "company"]) == []
    assert neutralize_cell(body) == body


# --- the property ----------------------------------------------------------------------

_TRICKY = [
    *",;\t\"' ",
    "\n",
    "\r",
    "\r\n",
    *"=+-@",
    *"＝＋－＠",
    "\u3000",
    "\u00a0",
    "\u200b",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x0b",
    "\x0c",
    "\x1c",
    "|",
    "!",
]
cell_text = st.lists(
    st.one_of(st.sampled_from(_TRICKY), st.characters(blacklist_categories=["Cs"],
                                                      blacklist_characters="\x00{}")),
    max_size=24,
).map(lambda parts: "".join(c for c in "".join(parts) if not control_chars(c)))  # fmt: skip
"""Any text a lead cell can hold, heavy in separators, triggers, blanks and line breaks: no
braces and no control characters (a row with either is skipped, never exported: see
test_same_rules), so every generated lead is exported and checked."""

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Where ``str.splitlines`` ends a line."""
TEMPLATE_FIELDS = ("note", "other")
TEMPLATES = sequence(
    subject="{{other|x}}",
    body="{{note|x}}\nHi {{other|x}},\n{{note|x}};{{other|x}}\t{{note|x}},{{note|x}}",
    follow_up="{{other|x}};{{note|x}}",
)
"""Each placeholder where a cell may start: a value's start, after a line break, after each
separator; the templates' own text starts no formula."""


@pytest.mark.slow  # a property test: CPU for seconds
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes=st.lists(cell_text, min_size=1, max_size=4), other=cell_text, header=cell_text)
def test_no_split_of_any_line_yields_a_cell_opening_a_formula(
    notes: list[str], other: str, header: str
) -> None:
    other = "".join(c for c in other if c not in LINE_BREAKS)  # a subject is one line
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "leads.csv"
        with source.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "note", "other", f"x{header}"])
            writer.writerows(
                [f"lead{i}@example.com", note, other, note] for i, note in enumerate(notes)
            )
        try:
            read_header(source)
        except InvalidInput:
            assume(False)  # a header that is no field name: refused before any export
        written = Path(folder) / "out.csv"
        report = export_sequence(TEMPLATES, source, written)
        text = written.read_text(encoding="utf-8")
        assert cells_opening_a_formula(text) == []

        with written.open(encoding="utf-8", newline="") as handle:
            header_row, *rows = list(csv.reader(handle))
        with source.open(encoding="utf-8", newline="") as handle:
            expected_header, *lead_rows = list(csv.reader(handle))
        assert header_row[:4] == [neutralize_cell(c) for c in expected_header]
        assert (report.skipped, len(rows)) == ((), len(lead_rows))
        for cells, got in zip(lead_rows, rows, strict=True):
            values = dict(zip(TEMPLATE_FIELDS, cells[1:3], strict=True))
            texts = [
                str(render(t, values))
                for t in (TEMPLATES.opener.subject, TEMPLATES.opener.body,
                          TEMPLATES.follow_up.body)
            ]  # fmt: skip
            expected = [*cells, texts[0], texts[1], "", texts[2], "4"]
            assert got == [neutralize_cell(c) for c in expected]


def test_the_property_checker_finds_what_the_old_rule_missed() -> None:
    """The checker itself is not blind: the output of the start-only rule fails it."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["ana@x.com", "a;=cmd|' /C calc'!A0", " =1", "x\n-2"])
    assert cells_opening_a_formula(buffer.getvalue()) == [
        (",", " =1"),
        (";", "=cmd|' /C calc'!A0, =1,\"x"),
        (",", '-2"'),
        (";", '-2"'),
        ("\t", '-2"'),
    ]


def test_the_trigger_list_holds_every_compatibility_form_of_a_formula_character() -> None:
    """TRIGGERS is a table, so the hot path needs no Unicode normalisation; this keeps it
    complete for the Unicode version of the Python running the tests."""
    compatible = {
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.normalize("NFKC", chr(code)) in ("=", "+", "-", "@")
    }
    assert TRIGGERS == frozenset(compatible | {"\t"})


def test_no_blank_is_a_word_character_so_the_quick_search_cannot_miss_one() -> None:
    """The quick search looks past non-word characters; every blank must be one."""
    word = re.compile(r"\w")
    blanks = [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if chr(code) == '"' or chr(code).isspace() or unicodedata.category(chr(code)) == "Cf"
    ]
    assert [hex(ord(c)) for c in blanks if word.match(c)] == []
