"""Text rules every layer shares: which characters no text may hold, how a text is shown
safely on a terminal, and how it is quoted, bounded, in a message.

It imports nothing from the package, so the foundation (models, merge), the LLM side and the
front ends all take these rules from one place.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from pydantic_core import PydanticCustomError

CONTROL_CLASS = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u2028\u2029"
"""The body of a regex character class (Python and ECMA-262 alike, so the LLM's JSON schema
can state it) for the characters no text may hold: Unicode's "Cc" characters but newline,
tab and carriage return, plus the line and paragraph separators U+2028 and U+2029, which
terminals, browsers and JavaScript treat as line breaks."""

CONTROL = re.compile(f"[{CONTROL_CLASS}]")
"""Finds a character of :data:`CONTROL_CLASS`."""


def control_chars(text: str) -> list[str]:
    """The control characters ``text`` holds (see :data:`CONTROL_CLASS`), each once, as
    ``U+001B``, in order of appearance."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in CONTROL.findall(text)))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""Half of a UTF-16 pair, alone: not a character, and no UTF-8 exists for it, so it can be
neither stored, signed nor sent. Python makes one of each byte that is not UTF-8 in a
command-line argument (``surrogateescape``), and JSON's ``"\\ud800"`` escape decodes to one.
(Kept out of :data:`CONTROL_CLASS`: in a JSON schema's ECMA-262 pattern the range would also
match the two halves of every emoji.)"""


def not_text(text: str) -> PydanticCustomError | None:
    """The error for ``text`` when it holds a lone surrogate (see :data:`_LONE_SURROGATE`),
    else None: the one rule every way in applies to text that is not text."""
    found = _LONE_SURROGATE.search(text)
    if found is None:
        return None
    return PydanticCustomError(
        "not_unicode",
        f"contains U+{ord(found.group()):04X}, which is not a character (a byte that is not "
        "UTF-8, or half of an escaped pair); retype it as plain UTF-8 text",
    )


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with everything a terminal would obey rather than show made visible.

    Newlines and tabs stay; ``\\r\\n`` becomes a newline; every other C0/C1 control, DEL and
    bidi control is written as an escape (``\\x1b``, ``\\u202e``).
    """
    text = text.replace("\r\n", "\n")
    return "".join(
        char
        if char in "\n\t" or not (unicodedata.category(char) == "Cc" or char in _BIDI)
        else _escape_char(char)
        for char in text
    )


def preview(text: str | None, width: int = 60) -> str:
    """``text`` on one line, quoted, cut at ``width`` characters (for messages)."""
    text = (text or "").replace("\n", " ")
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def preview_list(
    items: Iterable[str], *, most: int = 10, width: int = 40, quoted: bool = True
) -> str:
    """``'a', 'b', … and 12 more``: the first ``most`` items, each cut at ``width``
    characters (and quoted, like :func:`preview`), for a message of bounded length however
    long the list or its items."""
    items = list(items)
    shown = [
        preview(item, width) if quoted else item if len(item) <= width else item[:width] + "…"
        for item in items[:most]
    ]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f", … and {more} more" if more else "")
