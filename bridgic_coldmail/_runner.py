"""The runner (internal): claim → verify → load → run the automa → complete or give back.

This is the layer that closes Bridgic's sharp edges around ``interact_with_human``:

* an unknown interaction id is refused (Bridgic alone would silently pause again), and a
  snapshot that pauses again where it was is refused rather than stored;
* a snapshot whose serialization version this code does not know is refused, naming both;
* each feedback or decision is applied at most once, through an atomic claim in the store,
  not a Python lock; the claim's lease is renewed while the LLM works (:meth:`Runner.holding`,
  the lease keeper), and only the current holder can record the result (fencing);
* a result whose recording was not acknowledged (the reply to the commit lost, the database
  locked or full) is recorded again while the lease runs: ``complete`` is fenced and
  idempotent, so the caller learns the recorded result, never a second effect;
* a failed step gives the run back, untouched, with the error recorded;
* the LLM is attached after loading and never serialized (it holds the API key).

The store answers with neutral outcomes; :meth:`Runner.answer` and :meth:`Runner.get` word a
refusal with ``_wording`` for :class:`~.agent.ColdMailAgent`, which validates what it is
given first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from bridgic.core.automa import Snapshot
from bridgic.core.automa.interaction import InteractionException, InteractionFeedback

from . import _wording as wording
from .automa import REVIEW_EVENT, ColdMailAutoma
from .errors import ColdmailError, ConfigurationError, LlmError, RunNotFound, StoreError
from .llm import ColdmailLlm, build_llm, close_llm
from .llm.prompts import AUDIENCE_QUESTION
from .models import Brief, DamagedRun, Decision, EmailSequence, ReviewOutcome, Run, RunStatus
from .notify.policy import NotifyPolicy
from .retry import RetryPolicy
from .settings import Settings
from .store import (
    AlreadyDone,
    Claim,
    ClaimOutcome,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
)

SUPPORTED_SERIALIZATION_VERSIONS = frozenset({"1.0"})
"""Bridgic snapshot formats this release can resume."""

T = TypeVar("T")


class Runner:
    """Runs the automa of one store's runs: the first draft, and every step after a pause.

    One runner serves many concurrent tasks; it owns the LLM it builds (:meth:`aclose`).
    """

    def __init__(
        self,
        store: RunStore,
        settings: Settings,
        llm: ColdmailLlm | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._store = store
        self.settings = settings
        self.retry = retry or RetryPolicy()
        self._llm = llm
        self._owns_llm = False  # True once we build one

    async def aclose(self) -> None:
        """Close the LLM's HTTP clients if this runner built it (an LLM given is the giver's)."""
        if self._owns_llm and self._llm is not None:
            await close_llm(self._llm)

    @property
    def store(self) -> RunStore:
        """The run store this runner claims runs in."""
        return self._store

    async def get(self, interaction_id: str) -> Run:
        """The stored run (``interaction_id`` already validated), or the error that says why
        it cannot be shown: ``RunNotFound``, or the damaged run's."""
        found = await self._store.get(interaction_id)
        if found is None:
            raise RunNotFound(interaction_id, self._store.location)
        if isinstance(found, DamagedRun):
            raise wording.damaged_error(found)
        return found

    async def answer(self, interaction_id: str, action: Decision) -> Run:
        """:meth:`apply` ``action``, and raise the error ``_wording`` words for a refusal
        (a conflict with an answer the deadline gave says so)."""
        outcome = await self.apply(interaction_id, action)
        if isinstance(outcome, Refusal) and outcome.reason is RefusalReason.CONFLICT:
            history = await self._store.history(interaction_id)
            if isinstance(history, list):
                deadline = wording.answered_by_deadline(interaction_id, history, action)
                if deadline is not None:
                    raise deadline
        if isinstance(outcome, Refusal):
            raise wording.refusal_error(
                interaction_id,
                outcome,
                action,
                location=self._store.location,
                supported_versions=SUPPORTED_SERIALIZATION_VERSIONS,
            )
        return outcome

    def llm(self) -> ColdmailLlm:
        """The LLM: the one given, else built from the settings the first time it is needed
        (so reading runs needs no LLM settings)."""
        if self._llm is None:
            self._llm = build_llm(self.settings)
            self._owns_llm = True
        return self._llm

    def automa(self, automa: ColdMailAutoma | None = None, *, llm: bool = True) -> ColdMailAutoma:
        """``automa`` (a new one by default) with the LLM attached (none with ``llm=False``:
        approving, editing and rejecting call no LLM)."""
        automa = automa or ColdMailAutoma()
        automa.attach_llm(
            self.llm() if llm else None,
            self.settings.model,
            self.settings.llm_timeout,
            self.retry,
        )
        return automa

    async def start(
        self,
        brief: Brief,
        *,
        review: bool,
        fields: tuple[str, ...],
        notify: NotifyPolicy | None = None,
    ) -> Run:
        """Draft the sequence and store the run paused for audience feedback (and its
        ``run.paused`` notifications, in the same transaction)."""
        automa = self.automa()
        try:
            await automa.arun(
                brief=brief.model_dump(mode="json"),
                review_mode=review,
                fields=list(fields),
            )
        except InteractionException as pause:
            interaction = pause.interactions[0]
            draft = EmailSequence.model_validate(interaction.event.data["draft"])
            return await self._store.insert_paused(
                NewRun(
                    interaction_id=interaction.interaction_id,
                    brief=brief,
                    draft=draft,
                    question=AUDIENCE_QUESTION,
                    snapshot=pause.snapshot.serialized_bytes,
                    serialization_version=pause.snapshot.serialization_version,
                    review=review,
                    max_rounds=self.settings.max_rounds if review else None,
                    fields=fields,
                    notify=notify,
                )
            )
        raise ColdmailError("the automa finished without pausing for feedback; this is a bug")

    async def apply(self, interaction_id: str, action: Decision) -> Run | Refusal:
        """Claim the run for ``action``, run the automa from its snapshot, record the result.

        Returns the run the step left (or the result recorded before, for a repeat), or the
        store's :class:`Refusal` for the caller to word (nothing changed then).
        """
        needs_llm = action.kind in ("feedback", "revise")
        if needs_llm:
            try:  # a missing LLM setting is reported before the run is touched...
                self.llm()
            except ConfigurationError:  # ...unless the run is done and needs no LLM
                stored = await self._store.get(interaction_id)
                if not (isinstance(stored, Run) and not stored.status.is_paused):
                    raise
        outcome = await self._claim(interaction_id, action)
        if isinstance(outcome, AlreadyDone):
            return outcome.run
        if isinstance(outcome, Refusal):
            return outcome
        claim = outcome
        try:
            result = await self.holding(claim, self._run_automa(claim, llm=needs_llm))
            try:
                completed = await self._store.complete(claim, result)
            except StoreError as failure:
                completed = await self._complete_again(claim, result, failure)
        except BaseException as exc:
            if not (isinstance(exc, StoreError) and exc.topic == "unconfirmed"):
                # Shielded: a cancelled step must still give the run back. Giving back is
                # fenced too: a result recorded after all is never marked as failed. (Once
                # unconfirmed, the lease is over: there is nothing left to give back.)
                # A step that failed (not one interrupted) tells the run's reviewers.
                note, failed = wording.failure_note(exc), isinstance(exc, Exception)
                await asyncio.shield(self._give_back(claim, note, announce=failed))
            raise
        if completed is None:
            raise await self._fenced_out(claim)
        return completed

    async def _claim(self, interaction_id: str, action: Decision) -> ClaimOutcome:
        """Claim the run. A claim interrupted (Ctrl-C, a cancelled task) may still be
        granted — SQLite's thread and PostgreSQL's commit carry on — so it is awaited to the
        end and given back, never left holding the run until its lease runs out."""
        claiming = asyncio.ensure_future(self._claim_surely(interaction_id, action))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError as cancelled:
            try:
                granted = await claiming
            except Exception:
                granted = None
            if isinstance(granted, Claim):
                await self._give_back(granted, wording.failure_note(cancelled))
            raise

    async def _claim_surely(self, interaction_id: str, action: Decision) -> ClaimOutcome:
        """Claim under a token chosen before the first attempt. When the reply to the claim's
        commit is lost (topic ``commit_unknown``), the run may be ours already: the claim is
        asked again with the same token while the lease would run, and the store hands back
        our own claim (or grants it now, if the first never committed). Without this the
        run would be held, by nobody, for the whole lease."""
        token = uuid.uuid4().hex
        versions = SUPPORTED_SERIALIZATION_VERSIONS
        try:
            return await self._store.claim(interaction_id, action, versions, token=token)
        except StoreError as first:
            if first.topic != "commit_unknown":
                raise
            failure = first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store.lease_seconds
        pause = min(1.0, self._store.lease_seconds / 10)
        while True:
            try:
                return await self._store.claim(interaction_id, action, versions, token=token)
            except StoreError as exc:
                failure = exc
            if loop.time() + pause >= deadline:
                raise failure  # by now the lease is over: the run is free again
            await asyncio.sleep(pause)

    async def _complete_again(
        self, claim: Claim, result: Paused | Finished, failure: StoreError
    ) -> Run | None:
        """Recording the result failed (the reply to the commit lost, the database locked or
        full): try again while the lease runs. ``complete`` is fenced and idempotent, so
        this records the result once, or returns what was recorded, or None when fenced
        out — the caller learns the recorded result, never a second effect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store.lease_seconds
        pause = min(1.0, self._store.lease_seconds / 10)
        while True:
            try:
                return await self._store.complete(claim, result)
            except StoreError as exc:
                failure = exc
            if loop.time() + pause >= deadline:
                raise wording.unconfirmed(claim, failure, self._store.lease_seconds)
            await asyncio.sleep(pause)

    async def _fenced_out(self, claim: Claim) -> ColdmailError:
        """The claim was taken over while this resumer worked: say what the store holds."""
        try:
            found = await self._store.get(claim.interaction_id)
        except StoreError:
            found = None
        return wording.fenced_out(claim, found)

    async def holding(self, claim: Claim, work: Awaitable[T]) -> T:
        """Await ``work`` while renewing the claim's lease; stop it if the claim is lost.

        The lease keeper is a timer until its first renewal is due: most steps end before
        that, and never pay for a task of their own (issue 20)."""
        task = asyncio.ensure_future(work)
        lost = asyncio.Event()
        interval = self._store.lease_seconds / 3

        async def renew() -> None:
            while True:
                try:
                    renewed = await self._store.renew(claim)
                except StoreError:
                    # Locked for a moment: try again soon, while the lease still runs.
                    await asyncio.sleep(min(interval, 1.0))
                    continue
                if renewed is None:
                    lost.set()
                    task.cancel()
                    return
                await asyncio.sleep(interval)

        loop = asyncio.get_running_loop()
        keeper: list[asyncio.Task[None]] = []
        timer = loop.call_later(interval, lambda: keeper.append(loop.create_task(renew())))
        try:
            return await task
        except asyncio.CancelledError:
            if lost.is_set():
                raise wording.taken_over(claim) from None
            raise
        finally:
            timer.cancel()
            for renewing in keeper:
                renewing.cancel()
            if not task.done():
                task.cancel()

    async def _give_back(self, claim: Claim, error: str, *, announce: bool = False) -> None:
        """Release the claim with the error, retrying while the store is locked or full,
        until the lease would have run out anyway."""
        deadline = asyncio.get_running_loop().time() + self._store.lease_seconds
        while True:
            try:
                await self._store.release(claim, error, announce=announce)
                return
            except StoreError:
                if asyncio.get_running_loop().time() >= deadline:
                    return  # the lease expires; the run becomes claimable by itself
                await asyncio.sleep(min(1.0, self._store.lease_seconds / 10))

    async def _run_automa(self, claim: Claim, *, llm: bool) -> Paused | Finished:
        if claim.action.kind == "reject" and claim.run.status is RunStatus.AWAITING_FEEDBACK:
            # Only a deadline rejects at the audience question (the claim rules): the run
            # ends with its draft, and the automa, which waits for feedback, is not woken.
            return Finished(RunStatus.REJECTED, claim.run.draft, claim.action.text)
        # The claim has checked the signature and the format: these bytes are our own.
        snapshot = Snapshot(
            serialized_bytes=claim.snapshot,
            serialization_version=claim.serialization_version,
        )
        try:
            loaded = ColdMailAutoma.load_from_snapshot(snapshot)
        except Exception as exc:
            raise wording.snapshot_not_loaded(claim, exc) from exc
        if not isinstance(loaded, ColdMailAutoma):
            raise wording.snapshot_not_automa(claim, loaded)
        automa = self.automa(loaded, llm=llm)
        action = claim.action
        data: Any = action.text if action.kind == "feedback" else action.model_dump(mode="json")
        reply = InteractionFeedback(interaction_id=claim.pause_id, data=data)
        try:
            result = await automa.arun(feedback_data=reply)
        except InteractionException as pause:
            return _next_pause(claim, pause)
        if isinstance(result, ReviewOutcome):
            status = RunStatus.COMPLETED if result.status == "completed" else RunStatus.REJECTED
            return Finished(status, result.sequence, result.reason)  # type: ignore[arg-type]
        if isinstance(result, EmailSequence):  # a run paused by a release before 0.5
            return Finished(RunStatus.COMPLETED, result)
        raise LlmError(f"the automa returned {type(result).__name__}, not a sequence")


def _next_pause(claim: Claim, pause: InteractionException) -> Paused:
    """The automa paused again: it must be a new review round, else the feedback was refused."""
    interaction = pause.interactions[0]
    if interaction.interaction_id == claim.pause_id or interaction.event.event_type != REVIEW_EVENT:
        raise wording.refused_by_snapshot(claim)
    data = interaction.event.data
    return Paused(
        pause_id=interaction.interaction_id,
        snapshot=pause.snapshot.serialized_bytes,
        serialization_version=pause.snapshot.serialization_version,
        sequence=EmailSequence.model_validate(data["sequence"]),
        round=int(data["round"]),
    )
