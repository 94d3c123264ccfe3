"""Checks that a sequence will send well, before it goes to a whole lead list.

``lint_sequence(sequence, fields)`` returns :class:`LintIssue` items, each with a stable
``code`` (for tests, the CLI and the web page), the step and part it is about, a message
that says what to change, and a severity.

Rules (thresholds are module constants, documented in docs/how-to/export.md):

=====================  =======  =============================================================
code                   default  when
=====================  =======  =============================================================
``bad-placeholder``    error    a malformed ``{{…}}`` or a stray ``{``/``}``
``unknown-field``      error    a placeholder names a field the lead list does not have
``subject-too-long``   warning  the opener's subject is over :data:`MAX_SUBJECT_CHARS` (60)
``body-too-long``      warning  a body is over :data:`MAX_BODY_WORDS` (150) words
``too-many-links``     warning  an email has more than :data:`MAX_LINKS` (1) link
``capitals``           warning  a word of 4+ letters all in capitals, not a known acronym
``spam-phrase``        warning  a phrase from :data:`SPAM_PHRASES`
``formula-prefix``     warning  a subject or body would begin a spreadsheet cell with ``= + - @``
                                (at its start, a line's, or after ``, ;`` or a tab): the export
                                puts ``'`` there (see :mod:`.formulas`), which may be sent
=====================  =======  =============================================================

Placeholder problems are always errors: such a text cannot be rendered for any lead. The
others are warnings; ``strict=True`` makes them errors. Whether a field is *empty* for some
lead is not known here — :mod:`bridgic_coldmail.export` reports those rows.

**Placeholders are considered first.** Before the style rules run, each placeholder is
replaced by its fallback when it has a non-empty one (the fallback is real text that will be
sent), otherwise by a neutral stand-in of :data:`PLACEHOLDER_STAND_IN_CHARS` lower-case
letters — one word, no capitals, no link. So ``{{COMPANY}}``-like shouting cannot come from a
field name, ``{{website}}`` is not counted as a link, and a subject's length is an estimate
with a typical value in each placeholder.

**The follow-up's subject is not linted**: an export leaves it blank so the follow-up goes
out as a reply in the opener's thread (``step2_subject``).

**Words in capitals**: a word is a run of letters and digits; it is "in capitals" when it
has at least :data:`MIN_CAPS_LETTERS` (4) letters and all of them are upper case, unless it
is in ``acronyms`` (default :data:`DEFAULT_ACRONYMS`; pass the product's own name if it is
written in capitals). Three-letter acronyms (CEO, CRM, B2B, SOC2) are never flagged.

**Links**: ``http://`` / ``https://`` URLs, ``www.`` addresses and bare domains ending in a
common top-level domain (``acme.com``, ``acme.io``); an email address is not a link.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from ..merge import find_placeholders, syntax_errors, unknown_fields
from ..models import EmailSequence, preview_list
from .formulas import FORMULA_PREFIXES as FORMULA_PREFIXES  # where release 0.5 had it
from .formulas import formula_starts

MAX_SUBJECT_CHARS = 60
"""Longer subjects are cut off in inbox lists, on phones first."""
MAX_BODY_WORDS = 150
"""The sequence schema asks the LLM for under 150 words; longer cold emails get fewer replies."""
MAX_LINKS = 1
"""More than one link in a cold email is a strong spam signal."""
MIN_CAPS_LETTERS = 4
PLACEHOLDER_STAND_IN_CHARS = 8
"""Length of the stand-in for a placeholder without fallback (a typical name or company)."""

DEFAULT_ACRONYMS = frozenset(
    {
        "ASCII",
        "CCPA",
        "COVID",
        "GDPR",
        "HIPAA",
        "HTML",
        "HTTP",
        "HTTPS",
        "JSON",
        "NASA",
        "NATO",
        "SMTP",
        "USMCA",
    }
)
"""Upper-case words of four letters or more that are names, not shouting."""

SPAM_PHRASES: tuple[str, ...] = (
    "act now",
    "limited time",
    "urgent",
    "don't miss out",
    "expires today",
    "100% free",
    "risk-free",
    "risk free",
    "no cost",
    "no obligation",
    "guaranteed",
    "best price",
    "special offer",
    "earn money",
    "cash bonus",
    "double your",
    "once in a lifetime",
    "click here",
    "click below",
    "buy now",
    "order today",
    "as seen on",
    "dear friend",
    "winner",
)
"""Phrases deliverability guides list as spam triggers (sources in docs/how-to/export.md). Matched
case-insensitively as whole words; curly apostrophes count as straight ones."""

_TLDS = "com|org|net|io|co|ai|app|dev|biz|info|me|us|uk|de|fr|eu|ca|au|xyz|ly|gl|gg|to|so"
_LINK = re.compile(
    r"(?<![@\w.-])(?:https?://\S+|www\.[^\s]+|(?:[a-z0-9-]+\.)+(?:" + _TLDS + r")\b(?:/\S*)?)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_SPAM = re.compile(
    r"(?<!\w)(?:" + "|".join(re.escape(p) for p in SPAM_PHRASES) + r")(?!\w)", re.IGNORECASE
)


class Severity(str, Enum):
    """How much an issue matters: errors stop an export; warnings do unless strict is off."""

    WARNING = "warning"
    ERROR = "error"


StepName = Literal["opener", "follow_up"]
Part = Literal["subject", "body"]


@dataclass(frozen=True)
class LintIssue:
    """One finding about one part of one email."""

    code: str
    step: StepName
    part: Part
    message: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.step} {self.part}: {self.message} [{self.code}]"


def lint_sequence(
    sequence: EmailSequence,
    fields: Iterable[str],
    *,
    strict: bool = False,
    acronyms: Iterable[str] = DEFAULT_ACRONYMS,
) -> list[LintIssue]:
    """Every issue of ``sequence`` against a lead list with these merge ``fields``.

    Args:
        sequence: the sequence to check (usually a run's ``final``).
        fields: the merge-field names available (``LeadHeader.fields``; empty for none).
        strict: report the style rules as errors instead of warnings.
        acronyms: upper-case words that are not shouting (compared in upper case).

    Returns:
        The issues in order: opener before follow-up, subject before body.
    """
    allowed = list(fields)
    known = frozenset(a.upper() for a in acronyms)
    style = Severity.ERROR if strict else Severity.WARNING
    parts: list[tuple[StepName, Part, str]] = [
        ("opener", "subject", sequence.opener.subject),
        ("opener", "body", sequence.opener.body),
        ("follow_up", "body", sequence.follow_up.body),
    ]
    issues: list[LintIssue] = []
    for step, part, text in parts:

        def add(code: str, message: str, severity: Severity = style) -> None:
            issues.append(LintIssue(code, step, part, message, severity))  # noqa: B023

        for problem in syntax_errors(text):
            add("bad-placeholder", problem, Severity.ERROR)
        for name in unknown_fields([text], allowed):
            listed = preview_list(allowed, quoted=False) if allowed else "none (no lead list)"
            add(
                "unknown-field",
                f"{{{{{name}}}}} is not a column of the lead list (fields: {listed}); "
                "use one of those or remove it",
                Severity.ERROR,
            )
        visible = considered_text(text)
        if part == "subject" and len(visible) > MAX_SUBJECT_CHARS:
            add(
                "subject-too-long",
                f"{len(visible)} characters (with placeholders filled); keep it to "
                f"{MAX_SUBJECT_CHARS} or fewer so it shows in full",
            )
        if part == "body":
            words = count_words(visible)
            if words > MAX_BODY_WORDS:
                add(
                    "body-too-long",
                    f"{words} words; cut it to {MAX_BODY_WORDS} or fewer",
                )
        links = find_links(visible)
        if len(links) > MAX_LINKS:
            add(
                "too-many-links",
                f"{len(links)} links ({', '.join(links)}); keep at most {MAX_LINKS}",
            )
        shouting = capital_words(visible, known)
        if shouting:
            add(
                "capitals",
                f"words in capitals read as shouting: {', '.join(shouting)}; write them in "
                "normal case (or pass them as acronyms)",
            )
        phrases = spam_phrases(visible)
        if phrases:
            add(
                "spam-phrase",
                f"spam-trigger phrases: {', '.join(repr(p) for p in phrases)}; rephrase them",
            )
        starts = formula_starts(visible)
        if starts:
            add("formula-prefix", _formula_message(visible, starts))
    return issues


def _formula_message(text: str, starts: list[int]) -> str:
    shown = ", ".join(repr(text[start : start + 12]) for start in starts[:3])
    more = f" and {len(starts) - 3} more" if len(starts) > 3 else ""
    return (
        f"{shown}{more} would begin a spreadsheet cell as a formula (at the start, a line's "
        "start, or after a comma, semicolon or tab, as Excel splits a CSV in many countries): "
        "the CSV export puts ' before it, and the sending tool may send that quote; reword it"
    )


def considered_text(text: str) -> str:
    """``text`` with each placeholder replaced by its fallback, or a neutral stand-in."""
    parts: list[str] = []
    last = 0
    for placeholder in find_placeholders(text):
        parts.append(text[last : placeholder.start])
        parts.append(placeholder.fallback or "x" * PLACEHOLDER_STAND_IN_CHARS)
        last = placeholder.end
    parts.append(text[last:])
    return "".join(parts)


def count_words(text: str) -> int:
    """Whitespace-separated tokens that contain a letter or a digit."""
    return sum(1 for token in text.split() if any(c.isalnum() for c in token))


def find_links(text: str) -> list[str]:
    """The links in ``text`` (see the module docstring), trailing punctuation removed."""
    return [m.group(0).rstrip(".,;:!?)]'\"") for m in _LINK.finditer(text)]


def capital_words(text: str, acronyms: Iterable[str] = DEFAULT_ACRONYMS) -> list[str]:
    """Words in capitals (4+ letters, all upper case) that are not known acronyms, each once."""
    known = frozenset(a.upper() for a in acronyms)
    found: dict[str, None] = {}
    for word in _WORD.findall(text):
        letters = [c for c in word if c.isalpha()]
        if len(letters) >= MIN_CAPS_LETTERS and all(c.isupper() for c in letters):
            if word.upper() not in known:
                found[word] = None
    return list(found)


def spam_phrases(text: str) -> list[str]:
    """The spam-trigger phrases in ``text``, lower case, each once, in order of appearance."""
    normalised = text.replace("\u2019", "'").replace("\u2018", "'")
    return list(dict.fromkeys(m.group(0).lower() for m in _SPAM.finditer(normalised)))


def has_errors(issues: Iterable[LintIssue]) -> bool:
    """Whether any issue is an error (an export would refuse)."""
    return any(issue.severity is Severity.ERROR for issue in issues)
