"""The deliverability rules added for issue 22: each fires on what it names, stays quiet on
look-alikes, has an id, a severity, a one-line reason and a source; rules can be turned off;
the per-lead checks find what only a rendered lead shows."""

from __future__ import annotations

import pytest

from bridgic_coldmail import InvalidInput
from bridgic_coldmail.compliance import Footer
from bridgic_coldmail.export.lint import (
    COMPLIANCE_RULES,
    INSTANTLY_BLOCKLIST,
    JUDGMENT_WORDS,
    MAX_SUBJECT_CHARS,
    RULES,
    LeadChecks,
    LeadFindings,
    LintIssue,
    Severity,
    blocking,
    check_rule_ids,
    find_images,
    find_links,
    has_greeting_gap,
    html_markup,
    lint_sequence,
    normalise_for_phrases,
    spam_phrases,
    spam_words,
    url_shorteners,
)
from bridgic_coldmail.models import EmailSequence, EmailStep

FIELDS = ["email", "first_name", "company"]


def sequence(
    subject: str = "A question about {{company|your clinic}}",
    body: str = "Hi {{first_name|there}},\n\nWould a short call help?\n\nDana",
    follow_up: str = "Hi {{first_name|there}}, a second thought.\n\nDana",
) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(subject=subject, body=body, wait_days=0),
        follow_up=EmailStep(subject="Re", body=follow_up, wait_days=3),
    )


def codes(issues: list[LintIssue]) -> list[tuple[str, str, str]]:
    return [(i.code, i.step, i.part) for i in issues]


def test_the_baseline_sequence_is_clean() -> None:
    assert lint_sequence(sequence(), FIELDS) == []


# --- links ----------------------------------------------------------------------------------


def test_a_link_in_the_first_email_warns_but_not_in_the_follow_up() -> None:
    opener = lint_sequence(sequence(body="Hi,\n\nSee acme.com/demo.\n\nDana"), FIELDS)
    follow_up = lint_sequence(sequence(follow_up="Hi, see acme.com/demo.\n\nDana"), FIELDS)
    assert (codes(opener), follow_up) == ([("link-in-first-email", "opener", "body")], [])
    assert "acme.com/demo" in opener[0].message


def test_an_email_address_is_not_a_link_in_the_first_email() -> None:
    assert lint_sequence(sequence(body="Write to dana@acme.com.\n\nDana"), FIELDS) == []


@pytest.mark.parametrize(
    "link", ["bit.ly/3xYz", "https://tinyurl.com/abc", "is.gd/q", "t.co/xyz", "lnkd.in/d3"]
)
def test_url_shorteners_are_found_and_counted_as_links(link: str) -> None:
    text = f"Slides: {link}."
    assert url_shorteners(text) == [link] and find_links(text) == [link]
    found = codes(lint_sequence(sequence(follow_up=text), FIELDS))
    assert found == [("url-shortener", "follow_up", "body")]


def test_a_domain_that_merely_ends_like_a_shortener_is_not_one() -> None:
    assert url_shorteners("See notbit.ly.example and https://acme.com/bit.ly") == []


def test_links_with_the_footers_count_in_every_email() -> None:
    footer = Footer(postal_address="1 Main St", opt_out="Opt out at https://acme.com/out")
    issues = lint_sequence(
        sequence(follow_up="See https://acme.com/demo.\n\nDana"), FIELDS, footer=footer
    )
    assert ("too-many-links", "follow_up", "body") in codes(issues)
    assert ("link-in-first-email", "sequence", "footer") in codes(issues)


# --- images, pixels, HTML -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '<img src="https://t.acme.com/p.gif" width="1" height="1">',
        "![logo](https://acme.com/logo.png)",
        "Our chart: https://acme.com/chart.PNG?v=2",
    ],
)
def test_images_and_tracking_pixels_warn(text: str) -> None:
    assert find_images(text)
    found = [c for c, _, _ in codes(lint_sequence(sequence(follow_up=text), FIELDS))]
    assert "image-or-pixel" in found


def test_a_word_like_png_is_not_an_image() -> None:
    assert find_images("We export PNG files and images.") == []


@pytest.mark.parametrize("markup", ["<br>", "<br/>", "<p>", "</div>", "&nbsp;", "<a href='x'>"])
def test_html_in_a_plain_text_email_warns(markup: str) -> None:
    issues = lint_sequence(sequence(follow_up=f"Hi there,{markup}Dana"), FIELDS)
    assert [i.code for i in issues if i.code == "html"] == ["html"]


def test_angle_brackets_that_are_not_html_stay_quiet() -> None:
    assert html_markup("Reply to <dana@acme.com>; 3 < 5 and 7 > 2; <3") == []


# --- capitals and exclamation marks ---------------------------------------------------------


def test_a_subject_in_capitals_warns_even_with_short_words() -> None:
    found = codes(lint_sequence(sequence(subject="BIG NEWS FOR YOU"), FIELDS))
    assert ("caps-subject", "opener", "subject") in found
    assert lint_sequence(sequence(subject="CRM for CFOs"), FIELDS) == []


def test_more_than_one_exclamation_mark_in_an_email_warns_once() -> None:
    one = lint_sequence(sequence(subject="Hello!", body="Hi there,\n\nA question.\n\nDana"), FIELDS)
    two = lint_sequence(sequence(subject="Hello!", body="Hi there!\n\nA question.\n\nDana"), FIELDS)
    assert (one, codes(two)) == ([], [("exclamations", "opener", "body")])
    assert "2 exclamation marks" in two[0].message


# --- spam phrases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("F-R-E-E trial inside", "free trial"),
        ("a fr33 m0ney offer", "free money"),
        ("Act-now before Friday", "act now"),
        ("You are a WINNER", "you are a winner"),
        ("Two winners this week", "winner"),
        ("This is satisfaction-guaranteed", "satisfaction guaranteed"),
        ("We are #1 in Ohio", "#1"),
    ],
)
def test_styling_does_not_launder_a_spam_phrase(text: str, found: str) -> None:
    assert found in spam_phrases(text)


@pytest.mark.parametrize(
    "text",
    [
        "We already handle it",  # "ad" inside a word
        "Your cashflow in one view",  # "cash" inside a word
        "Dealing with no-shows",
        "Instantly useful",
        "Version 1.0 is out; b2b and q4 plans",
    ],
)
def test_words_inside_other_words_are_not_spam(text: str) -> None:
    assert (spam_phrases(text), spam_words(text)) == ([], [])


def test_every_phrase_of_instantlys_list_is_found_as_listed() -> None:
    for phrase in INSTANTLY_BLOCKLIST:
        assert phrase in spam_phrases(f"Note: {phrase} here"), phrase
        assert normalise_for_phrases(phrase)


def test_common_words_are_information_and_never_refuse() -> None:
    issues = lint_sequence(sequence(follow_up="Our offer: a trial.\n\nDana"), FIELDS, strict=True)
    assert [(i.code, i.severity) for i in issues] == [("spam-word", Severity.INFO)]
    assert blocking(issues, strict=True) == []
    assert set(spam_words("offer, trial, quote")) <= set(JUDGMENT_WORDS)


def test_a_common_word_inside_a_spam_phrase_is_reported_once() -> None:
    text = "A cash bonus for you"
    assert (spam_phrases(text), spam_words(text)) == (["cash bonus"], [])


# --- rules: ids, sources, turning off -------------------------------------------------------


def test_every_rule_has_a_severity_a_description_and_a_source_or_none_by_design() -> None:
    without_source = {code for code, rule in RULES.items() if rule.source is None}
    assert without_source == {"bad-placeholder", "unknown-field", "variant-delays-differ"}
    for rule in RULES.values():
        assert rule.checks and rule.severity in Severity
        assert rule.source is None or rule.source.startswith("https://")


def test_a_rule_can_be_turned_off() -> None:
    loud = sequence(subject="BIG NEWS", body="Hi there!!\n\nSee bit.ly/x\n\nDana")
    every = {i.code for i in lint_sequence(loud, FIELDS)}
    assert every == {"caps-subject", "capitals", "exclamations", "link-in-first-email",
                     "url-shortener"}  # fmt: skip
    left = {i.code for i in lint_sequence(loud, FIELDS, disabled=["url-shortener", "capitals"])}
    assert left == every - {"url-shortener", "capitals"}


def test_an_unknown_rule_or_a_placeholder_rule_cannot_be_turned_off() -> None:
    with pytest.raises(InvalidInput, match=r"unknown check rule\(s\) 'no-such-rule'; the rules"):
        check_rule_ids(["no-such-rule"])
    with pytest.raises(InvalidInput, match="unknown-field cannot be turned off"):
        check_rule_ids(["unknown-field"])
    assert check_rule_ids(" can-spam-address , CAN-SPAM-OPT-OUT ") == frozenset(COMPLIANCE_RULES)


def test_each_issue_reads_as_one_line_with_its_rule_id() -> None:
    issues = lint_sequence(
        sequence(subject="BIG NEWS", body="Hi!!\n<br>\nSee bit.ly/x"), FIELDS, footer=Footer()
    )
    for issue in issues:
        line = str(issue)
        assert "\n" not in line and line.endswith(f"[{issue.code}]")
        assert line.startswith(f"{issue.severity.value}: ")


# --- per lead -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "gap"),
    [
        ("Hi ,\n\nText", True),
        ("Hello  Ana,\n\nText", True),
        ("Dear !\nText", True),
        ("Hi \nText", True),
        ("\n\nHi Ana,\nText", False),
        ("Hi,\n\nText", False),
        ("Hi Ana, 3 , 4 later\nText", True),
        ("Hi there,\nA line with a gap , later", False),  # only the greeting line counts
    ],
)
def test_a_greeting_gap_is_found_on_the_first_line(body: str, gap: bool) -> None:
    assert has_greeting_gap(body) is gap


def test_lead_checks_report_what_a_lead_made_of_the_template() -> None:
    checks = LeadChecks(sequence(body="Hi {{first_name|}},\n\nText", subject="About {{company}}"))
    assert list(checks.check("About Acme", ("Hi Ana,\n\nText", "Hi Ana, later."))) == []
    long_subject = "About " + "x" * MAX_SUBJECT_CHARS
    assert list(checks.check(long_subject, ("Hi ,\n\nText", "Hi , later."))) == [
        ("lead-subject-too-long", "opener", "subject"),
        ("empty-greeting", "opener", "body"),
        ("empty-greeting", "follow_up", "body"),
    ]


def test_a_template_that_is_already_too_long_is_not_reported_per_lead_again() -> None:
    long_subject = "s" * (MAX_SUBJECT_CHARS + 1)
    checks = LeadChecks(sequence(subject=long_subject))
    assert list(checks.check(long_subject, ("Hi Ana,", "Hi Ana,"))) == []
    quiet = LeadChecks(sequence(), disabled=["empty-greeting", "lead-subject-too-long"])
    assert list(quiet.check("x" * 99, ("Hi ,", "Hi ,"))) == []


def test_lead_findings_count_every_lead_but_keep_ten_rows() -> None:
    findings = LeadFindings()
    for row in range(2, 1002):
        findings.add("empty-greeting", "opener", "body", row)
    (finding,) = findings.findings()
    assert (finding.count, finding.rows, finding.severity) == (
        1000,
        tuple(range(2, 12)),
        Severity.WARNING,
    )
    assert str(finding).endswith("1000 lead(s), rows 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, … "
                                 "[empty-greeting]")  # fmt: skip
    assert LeadFindings(strict=True).findings() == ()
