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


INVISIBLE_CLASS = (
    r" \u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u1680\u180e"
    r"\u2000-\u200f\u202a-\u202f\u205f-\u2064\u2066-\u206f\u3000\ufeff\ufff9-\ufffb"
)
"""The body of a regex character class (Python and ECMA-262 alike, so the LLM's JSON schema
states the same rule) for the characters that do not show and that text may hold: white
space and format ("Cf") characters of the Basic Multilingual Plane, such as the no-break and
ideographic spaces, a zero-width space or a bidi control — not tab, line breaks or control
characters. Text made only of them (and tabs and line breaks) counts as empty. Format
characters beyond the BMP (tag characters and the like) are not listed: an ECMA-262 class
without the ``u`` flag cannot name them, and one rule holds for a person's text and the
LLM's alike. ``tests/integration/test_attacks_round2_rules.py`` checks it against Unicode's
database."""


_BLANK_TEXT = re.compile(f"[\\t-\\r\\x1c-\\x1f\\x85\\u2028\\u2029{INVISIBLE_CLASS}]*")
"""Text that does not show; with the control characters Python counts as white space, so
that such text is refused as empty before its control characters are looked at."""


def is_invisible(text: str) -> bool:
    """True when no character would show: only spaces, zero-width or bidi controls ("Cf"),
    line breaks and tabs (see :data:`INVISIBLE_CLASS`)."""
    return _BLANK_TEXT.fullmatch(text) is not None


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
