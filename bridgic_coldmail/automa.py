"""The Bridgic automa: draft → ask about the audience (pause) → refine → review rounds (pauses).

Stable import path: ``bridgic_coldmail.automa.ColdMailAutoma``. A snapshot records the
worker functions by their import path, so this class and its workers (``draft``,
``ask_audience``, ``refine``, ``review``, ``revise``) are never moved or renamed. A snapshot
also records the graph it was paused in: runs paused by releases before 0.5 (whose graph
ends at ``refine``) finish through that old graph. This module changes rarely; the LLM step
lives in ``llm/writing.py``.

Four Bridgic behaviours shape it:

* On resume, the worker that called ``interact_with_human`` re-runs from its top. The two
  pausing workers (``ask_audience``, ``review``) therefore do no LLM work; every LLM call
  is in a worker that runs after a pause returned (``refine``, ``revise``), whose output is
  in the next snapshot and is never recomputed.
* A worker that finishes forgets its interactions, so ``review`` can pause again in the next
  round with a new interaction id. Revising is a ferry to ``revise``, which ferries back to
  ``review``; an edit ferries ``review`` to itself.
* Arguments passed with ``ferry_to`` are kept in a pydantic model with ``Dict[str, Any]``
  kwargs, so a pydantic object ferried across a pause comes back from the snapshot as a
  plain dict. Sequences are therefore ferried as JSON data and validated where they arrive.
* Everything reachable from the automa's state is serialized into the snapshot. The LLM
  (which holds the API key) is an ordinary attribute outside that state: it is attached
  with :meth:`ColdMailAutoma.attach_llm` after construction and after loading a snapshot.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from bridgic.core.automa import GraphAutoma, worker
from bridgic.core.automa.args import From
from bridgic.core.automa.interaction import Event

from ._bridgic_lookups import SHARED_POOL
from .errors import ConfigurationError
from .llm.prompts import AUDIENCE_QUESTION, REVIEW_QUESTION
from .llm.writing import TaskKind, WritingTask, write_sequence
from .models import STORED, Brief, Decision, EmailSequence, ReviewOutcome
from .retry import NO_RETRY, RetryPolicy

AUDIENCE_EVENT = "audience_feedback"
"""The ``event_type`` of the audience pause."""
REVIEW_EVENT = "review_decision"
"""The ``event_type`` of a review pause."""


class ColdMailAutoma(GraphAutoma):
    """Drafts a two-email sequence, pauses for audience feedback, refines it, and in review
    mode pauses for a reviewer's decision after every version until one approves or rejects.

    Run it with ``arun(brief=brief.model_dump(mode="json"), review_mode=…, fields=[…])``;
    inputs are plain data so that the snapshot holds only JSON-like values and this package's
    models. The feedback of a review pause is a :class:`Decision` dumped to JSON data.
    """

    _llm: Any = None
    _model: str = ""
    _llm_timeout: float | None = None
    _retry: RetryPolicy = NO_RETRY

    def attach_llm(
        self,
        llm: Any,
        model: str,
        timeout: float | None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        """Give the automa its LLM. Never serialized; call again after ``load_from_snapshot``."""
        # Not one pool per automa (see _bridgic_lookups); Bridgic's property is untyped.
        if self.thread_pool is None:  # type: ignore[has-type]
            self.thread_pool = SHARED_POOL
        self._llm = llm
        self._model = model
        self._llm_timeout = timeout
        self._retry = retry

    async def _write(
        self,
        kind: TaskKind,
        brief: dict[str, Any] | None,
        fields: list[str] | None,
        *,
        feedback: str | None = None,
        current: EmailSequence | None = None,
        guidance: tuple[str, ...] = (),
    ) -> EmailSequence:
        if brief is None:  # Bridgic propagates the automa's inputs to every worker
            raise ConfigurationError("the automa was started without a brief")
        task = WritingTask(
            kind=kind,
            brief=Brief.model_validate(brief, context=STORED),
            feedback=feedback,
            current=current,
            guidance=guidance,
            fields=tuple(fields or ()),
        )
        return await write_sequence(
            task, llm=self._llm, model=self._model, timeout=self._llm_timeout, retry=self._retry
        )

    @worker(is_start=True)
    async def draft(self, brief: dict[str, Any], fields: list[str] | None = None) -> EmailSequence:
        """The first draft: one LLM call, never repeated (its output lives in the snapshot)."""
        return await self._write("draft", brief, fields)

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

    @worker(dependencies=["ask_audience"])
    async def refine(
        self,
        feedback: str,
        draft: EmailSequence = From("draft"),
        brief: dict[str, Any] | None = None,
        fields: list[str] | None = None,
    ) -> EmailSequence:
        """The refinement: one LLM call with the brief, the draft and the feedback verbatim."""
        return await self._write("refine", brief, fields, feedback=feedback, current=draft)

    @worker(dependencies=["refine"], is_output=True)
    async def review(
        self,
        sequence: EmailSequence | dict[str, Any],
        review_mode: bool = False,
        round: int = 1,
        guidance: list[str] | None = None,
    ) -> ReviewOutcome | None:
        """A review round: pause for a decision (review mode only), then act on it.

        Re-runs from the top on resume, so it does no LLM work: a revision is a ferry to
        ``revise``, an edit a ferry back here with the reviewer's emails.
        """
        # The sequence of an earlier round, from the snapshot: checked when it was written,
        # never refused by a rule added since (or the run could not be edited to fix it).
        sequence = EmailSequence.model_validate(sequence, context=STORED)
        if not review_mode:
            return ReviewOutcome(status="completed", sequence=sequence)
        event = Event(
            event_type=REVIEW_EVENT,
            timestamp=datetime.now(timezone.utc),
            data={
                "question": REVIEW_QUESTION,
                "round": round,
                "sequence": sequence.model_dump(mode="json"),
            },
        )
        answer = self.interact_with_human_from_worker_key(event, "review")
        # Validated when it came in (the runner sends the checked Decision it applies); a rule
        # added since, or the deadline's reserved name, must not refuse it here.
        decision = Decision.model_validate(answer.data, context=STORED)
        earlier = list(guidance or [])
        if decision.kind == "approve":
            return ReviewOutcome(status="completed", sequence=sequence, round=round)
        if decision.kind == "reject":
            return ReviewOutcome(
                status="rejected", sequence=sequence, round=round, reason=decision.text
            )
        if decision.kind == "edit":
            assert decision.sequence is not None  # Decision's validation guarantees it
            self.ferry_to(
                "review",
                sequence=decision.sequence.model_dump(mode="json"),
                review_mode=True,
                round=round + 1,
                guidance=earlier,
            )
            return None
        assert decision.text is not None
        self.ferry_to("revise", sequence=sequence, round=round, guidance=[*earlier, decision.text])
        return None

    @worker()
    async def revise(
        self,
        sequence: EmailSequence | dict[str, Any],
        round: int,
        guidance: list[str],
        feedback: str = From("ask_audience"),
        brief: dict[str, Any] | None = None,
        fields: list[str] | None = None,
    ) -> None:
        """A revision with the reviewer's guidance: one LLM call, then the next review round."""
        revised = await self._write(
            "revise",
            brief,
            fields,
            feedback=feedback,
            current=EmailSequence.model_validate(sequence, context=STORED),
            guidance=tuple(guidance),
        )
        self.ferry_to(
            "review",
            sequence=revised.model_dump(mode="json"),
            review_mode=True,
            round=round + 1,
            guidance=guidance,
        )
