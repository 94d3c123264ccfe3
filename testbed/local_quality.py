"""The embedded model's quality bar, shared by ``tests/unit/test_local_quality.py`` and
``benchmarks/local_model.py``: :data:`QUALITY_CASES` are twelve briefs (different products,
industries and senders, with and without an audience and a call to action), each with a
reviewer's feedback and a seed, fixed before any output was looked at; a case passes only if
every check of :func:`check_case` holds on its draft and refinement."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from bridgic_coldmail.models import Brief, EmailSequence, EmailStep

# --------------------------------------------------------------------------- the fixed cases


@dataclass(frozen=True)
class QualityCase:
    """A brief, the reviewer's feedback on the audience, merge fields and the seed used."""

    brief: Brief
    feedback: str
    seed: int
    fields: tuple[str, ...] = ()


QUALITY_CASES: tuple[QualityCase, ...] = (
    QualityCase(
        Brief(
            product="Ledgerly",
            offer="reconciles invoices against bank feeds automatically, saving finance "
            "teams 2 days a month",
            sender="Sam Roy, CEO of Ledgerly",
        ),
        "Controllers at 200-1000 person manufacturing firms who close the books monthly in Excel",
        seed=101,
    ),
    QualityCase(
        Brief(
            product="Acme Scheduler",
            offer="cuts patient no-shows by 30% with two-way SMS reminders",
            sender="Dana Lee, founder of Acme",
            audience="clinic managers",
        ),
        "CTOs at mid-size hospitals",
        seed=202,
        fields=("first_name",),
    ),
    QualityCase(
        Brief(
            product="Shipcheck",
            offer="audits parcel carrier invoices and claims refunds for late deliveries",
            sender="Priya Nair",
            audience="e-commerce operations leads",
            cta="a 20-minute demo",
        ),
        "Actually, finance directors at online retailers shipping over 5,000 parcels a month",
        seed=303,
    ),
    QualityCase(
        Brief(
            product="Harvest Hub",
            offer="an online ordering page for farm shops, live in a day",
            sender="Tom Okafor, co-founder of Harvest Hub",
            cta="reply and I'll set up a free trial page for your shop",
        ),
        "owners of family-run farm shops in rural England",
        seed=404,
        fields=("first_name", "company"),
    ),
    QualityCase(
        Brief(
            product="Tallyho!",
            offer="turns paper timesheets into payroll-ready exports",
            sender="Maria Gonzalez, Head of Sales at Tallyho!",
            audience="construction companies",
        ),
        "Payroll administrators at construction firms with 50 to 300 site workers, not the owners",
        seed=505,
    ),
    QualityCase(
        Brief(
            product="CodeGuard",
            offer="catches leaked API keys in pull requests before they are merged",
            sender="Lena Fischer",
            audience="engineering managers",
            cta="Start a free 14-day trial at codeguard.dev",
        ),
        "Security leads at fintech startups with 20-100 engineers",
        seed=606,
    ),
    QualityCase(
        Brief(
            product="Roomly",
            offer="fills empty meeting rooms by releasing no-show bookings automatically",
            sender="Chris Park, Roomly",
        ),
        "Workplace managers at companies with hybrid offices of 300+ staff",
        seed=707,
        fields=("first_name",),
    ),
    QualityCase(
        Brief(
            product="VetNote",
            offer="writing consultation notes from a recording of the appointment",
            sender="Dr. Aisha Khan, founder of VetNote",
            audience="veterinary clinics",
            cta="a 15-minute demo",
        ),
        "Practice owners of small-animal vet clinics with 2-5 vets who write notes after hours",
        seed=808,
    ),
    QualityCase(
        Brief(
            product="FleetPulse",
            offer="predicts truck breakdowns from engine data two weeks ahead",
            sender="Jordan Blake, VP Sales at FleetPulse",
            cta="Book a call at fleetpulse.io/demo",
        ),
        "Maintenance managers at regional trucking fleets of 50-500 vehicles",
        seed=909,
    ),
    QualityCase(
        Brief(
            product="Menu Mate",
            offer="a QR menu that updates prices across all your locations at once",
            sender="Sofia Rossi",
            audience="restaurant owners",
        ),
        "Operations directors at restaurant groups with 5 to 40 locations",
        seed=1111,
    ),
    QualityCase(
        Brief(
            product="GrantBox",
            offer="find and track grants your nonprofit is eligible for",
            sender="Ben Adler, GrantBox",
            audience="nonprofit directors",
            cta="Reply 'yes' and I'll send three grants that match you.",
        ),
        "The emails should target development officers at small arts nonprofits (under 20 staff)",
        seed=1212,
    ),
    QualityCase(
        Brief(
            product="ClearCloud Backup",
            offer="backs up Microsoft 365 mailboxes and restores any file in minutes",
            sender="Ravi Shah, Account Executive at ClearCloud",
            audience="IT managers",
            cta="a free backup health check",
        ),
        "IT directors at law firms of 50-200 lawyers who worry about losing client email",
        seed=1313,
    ),
)
"""Fixed before any output was looked at; the test asserts on exactly these."""

QUALITY_PASS_MARK = 11

LONG_FEEDBACK_CASES: tuple[QualityCase, ...] = (
    QualityCase(
        Brief(
            product="Kilnbook",
            offer="books firing slots on shared kilns and tracks who loaded what",
            sender="Marta Silva, founder of Kilnbook",
        ),
        "Ceramics program coordinators at community colleges who run shared kilns for 100+ "
        "students and spend Fridays sorting out firing schedules by email",
        seed=2101,
    ),
    QualityCase(
        Brief(
            product="Pawpost",
            offer="sends vaccination reminders to pet owners by text",
            sender="Liam O'Brien",
            audience="vets",
        ),
        "Practice managers at multi-site veterinary groups (3 to 12 clinics) who are measured "
        "on rebooking rates and still send reminder postcards by hand",
        seed=2202,
        fields=("first_name",),
    ),
    QualityCase(
        Brief(
            product="Spoolr",
            offer="predicts filament and resin needs for 3D print farms and reorders before you "
            "run out",
            sender="Ana Costa, Spoolr",
        ),
        "Not hobbyists. Operations leads at small manufacturing shops running 10-50 printers "
        "around the clock, where a stalled print costs a day",
        seed=2303,
    ),
    QualityCase(
        Brief(
            product="Docketly",
            offer="turns court deadlines into shared calendar entries for the whole team",
            sender="Ruth Adeyemi, co-founder of Docketly",
            cta="a 20-minute walkthrough",
        ),
        "Litigation paralegals at mid-size law firms; they track deadlines in spreadsheets and "
        "get blamed when one is missed, so the pitch should be about peace of mind",
        seed=2404,
    ),
    QualityCase(
        Brief(
            product="Crateful",
            offer="tracks returnable crates between the warehouse and stores",
            sender="Omar Haddad, Crateful",
            audience="retail chains",
        ),
        "The right people are logistics coordinators at regional grocery chains with 20 to 80 "
        "stores who lose thousands of crates a year and reorder them every quarter",
        seed=2505,
    ),
    QualityCase(
        Brief(
            product="TutorTrack",
            offer="schedules tutoring sessions and sends progress notes to parents automatically",
            sender="Grace Kim, TutorTrack",
            cta="Reply and I'll set up a free month for your centre.",
        ),
        "Owners of independent tutoring centres with 5-15 tutors, usually former teachers, who "
        "do the scheduling themselves on weekends",
        seed=2606,
        fields=("first_name", "company"),
    ),
    QualityCase(
        Brief(
            product="Brewlog",
            offer="logs fermentation temperatures from every tank and alerts the brewer on a phone",
            sender="Felix Braun, Brewlog",
        ),
        "Head brewers at craft breweries producing 2,000 to 20,000 barrels a year. They check "
        "tanks at night and worry about a stuck fermentation ruining a batch.",
        seed=2707,
    ),
    QualityCase(
        Brief(
            product="Permitpal",
            offer="fills in and files building permit applications for contractors",
            sender="Dana Whitfield, Permitpal",
            audience="contractors",
        ),
        "Office managers at residential renovation companies in California who handle permits "
        "for 30+ jobs a year across several cities, each with its own forms",
        seed=2808,
    ),
)
"""Long feedbacks, the kind a person types when they know the market: written down, with
their seeds, before any output of the change that reads them (0.6) was looked at."""

LONG_FEEDBACK_PASS_MARK = 7

# --------------------------------------------------------------------------- the checks

OLD_EXAMPLE_TEXT = ("Brightdesk", "support teams at online shops", "shoe shop")
"""Names from the compact prompt's worked example that the issue saw copied (0.4)."""


def forbidden_example_text() -> tuple[str, ...]:
    """The names of every example product and reader ever put in a small model's prompt: the
    worksheet's (read from ``local_writer.WORKSHEET_HEAD``) and the old worked example's."""
    from bridgic_coldmail.llm.local.writer import WORKSHEET_HEAD

    names = [
        line.partition(": ")[2]
        for line in WORKSHEET_HEAD.splitlines()
        if line.startswith(("Product: ", "Reader: "))
    ]
    return (*names, *OLD_EXAMPLE_TEXT)


def _example_runs() -> frozenset[tuple[str, ...]]:
    """Every run of five words in the values of the worksheet's examples."""
    from bridgic_coldmail.llm.local.writer import WORKSHEET_HEAD

    runs = set()
    for line in WORKSHEET_HEAD.split("\n\n", 1)[1].splitlines():
        ws = _words(line.partition(": ")[2])
        runs |= {tuple(ws[i : i + 5]) for i in range(len(ws) - 4)}
    return frozenset(runs)


_CHECK_STOP_WORDS = frozenset(
    """a an the and or of at in on for to with by from who whom which that this these those
    their they them is are be been was were should must will would could can really actually
    emails email sequence target targeting audience readers reader people write written aim
    aimed about not but only just more than over under into our your you it its as""".split()
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def feedback_key_terms(feedback: str) -> list[str]:
    """The words that say who the feedback means, by this rule: the feedback's first clause
    (up to the first ".", ";", "(" or "not"; a first sentence that only says who it is not,
    "Not hobbyists.", is skipped), its words without the stop words of
    :data:`_CHECK_STOP_WORDS`, each kept once."""
    sentences = [s for s in re.split(r"(?<=\.)\s+", feedback.strip()) if _words(s)]
    while len(sentences) > 1 and re.match(r"(?i)not\b", sentences[0]):
        sentences.pop(0)
    clause = re.split(r"[.;(]|\bnot\b", " ".join(sentences), maxsplit=1)[0]
    terms: list[str] = []
    for word in _words(clause):
        if word not in _CHECK_STOP_WORDS and word not in terms:
            terms.append(word)
    return terms


NAMING_TERMS = 6
"""How many of the feedback's first key terms say who it means (the role and where they
work); what follows is context about them."""


def _names(haystack: str, phrase: str) -> bool:
    """Whether ``phrase`` appears in ``haystack`` as words, case-insensitively."""
    pattern = r"(?<![a-z0-9])" + re.escape(phrase.lower()) + r"(?![a-z0-9])"
    return re.search(pattern, haystack.lower()) is not None


def _sender_name(sender: str) -> str:
    return sender.split(",", 1)[0].strip()


def _product_name(product: str) -> str:
    return product.strip().rstrip(".!?,;:").strip()


def check_email(step: EmailStep, brief: Brief, fields: tuple[str, ...]) -> list[str]:
    """What is wrong with one email (empty when nothing is)."""
    problems = []
    text = f"{step.subject}\n{step.body}"
    if not _names(text, _product_name(brief.product)):
        problems.append("does not name the product")
    tail = "\n".join([line for line in step.body.splitlines() if line.strip()][-3:])
    if _sender_name(brief.sender).lower() not in tail.lower():
        problems.append("is not signed by the sender")
    for phrase in forbidden_example_text():
        if _names(text, phrase):
            problems.append(f"contains the prompt example's {phrase!r}")
    ws = _words(text)
    copied = {tuple(ws[i : i + 5]) for i in range(len(ws) - 4)} & _example_runs()
    if copied:
        problems.append(f"copies the prompt example's {' '.join(sorted(copied)[0])!r}")
    if step.subject.strip().rstrip(".!?").lower() == _product_name(brief.product).lower():
        problems.append("has the product name as its whole subject")
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", step.body) if s.strip()]
    repeated = {s for s in sentences if sentences.count(s) > 1 and len(_words(s)) > 3}
    if repeated:
        problems.append(f"repeats {sorted(repeated)[0]!r}")
    for name in re.findall(r"\{\{\s*([^}|]+?)\s*(?:\|[^}]*)?\}\}", text):
        if name not in fields:
            problems.append(f"uses the merge field {name!r}, which the task does not have")
    return problems


def check_sequence(
    sequence: EmailSequence, brief: Brief, fields: tuple[str, ...] = ()
) -> list[str]:
    """What is wrong with a sequence: every email's problems, a short opener, a copied
    follow-up."""
    problems = [f"opener {p}" for p in check_email(sequence.opener, brief, fields)]
    problems += [f"follow-up {p}" for p in check_email(sequence.follow_up, brief, fields)]
    if len(_words(sequence.opener.body)) < 40:
        problems.append(f"the opener's body has {len(_words(sequence.opener.body))} words")
    opener, follow = _words(sequence.opener.body), _words(sequence.follow_up.body)
    similarity = difflib.SequenceMatcher(None, opener, follow, autojunk=False).ratio()
    if similarity >= 0.6 or sequence.opener.subject == sequence.follow_up.subject:
        problems.append(f"the follow-up copies the opener (similarity {similarity:.2f})")
    return problems


def check_refinement(
    refined: EmailSequence, feedback: str, brief: Brief | None = None
) -> list[str]:
    """Whether the refinement names the audience and uses what else was said about them.

    Naming: at least two thirds of the feedback's first :data:`NAMING_TERMS` key terms
    (:func:`feedback_key_terms`) appear in it, compared without plural endings. Context: when
    the feedback has more key terms than that, at least one of the others that the brief does
    not already contain appears too.
    """
    terms = feedback_key_terms(feedback)
    text = " ".join(f"{s.subject} {s.body}" for s in refined.steps)
    present = {_stem(w) for w in _words(text)}
    naming = terms[:NAMING_TERMS]
    missing = [t for t in naming if _stem(t) not in present]
    if not naming or len(naming) - len(missing) < max(1, -(-2 * len(naming) // 3)):
        return [f"the refinement misses the feedback's {missing} (key terms {terms})"]
    known = {_stem(w) for w in _words(" ".join(_brief_texts(brief)))} if brief else set()
    context = [t for t in terms[NAMING_TERMS:] if _stem(t) not in known]
    if context and not any(_stem(t) in present for t in context):
        return [f"the refinement uses none of the feedback's {context}"]
    return []


def _brief_texts(brief: Brief) -> list[str]:
    return [t for t in (brief.product, brief.offer, brief.sender, brief.audience, brief.cta) if t]


LONGEST_SENTENCE_WORDS = 32
"""A sentence longer than this reads like a pasted list, not like a person."""
UNSUPPORTED_CLAIMS = (
    r"\b(?:a few|few|two|in|within|under) (?:minutes|seconds|clicks)\b",
    r"\bin no time\b",
    r"\b(?:easy|quick|simple) to (?:set up|start|try|use)\b",
    r"\bno (?:setup|training) (?:needed|required)\b",
)
"""Claims about the product that only its brief could make (how quick or easy it is): an
email may make one only when the brief's text does."""


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if _words(s)]


def pasted_run(sentence: str, source: str) -> list[str]:
    """The longest run of ``source``'s words that ``sentence`` contains verbatim."""
    said, given = _words(sentence), _words(source)
    best: list[str] = []
    for start in range(len(given)):
        for end in range(len(given), start + len(best), -1):
            run = given[start:end]
            if any(said[i : i + len(run)] == run for i in range(len(said) - len(run) + 1)):
                best = run
                break
    return best


def check_reads_naturally(
    sequence: EmailSequence, brief: Brief, feedback: str | None = None
) -> list[str]:
    """What reads as pasted or generic rather than written: a sentence that carries more than
    half of the feedback verbatim (at least nine words of it), a sentence of more than
    :data:`LONGEST_SENTENCE_WORDS` words, a claim of :data:`UNSUPPORTED_CLAIMS` the brief
    does not make."""
    problems = []
    brief_text = " ".join(t for t in (brief.product, brief.offer, brief.cta or "") if t).lower()
    limit = max(8, -(-len(_words(feedback or "")) // 2))
    for label, step in (("opener", sequence.opener), ("follow-up", sequence.follow_up)):
        for sentence in _sentences(f"{step.subject}\n{step.body}"):
            run = pasted_run(sentence, feedback) if feedback else []
            if len(run) > limit:
                problems.append(f"{label} pastes {len(run)} words of the feedback: {sentence!r}")
            if len(_words(sentence)) > LONGEST_SENTENCE_WORDS:
                problems.append(f"{label} has a sentence of {len(_words(sentence))} words")
        for claim in UNSUPPORTED_CLAIMS:
            found = re.search(claim, step.body, re.IGNORECASE)
            if found and not re.search(claim, brief_text, re.IGNORECASE):
                problems.append(f"{label} claims {found.group()!r}, which the brief does not")
    return problems


def check_case(case: QualityCase, draft: EmailSequence, refined: EmailSequence) -> list[str]:
    """Every problem of one case's draft and refinement; the case passes when there is none."""
    problems = [f"draft: {p}" for p in check_sequence(draft, case.brief, case.fields)]
    problems += [
        f"draft: {p}" for p in check_reads_naturally(draft, case.brief, case.brief.audience)
    ]
    problems += [f"refinement: {p}" for p in check_sequence(refined, case.brief, case.fields)]
    problems += [
        f"refinement: {p}" for p in check_reads_naturally(refined, case.brief, case.feedback)
    ]
    problems += check_refinement(refined, case.feedback, case.brief)
    return problems
