"""Lint: each rule, its threshold, placeholders considered first, and strict mode."""

from __future__ import annotations

import pytest

from bridgic_coldmail.export import FORMULA_TRIGGERS
from bridgic_coldmail.export.lint import (
    FORMULA_PREFIXES,
    MAX_BODY_WORDS,
    MAX_SUBJECT_CHARS,
    LintIssue,
    Severity,
    capital_words,
    count_words,
    find_links,
    has_errors,
    lint_sequence,
    spam_phrases,
)
from bridgic_coldmail.models import STORED, EmailSequence, EmailStep

FIELDS = ["email", "first_name", "company", "website", "calendar"]


def sequence(
    subject: str = "A question about {{company|your clinic}}",
    body: str = "Hi {{first_name|there}},\n\nWould a short call help?\n\nDana",
    follow_up: str = "Hi {{first_name|there}}, bumping this up.\n\nDana",
    follow_up_subject: str = "Re: a question",
) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(subject=subject, body=body, wait_days=0),
        follow_up=EmailStep(subject=follow_up_subject, body=follow_up, wait_days=3),
    )


def codes(issues: list[LintIssue]) -> list[tuple[str, str, str]]:
    return [(issue.code, issue.step, issue.part) for issue in issues]


def test_a_clean_sequence_has_no_issues() -> None:
    assert lint_sequence(sequence(), FIELDS) == []


# --- placeholders ---------------------------------------------------------------------------


def test_an_unknown_field_is_an_error_naming_the_fields() -> None:
    (issue,) = lint_sequence(sequence(body="Hi {{title}}"), FIELDS)
    assert (issue.code, issue.step, issue.part, issue.severity) == (
        "unknown-field",
        "opener",
        "body",
        Severity.ERROR,
    )
    assert issue.message.startswith("{{title}} is not a column of the lead list (fields: email,")


def test_any_field_is_unknown_without_a_lead_list() -> None:
    assert codes(lint_sequence(sequence(), [])) == [
        ("unknown-field", "opener", "subject"),
        ("unknown-field", "opener", "body"),
        ("unknown-field", "follow_up", "body"),
    ]


def test_a_malformed_placeholder_is_an_error() -> None:
    """(Refused on the way in now; a run stored by an earlier release may hold one.)"""
    stored = sequence().model_dump()
    stored["follow_up"]["body"] = "Hi {first_name}"
    issues = lint_sequence(EmailSequence.model_validate(stored, context=STORED), FIELDS)
    assert {(i.code, i.step, i.severity) for i in issues} == {
        ("bad-placeholder", "follow_up", Severity.ERROR)
    }


# --- subject length -------------------------------------------------------------------------


def test_a_subject_of_the_limit_passes() -> None:
    assert lint_sequence(sequence(subject="s" * MAX_SUBJECT_CHARS), FIELDS) == []


def test_a_subject_over_the_limit_is_a_warning() -> None:
    (issue,) = lint_sequence(sequence(subject="s" * (MAX_SUBJECT_CHARS + 1)), FIELDS)
    assert (issue.code, issue.severity, issue.message[:14]) == (
        "subject-too-long",
        Severity.WARNING,
        "61 characters ",
    )


def test_a_placeholder_counts_as_its_fallback_in_a_subject() -> None:
    subject = "s" * 50 + "{{company|Acme Health}}"  # 50 + 11 characters once filled
    assert codes(lint_sequence(sequence(subject=subject), FIELDS)) == [
        ("subject-too-long", "opener", "subject")
    ]


def test_a_placeholder_without_fallback_counts_as_eight_characters() -> None:
    fits, too_long = "s" * 52 + "{{company}}", "s" * 53 + "{{company}}"
    assert (
        lint_sequence(sequence(subject=fits), FIELDS),
        codes(lint_sequence(sequence(subject=too_long), FIELDS)),
    ) == ([], [("subject-too-long", "opener", "subject")])


# --- body length ----------------------------------------------------------------------------


def test_a_body_of_the_limit_passes_and_one_more_word_warns() -> None:
    at_limit = " ".join(["word"] * MAX_BODY_WORDS)
    assert (
        lint_sequence(sequence(body=at_limit), FIELDS),
        codes(lint_sequence(sequence(follow_up=at_limit + " more"), FIELDS)),
    ) == ([], [("body-too-long", "follow_up", "body")])


def test_punctuation_alone_is_not_a_word() -> None:
    assert count_words("Hi — there - , 3 days!") == 4


# --- links ----------------------------------------------------------------------------------


def test_one_link_passes_and_two_warn() -> None:
    """(In the follow-up: any link in the opener is a finding of its own.)"""
    one = "See https://acme.com/demo."
    two = "See https://acme.com/demo or www.acme.io."
    assert (
        lint_sequence(sequence(follow_up=one), FIELDS),
        codes(lint_sequence(sequence(follow_up=two), FIELDS)),
    ) == ([], [("too-many-links", "follow_up", "body")])


def test_links_are_urls_www_and_bare_domains_but_not_email_addresses() -> None:
    text = "Go to https://a.com/x, www.b.org or c.io; write to dana@acme.com. E.g. node.js."
    assert find_links(text) == ["https://a.com/x", "www.b.org", "c.io"]


def test_a_placeholder_is_never_counted_as_a_link() -> None:
    body = "Your site {{website}} and your calendar {{calendar}}, and https://acme.com."
    assert lint_sequence(sequence(follow_up=body), FIELDS) == []


# --- capitals -------------------------------------------------------------------------------


def test_words_in_capitals_are_flagged_but_short_acronyms_and_known_ones_are_not() -> None:
    text = "FREE demo for the CEO, GDPR and SOC2 ready, B2B, DON'T wait, Q4 HIPAA"
    assert capital_words(text) == ["FREE", "DON'T"]


def test_capitals_warn_once_per_part_listing_the_words() -> None:
    (issue,) = lint_sequence(sequence(body="This is HUGE and really HUGE. AMAZING."), FIELDS)
    assert (issue.code, issue.message.split(";")[0]) == (
        "capitals",
        "words in capitals read as shouting: HUGE, AMAZING",
    )


def test_the_product_name_can_be_passed_as_an_acronym() -> None:
    text = sequence(body="ACME saves your team an hour a day.")
    assert lint_sequence(text, FIELDS, acronyms={"acme"}) == []


def test_a_placeholder_name_is_never_a_capital_word_but_its_fallback_is() -> None:
    quiet = lint_sequence(sequence(body="Hi {{first_name}}, {{company}} and {{email}}"), FIELDS)
    loud = lint_sequence(sequence(body="Hi {{first_name|THERE}},"), FIELDS)
    assert (quiet, codes(loud)) == ([], [("capitals", "opener", "body")])


# --- spam phrases ---------------------------------------------------------------------------


def test_spam_phrases_are_found_case_insensitively_as_whole_words() -> None:
    text = "Act NOW: it's Guaranteed, don’t miss out. Urgently? No. Freedom? No."
    assert spam_phrases(text) == ["act now", "guaranteed", "don't miss out"]


def test_a_spam_phrase_in_the_subject_warns() -> None:
    (issue,) = lint_sequence(sequence(subject="Special offer inside"), FIELDS)
    assert (issue.code, issue.part, issue.message) == (
        "spam-phrase",
        "subject",
        "spam-trigger phrases: 'special offer'; rephrase them",
    )


# --- formula prefix -------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t"])
def test_a_body_starting_like_a_formula_warns(start: str) -> None:
    (issue,) = lint_sequence(sequence(body=f"{start} a point\nDana"), FIELDS)
    assert issue.code == "formula-prefix"


def test_lint_warns_about_exactly_the_characters_the_export_neutralises() -> None:
    assert FORMULA_PREFIXES is FORMULA_TRIGGERS  # one list: what lint warns of is what export fixes


# --- what is linted, and strict -------------------------------------------------------------


def test_the_follow_up_subject_is_not_linted_because_it_is_exported_blank() -> None:
    loud = "ACT NOW " + "x" * 100 + " {{nope}}"
    assert lint_sequence(sequence(follow_up_subject=loud), FIELDS) == []


def test_strict_makes_warnings_errors() -> None:
    issues = lint_sequence(sequence(subject="URGENT question"), FIELDS, strict=True)
    assert [(i.code, i.severity) for i in issues] == [
        ("capitals", Severity.ERROR),
        ("spam-phrase", Severity.ERROR),
    ]


def test_warnings_alone_are_not_errors() -> None:
    assert has_errors(lint_sequence(sequence(subject="URGENT question"), FIELDS)) is False


def test_an_issue_reads_as_one_line() -> None:
    (issue,) = lint_sequence(sequence(body="Hi {{title}}"), FIELDS)
    assert str(issue).startswith("error: opener body: {{title}} is not a column")
    assert str(issue).endswith("[unknown-field]")
