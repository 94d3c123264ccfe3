"""Merge fields: ``{{first_name}}`` placeholders in a sequence, filled from a lead list.

The grammar is deliberately small, so that one regular expression can describe exactly the
texts that are allowed (the LLM's JSON schema carries it) and so that the sending tools
(Smartlead, Instantly, lemlist, Apollo, which all read ``{{…}}`` as *their* variables) never
see a brace they could misread::

    text        := ( any character except "{" and "}" | placeholder )*
    placeholder := "{{" " "* name " "* ( "|" fallback )? "}}"
    name        := [a-z] [a-z0-9_]{0,63}
    fallback    := any characters except "{", "}", "|", CR and LF  (trimmed when rendered)

* ``{`` and ``}`` are reserved: outside a placeholder they are refused, so ``{{{x}}}``,
  ``{x}`` or an unclosed ``{{x`` are errors, never silently passed on.
* Spaces may surround the name and the ``|``: ``{{ first_name | there }}`` is
  ``{{first_name|there}}``. Tabs and line breaks inside a placeholder are refused.
* A field is *missing* for a lead when its cell is empty or only whitespace. A missing field
  uses its fallback; ``{{first_name|}}`` asks for an empty fallback explicitly. A missing
  field with no fallback makes the text unrenderable for that lead (``render`` says which).

Field names come from a lead list's header (:func:`field_name`): NFKD-folded to ASCII, lower
case, every run of other characters turned into one ``_``, leading/trailing ``_`` dropped:
"First Name" → ``first_name``, "E-mail" → ``e_mail``, "Société" → ``societe``. A header that
leaves nothing, starts with a digit or is longer than 64 characters after that is refused
(rename the column), and so are two headers that become the same name ("First Name" and
"first_name"): a placeholder must name one column, not whichever comes first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import InvalidInput
from .text import CONTROL_CLASS, INVISIBLE_CLASS, is_invisible, not_text, preview, preview_list

MAX_NAME_CHARS = 64
NAME_PATTERN = r"[a-z][a-z0-9_]{0,63}"
"""What a field name may be (ASCII snake case, so every sending tool accepts it)."""

_NAME = re.compile(NAME_PATTERN)
# Permissive on purpose: it finds every {{…}} without braces inside, well-formed or not, so
# that a malformed one gets a message of its own rather than "stray brace".
_CANDIDATE = re.compile(r"\{\{([^{}]*)\}\}")
_INNER = re.compile(r" *([^ |]*) *(?:\|(.*))?", re.DOTALL)
_FALLBACK_FORBIDDEN = re.compile(r"[|\r\n]")


@dataclass(frozen=True)
class Placeholder:
    """One well-formed ``{{name}}`` or ``{{name|fallback}}`` in a text."""

    name: str
    fallback: str | None
    """The fallback, trimmed; None when the placeholder has no ``|``."""
    start: int
    end: int

    @property
    def raw(self) -> str:
        """The placeholder as ``{{name}}`` / ``{{name|fallback}}`` (normalised spacing)."""
        if self.fallback is None:
            return f"{{{{{self.name}}}}}"
        return f"{{{{{self.name}|{self.fallback}}}}}"


@dataclass(frozen=True)
class Missing:
    """``render`` could not fill these fields: no value for this lead and no fallback."""

    fields: tuple[str, ...]


def field_name(header: str) -> str:
    """The merge-field name of one column header, or ``InvalidInput`` saying how to fix it."""
    broken = not_text(header)
    if broken is not None:  # folding to ASCII would drop it quietly
        raise InvalidInput(f"column {preview(header)} {broken.message()}")
    folded = unicodedata.normalize("NFKD", header).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^a-z0-9]+", "_", folded.lower()).strip("_")
    if name and name[0].isalpha() and len(name) <= MAX_NAME_CHARS:
        return name

    shown = preview(header)
    if not name:
        raise InvalidInput(
            f"column {shown} has no letters or digits a merge field can be named after; "
            "give it a name such as 'company'"
        )
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(
            f"column {shown} is too long for a field name (at most {MAX_NAME_CHARS} "
            "characters after normalisation); shorten it"
        )
    raise InvalidInput(
        f"column {shown} becomes the field name {name!r}, which does not start with a "
        "letter; rename the column, e.g. 'field_" + name + "'"
    )


def field_names(header: Sequence[str]) -> list[str]:
    """The field names of a CSV header, in order; refuses empty names and collisions."""
    names: list[str] = []
    seen: dict[str, str] = {}
    for position, column in enumerate(header, start=1):
        if not column.strip():
            raise InvalidInput(
                f"column {position} of the header has no name; name it, or delete the column"
            )
        name = field_name(column)
        if name in seen:
            first = seen[name]
            how = (
                "appears twice" if first == column else f"and {preview(first)} both become {name!r}"
            )
            raise InvalidInput(
                f"the header column {preview(column)} {how}; every column needs its own name "
                "— rename or delete one of them"
            )
        seen[name] = column
        names.append(name)
    return names


def _check_names(fields: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(fields))
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidInput(
                f"{name!r} is not a merge-field name: use lower case letters, digits and _, "
                f"starting with a letter, at most {MAX_NAME_CHARS} characters "
                "(field_names() turns a CSV header into such names)"
            )
    return names


def _parse(text: str) -> tuple[list[Placeholder], list[str]]:
    """Every well-formed placeholder, and a message for everything malformed."""
    found: list[Placeholder] = []
    problems: list[str] = []
    last = 0
    for match in _CANDIDATE.finditer(text):
        _stray_braces(text[last : match.start()], problems)
        last = match.end()
        inner = _INNER.fullmatch(match.group(1))
        raw = match.group(0)
        name = inner.group(1) if inner else ""
        fallback = inner.group(2) if inner else None
        shown = raw if len(raw) <= 60 else raw[:59] + "…"
        if inner is None or not _NAME.fullmatch(name):
            problems.append(
                f"{shown} is not a placeholder: a field name is lower case letters, digits and "
                "_, e.g. {{first_name}} or {{first_name|there}}"
            )
        elif fallback is not None and _FALLBACK_FORBIDDEN.search(fallback):
            problems.append(
                f"{shown!r} is not a placeholder: a fallback is one line without '|', "
                "e.g. {{first_name|there}}"
            )
        else:
            trimmed = fallback.strip() if fallback is not None else None
            found.append(Placeholder(name, trimmed, match.start(), match.end()))
    _stray_braces(text[last:], problems)
    return found, problems


def _stray_braces(segment: str, problems: list[str]) -> None:
    for brace in "{}":
        index = segment.find(brace)
        if index >= 0:
            context = segment[max(0, index - 15) : index + 15].replace("\n", " ")
            problems.append(
                f"a stray {brace!r} near {context!r}: braces are only for placeholders such "
                "as {{first_name}}; remove it"
            )


def find_placeholders(text: str) -> list[Placeholder]:
    """The well-formed placeholders of ``text``, in order (malformed ones are skipped)."""
    return _parse(text)[0]


def syntax_errors(text: str) -> list[str]:
    """One message per malformed placeholder or stray brace; empty when the text is fine."""
    return _parse(text)[1]


def unknown_fields(texts: Iterable[str], fields: Iterable[str]) -> list[str]:
    """Field names the texts use that are not in ``fields``, each once, in order of use."""
    allowed = set(fields)
    unknown: dict[str, None] = {}
    for text in texts:
        for placeholder in find_placeholders(text):
            if placeholder.name not in allowed:
                unknown[placeholder.name] = None
    return list(unknown)


def is_allowed_text(text: str, fields: Iterable[str], *, single_line: bool = False) -> bool:
    """Whether every placeholder is well-formed and names one of ``fields``, with no stray
    brace and no control character (nor, ``single_line``, a line break), and something
    shows (not only spaces or invisible characters): the same set of texts
    :func:`allowed_text_pattern` matches."""
    placeholders, problems = _parse(text)
    allowed = set(_check_names(fields))
    if problems or not all(p.name in allowed for p in placeholders):
        return False
    if single_line and ("\n" in text or "\r" in text):
        return False
    return re.search(f"[{CONTROL_CLASS}]", text) is None and not is_invisible(text)


class Template:
    """A text parsed once, to be rendered for many leads (what an export does per row)."""

    def __init__(self, text: str) -> None:
        placeholders, problems = _parse(text)
        if problems:
            raise InvalidInput(problems[0])
        self.text = text
        self.placeholders = tuple(placeholders)
        literals = []
        last = 0
        for placeholder in placeholders:
            literals.append(text[last : placeholder.start])
            last = placeholder.end
        literals.append(text[last:])
        self._literals = tuple(literals)

    @property
    def fields(self) -> list[str]:
        """The field names this text uses, each once, in order."""
        return list(dict.fromkeys(p.name for p in self.placeholders))

    def render(self, values: Mapping[str, str]) -> str | Missing:
        """See :func:`render`."""
        parts = [self._literals[0]]
        missing: dict[str, None] = {}
        for placeholder, literal in zip(self.placeholders, self._literals[1:], strict=True):
            try:
                value = values[placeholder.name].strip()
            except KeyError:
                known = preview_list(sorted(values), quoted=False) or "none"
                raise InvalidInput(
                    f"the text uses {{{{{placeholder.name}}}}}, but the lead list has no such "
                    f"column; known fields: {known}"
                ) from None
            if value:
                parts.append(value)
            elif placeholder.fallback is not None:
                parts.append(placeholder.fallback)
            else:
                missing[placeholder.name] = None
            parts.append(literal)
        if missing:
            return Missing(tuple(missing))
        return "".join(parts)


def render(text: str, values: Mapping[str, str]) -> str | Missing:
    """``text`` with every placeholder filled from ``values`` (field name → cell).

    A value that is empty or whitespace uses the placeholder's fallback. Returns the text,
    or :class:`Missing` naming the fields that had neither a value nor a fallback. To render
    one text for many leads, build a :class:`Template` once.

    Raises:
        InvalidInput: the text has a malformed placeholder, a stray brace, or a field that
            is not in ``values`` (an unknown field, not a missing value).
    """
    return Template(text).render(values)


def allowed_text_pattern(fields: Iterable[str], *, single_line: bool = False) -> str:
    """A JSON-Schema ``pattern`` matching exactly the texts whose placeholders all name one
    of ``fields`` and that contain no stray brace (see the module docstring's grammar), no
    control character (``text.CONTROL_CLASS``), with ``single_line`` no line break, and
    something that shows: a placeholder or a character not in ``text.INVISIBLE_CLASS``.

    Its shape is always ``^B*(?:F)(?:R)*$``: blanks (a character class), then the first
    thing that shows, then the rest (:func:`~.llm.openai_backend.json_text_pattern` relies on
    it). It uses only ECMA-262 syntax every JSON-Schema validator and OpenAI's strict
    structured output accept: anchors, non-capturing groups, alternation, character classes
    with ``\\r``/``\\n``/``\\t``, ``*`` and ``?`` (no lookaround, no flags, no Unicode
    classes). It is anchored with ``^…$`` because a schema ``pattern`` is a search, not a
    full match. With no fields it allows no placeholder at all.
    """
    names = sorted(_check_names(fields), key=lambda n: (-len(n), n))
    control = CONTROL_CLASS
    invisible = INVISIBLE_CLASS
    line_breaks = r"\r\n" if single_line else ""
    plain = "[^{}" + line_breaks + control + "]"
    blank = r"[\t" + ("" if single_line else r"\r\n") + invisible + "]"
    shows = r"[^{}\t\r\n" + control + invisible + "]"
    if not names:
        return f"^{blank}*(?:{shows})(?:{plain})*$"
    alternatives = "|".join(names)  # validated: [a-z0-9_] only, nothing to escape
    fallback = r"[^{}|\r\n" + control + "]"
    placeholder = r"\{\{ *(?:" + alternatives + r") *(?:\|" + fallback + r"*)?\}\}"
    return f"^{blank}*(?:{shows}|{placeholder})(?:{plain}|{placeholder})*$"


def describe_fields(fields: Iterable[str]) -> str:
    """A paragraph for the LLM's prompt: which fields exist and how to write them."""
    names = _check_names(fields)
    if not names:
        return (
            "There is no lead list: write no {{…}} merge fields, and do not use the "
            "characters { or } at all."
        )
    listed = ", ".join(f"{{{{{name}}}}}" for name in names)
    return (
        f"Merge fields available: {listed}. Write {{{{name}}}} to insert a lead's value, or "
        "{{name|fallback}} to give the words used when a lead has no value (e.g. "
        "'Hi {{first_name|there}},'). Use no other field name: an unknown one makes the "
        "output invalid. Do not use the characters { or } for anything else."
    )
