"""How the embedded 270M model writes a sequence: short lines from the model, emails from code.

A base model of 270 million parameters continues documents; asked for a whole email it
copies the worked example it was shown (product, audience and all) or repeats itself. It
does write a short phrase about a named reader tolerably well. So the work is split:

* The model fills in two lines of a *customer research worksheet*, one line per call,
  stopped at the end of the line (no JSON grammar: on Gemma's 262,144-token vocabulary the
  grammar made every token about four times slower): two chores this reader still does by
  hand ("reconciling bank feeds in Excel"). When the task names no reader, it first guesses
  one, for the worksheet only. The worksheet's examples are four invented products
  (:data:`EXAMPLE_PRODUCTS`) and never an email, so there is no email to copy.
* Each line is sampled a few times (:class:`LineSpec`) with seeds derived from the task's
  seed, checked by :func:`check_line` (an -ing phrase, no figures, not the offer itself,
  nothing from the examples, no repetition, not cut off) and scored by the words it shares
  with the offer and the reader; the best survivor is used, else code writes a plain
  sentence without it.
* The emails are composed in code (:func:`compose`) around the brief's own words: the
  product, the offer, the sender, the call to action, and the audience (the reviewer's
  feedback when there is one, read by :func:`read_audience`: a short phrase that names the
  reader, and what else was said about them as the start of a sentence, never the feedback
  pasted whole). The opener's hook and subject use the first chore, the follow-up's question
  the second. Nothing is said about the product beyond the brief's words. So every email
  names the product and the reader and is signed by the sender, whatever the model writes.

The worksheet's fixed head (:data:`WORKSHEET_HEAD`) is evaluated once per process and kept
in llama.cpp's KV cache; each call then evaluates only its own lines (see
:class:`LlamaLines`). The same task and seed give the same emails.

``revise`` tasks (a reviewer's free-text guidance) are beyond what a 270M model can follow:
the lines are regenerated with the guidance shown in the worksheet, and one instruction is
applied in code (asking for shorter emails drops the optional sentences). Use a stronger
model for anything more.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...models import EmailSequence, EmailStep
from ..writing import WritingTask

# --------------------------------------------------------------------------- the worksheet

EXAMPLE_PRODUCTS = ("Pipewise", "Crewtable", "Fernlog", "Quotebird")
"""The invented products of the worksheet's examples; no output may ever contain them."""

WORKSHEET_HEAD = """\
Customer research worksheet. For each product: what it does, who buys it, and two chores \
that cost that reader time or money today, each in a few words.

Product: Pipewise
What it does: detects leaks in water pipes from acoustic sensors
Reader: facility managers at hospitals
Done by hand today: finding hidden leaks only after a ceiling stains
Also done by hand: booking emergency plumbers at night

Product: Crewtable
What it does: builds staff rotas from everyone's availability in minutes
Reader: owners of busy independent restaurants
Done by hand today: rebuilding the rota every Sunday night from text messages
Also done by hand: phoning around to cover last-minute sick calls

Product: Fernlog
What it does: keeps lab samples traceable with barcode labels and an audit log
Reader: quality managers at contract research labs
Done by hand today: digging through paper logs when an auditor asks where a sample was
Also done by hand: relabelling tubes by hand after a freezer move

Product: Quotebird
What it does: turns a site visit into a priced quote on the spot
Reader: owners of small roofing companies
Done by hand today: typing up quotes at the kitchen table after a long day on site
Also done by hand: chasing customers who never answered a quote
"""
"""The fixed start of every prompt: an instruction line and four filled-in examples."""

EXAMPLE_LINES = tuple(
    line.split(": ", 1)[1]
    for line in WORKSHEET_HEAD.splitlines()
    if ": " in line and not line.startswith("Customer research")
)
"""Every value written in the examples; a shared run of words with any of them is a copy."""

TEMPERATURE = 0.6


@dataclass(frozen=True)
class LineSpec:
    """One line of the worksheet the model fills in."""

    label: str
    kind: str
    max_tokens: int
    candidates: int
    """Samples at most."""
    good_enough: float
    """The score at which sampling stops early."""
    minimum: float = 0.0
    """The lowest score a line may have and still be used."""


READER = LineSpec("Reader", "reader", 16, 2, 1)
# A chore must share a word with the offer or the reader: an off-topic chore is worse than
# the plain sentence code writes without one.
CHORE = LineSpec("Done by hand today", "chore", 24, 4, 2, minimum=0.5)
ANOTHER_CHORE = LineSpec("Also done by hand", "chore", 24, 3, 2, minimum=0.5)

# --------------------------------------------------------------------------- words

_STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers him his how i if in into is it its
    just like me more most my no nor not now of off on once only or other our out over own
    same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why
    will with would you your yours etc per via really actually""".split()
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'&+.-]*[A-Za-z0-9]|[A-Za-z0-9]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_DANGLING = frozenset(
    """a an the and or but of to in on at by for from with into onto over under about as
    than that who which whose when while if so their his her its your our my this these
    those is are was were be been has have had do does""".split()
)
_FAST = re.compile(
    r"\b(?:automatic(?:ally)?|automated|instantly|in (?:minutes|seconds)|one click)\b", re.I
)
_FIRST_PERSON = frozenset({"i", "i'm", "i've", "i'd", "me", "my", "we", "we're", "our", "us"})


def words(text: str) -> list[str]:
    """The words of ``text``, lower case."""
    return [w.lower() for w in _WORD.findall(text)]


def stem(word: str) -> str:
    """A crude English stem, enough to match "invoices" with "invoice" and "closing" with
    "close"."""
    word = word.lower().removesuffix("'s")
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + repl
    return word


def content_stems(text: str) -> set[str]:
    """The stems of the words of ``text`` that carry meaning (no stop words)."""
    return {stem(w) for w in words(text) if w not in _STOP_WORDS and len(w) > 1}


def shingles(text: str, n: int = 4) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text``."""
    ws = words(text)
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


_EXAMPLE_SHINGLES = frozenset().union(*(shingles(line) for line in EXAMPLE_LINES))


def copies_an_example(text: str) -> bool:
    """Whether ``text`` names an example product or shares four words in a row with an
    example line."""
    lowered = text.lower()
    if any(name.lower() in lowered for name in EXAMPLE_PRODUCTS):
        return True
    return bool(shingles(text) & _EXAMPLE_SHINGLES)


# --------------------------------------------------------------------------- checking lines


@dataclass(frozen=True)
class Topic:
    """What a line is checked against: the brief's words and the reader's."""

    product: str
    offer: str
    reader: str = ""
    known: str = ""
    """All the text the task gave (brief and feedback): the numbers a line may use."""


def check_line(kind: str, text: str, topic: Topic) -> float | None:
    """The score of a model-written line, or ``None`` when it must not be used.

    A usable line has its kind's shape (a chore starts with a verb in -ing, ends on a word
    that can end a phrase, and neither names the product nor repeats the offer; a reader is
    a short phrase), contains no number the task does not
    contain, no markup, nothing from the examples, and no word three times. Its score counts
    the meaningful words it shares with the offer (1 each) and with the reader (½ each), at
    most 3: a chore about what the product does, for this reader, scores highest.
    """
    text = text.strip()
    ws = words(text)
    if not ws or copies_an_example(text) or re.search(r"[\[\]{}<>|#*@:;\"\\/_=~^]", text):
        return None
    if "http" in text.lower() or "www." in text.lower():
        return None
    known_numbers = set(_NUMBER.findall(topic.known))
    if any(n not in known_numbers for n in _NUMBER.findall(text)):
        return None  # an invented figure is an invented fact
    meaningful = [stem(w) for w in ws if w not in _STOP_WORDS]
    if any(meaningful.count(w) > 2 for w in meaningful):
        return None
    pairs = list(zip(ws, ws[1:], strict=False))
    if len(set(pairs)) < len(pairs) or any(a == b for a, b in pairs):
        return None  # "claim claim", or a repeated pair of words: the model is looping
    if any(w in _FIRST_PERSON for w in ws) or text.endswith(("?", "!")):
        return None
    if topic.product.lower() in text.lower():
        return None
    if kind == "chore":
        if not (3 <= len(ws) <= 14) or ws[-1] in _DANGLING:
            return None  # too short, too long, or cut off ("… who have left their old shop on")
        if shingles(text) & shingles(topic.offer) or _FAST.search(text):
            return None  # the offer itself ("… in one click") is not what they do by hand
        if _NUMBER.search(text):
            return None  # "cancelling appointments by 30%": the brief's figures belong to the offer
        if not (ws[0].endswith("ing") and ws[0].isalpha() and len(ws[0]) >= 5):
            return None
    elif kind == "reader":
        if not (1 <= len(ws) <= 8) or ws[0].endswith("ing"):
            return None
    else:
        raise ValueError(f"unknown line kind {kind!r}")
    stems = content_stems(text)
    score = len(stems & content_stems(topic.offer)) + 0.5 * len(stems & content_stems(topic.reader))
    return min(3.0, score)


# --------------------------------------------------------------------------- the model side


@dataclass(frozen=True)
class Completion:
    """One sampled line."""

    text: str
    tokens: int
    finished: bool
    """Whether the line ended (a newline) rather than running out of tokens."""


class LineModel(Protocol):
    """What the writer needs from a language model: tokens in, one line out."""

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        """The model's tokens for ``text``; ``bos`` starts a document."""
        ...

    def start(self, head: list[int]) -> None:
        """Put the model in the state after ``head`` (cached between calls)."""
        ...

    def complete(self, prompt: list[int], *, max_tokens: int, seed: int) -> Completion:
        """Continue ``prompt`` (which starts with the head) up to the end of the line."""
        ...


@dataclass
class ComposeStats:
    """What one composition cost: model calls, tokens generated, seconds spent."""

    calls: int = 0
    tokens: int = 0
    generation_seconds: float = 0.0
    seconds: float = 0.0
    first_prompt: list[int] = field(default_factory=list)
    """The prompt of the first model call (for a like-for-like speed comparison)."""
    samples: list[tuple[str, str, float | None]] = field(default_factory=list)
    """Every sampled line: its label, its text and its score (``None``: refused)."""


@dataclass
class Lines:
    """The model-written lines one composition uses; ``None`` where code writes instead."""

    reader: str | None = None
    """The model's guess at the reader when the task names none (used in the prompt only)."""
    chore: str | None = None
    """What costs this reader time today, as an -ing phrase: the opener's hook."""
    another_chore: str | None = None
    """A second, different chore: the follow-up's question."""


class _Worksheet:
    """The prompt as tokens: the cached head, then this task's record, line by line."""

    def __init__(self, model: LineModel, head: list[int], stats: ComposeStats) -> None:
        self.model = model
        self.tokens = list(head)
        self.stats = stats

    def add(self, text: str) -> None:
        self.tokens += self.model.tokenize(text)

    def fill(
        self, spec: LineSpec, seed: int, topic: Topic, index: int, unlike: str | None = None
    ) -> str | None:
        """Sample the line up to ``spec.candidates`` times, keep the best that passes
        :func:`check_line` (and is not too like ``unlike``), and add it to the record."""
        self.add(f"{spec.label}:")
        best: tuple[float, str] | None = None
        for attempt in range(spec.candidates):
            if not self.stats.first_prompt:
                self.stats.first_prompt = list(self.tokens)
            started = time.perf_counter()
            line = self.model.complete(
                self.tokens,
                max_tokens=spec.max_tokens,
                seed=derive_seed(seed, index, attempt),
            )
            self.stats.generation_seconds += time.perf_counter() - started
            self.stats.calls += 1
            self.stats.tokens += line.tokens
            text = _strip_end(" ".join(line.text.split()))
            score = check_line(spec.kind, text, topic) if line.finished else None
            if score is not None and (
                score < spec.minimum or (unlike and _too_alike(text, unlike))
            ):
                score = None
            self.stats.samples.append((spec.label, text, score))
            if score is not None and (best is None or score > best[0]):
                best = (score, text)
            if best is not None and best[0] >= spec.good_enough:
                break
        chosen = best[1] if best else None
        self.add(f" {chosen}\n" if chosen else " -\n")
        return chosen


def derive_seed(seed: int, line: int, attempt: int) -> int:
    """The sampling seed of one attempt at one line: fixed by the task's seed."""
    return (seed * 1_000_003 + line * 1_009 + attempt * 7_919) % (2**31 - 1)


def write_lines(
    model: LineModel,
    task: WritingTask,
    audience: str | None,
    seed: int,
    stats: ComposeStats,
) -> Lines:
    """Ask the model for the lines of one task, from the cached worksheet head."""
    head = model.tokenize(WORKSHEET_HEAD, bos=True)
    model.start(head)
    brief = task.brief
    sheet = _Worksheet(model, head, stats)
    product = _one_line(brief.product)
    offer = _one_line(_strip_end(brief.offer))
    sheet.add(f"\nProduct: {product}\nWhat it does: {offer}\n")
    known = " ".join(
        t for t in (brief.product, brief.offer, brief.audience, task.feedback, brief.cta) if t
    )
    lines = Lines()
    if audience:
        sheet.add(f"Reader: {_one_line(audience)}\n")
    else:
        lines.reader = sheet.fill(READER, seed, Topic(product, offer, known=known), 0)
    if task.kind == "revise" and task.guidance:
        sheet.add(f"Note from the reviewer: {_one_line(task.guidance[-1])}\n")
    topic = Topic(product, offer, audience or lines.reader or "", known)
    lines.chore = sheet.fill(CHORE, seed, topic, 1)
    lines.another_chore = sheet.fill(ANOTHER_CHORE, seed, topic, 2, unlike=lines.chore)
    return lines


def _too_alike(a: str, b: str) -> bool:
    sa, sb = content_stems(a), content_stems(b)
    return not sa or not sb or len(sa & sb) / len(sa | sb) >= 0.5


# --------------------------------------------------------------------------- composing

_FILLER = re.compile(
    r"^(?:(?:actually|really|no|nope|well|hmm|ok|okay|not quite|instead|rather)\b[,:;.!-]*\s*"
    r"|(?:it|this|these|they|the emails?|the sequence|these emails)\s+"
    r"(?:should|must|needs? to|has to|have to|is|are|would|'s|'re)\s+(?:really\s+|actually\s+)?"
    r"(?:be\s+)?(?:written\s+|aimed\s+|targeted\s+)?(?:for|to|at|target(?:ing)?|about)?\s*"
    r"|(?:the\s+)?(?:real\s+|right\s+|target\s+|true\s+)?"
    r"(?:audience|readers?|target|people|persons?|buyers?|customers?)"
    r"\s*(?:is|are|:|=|-)\s*"
    r"|(?:please\s+)?(?:target|aim at|write (?:to|for)|send (?:it|them|this) to|focus on|go after)"
    r"\s+"
    r"|(?:for|to)\s+)",
    re.IGNORECASE,
)
_CLAUSE_END = re.compile(
    r"(?:[.;!?](?:\s|$)|\s+-{1,2}\s+|\s*\(|,?\s+(?:not|rather than|instead of|but not)\s+)",
    re.IGNORECASE,
)


def audience_from_feedback(feedback: str) -> str:
    """The audience a reviewer's feedback names, as a phrase to put in an email.

    The rule: the feedback's first clause (up to ".", ";", "!", "?", "(", " - ", ", not",
    "rather than", "instead of"), without leading filler such as "Actually," or "The emails
    should target" or "for"; the whole first line when that leaves nothing.
    """
    text = " ".join(feedback.split())
    clause = _CLAUSE_END.split(text, maxsplit=1)[0].strip(" ,:-")
    previous = None
    while clause != previous:
        previous = clause
        clause = _FILLER.sub("", clause, count=1).strip(" ,:-")
    clause = _strip_end(clause)
    if len(words(clause)) == 0:
        clause = _strip_end(" ".join(feedback.strip().splitlines()[0].split()))
    return _lower_first(clause)


@dataclass(frozen=True)
class Audience:
    """Who the emails are for, as code writes it into them: a short phrase that names the
    reader, and one clause about their situation taken from the rest of what was said."""

    phrase: str
    """The role and where they work: "controllers at 200-1000 person manufacturing firms"."""
    context: str | None = None
    """The start of a sentence about their situation, in the second person: "If you close
    the books monthly in Excel", "If you're shipping over 5,000 parcels a month", "With 50 to
    300 site workers"; None when nothing usable was said."""
    described: str = ""
    """The feedback's first clause whole, for the model's worksheet (never put in an email)."""


MAX_PHRASE_WORDS = 8
"""The most words of the audience that go into one sentence as its name."""
MAX_CONTEXT_WORDS = 12
"""The most words of the reader's situation taken from the feedback."""
MAX_SENTENCE_WORDS = 30
"""The longest sentence composed around the reader's situation and a chore."""

_PARENTHETICAL = re.compile(r"\s*\([^()]*\)")
_SENTENCE_BREAK = re.compile(r"(?<=[.;!?])\s+|\s+-{1,2}\s+|\s+—\s+")
_NEGATED = re.compile(r"^(?:not|never|no longer)\b", re.IGNORECASE)
_PLACE_WORDS = frozenset("at in for from across on within inside near".split())
_RELATIVE = frozenset({"who", "that", "which"})
_QUALIFIER_START = frozenset(
    "who whose that which where when while with because since including like such".split()
)
_SITUATION_END = re.compile(
    r"[,;.](?=\s)|\s(?:so|where|because|since|but|although|which means|each)\s", re.IGNORECASE
)
_THEY = re.compile(r"^(?:they|they're|they've|these (?:people|readers)|most of them)\b", re.I)
_TO_SECOND_PERSON = {
    "they": "you", "they're": "you're", "they've": "you've", "their": "your", "theirs": "yours",
    "themselves": "yourself", "is": "are", "was": "were", "has": "have", "does": "do",
}  # fmt: skip


def read_audience(text: str) -> Audience:
    """The audience a reviewer's feedback (or a brief's guess) describes, by this rule.

    The first clause that is not a negation ("Not hobbyists.") is read by
    :func:`audience_from_feedback`, without parentheses. Its phrase is the role up to the first
    qualifier ("at", "in", "of", "with", "who", an -ing word, a comma), then where they work
    ("at …", "in …", "of …" up to the next qualifier) and a short place after it ("in rural
    England"), at most :data:`MAX_PHRASE_WORDS` words. The context is the first of: a
    relative clause ("who close the books …") or a later sentence about them ("They check
    tanks at night …"), turned to "If you …"; an -ing phrase right after the phrase ("shipping
    over 5,000 parcels …"), as "If you're …"; a "with …" or "of 50 …" phrase, as "With …".
    Each is cut at a clause break (",", ";", "so", "where", …) and, past
    :data:`MAX_CONTEXT_WORDS` words, at its last "and" before the limit, or dropped.
    """
    flat = _one_line(_PARENTHETICAL.sub("", text))
    clauses = [c for c in _SENTENCE_BREAK.split(flat) if words(c)]
    while len(clauses) > 1 and _NEGATED.match(clauses[0]):
        clauses.pop(0)
    described = audience_from_feedback(clauses[0] if clauses else text)
    phrase, rest = _name_and_rest(described)
    context = _situation(rest, plural=_plural_head(phrase))
    if context is None:
        for clause in clauses[1:]:
            if _THEY.match(clause):
                context = _you_clause(clause.split(" ", 1)[1] if " " in clause else "", True)
                break
    return Audience(phrase=phrase, context=context, described=described)


def _name_and_rest(clause: str) -> tuple[str, list[str]]:
    """The audience's short name and the words after it."""
    tokens = clause.split()
    i = 0

    def take() -> list[str]:
        nonlocal i
        taken: list[str] = []
        while i < len(tokens):
            token = tokens[i]
            if taken and _is_qualifier(tokens, i):
                break
            taken.append(token.rstrip(",;:"))
            i += 1
            if token.endswith((",", ";", ":")):
                break
        return taken

    head = take()
    ended = bool(head) and tokens[i - 1].endswith((",", ";", ":"))
    name = list(head)
    if (
        not ended
        and i < len(tokens)
        and tokens[i].lower() == "of"
        and not _is_number_at(tokens, i + 1)
    ):
        i += 1
        name += ["of", *take()]
        ended = tokens[i - 1].endswith((",", ";", ":"))
    if not ended and i < len(tokens) and tokens[i].lower() in _PLACE_WORDS:
        where = [tokens[i]]
        i += 1
        where += take()
        name += where
        ended = tokens[i - 1].endswith((",", ";", ":"))
        if not ended and i < len(tokens) and tokens[i].lower() in {"in", "at"}:
            start = i
            i += 1
            place = [tokens[start], *take()]
            if len(place) <= 4 and len(name) + len(place) <= MAX_PHRASE_WORDS:
                name += place
            else:
                i = start
    if len(name) > MAX_PHRASE_WORDS:
        head_only = _audience_head(" ".join(name)) or " ".join(name[:4])
        return head_only, tokens[len(head_only.split()) :]
    return " ".join(name).rstrip(",;:"), tokens[i:]


def _is_qualifier(tokens: list[str], i: int) -> bool:
    """Whether the word at ``i`` starts a qualifier: a preposition, a relative pronoun, or an
    -ing word after a plural ("retailers shipping …", not "manufacturing firms")."""
    bare = tokens[i].lower().rstrip(",;:")
    if bare in _QUALIFIER_START | _PLACE_WORDS | {"of"}:
        return True
    before = tokens[i - 1].lower() if i > 0 else ""
    return _is_participle(bare) and before.endswith("s") and not before.endswith("ss")


def _is_participle(word: str) -> bool:
    return word.endswith("ing") and len(word) > 4 and word.isalpha() and word != "during"


def _is_number_at(tokens: list[str], i: int) -> bool:
    return i < len(tokens) and bool(re.match(r"\d", tokens[i]))


def _plural_head(phrase: str) -> bool:
    head = _audience_head(phrase) or phrase
    last = head.split()[-1].lower() if head.split() else ""
    return last.endswith("s") and not last.endswith("ss")


def _situation(rest: list[str], plural: bool) -> str | None:
    """The context sentence's start from the words after the audience's name."""
    lowered = [t.lower().rstrip(",;:") for t in rest]
    for index, word in enumerate(lowered):
        if word in _RELATIVE and index + 1 < len(rest):
            clause = _you_clause(" ".join(rest[index + 1 :]), plural)
            if clause:
                return clause
    if not rest:
        return None
    first = lowered[0]
    if _is_participle(first):
        said = _cut(" ".join(rest))
        return f"If you're {said}" if said else None
    if first == "with" or (first == "of" and _is_number_at(rest, 1)):
        said = _cut(" ".join(rest[1:]), stop=_RELATIVE)
        return f"With {said}" if said else None
    return None


def _you_clause(text: str, plural: bool) -> str | None:
    """ "close the books monthly in Excel" (what the reader does) as "If you close …"."""
    said = _cut(text)
    if not said:
        return None
    tokens = said.split()
    for index, token in enumerate(tokens):
        if index > 0 and tokens[index - 1].lower() != "and":
            continue  # the verbs: the first word, and each word after "and"
        verb = token.lower()
        if verb in _TO_SECOND_PERSON and verb not in {"their", "theirs", "themselves"}:
            tokens[index] = _TO_SECOND_PERSON[verb]
        elif not plural and verb.endswith("s") and not verb.endswith("ss") and verb.isalpha():
            tokens[index] = _base_verb(verb)
    tokens = [
        _TO_SECOND_PERSON[t.lower()] if t.lower() in {"their", "theirs", "themselves"} else t
        for t in tokens
    ]
    return "If you " + " ".join(tokens)


def _fitting(context: str, budget: int) -> str | None:
    """``context`` in at most ``budget`` words: cut at its last "and" that fits, else None."""
    tokens = context.split()
    while len(words(" ".join(tokens))) > budget:
        ands = [k for k, t in enumerate(tokens) if t.lower() == "and"]
        if not ands:
            return None
        tokens = tokens[: ands[-1]]
    return " ".join(tokens)


def _base_verb(verb: str) -> str:
    """ "runs" → "run", "worries" → "worry", "reaches" → "reach" (enough for a clause)."""
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("sses", "shes", "ches", "xes", "zes")):
        return verb[:-2]
    return verb[:-1]


def _cut(text: str, stop: frozenset[str] = frozenset()) -> str | None:
    """``text`` up to its first clause break (and before any word of ``stop``), at most
    :data:`MAX_CONTEXT_WORDS` words: cut at the last "and" before the limit, else None."""
    text = _SITUATION_END.split(" " + text + " ", maxsplit=1)[0].strip()
    tokens = text.split()
    for index, token in enumerate(tokens):
        if token.lower() in stop:
            tokens = tokens[:index]
            break
    if len(tokens) > MAX_CONTEXT_WORDS:
        ands = [k for k, t in enumerate(tokens[: MAX_CONTEXT_WORDS + 1]) if t.lower() == "and"]
        if not ands:
            return None
        tokens = tokens[: ands[-1]]
    said = _strip_end(" ".join(tokens))
    if not said or len(words(said)) < 2 or said.split()[-1].lower() in _DANGLING:
        return None
    return said


def _one_line(text: str) -> str:
    return " ".join(text.replace("{", "(").replace("}", ")").split())


def _strip_end(text: str) -> str:
    return text.strip().rstrip(".;,:!-–— ").strip()


def _lower_first(text: str) -> str:
    """Lower-case a capitalised first word ("Controllers" → "controllers"), but leave
    acronyms and words with inner capitals alone ("CTOs", "HubSpot")."""
    if not text:
        return text
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first[1:] == first[1:].lower() and first[1:2].isalpha():
        return text[0].lower() + text[1:]
    return text


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    """``text`` as a sentence: capital first letter, one closing mark."""
    text = _upper_first(text.strip())
    return text if text.endswith((".", "!", "?")) else text + "."


_NOUN_START = frozenset(
    """a an the one two three four five six seven eight nine ten every each all any no
    zero more less fewer faster better cheaper lower higher up over under your their our
    its this that these those automatic automated real-time instant live same-day simple
    easy fast free online smart savings""".split()
)
_BASE_VERBS = frozenset(
    """cut save reduce automate get turn help make find book track send stop catch answer
    replace speed shorten lower raise grow increase boost win keep close write draft plan
    schedule manage sync connect check match reconcile build give let bring take run move
    collect monitor detect prevent protect secure audit clean sort remove avoid spot show
    see halve double triple reach hire train onboard pay invoice ship deliver sell handle
    predict forecast measure test review approve fix resolve route translate summarize
    summarise organize organise simplify streamline unify centralize centralise""".split()
)


def offer_clause(product: str, offer: str) -> str:
    """One sentence saying what the product does, from the brief's own words.

    "reconciles invoices …" (a verb) → "Ledgerly reconciles invoices …"; "cut no-shows …"
    (a base verb) → "Acme helps you cut no-shows …"; "reconciling …" → "Ledgerly is about
    reconciling …"; anything else (a noun phrase) → "With Acme you get an online page …".
    """
    offer = _strip_end(" ".join(offer.split()))
    first = offer.split(" ", 1)[0]
    lowered = first.lower()
    if first[:1].isupper() and first[1:] == first[1:].lower():
        offer = offer[0].lower() + offer[1:]
    name = product.strip()
    if lowered in _BASE_VERBS:
        text = f"{name} helps you {offer}"
    elif lowered in _NOUN_START or any(c.isdigit() for c in lowered):
        text = f"With {name} you get {offer}"
    elif lowered.endswith("ing") and len(lowered) > 5:
        text = f"{name} is about {offer}"
    elif lowered.endswith("s") and not lowered.endswith("ss") and lowered.isalpha():
        text = f"{name} {offer}"  # a verb in the third person: "reconciles", "cuts"
    elif re.search(r"(?:ize|ise|ate|ify)$", lowered) or lowered.endswith("en"):
        text = f"{name} helps you {offer}"
    else:
        text = f"With {name} you get {offer}"
    return _sentence(text)


def _cta_sentence(cta: str | None) -> str:
    if not cta:
        return "Would you be open to a 15-minute call next week?"
    cta = " ".join(cta.split())
    if cta.endswith("?"):
        return _upper_first(cta)
    return _sentence(f"If this sounds useful, the next step is simple: {_lower_first(cta)}")


def _signature(sender: str) -> tuple[str, str | None]:
    """The sender's name and, after a comma, their title: ("Sam Roy", "CEO of Ledgerly")."""
    name, _, title = (part.strip() for part in sender.partition(","))
    return name, (title or None)


def _greeting(fields: Sequence[str]) -> str:
    return "Hi {{first_name|there}}," if "first_name" in fields else "Hi there,"


def _wants_shorter(task: WritingTask) -> bool:
    if task.kind != "revise" or not task.guidance:
        return False
    return bool(re.search(r"\b(short|shorter|brief|briefer|concise|fewer words|less text)\b",
                          task.guidance[-1], re.IGNORECASE))  # fmt: skip


def compose(task: WritingTask, audience: Audience | None, lines: Lines) -> EmailSequence:
    """The two emails, in code, around the brief's words and the model's lines.

    The audience is named by its short phrase; what else was said about the reader opens the
    sentence about their chore ("If you close the books monthly in Excel, my guess is …").
    Nothing is said about the product beyond the brief's own words."""
    brief = task.brief
    product = _one_line(brief.product)
    name, title = _signature(_one_line(brief.sender))
    greeting = _greeting(task.fields)
    short = _wants_shorter(task)
    what = offer_clause(product, _one_line(brief.offer))
    audience_text = _one_line(audience.phrase) if audience else None
    chore = lines.chore
    second = lines.another_chore  # never the opener's chore again
    # Asked for shorter emails, the context sentence goes first.
    context = _one_line(audience.context) if audience and audience.context and not short else None
    guess = f"my guess is that {chore} takes more of your week than it should."
    if context and chore:
        context = _fitting(context, MAX_SENTENCE_WORDS - len(words(guess)))
        guess = f"{context}, {guess}" if context else guess

    if audience_text and chore:
        hook = f"I'm writing to {audience_text}. {_upper_first(guess)}"
    elif audience_text:
        hook = f"I'm writing to {audience_text} about a problem {product} was built to solve."
        hook += f" {context}, it may be worth a minute." if context else " I'll keep it short."
    elif chore:
        hook = f"I'll keep this short. {_upper_first(guess)}"
    else:
        hook = _sentence(
            f"I'll keep this short: {product} may take a chore off your list this month"
        )
    sign_off = f"Best,\n{name}" + (f"\n{title}" if title else "")
    cta = _one_line(brief.cta) if brief.cta else None
    opener_body = "\n\n".join([greeting, hook, what, _cta_sentence(cta), sign_off])

    if second:
        question = f"How many hours a month go into {second}?"
    else:
        question = f"How much of your week goes to the work {product} could take off your plate?"
    follow_body = "\n\n".join(
        [
            greeting if "first_name" in task.fields else "Hi again,",
            f"{_sentence(f'A short follow-up on my note about {product}')} {question}",
            *([] if short else [f"If the answer is more than you'd like, {product} can help."]),
            "Is this worth a conversation? A one-line reply is plenty, and if the timing is "
            "wrong I won't write again.",
            f"Thanks,\n{name}",
        ]
    )

    head = _audience_head(audience_text) if audience_text else None
    for_reader = f"{product} for {head}" if head else None
    if chore and len(words(chore)) <= 7:
        opener_subject = f"Still {chore}?"
    else:
        opener_subject = for_reader or _fallback_subject(product, _one_line(brief.offer))
    follow_subject = for_reader if for_reader and for_reader != opener_subject else None
    return EmailSequence(
        opener=EmailStep(subject=_subject(opener_subject), body=opener_body, wait_days=0),
        follow_up=EmailStep(
            subject=_subject(follow_subject or f"Following up on {product}"),
            body=follow_body,
            wait_days=3,
        ),
    )


_HEAD_END = re.compile(
    r"\s+(?:at|in|of|with|who|whose|that|which|for|from|across|working|running|on|under|"
    r"over|outside|inside|near|based)\b|[,;(]",
    re.IGNORECASE,
)


def _audience_head(audience: str) -> str | None:
    """The audience's head noun phrase: "controllers at … firms who …" → "controllers",
    "owners of farm shops in …" → "owners of farm shops" (a lone noun keeps its "of")."""
    match = _HEAD_END.search(audience)
    head = audience[: match.start()] if match else audience
    lone = [w for w in words(head) if w not in ("a", "an", "the")]
    if match and len(lone) == 1 and match.group().strip().lower() == "of":
        rest = audience[match.end() :]
        after = _HEAD_END.search(rest)
        head = audience[: match.end() + (after.start() if after else len(rest))]
    head = head.strip()
    return head if 1 <= len(words(head)) <= 5 else None


def _subject(text: str) -> str:
    return _upper_first(" ".join(text.split()))[:200]


_OFFER_BREAK = re.compile(
    r"[,;.:(]| - |\s(?:by|with|from|for|in|using|via|so|and|across|while|without)\s",
    re.IGNORECASE,
)


def _fallback_subject(product: str, offer: str) -> str:
    """ "Roomly: fills empty meeting rooms": the product and the offer up to its first break,
    when that is short; else a plain "A note about Roomly"."""
    clause = _OFFER_BREAK.split(_strip_end(offer), maxsplit=1)[0].strip()
    if 2 <= len(clause.split()) <= 7:
        return f"{product.rstrip('.!?,;:')}: {_lower_first(clause)}"
    return f"A note about {product}"


# --------------------------------------------------------------------------- the whole job


def compose_from_lines(
    model: LineModel, task: WritingTask, seed: int, stats: ComposeStats | None = None
) -> EmailSequence:
    """The sequence a task asks for: model lines (seeded), then composition."""
    stats = stats if stats is not None else ComposeStats()
    started = time.perf_counter()
    if task.kind in ("refine", "revise") and task.feedback:
        audience: Audience | None = read_audience(task.feedback)
    elif task.brief.audience:
        audience = read_audience(task.brief.audience)
    else:
        audience = None
    lines = write_lines(model, task, audience.described if audience else None, seed, stats)
    sequence = compose(task, audience, lines)
    stats.seconds = time.perf_counter() - started
    return sequence


class LlamaLines:
    """:class:`LineModel` over a ``llama_cpp.Llama``: the head stays in the KV cache.

    ``start`` keeps exactly the head's tokens evaluated (evaluating them once, alone, the
    first time), so every task starts from the same state and the same seed gives the same
    lines whatever ran before. Not thread-safe: hold the model's lock around a whole task.
    """

    def __init__(self, llama: Any, temperature: float = TEMPERATURE) -> None:
        self.llama = llama
        self.temperature = temperature
        self._tokens: dict[tuple[str, bool], list[int]] = {}

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        key = (text, bos)
        if key not in self._tokens:
            # special=False: a brief that contains "<start_of_turn>" stays plain text.
            tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=bos, special=False)
            if len(self._tokens) > 256:
                self._tokens.clear()
            self._tokens[key] = tokens
        return list(self._tokens[key])

    def start(self, head: list[int]) -> None:
        llama = self.llama
        n = len(head)
        if llama.n_tokens >= n and list(llama.input_ids[:n]) == head:
            llama.n_tokens = n  # forget what followed the head; its KV is dropped on reuse
            return
        llama.reset()
        llama.eval(head)

    def complete(self, prompt: list[int], *, max_tokens: int, seed: int) -> Completion:
        out = self.llama.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=self.temperature,
            seed=seed,
            stop=["\n"],
        )
        choice = out["choices"][0]
        return Completion(
            text=choice["text"],
            tokens=int(out["usage"]["completion_tokens"]),
            finished=choice["finish_reason"] == "stop",
        )
