"""The sender's postal address and opt-out sentence: what the law asks every email to carry.

CAN-SPAM (the FTC's *Compliance Guide for Business*, :data:`CAN_SPAM_SOURCE`) requires every
commercial email to US recipients — business to business included — to give "your valid
physical postal address" and "a clear and conspicuous explanation of how the recipient can
opt out". CASL (Canada) and the UK's PECR ask for much the same. A brief may carry both
(``Brief.postal_address``, ``Brief.opt_out``); the settings give defaults for every run
(``COLDMAIL_POSTAL_ADDRESS``, ``COLDMAIL_OPT_OUT``).

Design decisions:

* **Code appends them, the LLM never writes them.** The prompts tell the LLM not to write an
  address or an unsubscribe line; the export appends :class:`Footer` to every email, as plain
  text after the body, in every profile. A tool's own unsubscribe placeholder (Smartlead's
  ``%unsubscribe-text%``) goes only into the campaign template next to the file, because
  whether a tool expands a placeholder that arrives inside a lead's variable is not documented.
* **Plain text, checked like a brief.** A footer text is stripped, at most
  :data:`MAX_FOOTER_CHARS` characters, free of control characters, and holds no ``{`` or
  ``}``: the sending tools read those as their own variables.
* **The check is in** :mod:`bridgic_coldmail.export.lint` (rules ``can-spam-address`` and
  ``can-spam-opt-out``), so it can be turned off by rule id where the law does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .text import control_chars

CAN_SPAM_SOURCE = (
    "https://www.ftc.gov/business-guidance/resources/can-spam-act-compliance-guide-business"
)
"""The FTC's CAN-SPAM compliance guide: the address and opt-out requirements."""
MAX_FOOTER_CHARS = 300
"""The most characters a postal address or an opt-out sentence may have."""
EXAMPLE_OPT_OUT = "Not interested? Reply 'stop' and I won't write again."
"""Shown in messages as an example of an opt-out sentence."""


def footer_text_problem(value: str) -> str | None:
    """Why ``value`` (already stripped, line breaks as LF) cannot be a footer text, or None."""
    found = control_chars(value)
    if found:
        return f"contains control characters ({', '.join(found)}); use plain text"
    if len(value) > MAX_FOOTER_CHARS:
        return f"is {len(value)} characters; the limit is {MAX_FOOTER_CHARS}"
    if "{" in value or "}" in value:
        return "contains { or }, which sending tools read as their own variables; remove them"
    return None


@dataclass(frozen=True)
class Footer:
    """What is appended to every email: the postal address, then the opt-out sentence."""

    postal_address: str | None = None
    opt_out: str | None = None

    def __post_init__(self) -> None:
        for name in ("postal_address", "opt_out"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidInput(f"{name} must be text, not {type(value).__name__}")
            problem = footer_text_problem(value)
            if problem is not None:
                raise InvalidInput(f"{name} {problem}")

    @classmethod
    def of(cls, brief: Any, defaults: Any = None) -> Footer:
        """The footer of a run: the brief's own texts, else the settings' defaults."""

        def pick(name: str) -> str | None:
            value = getattr(brief, name, None)
            return value if value else getattr(defaults, name, None) or None

        return cls(postal_address=pick("postal_address"), opt_out=pick("opt_out"))

    @property
    def text(self) -> str:
        """The footer's lines (empty when there is nothing to append)."""
        return "\n".join(part for part in (self.postal_address, self.opt_out) if part)

    def append_to(self, body: str) -> str:
        """``body`` with the footer after a blank line (``body`` itself when there is none)."""
        text = self.text
        return f"{body}\n\n{text}" if text else body


NO_FOOTER = Footer()
"""Nothing to append: the compliance rules flag an export with it."""
