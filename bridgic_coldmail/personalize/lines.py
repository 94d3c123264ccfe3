"""What one personalized line is, and how it is checked before anyone sees it.

A *line* is the first sentence of the opener written for one lead (lemlist calls it the
``icebreaker``): plain text on one line, at most :data:`MAX_LINE_CHARS` characters. Whoever
writes it (an LLM, or code for the embedded model) hands it to :func:`check_line`, which holds
it to two sets of rules.

**The text rules**, the emails' own (``models.clean_text``) and what a merge field needs: not
empty, no control character, no line break or tab, no bidi override, no ``{{…}}`` placeholder
or stray brace (``merge.syntax_errors``), no ``[placeholder]`` or ``<markup>``, no link and
no email address, no greeting (the email already has one), not starting with a character a
spreadsheet runs as a formula, at least three words and at most two sentences.

**Honesty**: a line may only name what the lead's columns, the brief, the approved sequence
or a reviewer's guidance say. Checked without a model, by rules a person can predict:

* *Figures.* Every number in the line (``1,200``, ``15%``, ``$40k``'s 40, ``2019``) and every
  number word (``five``, ``thousands``, ``third``) must be a number those texts contain,
  written either way (``third plant`` makes ``three plants`` true).
* *Names.* Every capitalised word (``Munich``, ``Mark Evans``, ``Series B``, ``NetSuite``,
  ``Dr.``) must appear in those texts, in any case and with or without accents; an acronym
  may stand for words they contain (``CFO`` for "Chief Financial Officer"); a handful of
  generic terms (``AP``, ``ERP``, ``SMS``…) are always allowed. The first word of a sentence
  is capitalised anyway, so there it counts as a name only when it is not a common word: not
  in :data:`COMMON_WORDS`, not used in lower case in those texts, not an ``-ing``/``-ed``
  form or an ``-ers``/``-ists``-style plural. Words in scripts without capitals (Chinese,
  Japanese, Arabic…) are all treated as names: each run must appear in those texts.
* *Events.* A line that claims something happened to the lead (funding, an acquisition, a
  launch, an expansion, hiring, a promotion, an award, a talk or a post, an anniversary, an
  opening, joining) must find the same kind of event in the lead's own columns or the
  guidance, not just in the brief; a congratulation needs some event there.

What it cannot see: a claim made only of common lower-case words ("your team is growing
fast"), and meaning — a line about another kind of product in ordinary words passes. The
rules assume English: in German, where every noun is capitalised, a line would name too
many "names" and be refused, and an event told in another language ("Wir eröffnen ein Werk")
is not recognised as one. The lead's cells are the source of truth: a claim planted in them
passes, which is why a cell that reads as instructions to the model is left out of them
(:func:`lead_columns`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from pydantic_core import PydanticCustomError

from ..export.leads import EMAIL_HEADERS, Lead
from ..llm.local.writer import stem
from ..merge import syntax_errors
from ..models import Brief, EmailSequence, clean_text
from ..retry import InvalidOutput

MAX_LINE_CHARS = 200
"""The longest line: one sentence that fits the first line of an email on a phone."""
MAX_SENTENCES = 2
MIN_WORDS = 3
MAX_CELL_CHARS = 300
"""A lead's cell is cut to this many characters before the LLM sees it (and before the
honesty check reads it: a fact the LLM was not shown cannot have been taken from the data)."""
MAX_COLUMNS = 40
MAX_LEAD_CHARS = 4000
"""All of one lead's cells together, after cutting each; further columns are left out."""

# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class LineContext:
    """What every lead of one batch shares: the brief, the approved sequence, and the
    guidance a person gave after reading a sample (oldest first)."""

    brief: Brief
    sequence: EmailSequence
    guidance: tuple[str, ...] = ()

    @cached_property
    def known_text(self) -> str:
        """Everything the batch was told, as one text: what a line may take names from."""
        brief = self.brief
        parts = [brief.product, brief.offer, brief.sender, brief.audience or "", brief.cta or ""]
        parts += [text for step in self.sequence.steps for text in (step.subject, step.body)]
        parts += self.guidance
        return "\n".join(parts)

    @cached_property
    def vocabulary(self) -> _Vocabulary:
        return _Vocabulary.of([self.known_text])


@dataclass(frozen=True)
class LineTask:
    """One lead's line to write: the batch's context and the lead's columns."""

    context: LineContext
    lead: Mapping[str, str]
    """Field name -> cell, as ``Lead.values`` gives it; the email column is never shown."""
    row: int | None = None
    """The lead's row in its CSV (spreadsheet numbering), for messages."""

    @classmethod
    def for_lead(cls, context: LineContext, lead: Lead) -> LineTask:
        """The task for a lead read by :class:`~bridgic_coldmail.leads.LeadReader`."""
        values = {name: cell for name, cell in lead.values.items() if cell.strip() != lead.email}
        return cls(context, values, lead.row)

    @cached_property
    def _shown(self) -> tuple[tuple[tuple[str, str], ...], int]:
        return lead_columns(self.lead)

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """The lead's columns as the writer sees them: non-empty, cleaned, cut, bounded."""
        return self._shown[0]

    @property
    def left_out(self) -> int:
        """Non-empty columns left out by the bounds (the email column is never counted)."""
        return self._shown[1]

    @cached_property
    def facts(self) -> Facts:
        """What a line written for this lead may name (see the module docstring)."""
        return Facts(self.context, self.columns)

    @property
    def who(self) -> str:
        """``row 12`` (or ``the lead``), for messages."""
        return f"row {self.row}" if self.row is not None else "the lead"


def lead_columns(lead: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], int]:
    """``(name, value)`` pairs to show a writer, and how many non-empty columns the bounds
    left out: email columns and empty cells are skipped, control and format characters
    become spaces, white space is collapsed, a cell that reads as instructions to the model
    is left out, each value is cut at :data:`MAX_CELL_CHARS`, and at most
    :data:`MAX_COLUMNS` columns and :data:`MAX_LEAD_CHARS` characters are shown."""
    shown: list[tuple[str, str]] = []
    left_out = 0
    total = 0
    for name, cell in lead.items():
        label = one_line(str(name))[:64]
        if not label or _folded(label).replace(" ", "_") in EMAIL_HEADERS:
            continue
        value = one_line(str(cell))
        if not value:
            continue
        if _INSTRUCTIONS.search(value):
            left_out += 1  # a cell that talks to the model is not a fact about the lead
            continue
        if len(value) > MAX_CELL_CHARS:
            value = value[: MAX_CELL_CHARS - 1].rstrip() + "…"
        if left_out or len(shown) == MAX_COLUMNS or total + len(value) > MAX_LEAD_CHARS:
            left_out += 1
            continue
        shown.append((label, value))
        total += len(value)
    return tuple(shown), left_out


_INSTRUCTIONS = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:instructions?|prompts?|rules)\b"
    r"|\bsystem prompt\b|\byou are now\b|\bnew instructions\b"
)
"""A cell that looks like instructions to the model ("ignore all previous instructions…"):
it is left out, so that neither the prompt nor the facts a line is checked against hold it."""


def one_line(text: str) -> str:
    """``text`` on one line: control and format characters become spaces, white space runs
    one space."""
    if text.isprintable():  # no control, format or odd space character: the common case
        return " ".join(text.split())
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
    return " ".join(cleaned.split())


# --------------------------------------------------------------------------- refusals


class LineRefused(InvalidOutput):
    """A line broke a rule; ``problems`` says which, one sentence each, to show the writer
    when it tries again and the person when the lead is reported."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


def check_line(text: object, task: LineTask) -> str:
    """The line, stripped, if it keeps every rule (see the module docstring).

    Raises:
        LineRefused: naming every rule it breaks.
    """
    problems = line_problems(text, task)
    if problems:
        raise LineRefused(problems)
    assert isinstance(text, str)
    return text.strip()


def line_problems(text: object, task: LineTask) -> list[str]:
    """Every rule ``text`` breaks as the line for ``task``; empty when it is fine."""
    if not isinstance(text, str):
        return [f"the line must be text, not {type(text).__name__}"]
    problems = text_problems(text)
    if problems:
        return problems  # honesty is judged on text that is at least well formed
    return honesty_problems(text.strip(), task.facts)


_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_PLACEHOLDER_OR_MARKUP = re.compile(r"[\[\]<>]")
_FORMULA_START = ("=", "+", "-", "@")
_LINK = re.compile(
    r"(?i:https?://|www\.)|\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[a-z]{2,24}(?:/\S*)?(?![\w-])"
)
_ADDRESS = re.compile(r"\S@\S")
_GREETING = re.compile(r"(?i)(?:hi|hello|hey|dear|greetings|good (?:morning|afternoon|evening))\b")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s+\S)")


def text_problems(text: str) -> list[str]:
    """The rules every line keeps whoever it is for (the module docstring's first list)."""
    try:
        stripped = clean_text(text, field="the line", limit=MAX_LINE_CHARS)
    except PydanticCustomError as exc:
        return [exc.message()]
    problems = []
    if "\n" in stripped or "\t" in stripped:
        problems.append("the line has a line break or a tab; write one line")
    if _BIDI.search(stripped):
        problems.append("the line has a bidi override character; write plain text")
    braces = syntax_errors(stripped)
    if braces or "{{" in stripped:
        problems.append("the line has a {{…}} placeholder or a brace; write the words themselves")
    if _PLACEHOLDER_OR_MARKUP.search(stripped):
        problems.append("the line has a [placeholder] or <markup>; write plain words only")
    if stripped.startswith(_FORMULA_START):
        problems.append(
            f"the line starts with {stripped[0]!r}, which a spreadsheet runs as a formula"
        )
    if _ADDRESS.search(stripped):
        problems.append("the line has an email address; leave addresses out")
    elif _LINK.search(stripped):
        problems.append("the line has a link or a web address; leave links out")
    if _GREETING.match(stripped):
        problems.append("the line starts with a greeting; the email already greets the reader")
    if len(stripped.split()) < MIN_WORDS:
        problems.append("the line is too short to open an email; write a whole sentence")
    if len(_SENTENCE_END.findall(stripped)) >= MAX_SENTENCES:
        problems.append(f"the line has more than {MAX_SENTENCES} sentences; write one")
    return problems


# --------------------------------------------------------------------------- honesty

_FIGURE = re.compile(r"(?<![^\W\d_])(\d+(?:[.,]\d+)*)|\b([A-Za-z]+)\b")
_UNIT = re.compile(r"\s*-?\s*(%|[^\W\d_]+)")
_THOUSANDS = re.compile(r"\d{1,3}(?:([.,])\d{3})(?:\1\d{3})*")
_CARDINALS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "hundreds": 100,
    "thousand": 1000, "thousands": 1000, "million": 10**6, "millions": 10**6,
    "billion": 10**9, "billions": 10**9, "dozen": 12, "dozens": 12,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20,
    "hundredth": 100,
}  # fmt: skip
_CHECKED_NUMBER_WORDS = {
    word: value
    for word, value in {**_CARDINALS, **_ORDINALS}.items()
    # Too often not a figure: "one thing", "a second look", "zero manual work", "dozens of".
    if word not in ("zero", "one", "first", "second", "dozen", "dozens")
}

GENERIC_TERMS = frozenset(
    "i i'm i'd i've i'll ok ap ar erp crm hr it b2b b2c saas ai roi kpi kpis sms pdf faq "
    "q&a smb smbs".split()
)
"""Capitalised words any line may use: the pronoun, and generic business terms."""

COMMON_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers him his how i if in into is it its
    just like me more most my no nor not now of off on once only or other our out over own
    same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why
    will with would you your yours yes
    congrats congratulations saw seen noticed loved love read heard great nice impressive
    curious quick hope thanks thank welcome glad happy sure guess imagine bet wondering
    looks sounds seems must may might usually often probably likely clearly certainly surely
    honestly frankly given since whether every many several much lots plenty anyone
    everyone someone nobody teams team people folks leaders managers owners companies firms
    businesses clinics practices month months week weeks year years day days quarter
    morning afternoon evening today tomorrow yesterday online small big busy new old good
    better best fast faster last next first second one two ever never always still already
    even maybe perhaps hopefully finally recently lately apparently interesting
    interestingly funny fun quite rather truly really actually basically simply almost
    nearly especially kudos cool exciting wow hats bravo here there that it what""".split()
)
"""Words that often start a sentence and are not names (besides ``-ing``/``-ed`` forms)."""

_AGENT_PLURAL = re.compile(r"(?:ers|ors|ists|ians|ics|ants|ents)$")

_EVENTS: tuple[tuple[str, str, str], ...] = (
    # (what, in the line, evidence in the lead's columns or the guidance)
    ("funding", r"fund(?:ing|ed|raise\w*|raising)|rais(?:ed|ing) (?:a|an|\$|\d)|series [a-h]"
     r"|seed round|investors?|valuation", r"fund|rais|series [a-h]|invest|seed"),
    ("an acquisition", r"acqui(?:re[sd]?|ring|sitions?)|buyout",
     r"acqui|bought|buyout|merg"),
    ("a merger", r"merg(?:er|ers|ed|ing)", r"merg|acqui"),
    ("going public", r"ipo|went public|going public", r"ipo|public|listing"),
    ("a launch", r"launch(?:ed|es|ing)?", r"launch|releas|introduc|open"),
    ("an expansion", r"expan(?:d|ds|ded|ding|sion|sions)", r"expan|grow|open"),
    ("hiring", r"hir(?:e|ed|es|ing)|new hires?", r"hir|recruit|job|opening|join"),
    ("a promotion", r"promot(?:ed|ion|ions)", r"promot"),
    ("an award", r"awards?|won (?:a|an|the)|winning (?:a|an|the)|voted|ranked|finalist"
     r"|shortlisted|named (?:one of|the|a|an|as|to)", r"award|won|win|vote|rank|finalist"
     r"|shortlist|prize|named"),
    ("a talk or a post", r"podcasts?|keynotes?|webinars?|panels?|interviews?|articles?|blog"
     r"|(?:your|the|a|recent) (?:post|talk)|spoke|speaking at|presentation|published",
     r"podcast|keynote|webinar|panel|interview|article|blog|post|talk|spoke|speak|present"
     r"|publish|wrote"),
    ("an anniversary", r"anniversar\w*|record (?:year|quarter|month|revenue|sales)",
     r"anniversar|milestone|record|years"),
    ("an opening", r"open(?:ed|ing)|new (?:office|plant|site|location|clinic|factory|branch"
     r"|store|hq|headquarters|warehouse|facility)",
     r"open|new (?:office|plant|site|location|clinic|factory|branch|store|hq|headquarters"
     r"|warehouse|facility)|launch"),
    ("joining", r"join(?:ed|ing)|new (?:role|job|position)", r"join|new role|new job|started"),
)  # fmt: skip
_EVENT_PATTERNS = tuple(
    (what, re.compile(rf"\b(?:{line})\b"), re.compile(rf"\b(?:{evidence})"))
    for what, line, evidence in _EVENTS
)
_CONGRATULATE = re.compile(r"\bcongrat")
_TOKEN = re.compile(r"[^\W_](?:[^\W_]|['’](?=[^\W_])|[-.&](?=[^\W_]))*")
_POSSESSIVE = re.compile(r"['’]s?$")
_CONTRACTION = re.compile(r"(?:n['’]t|['’](?:s|ve|ll|re|d|m))$", re.IGNORECASE)
_CONTRACTED = {"wo": "will", "ca": "can", "sha": "shall"}  # won't, can't, shan't


@dataclass(frozen=True)
class _Vocabulary:
    """What a set of texts contains, folded (lower case, no accents) for comparison."""

    words: frozenset[str]
    """Every word, its hyphen/period parts, adjacent words joined (``smile bright`` makes
    ``smilebright``), possessives dropped."""
    stems: frozenset[str]
    lowercase: frozenset[str]
    """Stems of the words written in lower case: common words in this batch's language."""
    acronyms: frozenset[str]
    """Initials of runs of capitalised words (``Chief Financial Officer`` -> ``cfo``)."""
    numbers: Mapping[str, frozenset[str]]
    """Each figure's value, and the units it is given in (see :func:`_figures`)."""
    text: str
    """All the texts, folded, for the substring check of caseless scripts."""

    @classmethod
    def of(cls, texts: Iterable[str]) -> _Vocabulary:
        words: set[str] = set()
        lowercase: set[str] = set()
        acronyms: set[str] = set()
        numbers: dict[str, set[str]] = {}
        folded_texts = []
        for text in texts:
            folded_texts.append(_folded(text))
            for value, _, unit in _figures(text, words="all"):
                numbers.setdefault(value, set()).add(unit)
            tokens = [_POSSESSIVE.sub("", t) for t in _TOKEN.findall(text)]
            run: list[str] = []
            previous = ""
            for token in tokens:
                folded = _folded(token)
                words.add(folded)
                words.update(p for p in re.split(r"[-.&'’]", folded) if p)
                if previous:
                    words.add(previous + folded)
                previous = folded
                if token == token.lower():
                    lowercase.add(stem(folded))
                if token[:1].isupper():
                    run.append(folded)
                    continue
                if token not in ("of", "and", "&", "for"):
                    _add_acronyms(run, acronyms)
                    run = []
            _add_acronyms(run, acronyms)
        return cls(
            words=frozenset(words),
            stems=frozenset(stem(w) for w in words),
            lowercase=frozenset(lowercase),
            acronyms=frozenset(acronyms),
            numbers={value: frozenset(units) for value, units in numbers.items()},
            text="\n".join(folded_texts),
        )

    def knows(self, folded: str) -> bool:
        return folded in self.words or stem(folded) in self.stems


def _add_acronyms(run: list[str], acronyms: set[str]) -> None:
    for start in range(len(run)):
        for end in range(start + 2, min(len(run), start + 5) + 1):
            acronyms.add("".join(word[0] for word in run[start:end] if word))


@dataclass(frozen=True)
class Facts:
    """What one lead's line may name: the batch's context and the lead's columns."""

    context: LineContext
    columns: tuple[tuple[str, str], ...]

    @cached_property
    def lead(self) -> _Vocabulary:
        """The lead's own cells and the guidance: the only evidence of events."""
        return _Vocabulary.of([*(value for _, value in self.columns), *self.context.guidance])

    def knows(self, folded: str) -> bool:
        return self.context.vocabulary.knows(folded) or self.lead.knows(folded)

    def is_acronym(self, folded: str) -> bool:
        return folded in self.context.vocabulary.acronyms or folded in self.lead.acronyms

    def is_lowercase_word(self, folded: str) -> bool:
        root = stem(folded)
        return root in self.context.vocabulary.lowercase or root in self.lead.lowercase

    def has_figure(self, value: str, unit: str) -> bool:
        """Whether the lead's cells or the guidance give this number (in any words), or the
        brief or the sequence give it in the same unit: the brief's "2 days a month" makes
        "save 2 days" true, not "two countries"."""
        return value in self.lead.numbers or unit in self.context.vocabulary.numbers.get(value, ())

    def contains(self, folded: str) -> bool:
        return folded in self.context.vocabulary.text or folded in self.lead.text


def honesty_problems(text: str, facts: Facts) -> list[str]:
    """Names, figures and events in ``text`` that ``facts`` do not support, one problem
    each (see the module docstring)."""
    problems = []
    figures = [shown for value, shown, unit in _figures(text) if not facts.has_figure(value, unit)]
    if figures:
        shown = ", ".join(repr(f) for f in dict.fromkeys(figures))
        problems.append(
            f"the line has figures the lead's data and the brief do not give ({shown}); "
            "use only their numbers, or none"
        )
    names = unknown_names(text, facts)
    if names:
        shown = ", ".join(repr(n) for n in names)
        problems.append(
            f"the line names {shown}, which the lead's data and the brief do not mention; "
            "name only what they say"
        )
    events = unsupported_events(text, facts)
    if events:
        problems.append(
            f"the line claims {' and '.join(events)}, which the lead's data does not "
            "mention; claim nothing about the lead that their columns do not say"
        )
    return problems


def unknown_names(text: str, facts: Facts) -> list[str]:
    """The capitalised words (and words in caseless scripts) of ``text`` that ``facts`` do
    not contain, in order, each once."""
    unknown: dict[str, None] = {}
    for match in _TOKEN.finditer(text):
        token = _POSSESSIVE.sub("", match.group())
        initial = _starts_sentence(text, match.start())
        if token.isascii():
            cased = [token]
        else:
            for caseless in _caseless_runs(token):
                if not facts.contains(_folded(caseless)):
                    unknown[caseless] = None
            cased = "".join(" " if _is_caseless(c) else c for c in token).split()
        for part in cased:
            if _is_unknown_name(part, initial, facts):
                unknown[part] = None
    return list(unknown)


def _is_unknown_name(token: str, initial: bool, facts: Facts) -> bool:
    if not _capitalised(token):
        return False
    folded = _folded(token)
    if _CONTRACTION.search(folded):  # "You've", "Don't", "Here's": judge the word itself
        base = _CONTRACTION.sub("", folded)
        return bool(base) and _is_unknown_name(_CONTRACTED.get(base, base).title(), initial, facts)
    if folded in _CARDINALS or folded in _ORDINALS:
        return False  # a figure: judged by the figures rule
    if folded in GENERIC_TERMS or facts.knows(folded) or facts.is_acronym(folded):
        return False
    if folded in COMMON_WORDS:
        return False  # "The", "And", "Great" (as in "Great Lakes Steel": "Lakes" is judged)
    if initial and _is_common_start(folded, facts):
        return False
    if "-" in token or "." in token:  # "Jean-Luc", "Month-end": judge the parts
        parts = [p for p in re.split(r"[-.]", token) if p]
        return any(_is_unknown_name(p, initial and i == 0, facts) for i, p in enumerate(parts))
    return True


def _is_common_start(folded: str, facts: Facts) -> bool:
    """Whether a sentence's capitalised first word is an ordinary word rather than a name."""
    if folded in COMMON_WORDS or facts.is_lowercase_word(folded):
        return True
    if len(folded) >= 5 and folded.endswith(("ing", "ed")):
        return True
    return len(folded) >= 6 and _AGENT_PLURAL.search(folded) is not None


def _capitalised(token: str) -> bool:
    return any(c.isupper() for c in token)


def _starts_sentence(text: str, index: int) -> bool:
    before = text[:index].rstrip(" \"'“‘(")
    return not before or before.endswith((".", "!", "?", ":", ";", "—", "–", " -"))


def _is_caseless(char: str) -> bool:
    return char.isalpha() and char.lower() == char.upper()


def _caseless_runs(token: str) -> list[str]:
    return "".join(c if _is_caseless(c) else " " for c in token).split()


def unsupported_events(text: str, facts: Facts) -> list[str]:
    """The kinds of event ``text`` claims for the lead that the lead's columns and the
    guidance do not mention."""
    line = _folded(text)
    evidence = facts.lead.text
    claimed = []
    found_any = False
    for what, in_line, in_evidence in _EVENT_PATTERNS:
        if in_evidence.search(evidence):
            found_any = True
        if in_line.search(line) and not in_evidence.search(evidence):
            claimed.append(what)
    if _CONGRATULATE.search(line) and not found_any:
        claimed.insert(0, "something to congratulate them on")
    return claimed


@functools.lru_cache(maxsize=65536)
def _folded(text: str) -> str:
    """Lower case without accents: ``Société`` and ``societe`` compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _figures(text: str, *, words: str = "checked") -> list[tuple[str, str, str]]:
    """Every figure of ``text``: ``(value, as written, unit)``. The value is a digit string
    without thousands separators (``1,200`` -> ``1200``; ``third`` -> ``3``); the unit is the
    stem of the word after it (``2 days`` and ``2-day`` -> ``day``; ``30%`` -> ``%``).
    ``words``: which number words count, ``"checked"`` (a line's) or ``"all"`` (a source's)."""
    table = _CHECKED_NUMBER_WORDS if words == "checked" else {**_CARDINALS, **_ORDINALS}
    found = []
    for match in _FIGURE.finditer(text):
        digits, word = match.group(1), match.group(2)
        if digits:
            value = digits
            if _THOUSANDS.fullmatch(value):
                value = value.replace(",", "").replace(".", "")
            value = value.replace(",", ".")
        elif word and word.lower() in table:
            value = str(table[word.lower()])
        else:
            continue
        found.append((value, match.group(), _unit_after(text, match.end())))
    return found


def _unit_after(text: str, index: int) -> str:
    unit = _UNIT.match(text, index)
    if unit is None:
        return ""
    word = _folded(unit.group(1))
    if word in ("st", "nd", "rd", "th"):  # "25th anniversary"
        return _unit_after(text, unit.end())
    return word if word == "%" else stem(word)
