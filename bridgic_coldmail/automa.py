"""The Bridgic automa: draft → ask about the audience (pause) → refine.

Stable import path: ``bridgic_coldmail.automa.ColdMailAutoma``. A snapshot records the
worker functions by their import path, so moving or renaming this class or its workers
breaks every paused run.

Two Bridgic behaviours shape this module:

* On resume, the worker that called ``interact_with_human`` re-runs from its top. That
  worker (``ask_audience``) therefore does no LLM work; the draft is a finished worker whose
  output is in the snapshot, so the draft LLM call happens exactly once per run.
* Everything reachable from the automa's state is serialized into the snapshot. The LLM
  (which holds the API key) is an ordinary attribute outside that state: it is attached
  with :meth:`ColdMailAutoma.attach_llm` after construction and after loading a snapshot.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, cast

from bridgic.core.automa import GraphAutoma, worker
from bridgic.core.automa.args import From
from bridgic.core.automa.interaction import Event
from bridgic.core.model.protocols import PydanticModel
from pydantic import ValidationError

from .errors import ColdmailError, ConfigurationError, LlmError
from .llm import ColdmailLlm
from .models import Brief, EmailSequence, describe_validation_error
from .prompts import AUDIENCE_QUESTION, draft_messages, refine_messages
from .retry import NO_RETRY, RetryPolicy, describe, is_retryable, retry_after, root_cause

AUDIENCE_EVENT = "audience_feedback"
"""The ``event_type`` of the pause."""


class ColdMailAutoma(GraphAutoma):
    """Drafts a two-email sequence, pauses for audience feedback, then refines it.

    Run it with ``arun(brief=brief.model_dump())``; the brief is passed as plain data so
    that the snapshot holds nothing but JSON-like values and this package's models.
    """

    _llm: ColdmailLlm | None = None
    _model: str | None = None
    _llm_timeout: float | None = None
    _retry: RetryPolicy = NO_RETRY

    def attach_llm(
        self,
        llm: ColdmailLlm,
        model: str,
        timeout: float | None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        """Give the automa its LLM. Never serialized; call again after ``load_from_snapshot``."""
        self._llm = llm
        self._model = model
        self._llm_timeout = timeout
        self._retry = retry

    @property
    def _compact_prompts(self) -> bool:
        # Small local base models get short prompts with a worked example (prompts.py).
        return bool(getattr(self._llm, "wants_compact_prompts", False))

    async def _ask_llm(self, step: str, messages: list[Any]) -> EmailSequence:
        """One LLM step, retried per the policy; any failure becomes one ``LlmError``."""
        policy = self._retry
        for attempt in range(1, policy.attempts + 1):
            try:
                result = await self._ask_once(messages)
            except Exception as exc:
                if attempt == policy.attempts or not is_retryable(exc):
                    raise self._llm_error(step, exc, attempt) from exc
                wait = retry_after(exc)
                if wait is not None and wait > policy.max_retry_after:
                    raise LlmError(
                        f"the LLM server asks to wait {wait:g} s before the {step} can be retried, "
                        f"longer than the {policy.max_retry_after:g} s allowed; try again later"
                    ) from exc
                await asyncio.sleep(wait if wait is not None else policy.backoff(attempt))
                continue
            if not isinstance(result, EmailSequence):
                raise LlmError(f"the LLM returned {type(result).__name__}, not an EmailSequence")
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    async def _ask_once(self, messages: list[Any]) -> Any:
        if self._llm is None or self._model is None:
            raise ConfigurationError("no LLM attached to the automa; call attach_llm() first")
        call = self._llm.astructured_output(
            messages=messages, constraint=PydanticModel(model=EmailSequence), model=self._model
        )
        try:
            return await asyncio.wait_for(call, self._llm_timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"no answer within {self._llm_timeout:g} s") from None

    def _llm_error(self, step: str, exc: Exception, attempts: int) -> ColdmailError:
        if isinstance(exc, ColdmailError):
            return exc
        tries = f" after {attempts} tries" if attempts > 1 else ""
        cause = root_cause(exc)
        if isinstance(cause, TimeoutError):
            return LlmError(
                f"the LLM did not answer the {step} request within {self._llm_timeout:g} s"
                f"{tries}; try again, or raise COLDMAIL_LLM_TIMEOUT"
            )
        if isinstance(cause, ValidationError):
            message = describe_validation_error(cause, f"the LLM's {step} did not validate{tries}")
            return LlmError(f"{message}; try again, or use a stronger model")
        return LlmError(
            f"the {step} LLM call failed{tries} ({describe(exc)}); "
            "check the LLM settings and try again"
        )

    @worker(is_start=True)
    async def draft(self, brief: dict[str, Any]) -> EmailSequence:
        """The first draft: one LLM call, never repeated (its output lives in the snapshot)."""
        messages = draft_messages(Brief.model_validate(brief), compact=self._compact_prompts)
        return await self._ask_llm("draft", messages)

    @worker(dependencies=["draft"])
    async def ask_audience(self, draft: EmailSequence) -> str:
        """Pause for the human. Re-runs from the top on resume, so it must stay side-effect free."""
        event = Event(
            event_type=AUDIENCE_EVENT,
            # Bridgic's default timestamp is fixed at import time; give the real one.
            timestamp=datetime.now(timezone.utc),
            data={"question": AUDIENCE_QUESTION, "draft": draft.model_dump(mode="json")},
        )
        # Naming the worker spares Bridgic an inspect.stack() walk (~1.3 ms a call, profiled).
        feedback = self.interact_with_human_from_worker_key(event, "ask_audience")
        return cast(str, feedback.data)

    @worker(dependencies=["ask_audience"], is_output=True)
    async def refine(
        self,
        feedback: str,
        draft: EmailSequence = From("draft"),
        brief: dict[str, Any] | None = None,
    ) -> EmailSequence:
        """The refinement: one LLM call with the brief, the draft and the feedback verbatim."""
        if brief is None:  # Bridgic propagates the automa's inputs to every worker
            raise ConfigurationError("the automa was started without a brief")
        messages = refine_messages(
            Brief.model_validate(brief), draft, feedback, compact=self._compact_prompts
        )
        return await self._ask_llm("refinement", messages)
