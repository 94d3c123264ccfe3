"""Keeping spreadsheet formulas out of an exported CSV, whatever separator it is read with.

A spreadsheet runs a cell as a formula when it begins with ``=``, ``+``, ``-`` or ``@``
(OWASP, "CSV Injection"; ASVS 1.2.10). Neutralising only the *start* of each value is not
enough, because the file may not be split where it was written:

* Excel reads a ``.csv`` with the list separator of the computer's region — ``;`` in most of
  Europe — and a tab-separated reading is one click away. Read that way, the value
  ``a;=cmd|' /C calc'!A0`` holds a cell that begins with ``=``. OWASP: "You also need to take
  care of the field separator (e.g., ',', or ';') and quotes".
* A value spanning lines is one quoted cell only while the line is split on ``,``; split on
  ``;`` the quote is not at a cell's start, so each line of the value starts a new row.

So a **cell start** is the start of a value and every position right after ``,``, ``;``, a
tab or a line break (any that ``str.splitlines`` knows). At each cell start, what a
spreadsheet skips or unquotes before it looks for a formula is looked past: white space
(any Unicode space), invisible format characters (zero-width space, byte-order mark) and
double quotes. If a **trigger** follows — ``= + - @``, any character that is one of them
under Unicode compatibility (the full-width ``＝ ＋ － ＠``, small and superscript forms),
or a tab — a ``'`` is put at the cell start, so the cell is read as text whichever way the
line is split. A value's very first character is also a trigger when it is a line break or
NUL (OWASP lists line feed and carriage return; ASVS lists NUL).

What is not done: a trigger in the middle of a cell (``3-4 days``) is harmless and kept; so
is a separator not followed by a trigger. The ``'`` is visible text in the cell: a sending
tool that imports the file sends it, which is why lint warns about a sequence whose own text
would need one (:func:`formula_starts` on the template).
"""

from __future__ import annotations

import re
import unicodedata

TRIGGERS = frozenset(
    "=+-@\t"
    "\u207a\u207c\u208a\u208c"  # superscript and subscript plus and equals
    "\ufb29"  # Hebrew alternative plus sign
    "\ufe62\ufe63\ufe66\ufe6b"  # small plus, hyphen-minus, equals, at
    "\uff0b\uff0d\uff1d\uff20"  # full-width plus, hyphen-minus, equals, at
)
"""A cell whose first visible character is one of these may be read as a formula: ``= + - @``,
every character Unicode compatibility maps to one of them (a test checks the list against
``unicodedata``), and a tab."""
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "\0", "＝", "＋", "－", "＠")
"""The usual characters that make a value a formula when it starts with one: OWASP's list,
ASVS's NUL and the full-width forms (:data:`TRIGGERS` has them all)."""
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
"""Where ``str.splitlines`` ends a line: each starts a new row when a cell is not quoted."""
SEPARATORS = frozenset(",;\t") | LINE_BREAKS
"""After each of these a new cell begins, for some reading of the file."""
QUOTE = "'"
"""Put at a cell start that would open a formula (OWASP's neutraliser)."""

_VALUE_START_ONLY = frozenset({"\0"}) | LINE_BREAKS


def _escaped(chars: frozenset[str]) -> str:
    return "".join(re.escape(c) for c in sorted(chars))


# A quick search for the places that may open a formula: a separator followed by characters
# that are neither word characters nor separators (a superset of the blanks), then a trigger.
# Only the separator is consumed, so the next one is found even if it is that trigger (a
# tab). Each place found is then decided by _opens_formula, the rule as written above.
_BLANKS_THEN_TRIGGER = "[^\\w" + _escaped(SEPARATORS) + "]*?[" + _escaped(TRIGGERS) + "]"
_CANDIDATE = re.compile("[" + _escaped(SEPARATORS) + "](?=" + _BLANKS_THEN_TRIGGER + ")")
_FIRST_CANDIDATE = re.compile("[" + _escaped(_VALUE_START_ONLY) + "]|" + _BLANKS_THEN_TRIGGER)


def is_trigger(char: str) -> bool:
    """Whether a cell whose first visible character is ``char`` may be read as a formula."""
    return char in TRIGGERS


def _is_blank(char: str) -> bool:
    """What a spreadsheet may skip before it decides a cell is a formula."""
    return char == '"' or char.isspace() or unicodedata.category(char) == "Cf"


def _opens_formula(text: str, start: int) -> bool:
    after_tab = start > 0 and text[start - 1] == "\t"
    for index in range(start, len(text)):
        char = text[index]
        if char == "\t" and after_tab:
            return False  # read tab-separated, this cell ends here, empty or blank
        if char in TRIGGERS or (index == 0 and char in _VALUE_START_ONLY):
            return True
        if char in SEPARATORS or not _is_blank(char):
            return False  # another cell starts here (checked on its own), or plain text
    return False


def formula_starts(text: str) -> list[int]:
    """The cell starts (see the module docstring) of ``text`` that would open a formula."""
    starts = [0] if _FIRST_CANDIDATE.match(text) and _opens_formula(text, 0) else []
    for match in _CANDIDATE.finditer(text):
        if _opens_formula(text, match.end()):
            starts.append(match.end())
    return starts


def neutralize_cell(value: str) -> str:
    """``value`` with a ``'`` at each cell start that would open a formula; unchanged when
    there is none (the usual case), and unchanged by a second call."""
    if _FIRST_CANDIDATE.match(value) is None and _CANDIDATE.search(value) is None:
        return value  # the usual case, decided by the regular expression engine alone
    starts = formula_starts(value)
    if not starts:
        return value
    parts = []
    last = 0
    for start in starts:
        parts += [value[last:start], QUOTE]
        last = start
    parts.append(value[last:])
    return "".join(parts)
