"""A plain line from the lead's own columns, written in code: the embedded model's lines.

The embedded 270M model writes short phrases about a *reader* tolerably (``llm/local/writer.py``),
but asked about one lead it guesses: given a financial controller at a food manufacturer it
wrote "checking suppliers on the spot" as often as anything about invoices, and "cleaning the
dental clinics' toilets" for a dental group's operations director; each sample took 3-11 s
on two loaded cores, so four samples a lead would take days for 10,000 leads. A line is where
a wrong guess about a person shows most, so with the embedded model the line says only what
the lead's row says — their title and company — in one of a few plain sentences, picked by a
stable hash so that neighbouring leads do not all read alike. It is labelled
:data:`WRITER_PLAIN` wherever it is shown, and it passes the same checks as an LLM's line.
"""

from __future__ import annotations

import hashlib
import time

from ..merge import field_name
from .estimate import NO_CALL, CallTokens
from .lines import LineRefused, LineTask, check_line
from .writer import LineResult

WRITER_PLAIN = "written without an LLM, from the lead's columns"

TITLE_FIELDS = ("title", "job_title", "jobtitle", "position", "role", "job", "designation")
COMPANY_FIELDS = (
    "company", "company_name", "companyname", "organization", "organisation",
    "organization_name", "organisation_name", "account", "account_name", "employer",
    "business", "business_name",
)  # fmt: skip
CITY_FIELDS = ("city", "town", "location")
MAX_VALUE_CHARS = 60
"""A longer title or company is not a title or a company: it is left out of a plain line."""

# No "I'm writing to you": the embedded model's opener goes on "I'm writing to {audience}".
_BOTH = (
    "This one is for you as {title} at {company}.",
    "A note for you as {title} at {company}.",
    "A short note for you, as {title} at {company}.",
)
_BOTH_CITY = (
    "This one is for you as {title} at {company} in {city}.",
    "A note for you as {title} at {company} in {city}.",
)
_COMPANY = (
    "This one is for you at {company}.",
    "A short note for you at {company}.",
)
_TITLE = ("This one is for you as {title}.",)


class PlainLineWriter:
    """Writes :data:`WRITER_PLAIN` lines: no LLM call, no cost, the same checks."""

    name = WRITER_PLAIN
    tries = 1

    def tokens_for(self, task: LineTask) -> CallTokens:
        return NO_CALL

    async def write(self, task: LineTask) -> LineResult:
        started = time.monotonic()
        problems: list[str] = []
        for template in _templates(task):
            try:
                line = check_line(template, task)
            except LineRefused as refused:  # a title with a link in it, …
                problems.extend(refused.problems)
                continue
            return LineResult(
                row=task.row, line=line, writer=WRITER_PLAIN, seconds=time.monotonic() - started
            )
        reason = (
            f"{task.who} has no title or company column to write a plain line from (looked "
            f"for {', '.join(TITLE_FIELDS[:2])}, {', '.join(COMPANY_FIELDS[:2])} and the like)"
            if not problems
            else f"no plain line for {task.who} passes the checks: {problems[0]}"
        )
        return LineResult(
            row=task.row,
            line=None,
            skipped=reason,
            writer=WRITER_PLAIN,
            seconds=time.monotonic() - started,
        )


def _templates(task: LineTask) -> list[str]:
    """Every plain line this lead's columns allow, the lead's own pick first."""
    values = _roles(task)
    title, company, city = values.get("title"), values.get("company"), values.get("city")
    if title and company and city:
        shapes = [_BOTH_CITY, _BOTH]
    elif title and company:
        shapes = [_BOTH]
    elif company:
        shapes = [_COMPANY]
    elif title:
        shapes = [_TITLE]
    else:
        return []
    pick = int.from_bytes(
        hashlib.blake2b(repr(sorted(values.items())).encode()).digest()[:4], "big"
    )
    lines = []
    for shape in shapes:
        start = pick % len(shape)
        for template in shape[start:] + shape[:start]:
            lines.append(template.format(title=title, company=company, city=city))
    if title and company:
        lines += [t.format(company=company) for t in _COMPANY]
    return lines


def _roles(task: LineTask) -> dict[str, str]:
    """The lead's title, company and city, by their columns' names."""
    found: dict[str, str] = {}
    for name, value in task.columns:
        try:
            key = field_name(name)
        except ValueError:
            continue
        value = value.strip().rstrip(".,;:")
        if len(value) > MAX_VALUE_CHARS or not value:
            continue
        for role, names in (("title", TITLE_FIELDS), ("company", COMPANY_FIELDS),
                            ("city", CITY_FIELDS)):  # fmt: skip
            if key in names and role not in found:
                found[role] = value
    return found
