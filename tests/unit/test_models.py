"""Validation of briefs, sequences, feedback and interaction ids: messages a person understands."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridgic_coldmail import MAX_FEEDBACK_CHARS, Brief, EmailSequence, InvalidInput
from bridgic_coldmail.models import make_brief, validate_feedback, validate_interaction_id

GOOD = {"product": "Acme", "offer": "saves time", "sender": "Dana"}


def test_brief_strips_text_and_treats_blank_optionals_as_missing() -> None:
    brief = Brief(**GOOD, audience="   ", cta="  Book a demo ")
    assert brief.product == "Acme"
    assert brief.audience is None
    assert brief.cta == "Book a demo"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({**GOOD, "product": "   "}, "product: product must not be empty"),
        ({**GOOD, "offer": "x" * 1001}, "offer: offer is 1001 characters; the limit is 1000"),
        ({**GOOD, "sender": "Dana\x00"}, "sender: sender contains control characters"),
        ({"product": "Acme", "offer": "saves time"}, "sender: Field required"),
        ({**GOOD, "budget": 10}, "budget: Extra inputs are not permitted"),
    ],
)
def test_bad_briefs_give_one_readable_line(fields: dict[str, object], expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        make_brief(**fields)
    message = str(caught.value)
    assert message.startswith("invalid brief: ")
    assert expected in message
    assert "\n" not in message


def test_brief_keeps_newlines_in_the_offer() -> None:
    assert Brief(**{**GOOD, "offer": "line one\nline two"}).offer == "line one\nline two"


def _sequence(opener_days: int = 0, follow_days: int = 3) -> dict[str, object]:
    return {
        "opener": {"subject": "Hi", "body": "Body", "wait_days": opener_days},
        "follow_up": {"subject": "Again", "body": "Body 2", "wait_days": follow_days},
    }


def test_sequence_is_two_steps_in_order() -> None:
    sequence = EmailSequence.model_validate(_sequence())
    assert [s.subject for s in sequence.steps] == ["Hi", "Again"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_sequence(opener_days=2), "the opener is sent on day 0, not day 2"),
        (_sequence(follow_days=0), "the follow-up must wait at least one day"),
        ({"opener": _sequence()["opener"]}, "follow_up"),
    ],
)
def test_sequences_that_do_not_make_sense_are_refused(
    data: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected):
        EmailSequence.model_validate(data)


def test_feedback_is_stripped() -> None:
    assert validate_feedback("  CTOs at mid-size hospitals \n") == "CTOs at mid-size hospitals"


@pytest.mark.parametrize(
    ("feedback", "expected"),
    [
        ("", "feedback must not be empty; say who the emails should really target"),
        (" \n\t ", "feedback must not be empty"),
        ("x" * (MAX_FEEDBACK_CHARS + 1), f"the limit is {MAX_FEEDBACK_CHARS}"),
        ("CTOs\x1b[31m", "control characters"),
        (None, "feedback must be text"),
    ],
)
def test_bad_feedback_is_refused(feedback: object, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected.replace("[", r"\[")):
        validate_feedback(feedback)


def test_feedback_at_the_limit_is_accepted() -> None:
    assert len(validate_feedback("x" * MAX_FEEDBACK_CHARS)) == MAX_FEEDBACK_CHARS


def test_interaction_ids_are_normalised() -> None:
    assert validate_interaction_id(" ABCDEF0123456789ABCDEF0123456789\n") == (
        "abcdef0123456789abcdef0123456789"
    )


@pytest.mark.parametrize(
    "bad", ["", "123", "x" * 32, "' OR 1=1 --", "0" * 31 + "'", "0" * 33, None, 42]
)
def test_malformed_interaction_ids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput, match="is not an interaction id"):
        validate_interaction_id(bad)
