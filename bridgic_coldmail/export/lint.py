"""Checks that a sequence will send well, and lawfully, before it goes to a whole lead list.

``lint_sequence(sequence, fields)`` returns :class:`LintIssue` items, each with a stable rule
id (``code``, for tests, the CLI and the web page), the step and part it is about, a one-line
message that says what to change, and a severity. Every rule is in :data:`RULES`, with the
page its threshold or word list comes from; docs/how-to/export.md has the same table.

=========================  =======  =========================================================
code                       default  when
=========================  =======  =========================================================
``bad-placeholder``        error    a malformed ``{{…}}`` or a stray ``{``/``}``
``unknown-field``          error    a placeholder names a field the lead list does not have
``subject-too-long``       warning  the opener's subject is over :data:`MAX_SUBJECT_CHARS` (60)
``body-too-long``          warning  a body is over :data:`MAX_BODY_WORDS` (150) words
``link-in-first-email``    warning  the opener (or the footer appended to it) has a link
``too-many-links``         warning  an email has more than :data:`MAX_LINKS` (1) link
``url-shortener``          warning  a link through a shortener (bit.ly, tinyurl.com, …)
``image-or-pixel``         warning  an ``<img>``, a Markdown image, or a link to an image file
``html``                   warning  HTML tags or entities (``<br>``, ``<p>``, ``&nbsp;``): the
                                    exports are plain text, and the tools are told to send it so
``capitals``               warning  a word of 4+ letters all in capitals, not a known acronym
``caps-subject``           warning  a subject whose letters are all capitals
``exclamations``           warning  more than :data:`MAX_EXCLAMATIONS` (1) ``!`` in one email
``spam-phrase``            warning  a phrase from :data:`SPAM_PHRASES`
``spam-word``              info     a common word Instantly's list flags "with judgment"
``formula-prefix``         warning  a subject or body would begin a spreadsheet cell with
                                    ``= + - @`` (at its start, a line's, or after ``, ;`` or a
                                    tab): the export puts ``'`` there (see :mod:`.formulas`),
                                    which may be sent
``can-spam-address``       warning  no postal address is appended to the emails (CAN-SPAM)
``can-spam-opt-out``       warning  no opt-out sentence is appended to the emails (CAN-SPAM)
=========================  =======  =========================================================

And, found by the export per lead (:class:`LeadChecks`, reported as :class:`LeadFinding`):
``lead-subject-too-long`` (a subject that grew past 60 characters with the lead's cells),
``empty-greeting`` (a greeting left empty, "Hi ,"); per export: ``variant-delays-differ`` and
``row-limit`` (a file longer than the sending tool takes).

Placeholder problems are always errors: such a text cannot be rendered for any lead. The
others are warnings (``spam-word`` is information); ``strict=True`` makes warnings errors.
Any rule but the two placeholder rules can be turned off (``disabled``; the setting
``COLDMAIL_DISABLED_RULES``), e.g. the CAN-SPAM rules for a list with no US recipients.

**Placeholders are considered first.** Before the style rules run, each placeholder is
replaced by its fallback when it has a non-empty one (the fallback is real text that will be
sent), otherwise by a neutral stand-in of :data:`PLACEHOLDER_STAND_IN_CHARS` lower-case
letters — one word, no capitals, no link. So ``{{COMPANY}}``-like shouting cannot come from a
field name, ``{{website}}`` is not counted as a link, and a subject's length is an estimate
with a typical value in each placeholder.

**The follow-up's subject is not linted**: an export leaves it blank so the follow-up goes
out as a reply in the opener's thread (``step2_subject``).

**The footer** (:class:`~bridgic_coldmail.compliance.Footer`, appended to every email) is
checked with the content rules as a part of its own, and its links count in every email; it
does not count towards a body's length.

**Words in capitals**: a word is a run of letters and digits; it is "in capitals" when it
has at least :data:`MIN_CAPS_LETTERS` (4) letters and all of them are upper case, unless it
is in ``acronyms`` (default :data:`DEFAULT_ACRONYMS`; pass the product's own name if it is
written in capitals). Three-letter acronyms (CEO, CRM, B2B, SOC2) are never flagged.

**Links**: ``http://`` / ``https://`` URLs, ``www.`` addresses, bare domains ending in a
common top-level domain (``acme.com``, ``acme.io``) and the shorteners' own domains
(``bit.ly/x``, ``is.gd/x``); an email address is not a link.

**Spam phrases** are matched as whole words in any case, and (Instantly's "close-variant
rule") styling does not launder them: ``F-R-E-E``, ``act-now``, ``gu@rantee`` and ``fr33``
count — letters split by single ``-``, ``.``, ``_``, ``*`` or spaces are joined, ``-``, ``_``,
``.`` and ``/`` between words are spaces, and in a word with two letters or more ``@ 4``
read as ``a``, ``0`` as ``o``, ``3`` as ``e``, ``$ 5`` as ``s``, ``7`` as ``t`` and ``1`` as
``i`` (``!`` and ``|`` only between letters). A trailing ``s`` (a plural) still matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol

from ..compliance import CAN_SPAM_SOURCE, EXAMPLE_OPT_OUT, Footer
from ..errors import InvalidInput
from ..merge import find_placeholders, syntax_errors, unknown_fields
from ..models import EmailSequence, EmailStep
from ..text import preview_list
from .formulas import FORMULA_PREFIXES as FORMULA_PREFIXES  # where release 0.5 had it
from .formulas import formula_starts

MAX_SUBJECT_CHARS = 60
"""Longer subjects are cut off in inbox lists, on phones first (Instantly's writer checks
"≤ ~60 chars")."""
MAX_BODY_WORDS = 150
"""The sequence schema asks the LLM for under 150 words; longer cold emails get fewer replies."""
MAX_LINKS = 1
"""More than one link in a cold email is a strong spam signal."""
MAX_EXCLAMATIONS = 1
"""More than one ``!`` in an email reads as hype (Instantly: ``!!!``, trailing ``!!``)."""
MIN_CAPS_LETTERS = 4
MIN_CAPS_SUBJECT_LETTERS = 4
"""A subject with at least this many letters, all capitals, is shouting."""
PLACEHOLDER_STAND_IN_CHARS = 8
"""Length of the stand-in for a placeholder without fallback (a typical name or company)."""
MAX_EXAMPLE_ROWS = 10
"""How many row numbers a :class:`LeadFinding` keeps (it counts them all)."""

INSTANTLY_COPY_RULES = (
    "https://github.com/Instantly-ai/instantly-skills/blob/main/skills/instantly-gtm/"
    "references/spam-safe-copy.md"
)
"""Instantly's own copy rules: its spam-word blocklist and formatting red flags."""
INSTANTLY_WRITER = (
    "https://github.com/Instantly-ai/instantly-skills/blob/main/skills/instantly-gtm/"
    "modules/sequence-writer/SKILL.md"
)
"""Instantly's sequence writer: "Email 1 subject ≤ ~60 chars", "unresolved … renders literally"."""
SHORTENER_SOURCE = "https://help.warmbox.ai/en/articles/5239589"
OWASP_CSV = "https://owasp.org/www-community/attacks/CSV_Injection"
GUIDES_SOURCE = "https://beeving.com/learn/deliverability/spam-triggers"
APOLLO_IMPORT = (
    "https://knowledge.apollo.io/hc/en-us/articles/4409161532045-Import-a-CSV-of-Contacts"
)

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

GUIDE_PHRASES: tuple[str, ...] = (
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
"""The phrases release 0.5 checked, from deliverability guides (sources in
docs/how-to/export.md)."""

INSTANTLY_BLOCKLIST: tuple[str, ...] = (
    # Exaggerated claims/promises
    "#1", "100% more", "100% free", "100% satisfied", "additional income", "be your own boss",
    "best price", "big bucks", "billion", "cash bonus", "cents on the dollar",
    "consolidate debt", "double your cash", "double your income", "earn extra cash",
    "earn money", "eliminate bad credit", "extra cash", "extra income", "expect to earn",
    "fast cash", "financial freedom", "free access", "free consultation", "free gift",
    "free hosting", "free info", "free investment", "free membership", "free money",
    "free preview", "free quote", "free trial", "full refund", "get out of debt", "get paid",
    "giveaway", "guaranteed", "increase sales", "increase traffic", "incredible deal",
    "lower rates", "lowest price", "make money", "million dollars", "miracle", "money back",
    "once in a lifetime", "one time", "pennies a day", "potential earnings", "prize",
    "promise", "pure profit", "risk-free", "satisfaction guaranteed", "save big money",
    "save up to", "special promotion",
    # Urgency/pressure
    "act now", "apply now", "become a member", "call now", "click below", "click here",
    "get it now", "do it today", "don't delete", "exclusive deal", "get started now",
    "important information regarding", "information you requested", "instant",
    "limited time", "new customers only", "order now", "please read", "see for yourself",
    "sign up free", "take action", "this won't last", "urgent", "what are you waiting for?",
    "while supplies last", "will not believe your eyes", "winner", "winning",
    "you are a winner", "you have been selected",
    # Shady/spammy/unethical
    "bulk email", "buy direct", "cancel at any time", "check or money order",
    "congratulations", "confidentiality", "cures", "dear friend", "direct email",
    "direct marketing", "hidden charges", "human growth hormone", "internet marketing",
    "lose weight", "mass email", "meet singles", "multi-level marketing", "no catch",
    "no cost", "no credit check", "no fees", "no gimmick", "no hidden costs",
    "no hidden fees", "no interest", "no investment", "no obligation",
    "no purchase necessary", "no questions asked", "no strings attached", "not junk",
    "notspam", "obligation", "passwords", "requires initial investment",
    "social security number", "this isn't a scam", "this isn't junk", "this isn't spam",
    "undisclosed", "unsecured credit", "unsecured debt", "unsolicited", "valium", "viagra",
    "vicodin", "we hate spam", "weight loss", "xanax",
    # Jargon/legalese/other (the words it says need judgment are in JUDGMENT_WORDS)
    "accept credit cards", "all new", "as seen on", "bargain", "beneficiary", "billing",
    "bonus", "cards accepted", "certified", "cheap", "claims", "clearance", "compare rates",
    "credit card offers", "debt", "discount", "fantastic", "in accordance with laws",
    "join millions", "lifetime", "loans", "luxury", "marketing solution", "message contains",
    "mortgage rates", "name brand", "online marketing", "opt in", "pre-approved",
    "refinance", "removal", "reserves the right", "search engine", "sent in compliance",
    "subject to", "terms and conditions", "unlimited", "warranty", "web traffic",
    "work from home",
)  # fmt: skip
"""Instantly's "hard blocklist" (:data:`INSTANTLY_COPY_RULES` §0), in its four categories,
without the common words it says to flag "with judgment" (:data:`JUDGMENT_WORDS`)."""

JUDGMENT_WORDS: tuple[str, ...] = (
    "ad", "cash", "deal", "offer", "trial", "quote", "income", "investment", "rates", "score",
)  # fmt: skip
"""Words on Instantly's list that "are common in normal writing": flag and rewrite with
judgment. They are information (``spam-word``), never a refusal."""

SPAM_PHRASES: tuple[str, ...] = tuple(dict.fromkeys((*GUIDE_PHRASES, *INSTANTLY_BLOCKLIST)))
"""Every spam-trigger phrase the ``spam-phrase`` rule looks for: the guides' and Instantly's."""

URL_SHORTENERS: tuple[str, ...] = (
    "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "v.gd",
    "buff.ly", "rebrand.ly", "cutt.ly", "shorturl.at", "rb.gy", "tiny.cc", "lnkd.in", "t.ly",
    "s.id", "bl.ink", "short.io", "dub.sh", "shorte.st", "adf.ly", "qr.ae", "trib.al",
)  # fmt: skip
"""Shortener domains: a shared, often abused reputation, and a hidden destination."""

_TLDS = "com|org|net|io|co|ai|app|dev|biz|info|me|us|uk|de|fr|eu|ca|au|xyz|ly|gl|gg|to|so"
_LINK = re.compile(
    r"(?<![@\w.-])(?:https?://\S+|www\.[^\s]+|(?:[a-z0-9-]+\.)+(?:" + _TLDS + r")\b(?:/\S*)?)",
    re.IGNORECASE,
)
_SHORTENER = re.compile(
    r"(?<![@\w./-])(?:https?://)?(?:www\.)?(?:"
    + "|".join(re.escape(d) for d in URL_SHORTENERS)
    + r")(?![\w-])(?:/\S*)?",
    re.IGNORECASE,
)
_IMAGE_LINK = re.compile(r"\.(?:png|jpe?g|gif|webp|svg|bmp|ico|tiff?)(?:[?#]\S*)?$", re.I)
_IMAGE_MARKUP = re.compile(r"<\s*img\b|!\[[^\]\n]*\]\([^)\n]*\)", re.IGNORECASE)
_HTML_TAG = re.compile(
    r"</?\s*(?:a|b|br|p|div|span|img|i|u|s|strong|em|font|center|table|tbody|thead|tr|td|th|"
    r"ul|ol|li|h[1-6]|hr|html|head|body|style|script|blockquote|pre|code|sup|sub|small|big)"
    r"\b[^<>]*>",
    re.IGNORECASE,
)
_HTML_ENTITY = re.compile(r"&(?:nbsp|amp|lt|gt|quot|apos|copy|reg|#\d{1,6}|#x[0-9a-f]{1,6});", re.I)
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


class Severity(str, Enum):
    """How much an issue matters: errors stop an export; warnings do with strict; information
    never does."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


StepName = Literal["opener", "follow_up", "sequence"]
"""``sequence`` is about every email: its footer, or the file as a whole."""
Part = Literal["subject", "body", "footer", "file"]


@dataclass(frozen=True)
class LintRule:
    """One check: its id, default severity, what it looks for, and where that comes from."""

    code: str
    severity: Severity
    checks: str
    source: str | None
    can_disable: bool = True


RULES: dict[str, LintRule] = {
    rule.code: rule
    for rule in (
        LintRule("bad-placeholder", Severity.ERROR, "a malformed {{…}} or a stray brace", None,
                 can_disable=False),
        LintRule("unknown-field", Severity.ERROR, "a field the lead list does not have", None,
                 can_disable=False),
        LintRule("subject-too-long", Severity.WARNING,
                 f"the opener's subject is over {MAX_SUBJECT_CHARS} characters", INSTANTLY_WRITER),
        LintRule("body-too-long", Severity.WARNING,
                 f"a body is over {MAX_BODY_WORDS} words", INSTANTLY_WRITER),
        LintRule("link-in-first-email", Severity.WARNING, "a link in the first email",
                 INSTANTLY_COPY_RULES),
        LintRule("too-many-links", Severity.WARNING,
                 f"more than {MAX_LINKS} link in an email", GUIDES_SOURCE),
        LintRule("url-shortener", Severity.WARNING, "a link through a URL shortener",
                 SHORTENER_SOURCE),
        LintRule("image-or-pixel", Severity.WARNING, "an image or a tracking pixel",
                 INSTANTLY_COPY_RULES),
        LintRule("html", Severity.WARNING, "HTML tags or entities in a plain-text email",
                 INSTANTLY_COPY_RULES),
        LintRule("capitals", Severity.WARNING, "a word in capitals", INSTANTLY_COPY_RULES),
        LintRule("caps-subject", Severity.WARNING, "a subject in capitals", INSTANTLY_COPY_RULES),
        LintRule("exclamations", Severity.WARNING,
                 f"more than {MAX_EXCLAMATIONS} exclamation mark in an email",
                 INSTANTLY_COPY_RULES),
        LintRule("spam-phrase", Severity.WARNING, "a spam-trigger phrase", INSTANTLY_COPY_RULES),
        LintRule("spam-word", Severity.INFO, "a common word that spam lists flag",
                 INSTANTLY_COPY_RULES),
        LintRule("formula-prefix", Severity.WARNING,
                 "text the CSV export must prefix with ' against spreadsheet formulas", OWASP_CSV),
        LintRule("can-spam-address", Severity.WARNING,
                 "no postal address appended to the emails", CAN_SPAM_SOURCE),
        LintRule("can-spam-opt-out", Severity.WARNING,
                 "no opt-out sentence appended to the emails", CAN_SPAM_SOURCE),
        LintRule("lead-subject-too-long", Severity.WARNING,
                 f"a lead's subject over {MAX_SUBJECT_CHARS} characters once filled in",
                 INSTANTLY_WRITER),
        LintRule("empty-greeting", Severity.WARNING, "a lead's greeting left empty ('Hi ,')",
                 INSTANTLY_WRITER),
        LintRule("variant-delays-differ", Severity.WARNING,
                 "A/B variants wait different days before the follow-up", None),
        LintRule("row-limit", Severity.WARNING, "more rows than the sending tool takes in one file",
                 APOLLO_IMPORT),
    )
}  # fmt: skip
"""Every rule, by id."""

COMPLIANCE_RULES = ("can-spam-address", "can-spam-opt-out")
"""The rules of the law (CAN-SPAM); turn them off where it does not apply."""


def check_rule_ids(ids: Iterable[str]) -> frozenset[str]:
    """The rule ids to turn off, checked: each is known and may be turned off.

    Raises:
        InvalidInput: an unknown id, or one of the placeholder rules (those texts cannot be
            rendered at all).
    """
    if isinstance(ids, str):
        ids = ids.split(",")
    chosen = frozenset(str(i).strip().lower() for i in ids if str(i).strip())
    unknown = sorted(chosen - set(RULES))
    if unknown:
        known = ", ".join(code for code, rule in RULES.items() if rule.can_disable)
        raise InvalidInput(
            f"unknown check rule(s) {', '.join(repr(u[:40]) for u in unknown[:5])}; the rules "
            f"that can be turned off are {known}"
        )
    fixed = sorted(code for code in chosen if not RULES[code].can_disable)
    if fixed:
        raise InvalidInput(
            f"the rule {fixed[0]} cannot be turned off: a text with such a placeholder cannot "
            "be rendered for any lead; fix the placeholder instead"
        )
    return chosen


@dataclass(frozen=True)
class LintIssue:
    """One finding about one part of one email (or, step ``sequence``, of all of them)."""

    code: str
    step: StepName
    part: Part
    message: str
    severity: Severity
    variant: str | None = None
    """The A/B variant it is about, when an export has several."""

    @property
    def rule(self) -> LintRule:
        """The rule this issue comes from."""
        return RULES[self.code]

    @property
    def source(self) -> str | None:
        """Where the rule's threshold or list comes from (a URL)."""
        rule = RULES.get(self.code)
        return rule.source if rule is not None else None

    def __str__(self) -> str:
        where = f"variant {self.variant} " if self.variant else ""
        return (
            f"{self.severity.value}: {where}{self.step} {self.part}: {self.message} [{self.code}]"
        )


def lint_sequence(
    sequence: EmailSequence,
    fields: Iterable[str],
    *,
    strict: bool = False,
    acronyms: Iterable[str] = DEFAULT_ACRONYMS,
    footer: Footer | None = None,
    disabled: Iterable[str] = (),
    variant: str | None = None,
) -> list[LintIssue]:
    """Every issue of ``sequence`` against a lead list with these merge ``fields``.

    Args:
        sequence: the sequence to check (usually a run's ``final``).
        fields: the merge-field names available (``LeadHeader.fields``; empty for none).
        strict: report warnings as errors.
        acronyms: upper-case words that are not shouting (compared in upper case).
        footer: what the export appends to every email; given, it is checked too, and so
            are the compliance rules (None: the sequence's own text only).
        disabled: rule ids not to check (see :func:`check_rule_ids`).
        variant: the A/B variant's label, put on each issue.

    Returns:
        The issues in order: opener before follow-up, subject before body, then the footer.
    """
    allowed = list(fields)
    known = frozenset(a.upper() for a in acronyms)
    off = check_rule_ids(disabled)
    style = Severity.ERROR if strict else Severity.WARNING
    issues: list[LintIssue] = []
    footer_text = footer.text if footer is not None else ""
    footer_links = find_links(footer_text)

    def adder(step: StepName, part: Part) -> _Add:
        def add(code: str, message: str, severity: Severity | None = None) -> None:
            if code in off:
                return
            default = RULES[code].severity
            chosen = severity or (style if default is Severity.WARNING else default)
            issues.append(LintIssue(code, step, part, message, chosen, variant))

        return add

    emails: list[tuple[StepName, EmailStep]] = [
        ("opener", sequence.opener),
        ("follow_up", sequence.follow_up),
    ]
    for step, email in emails:
        parts: list[tuple[Part, str]] = [("subject", email.subject), ("body", email.body)]
        if step == "follow_up":
            parts = parts[1:]  # exported blank: the follow-up is a reply in the thread
        seen: dict[Part, str] = {}
        for part, text in parts:
            add = adder(step, part)
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
            seen[part] = visible
            if part == "subject" and len(visible) > MAX_SUBJECT_CHARS:
                add(
                    "subject-too-long",
                    f"{len(visible)} characters (with placeholders filled); keep it to "
                    f"{MAX_SUBJECT_CHARS} or fewer so it shows in full",
                )
            if part == "body":
                words = count_words(visible)
                if words > MAX_BODY_WORDS:
                    add("body-too-long", f"{words} words; cut it to {MAX_BODY_WORDS} or fewer")
            links = find_links(visible)
            if step == "opener" and links:
                add(
                    "link-in-first-email",
                    f"a link in the first email ({links[0]}) marks it as marketing; keep links "
                    "for a later email",
                )
            counted = links + (footer_links if part == "body" else [])
            if len(counted) > MAX_LINKS:
                more = " with the footer's" if part == "body" and footer_links else ""
                add(
                    "too-many-links",
                    f"{len(counted)} links{more} ({', '.join(counted)}); keep at most {MAX_LINKS}",
                )
            if part == "subject" and is_caps_subject(visible):
                add("caps-subject", "the subject is all capitals; write it in normal case")
            _content_rules(visible, add, known)
        _exclamation_rule(seen, adder(step, "body"), adder(step, "subject"))
    if footer is not None:
        add = adder("sequence", "footer")
        if footer_links:
            add(
                "link-in-first-email",
                f"the footer puts a link in the first email ({footer_links[0]}); give the "
                "opt-out as a reply instead, or accept it",
            )
        _content_rules(footer_text, add, known)
        found = compliance_issues(footer, strict=strict, variant=variant)
        issues += [issue for issue in found if issue.code not in off]
    return issues


class _Add(Protocol):
    """The ``add`` helpers: a rule id, a message and, to force it, a severity."""

    def __call__(self, code: str, message: str, severity: Severity | None = None) -> None: ...


def _content_rules(visible: str, add: _Add, known: frozenset[str]) -> None:
    """The rules about what a text says: shorteners, images, HTML, capitals, spam, formulas."""
    shortened = url_shorteners(visible)
    if shortened:
        add(
            "url-shortener",
            f"{', '.join(shortened)}: shortened links share an abused reputation and hide "
            "where they lead; use the full address",
        )
    images = find_images(visible)
    if images:
        add(
            "image-or-pixel",
            f"{', '.join(images[:3])}: images and tracking pixels read as marketing; send "
            "plain text",
        )
    markup = html_markup(visible)
    if markup:
        add(
            "html",
            f"{', '.join(repr(m) for m in markup[:5])}: the export is plain text and sent as "
            "such, so this would show as it is written; use line breaks and plain words",
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
    words = spam_words(visible)
    if words:
        add(
            "spam-word",
            f"words spam lists flag: {', '.join(repr(w) for w in words)}; keep them only "
            "if they are the right words",
        )
    starts = formula_starts(visible)
    if starts:
        add("formula-prefix", _formula_message(visible, starts))


def _exclamation_rule(seen: dict[Part, str], on_body: _Add, on_subject: _Add) -> None:
    count = sum(text.count("!") for text in seen.values())
    if count > MAX_EXCLAMATIONS:
        add = on_body if "!" in seen.get("body", "") else on_subject
        add(
            "exclamations",
            f"{count} exclamation marks in one email read as hype; keep at most {MAX_EXCLAMATIONS}",
        )


def compliance_issues(
    footer: Footer, *, strict: bool = False, variant: str | None = None
) -> list[LintIssue]:
    """The CAN-SPAM rules: a postal address and an opt-out sentence in every email."""
    severity = Severity.ERROR if strict else Severity.WARNING
    issues = []
    if not footer.postal_address:
        issues.append(
            LintIssue(
                "can-spam-address",
                "sequence",
                "footer",
                "no postal address is appended to the emails: CAN-SPAM requires your valid "
                f"physical postal address in every commercial email to US recipients "
                f"({CAN_SPAM_SOURCE}); set the brief's postal_address or "
                "COLDMAIL_POSTAL_ADDRESS, or turn this rule off where the law does not apply",
                severity,
                variant,
            )
        )
    if not footer.opt_out:
        issues.append(
            LintIssue(
                "can-spam-opt-out",
                "sequence",
                "footer",
                "no opt-out sentence is appended to the emails: CAN-SPAM requires a clear "
                f"way to opt out in every commercial email ({CAN_SPAM_SOURCE}); set the "
                f"brief's opt_out or COLDMAIL_OPT_OUT (e.g. {EXAMPLE_OPT_OUT!r}), or turn "
                "this rule off where the law does not apply",
                severity,
                variant,
            )
        )
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
    found = [(m.start(), m.end()) for m in _LINK.finditer(text)]
    for match in _SHORTENER.finditer(text):
        if not any(start <= match.start() < end for start, end in found):
            found.append((match.start(), match.end()))
    return [text[start:end].rstrip(".,;:!?)]'\"") for start, end in sorted(found)]


def url_shorteners(text: str) -> list[str]:
    """The links in ``text`` that go through a URL shortener, each once."""
    return list(dict.fromkeys(m.group(0).rstrip(".,;:!?)]'\"") for m in _SHORTENER.finditer(text)))


def find_images(text: str) -> list[str]:
    """Image markup (``<img``, ``![…](…)``) and links to image files in ``text``."""
    found = [m.group(0) for m in _IMAGE_MARKUP.finditer(text)]
    found += [link for link in find_links(text) if _IMAGE_LINK.search(link)]
    return list(dict.fromkeys(found))


def html_markup(text: str) -> list[str]:
    """HTML tags and entities in ``text``, each once, in order."""
    found = [(m.start(), m.group(0)) for m in _HTML_TAG.finditer(text)]
    found += [(m.start(), m.group(0)) for m in _HTML_ENTITY.finditer(text)]
    return list(dict.fromkeys(markup for _, markup in sorted(found)))


def is_caps_subject(text: str) -> bool:
    """Whether a subject's letters (at least :data:`MIN_CAPS_SUBJECT_LETTERS`) are all capitals."""
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= MIN_CAPS_SUBJECT_LETTERS and all(c.isupper() for c in letters)


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


_LEET = str.maketrans({"@": "a", "4": "a", "0": "o", "3": "e", "$": "s", "5": "s", "7": "t",
                       "1": "i"})  # fmt: skip
_LEET_TOKEN = re.compile(r"[a-z0-9@$]*[@$013457][a-z0-9@$]*")
_BETWEEN_LETTERS = re.compile(r"(?<=[a-z])[!|](?=[a-z])")
_SPELLED_OUT = re.compile(r"(?<![a-z0-9])(?:[a-z][-._* ]){2,}[a-z](?![a-z0-9])")
_JOINED_WORDS = re.compile(r"(?<=\w)[-_./](?=\w)")


def _deleet(match: re.Match[str]) -> str:
    token = match.group(0)
    if sum(c.isalpha() for c in token) < 2:
        return token  # "100%", "q4", "#1": no word to launder
    return token.translate(_LEET)


def normalise_for_phrases(text: str) -> str:
    """``text`` as the spam rules read it (see the module docstring): lower case, styling
    that launders a word undone, one space between words."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    text = _BETWEEN_LETTERS.sub("i", text)
    text = _LEET_TOKEN.sub(_deleet, text)
    text = _SPELLED_OUT.sub(lambda m: re.sub(r"[-._* ]", "", m.group(0)), text)
    text = _JOINED_WORDS.sub(" ", text)
    return " ".join(text.split())


def _phrase_pattern(phrases: Iterable[str]) -> tuple[re.Pattern[str], dict[str, str]]:
    canonical: dict[str, str] = {}
    for phrase in phrases:
        canonical.setdefault(normalise_for_phrases(phrase), phrase)
    ordered = sorted(canonical, key=len, reverse=True)
    alternatives = "|".join(re.escape(p) for p in ordered)
    return re.compile(r"(?<![\w#])(?:" + alternatives + r")s?(?!\w)"), canonical


_SPAM, _SPAM_CANONICAL = _phrase_pattern(SPAM_PHRASES)
_JUDGMENT, _JUDGMENT_CANONICAL = _phrase_pattern(JUDGMENT_WORDS)


def _found(pattern: re.Pattern[str], canonical: dict[str, str], text: str) -> list[str]:
    found: dict[str, None] = {}
    for match in pattern.finditer(text):
        matched = match.group(0)
        key = matched if matched in canonical else matched[:-1]
        found[canonical.get(key, matched)] = None
    return list(found)


def spam_phrases(text: str) -> list[str]:
    """The spam-trigger phrases in ``text``, as listed, each once, in order of appearance."""
    return _found(_SPAM, _SPAM_CANONICAL, normalise_for_phrases(text))


def spam_words(text: str) -> list[str]:
    """The :data:`JUDGMENT_WORDS` in ``text`` outside any spam phrase, each once, in order."""
    normalised = normalise_for_phrases(text)
    outside = _SPAM.sub(lambda m: " " * len(m.group(0)), normalised)
    return _found(_JUDGMENT, _JUDGMENT_CANONICAL, outside)


def has_errors(issues: Iterable[LintIssue]) -> bool:
    """Whether any issue is an error (an export would refuse)."""
    return any(issue.severity is Severity.ERROR for issue in issues)


def blocking(issues: Iterable[LintIssue], *, strict: bool) -> list[LintIssue]:
    """The issues that refuse an export: errors, and with ``strict`` warnings too."""
    refused = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    return [issue for issue in issues if issue.severity in refused]


# --------------------------------------------------------------------------- per lead

_GREETING_GAP = re.compile(r"[^\S\r\n]+[,;:!?.]|[^\S\r\n]{2,}\S|\S[^\S\r\n]+$")
"""In a greeting line, what an empty field leaves: "Hi ,", "Hi  Ana", "Hi " at the end."""


def greeting_line(body: str) -> str:
    """The first line of ``body`` with something on it."""
    for line in body.split("\n"):
        if line.strip():
            return line
    return ""


def has_greeting_gap(body: str) -> bool:
    """Whether the greeting line of ``body`` shows a hole: a space before punctuation, two
    spaces before a word, or a space at the line's end."""
    return _GREETING_GAP.search(greeting_line(body)) is not None


@dataclass(frozen=True)
class LeadFinding:
    """A check that failed for some leads of an export: how many, and the first rows."""

    code: str
    step: StepName
    part: Part
    severity: Severity
    message: str
    count: int
    rows: tuple[int, ...]
    """The first :data:`MAX_EXAMPLE_ROWS` rows (as a spreadsheet numbers them)."""
    variant: str | None = None

    @property
    def source(self) -> str | None:
        return RULES[self.code].source

    def __str__(self) -> str:
        where = f"variant {self.variant} " if self.variant else ""
        shown = ", ".join(str(r) for r in self.rows)
        more = ", …" if self.count > len(self.rows) else ""
        return (
            f"{self.severity.value}: {where}{self.step} {self.part}: {self.message}: "
            f"{self.count} lead(s), rows {shown}{more} [{self.code}]"
        )


class LeadChecks:
    """The checks that need each lead's rendered text, for one sequence (one variant):
    ``lead-subject-too-long`` and ``empty-greeting``. A problem the template itself already
    has (a subject over the limit with typical values, a gap in the greeting line) is the
    template's issue, reported once by :func:`lint_sequence`, not per lead."""

    def __init__(self, sequence: EmailSequence, disabled: Iterable[str] = ()) -> None:
        off = check_rule_ids(disabled)
        subject = considered_text(sequence.opener.subject)
        self._subject = "lead-subject-too-long" not in off and len(subject) <= MAX_SUBJECT_CHARS
        self._greeting = "empty-greeting" not in off
        self._template_gap = (
            has_greeting_gap(considered_text(sequence.opener.body)),
            has_greeting_gap(considered_text(sequence.follow_up.body)),
        )

    def check(self, subject: str, bodies: tuple[str, str]) -> Iterator[tuple[str, StepName, Part]]:
        """The rules the rendered ``subject`` and (opener, follow-up) ``bodies`` break."""
        if self._subject and len(subject) > MAX_SUBJECT_CHARS:
            yield "lead-subject-too-long", "opener", "subject"
        if self._greeting:
            for step, body, template_gap in zip(
                ("opener", "follow_up"), bodies, self._template_gap, strict=True
            ):
                if not template_gap and has_greeting_gap(body):
                    yield "empty-greeting", step, "body"  # type: ignore[misc]


_LEAD_MESSAGES = {
    "lead-subject-too-long": (
        f"the subject grows past {MAX_SUBJECT_CHARS} characters with these leads' cells "
        "(the longest is {longest}); shorten the subject or those cells"
    ),
    "empty-greeting": (
        "the greeting is left empty for these leads (e.g. 'Hi ,'): a field in it is empty; "
        "give it a fallback such as {{{{first_name|there}}}}, or fill the cells"
    ),
}


@dataclass
class LeadFindings:
    """Collects :class:`LeadChecks` results over a whole export in bounded memory: a count
    and the first rows per rule, step and variant."""

    strict: bool = False
    _found: dict[tuple[str, str, str, str | None], tuple[int, list[int]]] = field(
        default_factory=dict
    )
    _longest_subject: int = 0

    def add(
        self, code: str, step: StepName, part: Part, row: int, variant: str | None = None
    ) -> None:
        key = (code, step, part, variant)
        count, rows = self._found.get(key, (0, []))
        if len(rows) < MAX_EXAMPLE_ROWS:
            rows.append(row)
        self._found[key] = (count + 1, rows)

    def note_subject(self, length: int) -> None:
        self._longest_subject = max(self._longest_subject, length)

    def __bool__(self) -> bool:
        return bool(self._found)

    def findings(self) -> tuple[LeadFinding, ...]:
        severity = Severity.ERROR if self.strict else Severity.WARNING
        return tuple(
            LeadFinding(
                code,
                step,  # type: ignore[arg-type]
                part,  # type: ignore[arg-type]
                severity,
                _LEAD_MESSAGES[code].format(longest=self._longest_subject),
                count,
                tuple(rows),
                variant,
            )
            for (code, step, part, variant), (count, rows) in self._found.items()
        )
