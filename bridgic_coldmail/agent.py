"""``ColdMailAgent``: start a run, pause it in the store, resume it with feedback and review
decisions, any time later, from any process or host.

This is the layer that closes Bridgic's sharp edges around ``interact_with_human``:

* an unknown interaction id is ``RunNotFound`` (Bridgic alone would silently pause again),
  and a snapshot that pauses again where it was is refused rather than stored;
* a snapshot whose serialization version this code does not know is refused, naming both;
* each feedback or decision is applied at most once, through an atomic claim in the store,
  not a Python lock; the claim's lease is renewed while the LLM works, and only the current
  holder can record the result (fencing);
* a failed step gives the run back, untouched, with the error recorded;
* the LLM is attached after loading and never serialized (it holds the API key).

The store answers with neutral outcomes; the messages people read are worded here.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import re
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bridgic.core.automa import Snapshot
from bridgic.core.automa.interaction import InteractionException, InteractionFeedback
from pydantic import ValidationError
from typing_extensions import Unpack

from .automa import REVIEW_EVENT, ColdMailAutoma
from .errors import (
    ColdmailError,
    ConfigurationError,
    InvalidInput,
    LinkRefused,
    LinkRunGone,
    LlmError,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
    SnapshotError,
    SnapshotIntegrityError,
    StoreError,
)
from .llm import ColdmailLlm, build_llm, check_llm, close_llm

if TYPE_CHECKING:
    from .export import ExportReport
    from .lint import LintIssue
    from .notify.links import OpenedLink
from .models import (
    Brief,
    DamagedRun,
    Decision,
    EmailSequence,
    ListedRun,
    ReviewOutcome,
    Run,
    RunEvent,
    RunStatus,
    make_brief,
    make_decision,
    preview,
    preview_list,
    validate_feedback,
    validate_interaction_id,
    validate_page,
    validate_reviewer,
)
from .prompts import AUDIENCE_QUESTION
from .retry import RetryPolicy
from .settings import AgentOptions, Settings
from .store import (
    Action,
    AlreadyDone,
    Claim,
    ClaimOutcome,
    Finished,
    IfMissing,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
    connect_store,
)

SUPPORTED_SERIALIZATION_VERSIONS = frozenset({"1.0"})
"""Bridgic snapshot formats this release can resume."""

MAX_PAGE = 1000
"""The most runs one ``list`` call returns."""

T = TypeVar("T")


class OpenOptions(AgentOptions, total=False):
    """The keyword arguments of ``ColdMailAgent.open`` and ``SyncColdMailAgent.open``."""

    llm: ColdmailLlm | str | None
    retry: RetryPolicy | None
    settings: Settings | None
    missing: IfMissing


class ColdMailAgent:
    """Drafts cold-email sequences that pause for people and resume later.

    Open one with :meth:`open`; it owns a connection to the run store and closes it on exit.
    One agent can serve many concurrent tasks.
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

    @classmethod
    @asynccontextmanager
    async def open(
        cls, db_path: str | os.PathLike[str] | None = None, **options: Unpack[OpenOptions]
    ) -> AsyncIterator[ColdMailAgent]:
        """Open the agent on a run store.

        Args:
            db_path: an SQLite file or a ``postgresql://`` URL; default ``COLDMAIL_DB``,
                else ``coldmail.db`` in the per-user data folder (``settings.default_db_path``,
                the ``coldmail`` command's). Opening never creates an SQLite database: the
                first run started creates it, with its folder and signing key.
            llm: any Bridgic LLM implementing ``BaseLlm`` and ``StructuredOutput``; or
                ``"openai"`` / ``"local"``; or None to choose from the settings
                (``COLDMAIL_LLM``, else OpenAI when configured, else the local model when
                installed). A named backend is built the first time an LLM is needed, so
                ``get`` and ``list`` work without any LLM settings.
            retry: how each LLM step is retried; default ``RetryPolicy()``.
            settings: resolved settings to start from; default: from the environment.
            missing: when the SQLite database does not exist yet: ``"defer"`` (default) —
                reads find nothing and the first run started creates it; ``"create"`` — now,
                so a path that cannot hold one fails here rather than after the first LLM
                call; ``"refuse"`` — raise :class:`DatabaseNotFound` (for callers that only
                read).
            **options: any other setting by name (``model``, ``llm_timeout``,
                ``busy_timeout``, ``lease_seconds``, ``max_rounds``, ``key_file``, …; see
                ``settings.Settings``), overriding the environment.

        Raises:
            DatabaseNotFound: ``missing="refuse"`` and there is no database at ``db_path``.
            StoreError: the store cannot be opened or is not a bridgic-coldmail database.
            ConfigurationError: ``llm`` is not a usable LLM, or a setting is malformed.
        """
        missing = options.pop("missing", "defer")
        llm = options.pop("llm", None)
        retry = options.pop("retry", None)
        base = options.pop("settings", None) or Settings.resolve()
        backend = llm if isinstance(llm, str) or llm is None else None
        resolved = base.with_overrides(db=db_path, llm=backend, **options)
        checked = None if llm is None or isinstance(llm, str) else check_llm(llm)
        store = await connect_store(resolved, missing=missing)
        agent = cls(store, resolved, checked, retry)
        try:
            yield agent
        finally:
            try:
                if agent._owns_llm and agent._llm is not None:
                    await close_llm(agent._llm)
            finally:
                await store.close()

    @property
    def db_path(self) -> str:
        """The store this agent uses (a file path, or a URL without its password)."""
        return self._store.location

    @property
    def llm_timeout(self) -> float:
        """Seconds each LLM step may take."""
        return self.settings.llm_timeout

    def _llm_or_build(self) -> ColdmailLlm:
        if self._llm is None:
            self._llm = build_llm(self.settings)
            self._owns_llm = True
        return self._llm

    def _automa(self, automa: ColdMailAutoma | None = None, *, llm: bool = True) -> ColdMailAutoma:
        automa = automa or ColdMailAutoma()
        automa.attach_llm(
            self._llm_or_build() if llm else None,
            self.settings.model,
            self.settings.llm_timeout,
            self.retry,
        )
        return automa

    # ------------------------------------------------------------------ starting

    async def start(
        self,
        brief: Brief | Mapping[str, Any],
        *,
        review: bool = False,
        fields: Iterable[str] = (),
    ) -> Run:
        """Draft the sequence and pause for audience feedback.

        The returned run is already stored (status ``awaiting_feedback``): the process may
        exit now and any other process may resume it by its ``interaction_id``.

        Args:
            brief: what the emails are about.
            review: after the refinement, pause for review rounds until a reviewer approves
                (:meth:`approve`, :meth:`revise`, :meth:`edit`, :meth:`reject`).
            fields: the columns of the lead list the emails will go to; the LLM may use them
                as ``{{name}}`` merge fields, and no others.

        Raises:
            InvalidInput: the brief or the fields do not validate.
            LlmError: the draft LLM call failed; nothing was stored.
        """
        if not isinstance(brief, Brief):
            brief = make_brief(**dict(brief))
        field_names = _check_fields(fields)
        automa = self._automa()
        try:
            await automa.arun(
                brief=brief.model_dump(mode="json"),
                review_mode=review,
                fields=list(field_names),
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
                    fields=field_names,
                )
            )
        raise ColdmailError("the automa finished without pausing for feedback; this is a bug")

    # ------------------------------------------------------------------ feedback and decisions

    async def resume(
        self, interaction_id: str, feedback: str, *, reviewer: str | None = None
    ) -> Run:
        """Resume a paused run with the audience feedback.

        Returns the run ``completed`` — or, for a run started with ``review=True``,
        ``awaiting_review`` at round 1 with the refined sequence. The same feedback again
        returns the stored result without calling the LLM.

        Raises:
            InvalidInput: malformed id, or empty / too long feedback (nothing changed).
            RunNotFound: no run under this id.
            RunConflict: the run already took different feedback.
            RunBeingResumed: another caller is applying feedback to it right now.
            LlmError: the refinement failed; the run is back to ``awaiting_feedback``.
            SnapshotError: the snapshot was written by an incompatible version.
            SnapshotIntegrityError: the run was altered or is unsigned; it was not loaded.
        """
        interaction_id = validate_interaction_id(interaction_id)
        feedback = validate_feedback(feedback)
        return await self._apply(
            interaction_id, Action.feedback(feedback, validate_reviewer(reviewer))
        )

    async def approve(
        self, interaction_id: str, *, reviewer: str | None = None, round: int | None = None
    ) -> Run:
        """Approve the sequence under review: the run completes with it.

        ``round`` (optional) names the round the decision answers; a repeat of the decision
        that round took returns the stored result, a different one is a ``RunConflict``.
        """
        decision = make_decision("approve", reviewer=reviewer, round=round)
        return await self.decide(interaction_id, decision)

    async def revise(
        self,
        interaction_id: str,
        guidance: str,
        *,
        reviewer: str | None = None,
        round: int | None = None,
    ) -> Run:
        """Ask for another version: the LLM revises with the brief, the audience feedback,
        every earlier guidance and this one; the run pauses for the next round.

        Refused (``RunConflict``) once the run reached its maximum rounds.
        """
        decision = make_decision("revise", text=guidance, reviewer=reviewer, round=round)
        return await self.decide(interaction_id, decision)

    async def edit(
        self,
        interaction_id: str,
        sequence: EmailSequence | Mapping[str, Any],
        *,
        reviewer: str | None = None,
        round: int | None = None,
    ) -> Run:
        """Put the reviewer's own emails under review (next round); no LLM call."""
        decision = make_decision("edit", sequence=sequence, reviewer=reviewer, round=round)
        return await self.decide(interaction_id, decision)

    async def reject(
        self,
        interaction_id: str,
        reason: str,
        *,
        reviewer: str | None = None,
        round: int | None = None,
    ) -> Run:
        """End the run as ``rejected``; it is kept with its history."""
        decision = make_decision("reject", text=reason, reviewer=reviewer, round=round)
        return await self.decide(interaction_id, decision)

    async def decide(self, interaction_id: str, decision: Decision) -> Run:
        """Apply a review decision built with ``models.make_decision`` (what ``approve``,
        ``revise``, ``edit`` and ``reject`` do, for callers that hold the decision as data).

        Raises:
            InvalidInput: malformed id, or edited emails with a field the run lacks.
            RunNotFound: no run under this id.
            RunConflict: the run took another decision for that round, or is not awaiting
                review (still awaiting feedback, finished, not in review mode, or past its
                round limit for a revision).
            RunBeingResumed: another caller holds the run right now.
            LlmError: a revision's LLM call failed; the run stays at its round.
        """
        interaction_id = validate_interaction_id(interaction_id)
        decision = _checked_decision(decision)
        if decision.kind in ("edit", "approve"):
            run = await self.get(interaction_id)
            if decision.sequence is not None:
                _check_placeholders(decision.sequence, run.fields)
            elif (
                run.status is RunStatus.AWAITING_REVIEW
                and run.sequence is not None
                and decision.round in (None, run.round)
            ):
                _check_exportable(run, run.sequence)
        return await self._apply(interaction_id, Action.of(decision))

    async def _apply(self, interaction_id: str, action: Action) -> Run:
        """Claim the run for ``action``, run the automa from its snapshot, record the result."""
        needs_llm = action.kind in ("feedback", "revise")
        if needs_llm:
            try:  # a missing LLM setting is reported before the run is touched...
                self._llm_or_build()
            except ConfigurationError:  # ...unless the run is done and needs no LLM
                stored = await self._store.get(interaction_id)
                if not (isinstance(stored, Run) and not stored.status.is_paused):
                    raise
        outcome = await self._claim(interaction_id, action)
        if isinstance(outcome, AlreadyDone):
            return outcome.run
        if isinstance(outcome, Refusal):
            raise self._refusal_error(interaction_id, outcome, action)
        claim = outcome
        try:
            result = await self._holding(claim, self._run_automa(claim, llm=needs_llm))
            try:
                completed = await self._store.complete(claim, result)
            except StoreError as failure:
                completed = await self._complete_again(claim, result, failure)
        except BaseException as exc:
            if not (isinstance(exc, StoreError) and exc.topic == "unconfirmed"):
                # Shielded: a cancelled step must still give the run back. Giving back is
                # fenced too: a result recorded after all is never marked as failed. (Once
                # unconfirmed, the lease is over: there is nothing left to give back.)
                await asyncio.shield(self._give_back(claim, _describe(exc)))
            raise
        if completed is None:
            raise await self._fenced_out(claim)
        return completed

    async def _claim(self, interaction_id: str, action: Action) -> ClaimOutcome:
        """Claim the run. A claim interrupted (Ctrl-C, a cancelled task) may still be
        granted — SQLite's thread and PostgreSQL's commit carry on — so it is awaited to the
        end and given back, never left holding the run until its lease runs out."""
        claiming = asyncio.ensure_future(
            self._store.claim(interaction_id, action, SUPPORTED_SERIALIZATION_VERSIONS)
        )
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError as cancelled:
            try:
                granted = await claiming
            except Exception:
                granted = None
            if isinstance(granted, Claim):
                await self._give_back(granted, _describe(cancelled))
            raise

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
                raise _unconfirmed_error(claim, failure, self._store.lease_seconds)
            await asyncio.sleep(pause)

    async def _fenced_out(self, claim: Claim) -> ColdmailError:
        """The claim was taken over while this resumer worked: say what the store holds."""
        taken = (
            f"run {claim.interaction_id} was taken over by another resumer while this one "
            "worked (its lease expired and was not renewed in time), and this one recorded "
            "nothing"
        )
        try:
            found = await self._store.get(claim.interaction_id)
        except StoreError:
            found = None
        if not isinstance(found, Run):
            return RunBeingResumed(f"{taken}; look at the run to see what it holds now")
        if found.status is RunStatus.RESUMING:
            return RunBeingResumed(
                f"{taken}; another resumer is working on it now: look at it again in a moment",
                topic="held",
            )
        if found.status is claim.run.status and found.round == claim.run.round:
            again = "resume it again" if claim.action.kind == "feedback" else "decide again"
            return RunBeingResumed(
                f"{taken}; the other resumer did not finish either, so nothing was recorded: "
                f"the run is {found.describe_state()} again; {again}"
            )
        feedback = (
            f" with the feedback {preview(found.feedback)}"
            if claim.action.kind == "feedback"
            else ""
        )
        return RunBeingResumed(
            f"{taken}; another resumer's result is recorded: the run is "
            f"{found.describe_state()}{feedback}"
        )

    async def _holding(self, claim: Claim, work: Awaitable[T]) -> T:
        """Await ``work`` while renewing the claim's lease; stop it if the claim is lost."""
        task = asyncio.ensure_future(work)
        lost = asyncio.Event()
        interval = self._store.lease_seconds / 3

        async def renew() -> None:
            wait = interval
            while True:
                await asyncio.sleep(wait)
                try:
                    renewed = await self._store.renew(claim)
                except StoreError:
                    # Locked for a moment: try again soon, while the lease still runs.
                    wait = min(interval, 1.0)
                    continue
                if renewed is None:
                    lost.set()
                    task.cancel()
                    return
                wait = interval

        keeper = asyncio.create_task(renew())
        try:
            return await task
        except asyncio.CancelledError:
            if lost.is_set():
                raise RunBeingResumed(
                    f"run {claim.interaction_id} was taken over by another resumer; this "
                    "one stopped without recording anything"
                ) from None
            raise
        finally:
            keeper.cancel()
            if not task.done():
                task.cancel()

    async def _give_back(self, claim: Claim, error: str) -> None:
        """Release the claim with the error, retrying while the store is locked or full,
        until the lease would have run out anyway."""
        deadline = asyncio.get_running_loop().time() + self._store.lease_seconds
        while True:
            try:
                await self._store.release(claim, error)
                return
            except StoreError:
                if asyncio.get_running_loop().time() >= deadline:
                    return  # the lease expires; the run becomes claimable by itself
                await asyncio.sleep(min(1.0, self._store.lease_seconds / 10))

    async def _run_automa(self, claim: Claim, *, llm: bool) -> Paused | Finished:
        # The claim has checked the signature and the format: these bytes are our own.
        snapshot = Snapshot(
            serialized_bytes=claim.snapshot,
            serialization_version=claim.serialization_version,
        )
        try:
            loaded = ColdMailAutoma.load_from_snapshot(snapshot)
        except Exception as exc:
            raise SnapshotError(
                f"the snapshot of run {claim.interaction_id} cannot be loaded "
                f"({type(exc).__name__}: {exc}); it was written by an incompatible release"
            ) from exc
        if not isinstance(loaded, ColdMailAutoma):
            raise SnapshotError(
                f"the snapshot of run {claim.interaction_id} holds a "
                f"{type(loaded).__name__}, not a ColdMailAutoma"
            )
        automa = self._automa(loaded, llm=llm)
        action = claim.action
        data: Any = (
            action.text if action.kind == "feedback" else action.decision().model_dump(mode="json")
        )
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

    def _refusal_error(
        self, interaction_id: str, refusal: Refusal, action: Action
    ) -> ColdmailError:
        """The error a person reads for a refused claim."""
        reason, run = refusal.reason, refusal.run
        if reason is RefusalReason.NOT_FOUND:
            return RunNotFound(interaction_id, self.db_path)
        if reason is RefusalReason.TAMPERED:
            return _integrity_error(interaction_id, refusal.problem, tampered=True)
        if reason is RefusalReason.UNSIGNED:
            return SnapshotIntegrityError(
                f"run {interaction_id} has no signature: it was stored by bridgic-coldmail "
                "0.1 or written by another program, and was not loaded (loading a snapshot "
                "can run code). If you trust whoever wrote this database, trust the run "
                "explicitly and try again",
                topic="unsigned",
            )
        if reason is RefusalReason.DAMAGED:
            return _integrity_error(interaction_id, refusal.problem, tampered=False)
        if reason is RefusalReason.UNKNOWN_FORMAT:
            versions = ", ".join(sorted(SUPPORTED_SERIALIZATION_VERSIONS))
            return SnapshotError(
                f"run {interaction_id} was saved with snapshot format {refusal.version!r}, "
                f"but this release reads only {versions}; resume it with the "
                "bridgic-coldmail release that paused it"
            )
        if reason is RefusalReason.HELD:
            doing = _doing(refusal.pending)
            until = f"{refusal.held_until:%Y-%m-%d %H:%M:%S} UTC" if refusal.held_until else "?"
            return RunBeingResumed(
                f"run {interaction_id} is {doing} by another process right now; look at it "
                f"again in a moment (if that process died, the run can be taken again after "
                f"{until})",
                topic="held",
            )
        assert run is not None
        if reason is RefusalReason.ROUND_LIMIT:
            return RunConflict(
                f"run {interaction_id} is at review round {run.round} of {run.max_rounds} and "
                "cannot be revised again; approve it, edit the emails yourself, or reject it",
                topic="round_limit",
            )
        if reason is RefusalReason.WRONG_STATE:
            if run.status is RunStatus.AWAITING_FEEDBACK:
                return RunConflict(
                    f"run {interaction_id} is still waiting for audience feedback; resume it "
                    "with feedback first, then review the refined sequence",
                    topic="awaiting_feedback",
                )
            return RunConflict(
                f"run {interaction_id} is at review round {run.round}; round {action.round} "
                "has not happened"
            )
        # CONFLICT: the run already took something else.
        decided = refusal.decided
        if action.kind == "feedback":
            return RunConflict(
                f"run {interaction_id} already took different feedback "
                f"({preview(run.feedback)}); start a new run to try another audience"
            )
        if not run.review:
            return RunConflict(
                f"run {interaction_id} was not started in review mode and has no review to "
                "decide; start a new run with review"
            )
        if run.status.is_final:
            return RunConflict(
                f"run {interaction_id} is already {run.status.value} "
                f"({decided.decision().describe() if decided else 'decided'}); nothing changed"
            )
        taken = (
            f" ({decided.decision().describe()})"
            if decided is not None and decided.round == action.round
            else ""
        )
        return RunConflict(
            f"round {action.round} of run {interaction_id} was already decided{taken}; the "
            f"run is at round {run.round}"
        )

    # ------------------------------------------------------------------ reading

    async def get(self, interaction_id: str) -> Run:
        """The stored run.

        Raises:
            InvalidInput: malformed id.
            RunNotFound: no run under this id.
            SnapshotIntegrityError: the stored run was altered; it is not shown.
            StoreError: the stored run cannot be read.
        """
        interaction_id = validate_interaction_id(interaction_id)
        found = await self._store.get(interaction_id)
        if found is None:
            raise RunNotFound(interaction_id, self.db_path)
        if isinstance(found, DamagedRun):
            raise _damaged_error(found)
        return found

    async def history(self, interaction_id: str) -> builtins.list[RunEvent]:
        """The run's events, oldest first: paused, feedback, review rounds and decisions,
        failures, completion."""
        interaction_id = validate_interaction_id(interaction_id)
        found = await self._store.history(interaction_id)
        if found is None:
            raise RunNotFound(interaction_id, self.db_path)
        if isinstance(found, Refusal):
            tampered = found.reason is RefusalReason.TAMPERED
            raise _integrity_error(interaction_id, found.problem, tampered=tampered)
        return found

    async def list(
        self, status: RunStatus | str | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ListedRun]:
        """Stored runs, newest first, optionally only those of one ``status``.

        A run that cannot be shown (altered, or unreadable) is listed as a
        :class:`DamagedRun`, so that one bad row never hides the others.
        """
        limit, offset = validate_page(limit, offset, MAX_PAGE)
        return await self._store.list(_parse_status(status), limit=limit, offset=offset)

    async def counts(self) -> dict[RunStatus, int]:
        """How many stored runs each status has (statuses without runs left out)."""
        return await self._store.counts()

    async def purge(
        self,
        older_than: timedelta,
        statuses: Iterable[RunStatus | str] = (RunStatus.COMPLETED,),
    ) -> int:
        """Delete runs of these statuses (default: completed) untouched for ``older_than``.

        A paused run (awaiting feedback or review) is deleted only when its status is named
        explicitly. Returns the number of runs deleted.
        """
        chosen = {_parse_status(s) or RunStatus.COMPLETED for s in statuses}
        if not chosen:
            raise InvalidInput("name at least one status to purge")
        if not isinstance(older_than, timedelta):
            raise InvalidInput("older_than must be a timedelta, e.g. timedelta(days=30)")
        if older_than < timedelta(0):
            raise InvalidInput("older_than must not be negative")
        try:
            datetime.now(timezone.utc) - older_than
        except OverflowError:
            raise InvalidInput(
                f"older_than is {older_than.days} days, before the year 1; give a shorter age"
            ) from None
        return await self._store.purge(older_than, chosen)

    async def export(
        self,
        interaction_id: str,
        leads: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        format: str = "csv",
        strict: bool = False,
        overwrite: bool = False,
        max_bytes: int | None = None,
    ) -> ExportReport:
        """Render the run's final sequence for every lead of a CSV list, into ``out``.

        One row per lead (its own columns, then ``step1_subject``, ``step1_body``,
        ``step2_subject`` — blank, so it threads as a reply —, ``step2_body`` and
        ``step2_delay_days``), merge fields filled in, formulas neutralised. The run must be
        completed (approved, in review mode). ``out`` is a new file, or an existing regular
        file with ``overwrite=True``, never this agent's database or key file; ``"-"`` is
        standard output. Cancelling the call (Ctrl-C) stops the export between two rows and
        leaves ``out`` as it was. ``max_bytes`` caps the file written (the web inbox's
        ``COLDMAIL_MAX_EXPORT_BYTES``). See ``export.export_sequence``.

        Raises:
            RunConflict: the run has no final sequence yet.
            InvalidInput: the lead list or ``out`` cannot be used; or, with ``strict``, a
                lint warning or a lead that cannot be rendered; or the file would pass
                ``max_bytes`` (``topic="export_too_large"``). ``out`` is then untouched.
        """
        from .export import FORMATS, export_sequence, run_stoppable, store_files

        run = await self.get(interaction_id)
        if run.final is None:
            raise RunConflict(_not_final(run), topic="not_final")
        if format not in FORMATS:
            raise InvalidInput(f"unknown export format {format!r}; use csv or json")
        return await run_stoppable(
            export_sequence,
            run.final,
            Path(leads),
            Path(out),
            format=format,
            strict=strict,
            acronyms=_acronyms(run),
            overwrite=overwrite,
            protected=store_files(self.settings),
            max_bytes=max_bytes,
        )

    async def preview_export(
        self, interaction_id: str, leads: str | os.PathLike[str]
    ) -> ExportReport:
        """What :meth:`export` would find for this lead list, without writing anything: the
        rows that would be skipped and every lint issue (errors included), as data for a page.

        Raises:
            RunConflict: the run has no final sequence yet.
            InvalidInput: the lead list itself cannot be used.
        """
        from .export import preview_export, run_stoppable, store_files

        run = await self.get(interaction_id)
        if run.final is None:
            raise RunConflict(_not_final(run), topic="not_final")
        return await run_stoppable(
            preview_export,
            run.final,
            Path(leads),
            acronyms=_acronyms(run),
            protected=store_files(self.settings),
        )

    async def lint(self, interaction_id: str) -> builtins.list[LintIssue]:
        """Lint the run's newest sequence (the final one, or the one under review) against
        its merge fields: unknown fields, long subjects and bodies, links, capitals, spam
        phrases. Warnings; see ``lint.lint_sequence``."""
        from .lint import lint_sequence

        run = await self.get(interaction_id)
        sequence = run.sequence or run.draft
        # Tens of milliseconds for bodies at their limit: not on the event loop.
        return await asyncio.to_thread(lint_sequence, sequence, run.fields, acronyms=_acronyms(run))

    async def trust_unsigned(self, interaction_ids: Collection[str] | None) -> builtins.list[str]:
        """Sign the unsigned snapshots of these runs (all of them when None).

        Runs stored by release 0.1 have no signature and are never loaded, because loading a
        snapshot can run code. Call this only if you trust whoever could write the database
        until now. Returns the ids of the runs signed.
        """
        ids = (
            None
            if interaction_ids is None
            else [validate_interaction_id(i) for i in interaction_ids]
        )
        return await self._store.trust_unsigned(ids)

    # ------------------------------------------------------------------ one-click links

    async def link(self, interaction_id: str, *, expires_at: datetime | None = None) -> str:
        """A signed one-click link to the pause the run waits at:
        ``<COLDMAIL_PUBLIC_ORIGIN>/l/<token>``.

        Opened in a browser, with no login (not even ``COLDMAIL_WEB_TOKEN``), it shows that
        pause — the draft and the audience question, or the sequence under review and the
        decisions — and applies the answer submitted there, once. It shows nothing else of
        the inbox. It stops working at ``expires_at`` (default: ``COLDMAIL_LINK_TTL`` from
        now), and acts no more once the pause is answered (it then shows what was decided).

        Raises:
            ConfigurationError: ``COLDMAIL_PUBLIC_ORIGIN`` is not set.
            InvalidInput: malformed id, or ``expires_at`` not an aware time in the future.
            RunNotFound: no run under this id.
            RunConflict: the run waits for nobody (completed or rejected).
            RunBeingResumed: an answer is being applied to it right now.
        """
        from .notify.links import current_pause, link_expiry, make_link

        origin = self.settings.public_origin
        if not origin:
            raise ConfigurationError(
                "a one-click link needs the address browsers reach the inbox at: set "
                "COLDMAIL_PUBLIC_ORIGIN (e.g. https://review.example.com, or "
                "http://127.0.0.1:8000 for `coldmail serve` on this machine)"
            )
        now = datetime.now(timezone.utc)
        if expires_at is None:
            expires_at = link_expiry(now, self.settings.link_ttl)
        elif expires_at.tzinfo is None or expires_at <= now:
            raise InvalidInput("expires_at must be an aware time in the future (e.g. in UTC)")
        run = await self.get(interaction_id)
        pause = current_pause(run)
        if run.status is RunStatus.RESUMING:
            raise RunBeingResumed(
                f"run {run.interaction_id} is being worked on right now; ask for its link "
                "once it pauses again",
                topic="held",
            )
        signer = await self._store.signer()
        if pause is None or signer is None:
            raise RunConflict(
                f"run {run.interaction_id} is {run.describe_state()} and waits for nobody: "
                "there is no question a link could answer",
                topic="not_paused",
            )
        at_review = run.status is RunStatus.AWAITING_REVIEW
        round = run.round if at_review else None
        return make_link(signer, origin, run.interaction_id, pause, expires_at, round=round)

    async def open_link(self, token: str, *, form_token: str | None = None) -> OpenedLink:
        """What the one-click link with this token opens: the run as stored now, whether it
        still waits at the link's pause, and a fresh form token for the link's page. Nothing
        is changed: answering goes through :meth:`resume` and :meth:`decide`.

        Args:
            token: the part of the link after ``/l/``.
            form_token: a form token submitted from the link's page, to check.

        Raises:
            LinkRefused: the token is forged, edited, truncated or signed with another key;
                or ``form_token`` was not made for this link's page (403).
            LinkExpired: the link's time is over (410).
            LinkRunGone: the link's run is no longer stored (404).
        """
        from .notify.links import (
            REFUSED,
            OpenedLink,
            check_run,
            form_token_matches,
            make_form_token,
            read_token,
        )

        signer = await self._store.signer()
        if signer is None:  # no database: no link was made here
            raise LinkRefused(REFUSED, topic="forged")
        claim = read_token(signer, token)
        if form_token is not None and not form_token_matches(signer, token, form_token):
            raise LinkRefused(
                "this form did not come from this link's page (missing or wrong form token); "
                "open the link again and submit from there; nothing was changed",
                topic="form",
            )
        try:
            run: Run | None = await self.get(claim.run_id)
        except (RunNotFound, InvalidInput):
            run = None
        if run is None:
            raise LinkRunGone("this link's run is no longer stored", topic="not_found")
        is_open = check_run(claim, run, to_act=False)
        return OpenedLink(claim, run, is_open, make_form_token(signer, token))


def _next_pause(claim: Claim, pause: InteractionException) -> Paused:
    """The automa paused again: it must be a new review round, else the feedback was refused."""
    interaction = pause.interactions[0]
    if interaction.interaction_id == claim.pause_id or interaction.event.event_type != REVIEW_EVENT:
        raise SnapshotError(
            f"the snapshot of run {claim.interaction_id} did not accept the "
            f"{'feedback' if claim.action.kind == 'feedback' else 'decision'}"
        )
    data = interaction.event.data
    return Paused(
        pause_id=interaction.interaction_id,
        snapshot=pause.snapshot.serialized_bytes,
        serialization_version=pause.snapshot.serialization_version,
        sequence=EmailSequence.model_validate(data["sequence"]),
        round=int(data["round"]),
    )


def _not_final(run: Run) -> str:
    if run.status is RunStatus.AWAITING_REVIEW:
        return (
            f"run {run.interaction_id} is awaiting review at round {run.round}; approve it "
            "before exporting"
        )
    if run.status is RunStatus.REJECTED:
        return f"run {run.interaction_id} was rejected; there is nothing to export"
    return (
        f"run {run.interaction_id} is {run.status.value.replace('_', ' ')} and has no final "
        "sequence yet"
    )


def _acronyms(run: Run) -> frozenset[str]:
    """Upper-case words the brief itself uses (a product called ACME is not shouting)."""
    from .lint import DEFAULT_ACRONYMS

    words = re.findall(r"[A-Za-z][A-Za-z0-9]*", f"{run.brief.product} {run.brief.sender}")
    return frozenset(DEFAULT_ACRONYMS) | {w for w in words if w.isupper()}


def _damaged_error(damaged: DamagedRun) -> ColdmailError:
    return _integrity_error(damaged.interaction_id, damaged.detail, tampered=damaged.tampered)


def _integrity_error(interaction_id: str, detail: str | None, *, tampered: bool) -> ColdmailError:
    """The one wording of a run that cannot be used: altered (tampered) or unreadable."""
    what = detail or "its stored data is not as this installation wrote it"
    if tampered:
        return SnapshotIntegrityError(
            f"run {interaction_id} does not match its signature: {what}; it was not loaded "
            "or shown. Restore the database from a backup",
            topic="tampered",
        )
    return StoreError(
        f"run {interaction_id} cannot be used: {what}; restore the database from a backup",
        topic="damaged",
    )


def _check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    if isinstance(fields, str):
        raise InvalidInput("fields must be a list of column names, not one string")
    names = list(fields)
    if not names:
        return ()
    from .merge import field_names

    return tuple(field_names(names))


def _checked_decision(decision: Any) -> Decision:
    """``decision`` validated again: it may have been built with ``model_construct`` or
    changed with ``model_copy``, which skip the rules every other way in is held to."""
    if not isinstance(decision, Decision):
        raise InvalidInput(
            f"decide takes a Decision (see make_decision), not {type(decision).__name__}"
        )
    return make_decision(
        getattr(decision, "kind", None),
        text=getattr(decision, "text", None),
        sequence=getattr(decision, "sequence", None),
        reviewer=getattr(decision, "reviewer", None),
        round=getattr(decision, "round", None),
    )


def _check_exportable(run: Run, sequence: EmailSequence) -> None:
    """Refuse to approve emails that no lead could be exported with (a run edited by a
    release that accepted them): an approved run can always be exported."""
    from .merge import unknown_fields

    problem: str | None = None
    try:
        EmailSequence.model_validate(sequence.model_dump())
    except ValidationError as exc:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if problem is None:
        texts = [text for step in sequence.steps for text in (step.subject, step.body)]
        unknown = unknown_fields(texts, run.fields)
        if unknown:
            problem = f"they use merge fields the run does not have: {preview_list(unknown)}"
    if problem is not None:
        raise RunConflict(
            f"run {run.interaction_id} cannot be approved: the emails under review at round "
            f"{run.round} cannot be exported ({problem}); edit them, then approve",
            topic="not_exportable",
        )


def _check_placeholders(sequence: EmailSequence, fields: tuple[str, ...]) -> None:
    from .merge import unknown_fields

    texts = [text for step in sequence.steps for text in (step.subject, step.body)]
    unknown = unknown_fields(texts, fields)
    if unknown:
        known = preview_list(fields, quoted=False) or "none"
        raise InvalidInput(
            "the emails use merge fields the run does not have: "
            f"{preview_list(sorted(unknown), quoted=False)} (its fields: {known})"
        )


def _doing(pending: Action | None) -> str:
    if pending is None or pending.kind == "feedback":
        return "being resumed"
    return f"being {pending.event_kind} (review decision)"


def _parse_status(status: RunStatus | str | None) -> RunStatus | None:
    if status is None or isinstance(status, RunStatus):
        return status
    try:
        return RunStatus(status)
    except ValueError:
        names = ", ".join(s.value for s in RunStatus)
        raise InvalidInput(f"unknown status {status!r}; use one of {names}") from None


def _unconfirmed_error(claim: Claim, failure: StoreError, waited: float) -> StoreError:
    """The store failed as the result was recorded and did not answer for a whole lease: say
    so, and name the retry that is safe (the same action for the same pause)."""
    action = claim.action
    if action.kind == "feedback":
        what, again = "the feedback", "resume it with the same feedback"
    else:
        what = f"the decision ({action.decision().describe()})"
        again = f"apply the same decision for round {claim.run.round}"
    return StoreError(
        f"{what} for run {claim.interaction_id} was worked out, but whether it was recorded "
        f"could not be confirmed: recording it failed ({failure}), and so did every check "
        f"for {waited:g} s. To finish, {again}: if it was recorded, that returns the "
        "recorded result; if not, it is applied once",
        topic="unconfirmed",
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ColdmailError):
        return str(exc)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "the resume was interrupted before it finished"
    return f"{type(exc).__name__}: {exc}"
