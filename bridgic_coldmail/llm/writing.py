"""Every LLM step: what the automa asks a writer for, how it is asked, and how it fails.

Each step is a :class:`WritingTask`: the brief, what to write (a first draft, a refinement for
the audience a person named, or a revision with a reviewer's guidance), the sequence it starts
from and the merge fields the emails may use.

Two kinds of writer:

* A capable model (OpenAI or any OpenAI-compatible server, a larger GGUF) is asked for the
  whole sequence through Bridgic structured output, with the prompts of ``prompts.py`` and
  the JSON schema of :func:`answer_model`. **Every rule the answer must follow is in that
  schema**: lengths, the follow-up's wait, which ``{{field}}`` placeholders may appear.
  What the schema cannot say is derived in code instead of asked for: the opener is always
  sent on day 0, so its day is not part of the answer.
* A small model writes better when it writes less: an LLM that implements
  :class:`SequenceComposer` is handed the task itself and composes the emails its own way
  (``local/writer.py``).

Either way the result is a validated :class:`EmailSequence`, and :func:`write_sequence`
applies the one :class:`RetryPolicy` and turns any failure into one :class:`LlmError`.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from bridgic.core.model.protocols import PydanticModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..errors import ColdmailError, ConfigurationError, LlmError
from ..models import Brief, EmailSequence, EmailStep, describe_validation_error
from ..retry import (
    FailureNote,
    InvalidOutput,
    RetryPolicy,
    Unretryable,
    chain,
    describe,
    is_retryable,
    retry_after,
    root_cause,
    summarize,
)

TaskKind = Literal["draft", "refine", "revise"]

MAX_SUBJECT_CHARS = 200
MAX_BODY_CHARS = 5000
MIN_FOLLOW_UP_DAYS = 1
MAX_FOLLOW_UP_DAYS = 30


@dataclass(frozen=True)
class WritingTask:
    """One request for a sequence."""

    kind: TaskKind
    """``draft``: the first sequence from the brief. ``refine``: rewrite ``current`` for the
    audience in ``feedback``. ``revise``: rewrite ``current`` following ``guidance[-1]``."""
    brief: Brief
    feedback: str | None = None
    """The reviewer's answer to the audience question (refine and revise)."""
    current: EmailSequence | None = None
    """The sequence to rewrite: the draft (refine) or the one under review (revise)."""
    guidance: tuple[str, ...] = ()
    """Every revise instruction so far, oldest first; the last one is this round's."""
    fields: tuple[str, ...] = ()
    """Merge fields the emails may use as ``{{name}}`` or ``{{name|fallback}}``; no others."""

    @property
    def audience(self) -> str | None:
        """Who the emails are for: the reviewer's answer when there is one, else the guess."""
        return self.feedback or self.brief.audience

    @property
    def step_name(self) -> str:
        """``draft``, ``refinement`` or ``revision``, for messages."""
        return {"draft": "draft", "refine": "refinement", "revise": "revision"}[self.kind]


@runtime_checkable
class SequenceComposer(Protocol):
    """An LLM that writes a sequence from the task itself instead of from a prompt."""

    async def acompose(self, task: WritingTask) -> EmailSequence:
        """Write the sequence the task asks for. Raise on failure; it may be retried."""
        ...


class SequenceAnswer(BaseModel):
    """The shape of a capable model's answer: both emails, and the follow-up's wait."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opener: Any
    follow_up: Any

    def to_sequence(self) -> EmailSequence:
        """The answer as a sequence; the opener is sent on day 0 by definition."""
        return EmailSequence(
            opener=EmailStep(subject=self.opener.subject, body=self.opener.body, wait_days=0),
            follow_up=EmailStep(
                subject=self.follow_up.subject,
                body=self.follow_up.body,
                wait_days=self.follow_up.wait_days,
            ),
        )


@functools.cache
def answer_model(fields: tuple[str, ...] = ()) -> type[SequenceAnswer]:
    """The pydantic model whose JSON schema the LLM receives, for these merge fields.

    Every constraint that :func:`SequenceAnswer.to_sequence` and :class:`EmailSequence`
    enforce is stated here, so an answer that follows the schema is always accepted.
    """
    from ..merge import allowed_text_pattern  # the placeholder grammar lives there

    placeholder_rule = (
        f" Merge fields allowed: {', '.join('{{' + f + '}}' for f in fields)}, optionally "
        "with a fallback as {{name|fallback}}; no other braces."
        if fields
        else " No { or } characters (there are no merge fields)."
    )
    config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")

    def text(max_length: int, description: str, *, single_line: bool = False) -> Any:
        return Field(
            min_length=1,
            max_length=max_length,
            pattern=allowed_text_pattern(fields, single_line=single_line),
            description=description + placeholder_rule,
        )

    subject_rule = "Subject line: one line, short, specific, no clickbait."
    opener = create_model(
        "OpenerAnswer",
        __config__=config,
        subject=(str, text(MAX_SUBJECT_CHARS, subject_rule, single_line=True)),
        body=(str, text(MAX_BODY_CHARS, "Plain-text body, greeting to sign-off, < 150 words.")),
    )
    follow_up = create_model(
        "FollowUpAnswer",
        __config__=config,
        subject=(
            str,
            text(MAX_SUBJECT_CHARS, "Subject line of the follow-up, one line.", single_line=True),
        ),
        body=(str, text(MAX_BODY_CHARS, "Plain-text body, greeting to sign-off, < 150 words.")),
        wait_days=(
            int,
            Field(
                ge=MIN_FOLLOW_UP_DAYS,
                le=MAX_FOLLOW_UP_DAYS,
                description="Days after the opener to send it to people who did not reply.",
            ),
        ),
    )
    name = "EmailSequenceAnswer" if not fields else "EmailSequenceAnswerWithFields"
    model = create_model(
        name,
        __base__=SequenceAnswer,
        opener=(opener, Field(description="The first email, sent on day 0.")),
        follow_up=(follow_up, Field(description="The follow-up for readers who did not reply.")),
    )
    return model


async def write_sequence(
    task: WritingTask,
    *,
    llm: Any,
    model: str,
    timeout: float | None,
    retry: RetryPolicy,
) -> EmailSequence:
    """One LLM step, retried per ``retry``; any failure becomes one :class:`LlmError`."""
    for attempt in range(1, retry.attempts + 1):
        try:
            return await _write_once(task, llm=llm, model=model, timeout=timeout)
        except Exception as exc:
            if attempt == retry.attempts or not is_retryable(exc):
                raise _llm_error(task, exc, attempt, timeout) from exc
            wait = retry_after(exc)
            if wait is not None and wait > retry.max_retry_after:
                raise LlmError(
                    f"the LLM server asks to wait {wait:g} s before the {task.step_name} can be "
                    f"retried, longer than the {retry.max_retry_after:g} s allowed; try again "
                    "later"
                ) from exc
            await asyncio.sleep(wait if wait is not None else retry.backoff(attempt))
    raise AssertionError("unreachable: the loop returns or raises")


async def _write_once(
    task: WritingTask, *, llm: Any, model: str, timeout: float | None
) -> EmailSequence:
    if llm is None:
        raise ConfigurationError("no LLM attached to the automa; call attach_llm() first")
    result: Any
    if isinstance(llm, SequenceComposer):
        result = await within(llm.acompose(task), timeout)
    else:
        from .prompts import messages_for  # the prompts are for capable models only

        result = await ask_structured(
            llm, messages_for(task), answer_model(task.fields), model=model, timeout=timeout
        )
    if isinstance(result, SequenceAnswer):
        return _checked(result.to_sequence(), task)
    if isinstance(result, EmailSequence):
        return _checked(result, task)
    raise LlmError(f"the LLM returned {type(result).__name__}, not an email sequence")


async def ask_structured(
    llm: Any, messages: list[Any], answer: type[BaseModel], *, model: str, timeout: float | None
) -> Any:
    """One structured-output call: ``messages`` to ``llm``, the answer parsed as ``answer``
    (whose JSON schema the server receives), within ``timeout``. The emails and the
    personalized lines (``personalize.writer``) both take this path; retries are the caller's.
    """
    call = llm.astructured_output(
        messages=messages, constraint=PydanticModel(model=answer), model=model
    )
    return await within(call, timeout)


async def within(call: Any, timeout: float | None) -> Any:
    """Await ``call``; past ``timeout`` seconds raise the builtin ``TimeoutError`` (retried)."""
    try:
        return await asyncio.wait_for(call, timeout)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        raise TimeoutError(f"no answer within {timeout:g} s") from None


def _checked(sequence: EmailSequence, task: WritingTask) -> EmailSequence:
    """Hold every writer (composers too) to the schema's placeholder rule."""
    from ..merge import is_allowed_text, unknown_fields

    # Validated again (a composer may build it unchecked): EmailStep's rules hold for all.
    sequence = EmailSequence.model_validate(sequence.model_dump())
    texts = [text for step in sequence.steps for text in (step.subject, step.body)]
    if all(is_allowed_text(text, task.fields) for text in texts):
        return sequence
    unknown = unknown_fields(texts, task.fields)
    if unknown:
        raise InvalidOutput(
            "the emails use merge fields that the lead list does not have: "
            + ", ".join(sorted(unknown))
        )
    raise InvalidOutput("the emails use { or } outside a merge field")


def _llm_error(
    task: WritingTask, exc: Exception, attempts: int, timeout: float | None
) -> ColdmailError:
    """One error for a failed step, whose message is one line of bounded length: it is
    printed, and stored twice (the run's ``last_error`` and its history)."""
    if isinstance(exc, ColdmailError):
        return exc
    step = task.step_name
    tries = f" after {attempts} tries" if attempts > 1 else ""
    links = chain(exc)
    # Why the answer was asked for as plain JSON, when the server took no structured output.
    limits = next((f"; {link}" for link in links if isinstance(link, FailureNote)), "")
    unretryable = next((link for link in links if isinstance(link, Unretryable)), None)
    cause = root_cause(exc)
    if unretryable is not None:
        return LlmError(f"the {step} LLM call failed: {summarize(str(unretryable), 1200)}")
    if isinstance(cause, TimeoutError):
        return LlmError(
            f"the LLM did not answer the {step} request within {timeout:g} s{tries}; try "
            "again, or raise the LLM timeout"
        )
    if isinstance(cause, InvalidOutput):
        return LlmError(
            f"the LLM's {step} was refused{tries}: {summarize(str(cause))}{limits}; try again"
        )
    if isinstance(cause, ValidationError):
        message = describe_validation_error(cause, f"the LLM's {step} did not validate{tries}")
        return LlmError(f"{summarize(message)}{limits}; try again, or use a stronger model")
    return LlmError(
        f"the {step} LLM call failed{tries} ({describe(exc)}){limits}; check the LLM settings "
        "and try again"
    )
