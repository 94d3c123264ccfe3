"""A personalized line is checked before anyone sees it: the text rules and honesty.

The measure: every honest line of ``personalize_cases`` passes and every dishonest one fails,
on the lines written before the check (``CASES``), on lines held out while tuning it
(``HELD_OUT``), and on the sentence shapes added while tuning (``STYLES``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgic_coldmail.export.leads import Lead, LeadReader
from bridgic_coldmail.personalize.lines import (
    MAX_CELL_CHARS,
    MAX_COLUMNS,
    MAX_LINE_CHARS,
    LineContext,
    LineRefused,
    LineTask,
    check_line,
    line_problems,
    text_problems,
)

from ..personalize_cases import ACME, CASES, HELD_OUT, LEDGERLY, LEDGERLY_SEQUENCE, STYLES, LeadCase


def _task(case: LeadCase) -> LineTask:
    return LineTask(LineContext(case.brief, case.sequence), case.lead)


def _measure(cases: tuple[LeadCase, ...]) -> tuple[list[str], list[str]]:
    """(honest lines refused, with why; dishonest lines passed)."""
    refused, passed = [], []
    for case in cases:
        task = _task(case)
        for line in case.honest:
            if problems := line_problems(line, task):
                refused.append(f"{case.name}: {line!r}: {problems}")
        passed += [
            f"{case.name}: {line!r}" for line in case.dishonest if not line_problems(line, task)
        ]
    return refused, passed


@pytest.mark.parametrize(
    "cases", [CASES, HELD_OUT, STYLES], ids=["written-first", "held-out", "styles"]
)
def test_honest_lines_pass_and_dishonest_lines_fail(cases: tuple[LeadCase, ...]) -> None:
    honest = sum(len(c.honest) for c in cases)
    dishonest = sum(len(c.dishonest) for c in cases)
    assert honest >= 13 and dishonest >= 5
    refused, passed = _measure(cases)
    assert refused == [], f"{len(refused)} of {honest} honest lines refused"
    assert passed == [], f"{len(passed)} of {dishonest} dishonest lines passed"


def test_each_dishonest_line_is_refused_for_what_it_invents() -> None:
    maria = _task(CASES[0])

    def why(line: str) -> str:
        with pytest.raises(LineRefused) as refused:
            check_line(line, maria)
        return str(refused.value)

    assert "'Series', 'B'" in why("Congrats on Brightwater Foods' recent Series B funding!")
    assert "funding" in why("congrats on the recent funding round, Maria.")
    assert "('1,200')" in why("With 1,200 employees, Brightwater Foods must be busy.")
    assert "('five')" in why("Brightwater's five plants must generate a lot of invoices.")
    assert "'Mark', 'Evans'" in why("I spoke with your colleague Mark Evans last week.")
    assert "'Acme', 'Scheduler'" in why("Acme Scheduler can cut no-shows at Brightwater Foods.")
    assert "an acquisition" in why("Congrats on the acquisition in Lübeck, Maria.")
    # The brief's figure in its own unit is true; in another it is invented.
    check_line("Teams like yours at Brightwater save 2 days a month.", maria)
    assert "('two')" in why("Managing month-end across two countries can't be easy.")


def test_a_line_may_use_the_leads_data_written_another_way() -> None:
    maria = _task(CASES[0])
    for line in (
        "With three plants to close, Brightwater's month-end is busy.",  # "third plant"
        "A 450-person manufacturer in hamburg has plenty of invoices.",  # lower case
        "Brightwater Foods GmbH opened its third plant in Lubeck.",  # accents dropped
        "Your team in Hamburg now closes three plants' books.",
    ):
        assert check_line(line, maria) == line
    jean_luc = _task(CASES[4])
    assert check_line("Societe Generale des Metaux moves to e-invoicing in 2026.", jean_luc)
    james = _task(CASES[1])  # "CFO" is in the title; "Vice President" would allow "VP"
    assert check_line("As CFO of Northwind Plastics, you see every invoice.", james)
    vp = LineTask(LineContext(LEDGERLY, LEDGERLY_SEQUENCE), {"title": "Vice President, Finance"})
    assert check_line("As VP Finance, you see every invoice.", vp)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("", "must not be empty"),
        ("   \u200b ", "must not be empty"),
        ("x" * (MAX_LINE_CHARS + 1), f"the limit is {MAX_LINE_CHARS}"),
        ("Saw the news\x1b[2J about Lübeck.", "control characters"),
        ("Saw the news\x85 about Lübeck.", "control characters"),  # a C1 control
        ("Saw the news\nabout Lübeck.", "line break"),
        ("Saw the news\r\nabout Lübeck.", "line break"),
        ("Saw the news\tabout Lübeck.", "line break or a tab"),
        ("Saw the \u202enews about Lübeck.", "bidi override"),
        ("Congrats on {{company}}'s plant.", "placeholder"),
        ("Congrats on the plant {in Lübeck}.", "placeholder or a brace"),
        ("Congrats on [recent news].", "[placeholder]"),
        ("Congrats on the <b>plant</b>.", "<markup>"),
        ("=HYPERLINK(1)", "formula"),
        ("+1 for the Lübeck plant.", "formula"),
        ("-- Lübeck plant, nice.", "formula"),
        ("@Maria congrats on Lübeck.", "formula"),
        ("See https://brightwater.example/news for Lübeck.", "link"),
        ("See www.brightwater.example for Lübeck.", "link"),
        ("See brightwater-foods.example for the Lübeck news.", "link"),
        ("Saw the Lübeck news on brightwater.example.", "link"),
        ("Write to maria.keller@brightwater-foods.example about Lübeck.", "email address"),
        ("Hi Maria, congrats on Lübeck.", "greeting"),
        ("Dear Maria, congrats on Lübeck.", "greeting"),
        ("Lübeck is new. Plants are busy. Invoices pile up. So it goes.", "sentences"),
    ],
)
def test_each_text_rule_refuses_its_case(line: str, problem: str) -> None:
    problems = text_problems(line)
    assert any(problem in p for p in problems), problems
    with pytest.raises(LineRefused):
        check_line(line, _task(CASES[0]))


def test_ordinary_punctuation_and_abbreviations_pass_the_text_rules() -> None:
    for line in (
        "Congrats on the plant in Lübeck, e.g. the one that opened — nice!",
        "Lübeck's plant, Hamburg's office: two sites, one close.",
        "Is month-end at Brightwater Foods GmbH still a 2-day job?",
        "陈伟, an ERP upgrade is a good moment to stop matching bank lines by hand.",
    ):
        assert text_problems(line) == [], line
    assert check_line("  Congrats on the Lübeck plant, Maria.  ", _task(CASES[0])) == (
        "Congrats on the Lübeck plant, Maria."
    )
    assert line_problems(None, _task(CASES[0])) == ["the line must be text, not NoneType"]


def test_hostile_cells_are_cleaned_cut_and_bounded_before_anyone_reads_them() -> None:
    lead = {
        "email": "a@b.example",
        "first_name": "Ma\x00ria\x1b[31m",
        "note": "A" * 10_000,
        "html": "<script>alert(1)</script>",
        "formula": '=HYPERLINK("http://evil.example","x")',
        "bidi": "Acme\u202e evil",
        "blank": "   ",
        **{f"extra_{i}": f"value {i}" for i in range(MAX_COLUMNS + 10)},
    }
    task = LineTask(LineContext(LEDGERLY, LEDGERLY_SEQUENCE), lead)
    shown = dict(task.columns)
    assert "email" not in shown and "blank" not in shown
    assert shown["first_name"] == "Ma ria [31m"  # control characters became spaces
    assert len(shown["note"]) == MAX_CELL_CHARS and shown["note"].endswith("…")
    assert shown["html"] == "<script>alert(1)</script>"  # shown as data, never in a line
    assert shown["bidi"] == "Acme evil"
    assert len(task.columns) == MAX_COLUMNS and task.left_out == 15
    assert all(c.isprintable() for name, value in task.columns for c in name + value)
    # A name that only the 10,000th character of a cell gives is not in the facts.
    long_tail = {"note": "x " * 2000 + "Zanzibar"}
    tail_task = LineTask(LineContext(LEDGERLY, LEDGERLY_SEQUENCE), long_tail)
    assert "'Zanzibar'" in str(
        line_problems("Zanzibar must be lovely this time of year.", tail_task)
    )


def test_a_lead_read_from_a_csv_becomes_a_task_without_its_address(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(
        "Email,First Name,Company,Note\n"
        "maria@brightwater.example,Maria,Brightwater Foods,Opened a plant in Lübeck\n",
        encoding="utf-8",
    )
    with LeadReader(path) as reader:
        (lead,) = list(reader)
    assert isinstance(lead, Lead)
    task = LineTask.for_lead(LineContext(LEDGERLY, LEDGERLY_SEQUENCE), lead)
    assert task.row == 2 and task.who == "row 2"
    assert dict(task.columns) == {
        "first_name": "Maria",
        "company": "Brightwater Foods",
        "note": "Opened a plant in Lübeck",
    }
    assert check_line("Congrats on the Lübeck plant, Maria.", task)


def test_guidance_is_a_source_of_facts_and_events() -> None:
    lead = {"first_name": "Priya", "company": "Kestrel Components"}
    bare = LineTask(LineContext(LEDGERLY, LEDGERLY_SEQUENCE), lead)
    line = "Priya, we met at the Farnborough Airshow, and I promised to write."
    assert "'Farnborough', 'Airshow'" in str(line_problems(line, bare))
    guided = LineTask(
        LineContext(LEDGERLY, LEDGERLY_SEQUENCE, ("Mention we met at the Farnborough Airshow",)),
        lead,
    )
    assert line_problems(line, guided) == []


def test_a_caseless_script_can_only_quote_the_data() -> None:
    chen = _task(CASES[3])
    problems = line_problems("陈伟, 东莞 is a good place for a second plant.", chen)
    assert "'东莞'" in str(problems) and "'陈伟'" not in str(problems)


def test_the_acme_brief_knows_its_own_figures() -> None:
    alicia = _task(CASES[5])
    assert alicia.context.brief is ACME
    assert check_line("Clinics like Riverside cut no-shows by 30% with two-way SMS.", alicia)
    assert "('30')" in str(line_problems("Riverside has 30 staff, I hear.", alicia))
