"""The data a run is made of: the brief, the two-step email sequence, and the stored run.

``EmailStep`` and ``EmailSequence`` are also the LLM's output schema (Bridgic structured
output with a ``PydanticModel`` constraint), so their field descriptions are written for the
model as much as for people.

Their import paths are part of every paused snapshot: do not move or rename them.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import InvalidInput

MAX_FEEDBACK_CHARS = 2000
"""Feedback longer than this is refused: it is a note about the audience, not a document."""

_BRIEF_LIMITS = {"product": 200, "offer": 1000, "sender": 200, "audience": 500, "cta": 300}
_INTERACTION_ID = re.compile(r"[0-9a-f]{32}")
# Newlines and tabs are fine in prose; every other control character is refused.
_ALLOWED_CONTROL = {"\n", "\t", "\r"}


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROL for c in text)


def clean_text(value: str, *, field: str, limit: int) -> str:
    """Strip ``value`` and check it is non-empty, short enough and free of control characters.

    Line breaks (CRLF, or a lone CR) become LF before counting: a browser's textarea counts
    a line break as one character against its ``maxlength`` but submits it as CRLF, so the
    limit here counts what the reviewer's form counted, and the text stored is the same
    whichever way it arrived.
    """
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    text = value.strip()
    if not text:
        raise PydanticCustomError("empty", f"{field} must not be empty")
    if len(text) > limit:
        raise PydanticCustomError(
            "too_long", f"{field} is {len(text)} characters; the limit is {limit}"
        )
    if _has_control_chars(text):
        raise PydanticCustomError(
            "control_chars", f"{field} contains control characters; use plain text"
        )
    return text


def describe_validation_error(error: ValidationError, what: str) -> str:
    """One readable line from a pydantic error: ``what: field: message; field: message``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return f"{what}: " + "; ".join(parts)


class Brief(BaseModel):
    """What the sequence is about. Only ``product``, ``offer`` and ``sender`` are required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product: str = Field(description="What is being sold, in a few words.")
    offer: str = Field(description="The value it brings to the reader.")
    sender: str = Field(description="Who signs the emails, e.g. 'Dana Lee, founder of Acme'.")
    audience: str | None = Field(default=None, description="A first guess at who should read it.")
    cta: str | None = Field(default=None, description="The one action the reader should take.")

    @field_validator("product", "offer", "sender", mode="before")
    @classmethod
    def _required_text(cls, value: Any, info: Any) -> Any:
        if value is None:
            raise PydanticCustomError("missing", f"{info.field_name} is required")
        if isinstance(value, str):
            return clean_text(value, field=info.field_name, limit=_BRIEF_LIMITS[info.field_name])
        return value

    @field_validator("audience", "cta", mode="before")
    @classmethod
    def _optional_text(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            return clean_text(value, field=info.field_name, limit=_BRIEF_LIMITS[info.field_name])
        return value


class EmailStep(BaseModel):
    """One email of the sequence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str = Field(
        min_length=1, max_length=200, description="Subject line: short, specific, no clickbait."
    )
    body: str = Field(
        min_length=1,
        max_length=5000,
        description="Plain-text body, greeting to sign-off, under 150 words.",
    )
    wait_days: int = Field(
        ge=0,
        le=90,
        description="Days to wait before sending: 0 for the opener, 2 to 7 for the follow-up.",
    )


class EmailSequence(BaseModel):
    """Exactly two emails: an opener sent on day 0 and a follow-up some days later."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opener: EmailStep = Field(description="The first email; its wait_days is 0.")
    follow_up: EmailStep = Field(
        description="The follow-up for readers who did not answer; wait_days at least 1."
    )

    @model_validator(mode="after")
    def _days_make_sense(self) -> EmailSequence:
        if self.opener.wait_days != 0:
            raise ValueError(f"the opener is sent on day 0, not day {self.opener.wait_days}")
        if self.follow_up.wait_days < 1:
            raise ValueError("the follow-up must wait at least one day after the opener")
        return self

    @property
    def steps(self) -> tuple[EmailStep, EmailStep]:
        """The two emails in sending order."""
        return (self.opener, self.follow_up)


class RunStatus(str, Enum):
    """Where a run is in its life: paused, being resumed right now, or done."""

    AWAITING_FEEDBACK = "awaiting_feedback"
    RESUMING = "resuming"
    COMPLETED = "completed"


class RunEvent(BaseModel):
    """One moment in a run's history, timed when this package saw it happen."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    kind: Literal["paused", "feedback", "failed", "completed"]
    detail: str | None = None
    """The feedback received, the error of a failed resume, or the feedback that completed it."""


class Run(BaseModel):
    """A stored run, as ``start``, ``resume``, ``get`` and ``list`` return it.

    A run that is ``awaiting_feedback`` carries everything a resume needs: its
    ``interaction_id`` and the ``question`` to put to the human.
    """

    model_config = ConfigDict(frozen=True)

    interaction_id: str
    status: RunStatus
    brief: Brief
    draft: EmailSequence
    question: str
    feedback: str | None = None
    final: EmailSequence | None = None
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime

    def to_public_dict(self) -> dict[str, Any]:
        """The stable JSON shape the CLI prints with ``--json``."""
        return {
            "interaction_id": self.interaction_id,
            "status": self.status.value,
            "draft": self.draft.model_dump(mode="json"),
            "final": self.final.model_dump(mode="json") if self.final else None,
            "feedback": self.feedback,
        }


def validate_feedback(feedback: Any) -> str:
    """Return the feedback stripped, or raise ``InvalidInput`` saying what is wrong with it."""
    if not isinstance(feedback, str):
        raise InvalidInput(f"feedback must be text, not {type(feedback).__name__}")
    try:
        return clean_text(feedback, field="feedback", limit=MAX_FEEDBACK_CHARS)
    except PydanticCustomError as exc:
        hint = {
            "empty": "say who the emails should really target",
            "too_long": "shorten it to the audience and what matters to them",
            "control_chars": "remove them and try again",
        }[exc.type]
        raise InvalidInput(f"{exc.message()}; {hint}") from None


def validate_interaction_id(interaction_id: Any) -> str:
    """Return the id normalised (stripped, lower case) or raise ``InvalidInput``."""
    text = interaction_id.strip().lower() if isinstance(interaction_id, str) else ""
    if not _INTERACTION_ID.fullmatch(text):
        shown = repr(interaction_id)[:60]
        raise InvalidInput(
            f"{shown} is not an interaction id; expected the 32 hex characters "
            "that `coldmail start` printed (see `coldmail list`)"
        )
    return text


def make_brief(**fields: Any) -> Brief:
    """Build a ``Brief``, turning a validation failure into one readable ``InvalidInput``."""
    try:
        return Brief(**fields)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc, "invalid brief")) from None
