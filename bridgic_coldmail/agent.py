"""``ColdMailAgent``: start a run, pause it into SQLite, resume it with feedback, any time later.

This is the layer that closes Bridgic's sharp edges around ``interact_with_human``:

* an unknown interaction id is ``RunNotFound`` (Bridgic alone would silently pause again);
* a snapshot whose serialization version this code does not know is refused, naming both;
* each run is resumed at most once, through an atomic claim in SQLite, not a Python lock;
* a failed refinement gives the run back, untouched, with the error recorded;
* the LLM is attached after loading and never serialized (it holds the API key).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from bridgic.core.automa import Snapshot
from bridgic.core.automa.interaction import InteractionException, InteractionFeedback

from .automa import ColdMailAutoma
from .errors import ColdmailError, ConfigurationError, InvalidInput, LlmError, SnapshotError
from .llm import (
    ColdmailLlm,
    build_llm,
    check_llm,
    choose_backend,
    close_llm,
    model_from_env,
    seconds_from_env,
    timeout_from_env,
)
from .models import (
    Brief,
    EmailSequence,
    Run,
    RunEvent,
    RunStatus,
    make_brief,
    validate_feedback,
    validate_interaction_id,
)
from .prompts import AUDIENCE_QUESTION
from .retry import RetryPolicy
from .store import DEFAULT_BUSY_TIMEOUT, DEFAULT_DB_PATH, DEFAULT_LEASE_SECONDS, Claim, RunStore

SUPPORTED_SERIALIZATION_VERSIONS = frozenset({"1.0"})
"""Bridgic snapshot formats this release can resume."""

MAX_PAGE = 1000


def db_path_from_env(path: str | os.PathLike[str] | None = None) -> Path:
    """The database path: the argument, else ``COLDMAIL_DB``, else ``snapshots/coldmail.db``."""
    if path is not None and str(path) != "":
        return Path(path)
    return Path(os.environ.get("COLDMAIL_DB", "").strip() or DEFAULT_DB_PATH)


class ColdMailAgent:
    """Drafts cold-email sequences that pause for audience feedback and resume later.

    Open one with :meth:`open`; it owns a connection to the run database and closes it on
    exit. One agent can serve many concurrent tasks.
    """

    def __init__(
        self,
        store: RunStore,
        llm: ColdmailLlm | str | None,
        model: str,
        llm_timeout: float,
        retry: RetryPolicy,
    ) -> None:
        self._store = store
        self.retry = retry
        # An LLM object, or the backend to build on first use ("openai", "local", None: auto).
        self._llm: ColdmailLlm | None = None if llm is None or isinstance(llm, str) else llm
        self._backend = llm if isinstance(llm, str) else None
        self._owns_llm = False  # True once we build one
        self.model = model
        self.llm_timeout = llm_timeout

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        db_path: str | os.PathLike[str] | None = None,
        *,
        llm: ColdmailLlm | str | None = None,
        model: str | None = None,
        llm_timeout: float | None = None,
        busy_timeout: float | None = None,
        lease_seconds: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[ColdMailAgent]:
        """Open the agent on a run database.

        Args:
            db_path: SQLite file; default ``COLDMAIL_DB`` or ``snapshots/coldmail.db``. The
                folder is created if missing.
            llm: any Bridgic LLM implementing ``BaseLlm`` and ``StructuredOutput``; or
                ``"openai"`` / ``"local"``; or ``None`` to choose from the environment
                (``COLDMAIL_LLM``, else OpenAI when configured, else the local model when
                installed). A named backend is built the first time an LLM is needed, so
                ``get`` and ``list`` work without any LLM settings.
            model: model name passed to the LLM; default ``OPENAI_MODEL_NAME`` or gpt-4o-mini.
            llm_timeout: seconds per LLM step; default ``COLDMAIL_LLM_TIMEOUT`` or 120.
            busy_timeout: seconds to wait for another process's write lock; default 10.
            lease_seconds: how long a resume's claim lasts before another resumer may take
                over a run whose resumer died; default ``COLDMAIL_LEASE_SECONDS`` or 300.
            retry: how each LLM step is retried; default ``RetryPolicy()`` (4 tries,
                exponential backoff from 0.5 s, honouring ``Retry-After``).

        Raises:
            StoreError: the database cannot be opened or is not a bridgic-coldmail database.
            ConfigurationError: ``llm`` is not a usable LLM, or a setting is malformed.
        """
        checked_llm = llm if llm is None or isinstance(llm, str) else check_llm(llm)
        if isinstance(llm, str):
            choose_backend(llm)  # a misspelt backend fails here, before anything opens
        timeout = llm_timeout if llm_timeout is not None else timeout_from_env()
        lease = (
            lease_seconds
            if lease_seconds is not None
            else seconds_from_env("COLDMAIL_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)
        )
        async with RunStore.open(
            db_path_from_env(db_path),
            busy_timeout=busy_timeout if busy_timeout is not None else DEFAULT_BUSY_TIMEOUT,
            lease_seconds=lease,
        ) as store:
            agent = cls(
                store, checked_llm, model or model_from_env(), timeout, retry or RetryPolicy()
            )
            try:
                yield agent
            finally:
                if agent._owns_llm and agent._llm is not None:
                    await close_llm(agent._llm)

    @property
    def db_path(self) -> str:
        """The database file this agent uses."""
        return self._store.path

    def _llm_or_env(self) -> ColdmailLlm:
        if self._llm is None:
            self._llm = build_llm(self._backend, self.llm_timeout)
            self._owns_llm = True
        return self._llm

    def _automa(self, automa: ColdMailAutoma | None = None) -> ColdMailAutoma:
        automa = automa or ColdMailAutoma()
        automa.attach_llm(self._llm_or_env(), self.model, self.llm_timeout, self.retry)
        return automa

    async def start(self, brief: Brief | Mapping[str, Any]) -> Run:
        """Draft the sequence and pause for audience feedback.

        The returned run is already stored (status ``awaiting_feedback``): the process may
        exit now and any other process may resume it by its ``interaction_id``.

        Raises:
            InvalidInput: the brief does not validate.
            LlmError: the draft LLM call failed; nothing was stored.
        """
        if not isinstance(brief, Brief):
            brief = make_brief(**dict(brief))
        automa = self._automa()
        try:
            await automa.arun(brief=brief.model_dump(mode="json"))
        except InteractionException as pause:
            interaction = pause.interactions[0]
            draft = EmailSequence.model_validate(interaction.event.data["draft"])
            return await self._store.insert_paused(
                interaction.interaction_id,
                brief,
                draft,
                AUDIENCE_QUESTION,
                pause.snapshot.serialized_bytes,
                pause.snapshot.serialization_version,
            )
        raise ColdmailError("the automa finished without pausing for feedback; this is a bug")

    async def resume(self, interaction_id: str, feedback: str) -> Run:
        """Resume a paused run with the human's feedback and return it completed.

        Resuming a completed run with the same feedback returns the stored result without
        calling the LLM.

        Raises:
            InvalidInput: malformed id, or empty / too long feedback (nothing changed).
            RunNotFound: no run under this id.
            RunConflict: the run already completed with different feedback.
            RunBeingResumed: another caller is resuming it right now.
            LlmError: the refinement failed; the run is back to ``awaiting_feedback``.
            SnapshotError: the snapshot was written by an incompatible version.
            SnapshotIntegrityError: the snapshot was altered; it was not loaded.
        """
        interaction_id = validate_interaction_id(interaction_id)
        feedback = validate_feedback(feedback)
        try:  # a missing LLM setting is reported before the run is touched...
            self._llm_or_env()
        except ConfigurationError:  # ...unless the run is done and needs no LLM
            if (await self._store.get(interaction_id)).status is not RunStatus.COMPLETED:
                raise
        claimed = await self._store.claim(
            interaction_id, feedback, SUPPORTED_SERIALIZATION_VERSIONS
        )
        if isinstance(claimed, Run):
            return claimed
        try:
            final = await self._refine(claimed, feedback)
        except BaseException as exc:
            # Shielded: a cancelled resume must still give the run back.
            await asyncio.shield(self._store.release(claimed, _describe(exc)))
            raise
        return await self._store.complete(claimed, final)

    async def _refine(self, claim: Claim, feedback: str) -> EmailSequence:
        # The claim has checked the signature and the format: these bytes are our own.
        snapshot = Snapshot(
            serialized_bytes=claim.snapshot_bytes,
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
        automa = self._automa(loaded)
        reply = InteractionFeedback(interaction_id=claim.interaction_id, data=feedback)
        try:
            result = await automa.arun(feedback_data=reply)
        except InteractionException:
            raise SnapshotError(
                f"the snapshot of run {claim.interaction_id} did not accept the feedback"
            ) from None
        if not isinstance(result, EmailSequence):
            raise LlmError(f"the refinement returned {type(result).__name__}, not a sequence")
        return result

    async def get(self, interaction_id: str) -> Run:
        """The stored run. Raises ``RunNotFound`` or ``InvalidInput`` (malformed id)."""
        return await self._store.get(validate_interaction_id(interaction_id))

    async def history(self, interaction_id: str) -> list[RunEvent]:
        """The run's events, oldest first: paused, each feedback received, failures, completion."""
        return await self._store.history(validate_interaction_id(interaction_id))

    async def list(
        self, status: RunStatus | str | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[Run]:
        """Stored runs, newest first, optionally only those of one ``status``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        if offset < 0:
            raise InvalidInput(f"offset must be 0 or more, not {offset}")
        return await self._store.list(_parse_status(status), limit=limit, offset=offset)

    async def purge(
        self,
        older_than: timedelta,
        statuses: Iterable[RunStatus | str] = (RunStatus.COMPLETED,),
    ) -> int:
        """Delete runs of these statuses (default: completed) untouched for ``older_than``.

        A run awaiting feedback is deleted only when its status is named explicitly.
        Returns the number of runs deleted.
        """
        chosen = {_parse_status(s) or RunStatus.COMPLETED for s in statuses}
        if not chosen:
            raise InvalidInput("name at least one status to purge")
        if older_than < timedelta(0):
            raise InvalidInput("older_than must not be negative")
        return await self._store.purge(older_than, chosen)


def _parse_status(status: RunStatus | str | None) -> RunStatus | None:
    if status is None or isinstance(status, RunStatus):
        return status
    try:
        return RunStatus(status)
    except ValueError:
        names = ", ".join(s.value for s in RunStatus)
        raise InvalidInput(f"unknown status {status!r}; use one of {names}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ColdmailError):
        return str(exc)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "the resume was interrupted before the refinement finished"
    return f"{type(exc).__name__}: {exc}"
