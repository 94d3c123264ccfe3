"""The data a run is made of: the brief, the two-step email sequence, and the stored run.

``EmailStep`` and ``EmailSequence`` hold every sequence a run stores; the LLM answers in the
schema of ``llm.writing.answer_model``, which states every rule these enforce.

Their import paths are part of every paused snapshot: do not move or rename them.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .compliance import MAX_FOOTER_CHARS, footer_text_problem
from .errors import InvalidInput
from .merge import syntax_errors
from .text import CONTROL, is_invisible, not_text, preview

MAX_FEEDBACK_CHARS = 2000
"""Feedback longer than this is refused: it is a note about the audience, not a document."""

BRIEF_LIMITS = {"product": 200, "offer": 1000, "sender": 200, "audience": 500, "cta": 300}
"""The most characters each brief field may have (after line breaks count as one)."""
_INTERACTION_ID = re.compile(r"[0-9a-f]{32}")
# Newlines and tabs are fine in prose; every other control character is refused.

STORED: dict[str, Any] = {"stored": True}
"""Validation context for text read back from the store or a snapshot. It was checked when
it came in; a rule added since must not make a stored run unreadable, so the content rules
(control characters, placeholders, one-line subjects) are not applied again to it."""


def is_stored(info: ValidationInfo) -> bool:
    """Whether this validation reads stored data (see :data:`STORED`)."""
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


def _has_control_chars(text: str) -> bool:
    return CONTROL.search(text) is not None


def clean_text(value: str, *, field: str, limit: int) -> str:
    """Strip ``value`` and check it is non-empty, short enough and free of control characters.

    Line breaks (CRLF, or a lone CR) become LF before counting: a browser's textarea counts
    a line break as one character against its ``maxlength`` but submits it as CRLF, so the
    limit here counts what the reviewer's form counted, and the text stored is the same
    whichever way it arrived.
    """
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    text = value.strip()
    broken = not_text(text)
    if broken is not None:
        raise PydanticCustomError(broken.type, f"{field} {broken.message()}")
    if is_invisible(text):
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


def checked_text(
    value: Any, *, field: str, limit: int, empty_hint: str, long_hint: str = "shorten it"
) -> str:
    """``value`` stripped and checked (see :func:`clean_text`); a ``PydanticCustomError``
    whose message says what is wrong and what to do, for a model's validator."""
    if not isinstance(value, str):
        raise PydanticCustomError("not_text", f"{field} must be text, not {type(value).__name__}")
    try:
        return clean_text(value, field=field, limit=limit)
    except PydanticCustomError as exc:
        if exc.type == "not_unicode":
            raise  # its message says what to do
        hint = {
            "empty": empty_hint,
            "too_long": long_hint,
            "control_chars": "remove them and try again",
        }[exc.type]
        raise PydanticCustomError(exc.type, f"{exc.message()}; {hint}") from None


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
    postal_address: str | None = Field(
        default=None,
        description="The sender's postal address, appended by code to every exported email.",
    )
    opt_out: str | None = Field(
        default=None,
        description="One sentence on how to opt out, appended by code to every exported email.",
    )

    @field_validator("product", "offer", "sender", mode="before")
    @classmethod
    def _required_text(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise PydanticCustomError("missing", f"{info.field_name} is required")
        if isinstance(value, str) and not is_stored(info):
            field = str(info.field_name)
            return clean_text(value, field=field, limit=BRIEF_LIMITS[field])
        return value

    @field_validator("postal_address", "opt_out", mode="before")
    @classmethod
    def _footer_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Appended verbatim to every email (see ``compliance``): plain text, no braces."""
        if isinstance(value, str) and not is_stored(info):
            if is_invisible(value):
                return None
            field = str(info.field_name)
            text = clean_text(value, field=field, limit=MAX_FOOTER_CHARS)
            problem = footer_text_problem(text)
            if problem is not None:
                raise PydanticCustomError("footer", f"{field} {problem}")
            return text
        return value

    @field_validator("audience", "cta", mode="before")
    @classmethod
    def _optional_text(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and not is_stored(info):
            if is_invisible(value):
                return None
            field = str(info.field_name)
            return clean_text(value, field=field, limit=BRIEF_LIMITS[field])
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
        description="Days to wait before sending: 0 for the opener, at least 1 for the follow-up.",
    )

    @field_validator("subject", "body", mode="before")
    @classmethod
    def _exportable(cls, value: Any, info: ValidationInfo) -> Any:
        """The rules every email is held to, whoever wrote it (a reviewer, the LLM): plain
        text, a one-line subject, and only well-formed placeholders, so that an approved
        sequence can always be exported. Line breaks in a body become LF."""
        if not isinstance(value, str) or is_stored(info):
            return value
        broken = not_text(value)
        if broken is not None:
            raise broken
        if is_invisible(value):
            raise PydanticCustomError(
                "blank_email", "is only spaces or invisible characters; write it"
            )
        if info.field_name == "subject":
            if "\n" in value or "\r" in value:
                raise PydanticCustomError(
                    "line_break", "a subject is one line; remove the line break"
                )
        else:
            value = value.replace("\r\n", "\n").replace("\r", "\n")
        if _has_control_chars(value):
            raise PydanticCustomError(
                "control_chars", "contains control characters; use plain text"
            )
        problems = syntax_errors(value)
        if problems:
            raise PydanticCustomError("placeholder", problems[0])
        return value


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
    """Where a run is in its life.

    ``awaiting_feedback`` → ``resuming`` → ``completed``; in review mode the refinement is
    followed by ``awaiting_review`` pauses until a reviewer approves (``completed``) or
    rejects (``rejected``). ``resuming`` means someone holds the claim right now.
    """

    AWAITING_FEEDBACK = "awaiting_feedback"
    RESUMING = "resuming"
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    REJECTED = "rejected"

    @property
    def is_paused(self) -> bool:
        """Waiting for a person (feedback or a review decision)."""
        return self in (RunStatus.AWAITING_FEEDBACK, RunStatus.AWAITING_REVIEW)

    @property
    def is_final(self) -> bool:
        """Nothing more can happen to the run."""
        return self in (RunStatus.COMPLETED, RunStatus.REJECTED)


EventKind = Literal[
    "paused",
    "feedback",
    "failed",
    "review",
    "approved",
    "revised",
    "edited",
    "rejected",
    "completed",
]


class RunEvent(BaseModel):
    """One moment in a run's history, timed when this package saw it happen.

    ``paused``: drafted and waiting for audience feedback. ``feedback``: the audience
    feedback arrived. ``review``: paused for review round ``round`` with ``sequence``.
    ``approved`` / ``revised`` / ``edited`` / ``rejected``: a reviewer's decision arrived
    (``actor`` names them when given). ``failed``: applying feedback or a decision failed and
    the run was given back. ``completed``: the run finished with its final sequence.
    """

    model_config = ConfigDict(frozen=True)

    at: datetime
    kind: EventKind
    detail: str | None = None
    """The feedback or guidance received, a rejection's reason, or a failure's error."""
    round: int | None = None
    actor: str | None = None
    sequence: EmailSequence | None = None
    """The sequence put up for review (``review``) or written by the reviewer (``edited``)."""
    verified: bool = True
    """False for events written by releases before 0.5, which did not sign the history."""


class Run(BaseModel):
    """A stored run, as ``start``, ``resume``, the review decisions, ``get`` and ``list``
    return it.

    ``interaction_id`` is the id ``start`` returned and never changes. A run that is paused
    carries everything the next step needs: that id and the ``question`` (audience feedback)
    or the ``sequence`` and ``round`` (review).
    """

    model_config = ConfigDict(frozen=True)

    interaction_id: str
    status: RunStatus
    brief: Brief
    draft: EmailSequence
    question: str
    feedback: str | None = None
    """The audience feedback the refinement used."""
    final: EmailSequence | None = None
    """The finished sequence: set once the run is ``completed`` (approved, in review mode)."""
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
    review: bool = False
    """Whether the run pauses for review rounds after the refinement."""
    round: int | None = None
    """The review round the run is at (1 for the refinement's review); None before review."""
    max_rounds: int | None = None
    """Rounds a reviewer may reach by revising; past it only approve, edit and reject remain."""
    sequence: EmailSequence | None = None
    """The newest sequence after the draft: the one under review, the final one, or the one
    rejected."""
    rejection: str | None = None
    """Why a reviewer rejected the run."""
    fields: tuple[str, ...] = ()
    """Merge fields (lead-list columns) the emails may use as ``{{name}}``."""
    pause_id: str | None = None
    """Bridgic's interaction id of the current pause: the run's own id at the audience
    question, a new one at each review round. Only the store needs it."""
    verified: bool = True
    """False when the run was stored by a release before 0.5 and its text is not signed."""

    def describe_state(self) -> str:
        """Where the run is, for messages: ``awaiting review at round 2``, ``completed``…"""
        if self.status is RunStatus.AWAITING_REVIEW:
            return f"awaiting review at round {self.round}"
        if self.status is RunStatus.RESUMING:
            return "being worked on"
        return str(self.status.value).replace("_", " ")

    def to_public_dict(self) -> dict[str, Any]:
        """The run as JSON data: the one shape of the JSON API and of ``coldmail … --json``."""
        return {
            "interaction_id": self.interaction_id,
            "status": self.status.value,
            "draft": self.draft.model_dump(mode="json"),
            "final": self.final.model_dump(mode="json") if self.final else None,
            "feedback": self.feedback,
            "round": self.round,
            "review": self.review,
            "max_rounds": self.max_rounds,
            "sequence": self.sequence.model_dump(mode="json") if self.sequence else None,
            "rejection": self.rejection,
            "brief": self.brief.model_dump(mode="json"),
            "question": self.question,
            "fields": list(self.fields),
            "last_error": self.last_error,
            "verified": self.verified,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


CLI_JSON_KEYS = ("interaction_id", "status", "draft", "final", "feedback", "round", "verified")
"""The keys ``coldmail … --json`` prints: the documented five, plus ``round`` and
``verified`` (False for a run whose text an earlier release stored unsigned)."""


class DamagedRun(BaseModel):
    """A stored run that cannot be shown: its text does not match its signature, or does not
    parse. Listings include it so that one bad row never hides the others."""

    model_config = ConfigDict(frozen=True)

    interaction_id: str
    status: str
    problem: str
    """What is wrong, in one sentence that names the run."""
    detail: str = ""
    """What is wrong, as a fragment ("its text was changed outside bridgic-coldmail")."""
    tampered: bool
    """True when the row does not match its signature; False when it only fails to parse."""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_public_dict(self) -> dict[str, Any]:
        """As JSON data, with ``damaged`` set to the problem."""
        return {
            "interaction_id": self.interaction_id,
            "status": self.status,
            "damaged": self.problem,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


ListedRun = Run | DamagedRun
"""What a listing holds: runs, and the rows that cannot be shown."""


DecisionKind = Literal["feedback", "approve", "revise", "edit", "reject"]


class Decision(BaseModel):
    """A person's answer to a paused run: the audience ``feedback`` at the audience question
    (see ``ColdMailAgent.resume``), or a reviewer's decision on a run awaiting review
    (``approve``, ``revise``, ``edit``, ``reject``; see ``ColdMailAgent.approve`` …).

    One type from the edge to the store: every front end turns what a person sent into one
    of these, ``ColdMailAgent.decide`` applies it, and the store records it (the pending and
    decided answers of a run are stored in this shape).

    It validates itself: every rule an answer must follow is here, so that every way in —
    the named methods, ``decide``, the command line, the JSON API, the inbox's forms, a
    one-click link — holds it to the same rules (``ColdMailAgent.decide`` validates again
    what it is handed, in case it was built with ``model_construct`` or changed with
    ``model_copy``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: DecisionKind
    text: str | None = None
    """The audience (feedback), the guidance (revise) or the reason (reject)."""
    sequence: EmailSequence | None = None
    """The reviewer's own emails (edit)."""
    reviewer: str | None = None
    round: int | None = None
    """The round this decision answers; None means the run's current round."""

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: Any) -> Any:
        if value not in ("feedback", "approve", "revise", "edit", "reject"):
            raise PydanticCustomError(
                "kind",
                f"unknown decision {value!r:.60}; use feedback, approve, revise, edit or reject",
            )
        return value

    @field_validator("text", mode="before")
    @classmethod
    def _checked_text(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind", "")
        rule = _DECISION_TEXT.get(kind)
        if rule is None or is_stored(info):
            return value  # a text where none belongs is refused below, by kind
        if value is None and kind != "feedback":
            return value  # refused below, with the kind's own hint
        # Feedback is held to validate_feedback's rule, words included ("feedback must be
        # text, not NoneType" for none at all).
        return checked_text(value, **rule)

    @field_validator("reviewer", mode="before")
    @classmethod
    def _checked_reviewer(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or is_stored(info):
            return value
        return _person(checked_text(value, **_REVIEWER))

    @field_validator("round", mode="before")
    @classmethod
    def _checked_round(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticCustomError(
                "round", f"round must be a whole number, not {type(value).__name__}"
            )
        if not 1 <= value <= MAX_ROUND_NUMBER:
            raise PydanticCustomError(
                "round", f"round must be between 1 and {MAX_ROUND_NUMBER}, not {value}"
            )
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self) -> Decision:
        kind = self.kind
        if kind in _DECISION_TEXT and self.text is None:
            rule = _DECISION_TEXT[kind]
            raise PydanticCustomError(
                "empty", f"{rule['field']} must not be empty; {rule['empty_hint']}"
            )
        if kind not in _DECISION_TEXT and self.text is not None:
            raise PydanticCustomError("text", f"{kind} takes no text")
        if kind == "edit" and self.sequence is None:
            raise PydanticCustomError(
                "emails", "edit needs the reviewer's emails (an EmailSequence)"
            )
        if kind != "edit" and self.sequence is not None:
            raise PydanticCustomError("emails", f"{kind} takes no emails; use edit to replace them")
        if kind == "feedback" and self.round is not None:
            raise PydanticCustomError(
                "round", "feedback answers the audience question, not a review round: give no round"
            )
        return self

    def same_as(self, other: Decision) -> bool:
        """Whether two decisions would do the same thing (who made them does not matter)."""
        return (self.kind, self.text, self.sequence) == (other.kind, other.text, other.sequence)

    @property
    def event_kind(self) -> str:
        """The history event that records this answer arriving."""
        return _EVENT_KINDS[self.kind]

    def describe(self) -> str:
        """``approve``, ``revise 'shorter'``, … for messages."""
        if self.kind == "edit":
            return "edit (the reviewer's own emails)"
        return f"{self.kind} {preview(self.text)}" if self.text else self.kind


class ReviewOutcome(BaseModel):
    """How the automa ended: completed with a sequence, or rejected with a reason."""

    model_config = ConfigDict(frozen=True)

    status: Literal["completed", "rejected"]
    sequence: EmailSequence
    round: int | None = None
    reason: str | None = None


MAX_REVIEWER_CHARS = 200
MAX_REASON_CHARS = MAX_FEEDBACK_CHARS


def validate_feedback(feedback: Any) -> str:
    """Return the feedback stripped, or raise ``InvalidInput`` saying what is wrong with it
    (the rule a ``feedback`` :class:`Decision` holds its text to)."""
    return validate_text(feedback, **_DECISION_TEXT["feedback"])


def validate_text(
    value: Any,
    *,
    field: str,
    limit: int,
    empty_hint: str,
    long_hint: str = "shorten it",
) -> str:
    """``value`` stripped and checked (see :func:`clean_text`), or one ``InvalidInput``."""
    try:
        return checked_text(
            value, field=field, limit=limit, empty_hint=empty_hint, long_hint=long_hint
        )
    except PydanticCustomError as exc:
        raise InvalidInput(exc.message()) from None


_DECISION_TEXT: dict[str, dict[str, Any]] = {
    "feedback": {
        "field": "feedback",
        "limit": MAX_FEEDBACK_CHARS,
        "empty_hint": "say who the emails should really target",
        "long_hint": "shorten it to the audience and what matters to them",
    },
    "revise": {
        "field": "guidance",
        "limit": MAX_FEEDBACK_CHARS,
        "empty_hint": "say what the next version should change",
    },
    "reject": {
        "field": "reason",
        "limit": MAX_REASON_CHARS,
        "empty_hint": "say why the run is rejected; it is kept in the history",
    },
}
"""The text each kind of decision carries, and its rule."""
_EVENT_KINDS = {
    "feedback": "feedback",
    "approve": "approved",
    "revise": "revised",
    "edit": "edited",
    "reject": "rejected",
}
"""The history event that records each kind of answer."""


def recorded_decision(
    kind: DecisionKind,
    *,
    text: str | None = None,
    sequence: EmailSequence | None = None,
    reviewer: str | None = None,
    round: int | None = None,
) -> Decision:
    """A :class:`Decision` as recorded, not validated again: read back from the store (a
    rule added since must not make it unreadable), derived from one already validated, or
    the deadline's (whose reserved name no person may give). Never for what a person sent:
    that is :func:`make_decision`."""
    return Decision.model_construct(
        kind=kind, text=text, sequence=sequence, reviewer=reviewer, round=round
    )


_REVIEWER: dict[str, Any] = {
    "field": "reviewer",
    "limit": MAX_REVIEWER_CHARS,
    "empty_hint": "give a name or leave it out",
}
_OWN_MESSAGES = frozenset(
    {
        "kind",
        "not_text",
        "not_unicode",
        "empty",
        "too_long",
        "control_chars",
        "text",
        "emails",
        "round",
        "reviewer",
    }
)
"""Error types whose message is a whole sentence, shown without the field's name."""


def make_decision(
    kind: Any,
    *,
    text: Any = None,
    sequence: Any = None,
    reviewer: Any = None,
    round: Any = None,
) -> Decision:
    """A validated :class:`Decision` (``feedback``, ``approve``, ``revise``, ``edit`` or
    ``reject``), or one ``InvalidInput`` that says what to fix."""
    if isinstance(sequence, BaseModel):  # validated again: it may have been built unchecked
        sequence = sequence.model_dump()
    try:
        return Decision.model_validate(
            {"kind": kind, "text": text, "sequence": sequence, "reviewer": reviewer, "round": round}
        )
    except ValidationError as exc:
        raise InvalidInput(describe_decision_error(exc)) from None


def describe_decision_error(error: ValidationError) -> str:
    """One readable line from a :class:`Decision`'s validation error: the message of a rule
    as it is (it names its field), or ``invalid emails: opener.subject: …`` for the emails."""
    parts = []
    for item in error.errors():
        where = [str(p) for p in item["loc"]]
        if where[:1] == ["sequence"]:
            inner = ".".join(where[1:])
            parts.append(f"invalid emails: {inner + ': ' if inner else ''}{item['msg']}")
        elif item["type"] in _OWN_MESSAGES:
            parts.append(item["msg"])
        else:
            parts.append(f"{'.'.join(where)}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)


def validate_reviewer(reviewer: Any) -> str | None:
    """A reviewer's name, checked (None when not given)."""
    if reviewer is None:
        return None
    try:
        return _person(validate_text(reviewer, **_REVIEWER))
    except PydanticCustomError as exc:
        raise InvalidInput(exc.message()) from None


DEADLINE_ACTOR = "deadline"
"""Who the history names when a pause's deadline answered for the person (a name no person
may give, so a history entry "by deadline" is always the deadline's)."""


def _person(name: str) -> str:
    # As people read it: compatibility forms folded, invisible format characters dropped.
    read = "".join(
        c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf"
    )
    if read.casefold() == DEADLINE_ACTOR:
        raise PydanticCustomError(
            "reviewer",
            f"{name!r} is the name the history gives a pause's deadline; give a person's name",
        )
    return name


MAX_ROUND_NUMBER = 10_000

MAX_PAGE = 1000
"""The most runs one ``list`` call returns."""

MAX_OFFSET = 10**15
"""The largest listing offset: far beyond any store, and far below the 2**63 - 1 where
SQLite's and PostgreSQL's integers overflow."""


def validate_page(limit: Any, offset: Any, max_limit: int) -> tuple[int, int]:
    """``(limit, offset)`` checked, or ``InvalidInput``; never an overflow in the database."""
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be a whole number, not {type(value).__name__}")
    if not 1 <= limit <= max_limit:
        raise InvalidInput(f"limit must be between 1 and {max_limit}, not {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}, not {offset}")
    return limit, offset


def validate_interaction_id(interaction_id: Any) -> str:
    """Return the id normalised (stripped, lower case) or raise ``InvalidInput``."""
    text = interaction_id.strip().lower() if isinstance(interaction_id, str) else ""
    if not _INTERACTION_ID.fullmatch(text):
        shown = repr(interaction_id)[:60]
        raise InvalidInput(
            f"{shown} is not an interaction id; expected the 32 hex characters of the id "
            "that starting the run returned",
            topic="bad_id",
        )
    return text


def make_brief(**fields: Any) -> Brief:
    """Build a ``Brief``, turning a validation failure into one readable ``InvalidInput``."""
    try:
        return Brief(**fields)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc, "invalid brief")) from None
