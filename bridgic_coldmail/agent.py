"""``ColdMailAgent``: start a run, pause it in the store, resume it with feedback and review
decisions, any time later, from any process or host.

A thin facade: each method validates what it is given (``models``' rules, the same for every
front end) and hands the step to the engine: the runner (``_runner.py``: claim → verify →
load → run the automa → complete or give back, with the lease keeper), forks
(``_forking.py``), exports (``_exporting.py``), personalization batches
(``_personalizing.py``) and one-click links (``_linking.py``), which raise the error
``_wording`` words for a refusal. An unknown interaction id is ``RunNotFound``.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from . import _exporting as exporting
from . import _forking as forking
from . import _linking as linking
from . import _personalizing as personalizing
from . import _wording as wording
from ._runner import Runner
from .errors import InvalidInput, RunNotFound
from .llm import ColdmailLlm, check_llm
from .notify.policy import notify_policy

if TYPE_CHECKING:
    from .export import ExportReport
    from .export.lint import LintIssue
    from .notify.links import OpenedLink
    from .personalize.batch import BatchReport
    from .personalize.estimate import BatchEstimate
    from .personalize.writer import LineResult
    from .store.batches import BatchLeadRow
    from .store.forks import Family
    from .store.outbox import Delivery, DueRun
from .models import (
    MAX_PAGE,
    Brief,
    Decision,
    EmailSequence,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
    make_brief,
    make_decision,
    validate_interaction_id,
    validate_page,
)
from .retry import RetryPolicy
from .settings import AgentOptions, Settings
from .store import (
    IfMissing,
    Refusal,
    RefusalReason,
    RunStore,
    connect_store,
)
from .store.outbox import NOTIFICATION_ID


class OpenOptions(AgentOptions, total=False):
    """The keyword arguments of ``ColdMailAgent.open`` and ``SyncColdMailAgent.open``."""

    llm: ColdmailLlm | str | None
    retry: RetryPolicy | None
    settings: Settings | None
    missing: IfMissing


class ColdMailAgent:
    """Drafts cold-email sequences that pause for people and resume later.

    Open one with ``async with ColdMailAgent.open(...)``, or ``await ColdMailAgent.connect(...)``
    and later :meth:`aclose` where a ``with`` block does not fit (an application's startup and
    shutdown hooks). It owns a connection to the run store. One agent can serve many
    concurrent tasks.
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
        self._runner = Runner(store, settings, llm, retry)
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls, db_path: str | os.PathLike[str] | None = None, **options: Unpack[OpenOptions]
    ) -> AsyncIterator[ColdMailAgent]:
        """The agent of :meth:`connect`, closed when the ``async with`` block ends."""
        agent = await cls.connect(db_path, **options)
        try:
            yield agent
        finally:
            await agent.aclose()

    @classmethod
    async def connect(
        cls, db_path: str | os.PathLike[str] | None = None, **options: Unpack[OpenOptions]
    ) -> ColdMailAgent:
        """Open the agent on a run store; close it with :meth:`aclose` (or use :meth:`open`,
        or the agent itself, in ``async with``).

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
        return cls(store, resolved, checked, retry)

    async def aclose(self) -> None:
        """Stop the lease keepers and close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._runner.aclose()
        finally:
            await self._store.close()

    async def __aenter__(self) -> ColdMailAgent:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def db_path(self) -> str:
        """The store this agent uses (a file path, or a URL without its password)."""
        return self._store.location

    @property
    def retry(self) -> RetryPolicy:
        """How each LLM step is retried."""
        return self._runner.retry

    @property
    def llm_timeout(self) -> float:
        """Seconds each LLM step may take."""
        return self.settings.llm_timeout

    # ------------------------------------------------------------------ starting

    async def start(
        self,
        brief: Brief | Mapping[str, Any],
        *,
        review: bool = False,
        fields: Iterable[str] = (),
        notify: str | Iterable[str] = (),
        respond_within: str | float | None = None,
        remind_every: str | float | None = None,
        on_timeout: str | None = None,
        escalate_to: str | Iterable[str] = (),
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
            notify: where this run's notifications go besides ``COLDMAIL_NOTIFY``: email
                addresses, webhook or chat URLs (see ``notify.destinations``); kept with the
                run, each pause and outcome queued for delivery in the same transaction.
            respond_within: how long each pause (the audience question, every review round)
                waits for its person: ``90s``, ``36h``, ``3d``, ``1h30m`` or seconds; default
                ``COLDMAIL_RESPOND_WITHIN``, else no deadline.
            remind_every: how often a waiting pause reminds its destinations (before the
                deadline); default ``COLDMAIL_REMIND_EVERY``, else never.
            on_timeout: what the deadline does: ``wait`` (keep waiting and escalate),
                ``proceed`` (refine with the brief's audience guess; approve at a review
                round) or ``reject``; default ``COLDMAIL_ON_TIMEOUT``, else ``wait``.
                Applied by ``coldmail worker`` (or ``serve``) through the same claim as a
                person's answer, exactly once.
            escalate_to: who is told when a deadline passes (``run.escalated``); default
                ``COLDMAIL_ESCALATE_TO``.

        Raises:
            InvalidInput: the brief, the fields, a destination or the wait policy do not
                validate (e.g. ``on_timeout`` without a deadline).
            ConfigurationError: a destination this installation cannot reach (email
                without ``COLDMAIL_SMTP_URL``, a webhook without ``COLDMAIL_WEBHOOK_SECRET``).
            LlmError: the draft LLM call failed; nothing was stored.
        """
        if not isinstance(brief, Brief):
            brief = make_brief(**dict(brief))
        policy = notify_policy(
            self.settings,
            notify,
            respond_within=respond_within,
            remind_every=remind_every,
            on_timeout=on_timeout,
            escalate_to=escalate_to,
        )
        return await self._runner.start(
            brief, review=review, fields=exporting.check_fields(fields), notify=policy
        )

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
        decision = make_decision("feedback", text=feedback, reviewer=reviewer)
        return await self.decide(interaction_id, decision)

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
        """Apply a person's answer built with ``models.make_decision``: the audience
        ``feedback`` (what :meth:`resume` does) or a review decision (what ``approve``,
        ``revise``, ``edit`` and ``reject`` do), for callers that hold the answer as data.
        Every front end — the command line, the JSON API, the inbox, a one-click link —
        applies its answers here.

        Raises:
            InvalidInput: malformed id, a decision that does not validate (the feedback
                rules of :meth:`resume` included), or edited emails with a field the run lacks.
            RunNotFound: no run under this id.
            RunConflict: the run took other feedback, or another decision for that round,
                or is not awaiting review (still awaiting feedback, finished, not in review
                mode, or past its round limit for a revision).
            RunBeingResumed: another caller holds the run right now.
            LlmError: the refinement or a revision's LLM call failed; the run stays where
                it was.
        """
        interaction_id = validate_interaction_id(interaction_id)
        decision = _checked_decision(decision)
        if decision.kind in ("edit", "approve"):
            run = await self.get(interaction_id)
            if decision.sequence is not None:
                exporting.check_placeholders(decision.sequence, run.fields)
            elif (
                run.status is RunStatus.AWAITING_REVIEW
                and run.sequence is not None
                and decision.round in (None, run.round)
            ):
                exporting.check_exportable(run, run.sequence)
        return await self._runner.answer(interaction_id, decision)

    # ------------------------------------------------------------------ reading

    async def get(self, interaction_id: str) -> Run:
        """The stored run.

        Raises:
            InvalidInput: malformed id.
            RunNotFound: no run under this id.
            SnapshotIntegrityError: the stored run was altered; it is not shown.
            StoreError: the stored run cannot be read.
        """
        return await self._runner.get(validate_interaction_id(interaction_id))

    async def history(self, interaction_id: str) -> builtins.list[RunEvent]:
        """The run's events, oldest first: paused, feedback, review rounds and decisions,
        failures, completion."""
        interaction_id = validate_interaction_id(interaction_id)
        found = await self._store.history(interaction_id)
        if found is None:
            raise RunNotFound(interaction_id, self.db_path)
        if isinstance(found, Refusal):
            tampered = found.reason is RefusalReason.TAMPERED
            raise wording.integrity_error(interaction_id, found.problem, tampered=tampered)
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
        profile: str = "generic",
        variants: Sequence[str] = (),
        disabled_rules: Iterable[str] | None = None,
        template: str | os.PathLike[str] | None = None,
        max_bytes: int | None = None,
    ) -> ExportReport:
        """Render the run's final sequence for every lead of a CSV list, into ``out``.

        One row per lead, merge fields filled in, the brief's postal address and opt-out
        sentence (else the settings') appended to every email, formulas neutralised. With
        ``profile="generic"``: the lead's own columns, then ``step1_subject``,
        ``step1_body``, ``step2_subject`` — blank, so it threads as a reply —, ``step2_body``
        and ``step2_delay_days``. With a sending tool's profile (``smartlead``,
        ``instantly``, ``lemlist``, ``apollo``): the columns that tool's importer knows, the
        steps as custom variables named as it allows, and a paste-ready template next to the
        file (``template`` to choose where). ``variants``: other completed runs exported
        with this one as an A/B test (this run is variant A, the others B, C… in order);
        each lead gets one of them by a hash of its address, in a ``variant`` column.

        The runs must be completed (approved, in review mode). ``out`` is a new file, or an
        existing regular file with ``overwrite=True``, never this agent's database or key
        file; ``"-"`` is standard output. Cancelling the call (Ctrl-C) stops the export
        between two rows and leaves ``out`` as it was. ``disabled_rules``: check rule ids
        not to apply (default: the ``disabled_rules`` setting). ``max_bytes`` caps the file
        written (the web inbox's ``COLDMAIL_MAX_EXPORT_BYTES``). See
        ``export.export_sequence``.

        Raises:
            RunConflict: a run has no final sequence yet.
            InvalidInput: the lead list, ``out``, the profile, a variant or a rule id cannot
                be used; or, with ``strict``, a warning or a lead that cannot be rendered; or
                the file would pass ``max_bytes`` (``topic="export_too_large"``). ``out`` is
                then untouched.
        """
        return await exporting.export(
            self._runner,
            interaction_id,
            leads,
            out,
            format=format,
            strict=strict,
            overwrite=overwrite,
            profile=profile,
            variants=variants,
            disabled_rules=disabled_rules,
            template=template,
            max_bytes=max_bytes,
        )

    async def preview_export(
        self,
        interaction_id: str,
        leads: str | os.PathLike[str],
        *,
        profile: str = "generic",
        variants: Sequence[str] = (),
        disabled_rules: Iterable[str] | None = None,
    ) -> ExportReport:
        """What :meth:`export` would find for this lead list, without writing anything: the
        rows that would be skipped, every lint issue (errors included) and the findings per
        lead, as data for a page.

        Raises:
            RunConflict: a run has no final sequence yet.
            InvalidInput: the lead list itself, the profile, a variant or a rule id cannot
                be used.
        """
        return await exporting.preview(
            self._runner,
            interaction_id,
            leads,
            profile=profile,
            variants=variants,
            disabled_rules=disabled_rules,
        )

    async def lint(
        self, interaction_id: str, *, disabled_rules: Iterable[str] | None = None
    ) -> builtins.list[LintIssue]:
        """Check the run's newest sequence (the final one, or the one under review) against
        its merge fields: unknown fields, long subjects and bodies, links, shorteners,
        images, HTML, capitals, exclamation marks, spam phrases, and the postal address and
        opt-out sentence its exports will append (CAN-SPAM). ``disabled_rules``: rule ids not
        to apply (default: the ``disabled_rules`` setting). See ``export.lint.lint_sequence``."""
        return await exporting.lint(self._runner, interaction_id, disabled_rules=disabled_rules)

    async def notifications(
        self, interaction_id: str | None = None, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        """The notifications queued for delivery (one run's, or all), newest first: each
        one's event, destination (shown without its URL's secrets), status, attempts, next
        try and last error."""
        if interaction_id is not None:
            interaction_id = validate_interaction_id(interaction_id)
        limit, _ = validate_page(limit, 0, MAX_PAGE)
        return await self._store.notifications(interaction_id, limit=limit)

    async def retry_notification(self, notification_id: str) -> Delivery:
        """Queue a failed notification again, from the start of the retry schedule (a
        pending or delivered one is returned unchanged).

        Raises:
            InvalidInput: a malformed id, or no notification under it.
        """
        if not isinstance(notification_id, str) or not NOTIFICATION_ID.fullmatch(notification_id):
            raise InvalidInput(
                "a notification id is 1 to 64 letters, digits, '-' or '_' (as "
                "`coldmail notifications` lists them)"
            )
        found = await self._store.retry_notification(notification_id)
        if found is None:
            raise InvalidInput(
                f"no notification {notification_id} in {self.db_path}; "
                "`coldmail notifications` lists them"
            )
        return found

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
        the inbox. It stops working at ``expires_at`` (default: the pause's deadline if it
        has one, else ``COLDMAIL_LINK_TTL`` from now), and acts no more once the pause is
        answered (it then shows what was decided).

        Raises:
            ConfigurationError: ``COLDMAIL_PUBLIC_ORIGIN`` is not set.
            InvalidInput: malformed id, or ``expires_at`` not an aware time in the future
                within 366 days.
            RunNotFound: no run under this id.
            RunConflict: the run waits for nobody (completed or rejected).
            RunBeingResumed: an answer is being applied to it right now.
        """
        return await linking.link(self._runner, interaction_id, expires_at=expires_at)

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
        return await linking.open_link(self._runner, token, form_token=form_token)

    # ------------------------------------------------------------------ forks

    async def fork(
        self,
        interaction_id: str,
        *,
        round: int | None = None,
        feedback: str | None = None,
        guidance: str | None = None,
        reviewer: str | None = None,
        key: str | None = None,
    ) -> Run:
        """Start a variant: a new run from one of this run's pauses, given other input there.

        ``round`` None or 0 forks the audience question (give ``feedback``); round N forks
        review round N (give ``guidance``: a revision of that round's sequence). The new run
        has a fresh interaction id and is linked to its parent (:meth:`family`); it is
        stored paused where its parent was, from that pause's kept, signed snapshot, then
        resumed with the input through the ordinary claim — so it is returned as a resume or
        a revision would return it. The parent is not changed, and may be worked on at the
        same time; each call makes another fork, unless it gives ``key``.

        ``key`` (1-64 letters, digits, ``-``, ``_``) makes a retry safe: calls with the same
        parent and key make one fork (its id derives from them) and return it as recorded,
        or finish its step if that failed; the same key with other input is refused. The
        inbox's fork form carries one, so a double click or a form sent again forks once.

        Raises:
            InvalidInput: malformed id, a round that is not a number, feedback and guidance
                mixed up, text that a resume or a revision would refuse, a malformed
                ``key``, or a ``key`` already used for another fork of this run.
            RunNotFound: no run under this id (or it was purged).
            RunConflict: the run never paused at that round, its snapshot there was not kept
                (paused before 0.6 kept every pause), or that round is the run's last one.
            SnapshotIntegrityError: the run or the kept snapshot was altered; nothing was
                loaded or stored.
            LlmError: the fork's LLM call failed; the fork is stored, paused, and its id is in
                the message: resume it (or revise it) instead of forking again.
        """
        return await forking.fork(
            self._runner,
            interaction_id,
            round=round,
            feedback=feedback,
            guidance=guidance,
            reviewer=reviewer,
            key=key,
        )

    async def family(self, interaction_id: str) -> Family:
        """The run's family: its root (the first run up its fork links still stored), then
        every fork below the root, oldest first, each with its status and what it tried.

        Raises:
            InvalidInput: malformed id.
            RunNotFound: no run under this id.
        """
        return await forking.family(self._runner, interaction_id)

    async def family_variants(self, interaction_id: str) -> builtins.list[str]:
        """The other approved (completed) runs of this run's family, in the family's order:
        what :meth:`export` takes as ``variants`` to export the family as an A/B test."""
        return await forking.family_variants(self._runner, interaction_id)

    # ------------------------------------------------------------------ personalized lines

    async def personalize(
        self,
        interaction_id: str,
        leads: str | os.PathLike[str],
        *,
        sample: int | None = None,
        guidance: str | None = None,
        on_line: Callable[[LineResult], None] | None = None,
    ) -> BatchReport:
        """Write one personalized first line per lead of ``leads`` for a completed run.

        The first call writes a sample (``sample`` leads, default the
        ``personalize_sample_size`` setting) and pauses for a person: the report's
        ``sample`` holds the lines, and :meth:`approve_sample` or :meth:`guide_sample`
        answers. Once approved, calling this again (or :meth:`approve_sample`) writes the
        rest; any number of processes may do so at once on one batch. Calling it again at any
        point resumes where the batch stopped: a lead whose line is stored is never written
        (nor paid for) again. ``guidance``: for a new batch, guidance for its first sample;
        while the sample waits, the same as :meth:`guide_sample`. ``on_line`` is called with
        each lead's result as it is written (a progress bar).

        Raises:
            RunNotFound: no such run.
            RunConflict: the run is not completed (approved) yet.
            InvalidInput: the lead list cannot be read, holds no usable lead, or ``sample``
                is out of range.
            LlmError: the batch halted (an outage, a refused key, an exhausted quota); the
                lines written so far are kept.
        """
        return await personalizing.personalize(
            self._runner,
            interaction_id,
            leads,
            sample=sample,
            guidance=guidance,
            on_line=on_line,
        )

    async def approve_sample(
        self,
        interaction_id: str,
        *,
        leads: str | os.PathLike[str] | None = None,
        on_line: Callable[[LineResult], None] | None = None,
        write_rest: bool = True,
        batch: str | None = None,
    ) -> BatchReport:
        """Approve the batch's sample and write every other lead's line. ``leads`` names
        the batch when the run has several. Approving again is harmless: it goes on writing.
        ``write_rest=False`` only records the approval, for workers (``personalize`` in
        other processes or hosts) to write the lines. ``batch`` names the batch by its id
        instead of ``leads`` (the inbox does).

        Raises:
            RunConflict: the batch's sample is still being written (nothing to approve yet).
            RunBeingResumed: another process is applying an answer to this sample.
        """
        return await personalizing.approve_sample(
            self._runner,
            interaction_id,
            leads=leads,
            on_line=on_line,
            write_rest=write_rest,
            batch=batch,
        )

    async def guide_sample(
        self,
        interaction_id: str,
        guidance: str,
        *,
        leads: str | os.PathLike[str] | None = None,
        batch: str | None = None,
    ) -> BatchReport:
        """Rewrite the batch's sample with ``guidance`` (added to any given before) and pause
        for the person again; the report holds the new sample.

        Raises:
            InvalidInput: the guidance is empty or too long.
            RunConflict: the sample is not waiting for an answer (approved, or not written).
        """
        return await personalizing.guide_sample(
            self._runner, interaction_id, guidance, leads=leads, batch=batch
        )

    async def batch_status(
        self,
        interaction_id: str,
        *,
        leads: str | os.PathLike[str] | None = None,
        batch: str | None = None,
    ) -> BatchReport:
        """Where the run's personalization batch is: its state, counts, sample and skips."""
        return await personalizing.batch_status(
            self._runner, interaction_id, leads=leads, batch=batch
        )

    async def batch_reports(self, interaction_id: str) -> builtins.list[BatchReport]:
        """Every personalization batch of the run, as :meth:`batch_status` reports it
        (newest first; none when the run has none)."""
        return await personalizing.batch_reports(self._runner, interaction_id)

    async def batch_lines(
        self, interaction_id: str, batch: str, *, after: int = -1, limit: int = 100
    ) -> builtins.list[BatchLeadRow]:
        """The written lines of one of the run's batches, by position after ``after``."""
        return await personalizing.batch_lines(
            self._runner, interaction_id, batch, after=after, limit=limit
        )

    async def estimate_lines(
        self, interaction_id: str, leads: str | os.PathLike[str]
    ) -> BatchEstimate:
        """What writing a line for every lead of ``leads`` would take, before it starts:
        leads, estimated tokens, and the cost when prices are set (``personalize/estimate.py``).

        Raises:
            RunConflict: the run is not completed (approved) yet.
            InvalidInput: the lead list cannot be read.
        """
        return await personalizing.estimate_lines(self._runner, interaction_id, leads)

    # ------------------------------------------------------------------ due soonest

    async def list_due_soonest(
        self, status: RunStatus | str | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[DueRun]:
        """Stored runs in the order their reviewers must answer them: the runs waiting at
        a pause whose deadline is pending, soonest deadline first, then the others newest
        first; optionally only those of one ``status``. Each comes with its pause's
        deadline (a :class:`~bridgic_coldmail.store.outbox.Timer`: when, and what it does
        then), or None."""
        limit, offset = validate_page(limit, offset, MAX_PAGE)
        return await self._store.list_due_soonest(_parse_status(status), limit=limit, offset=offset)


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


def _parse_status(status: RunStatus | str | None) -> RunStatus | None:
    if status is None or isinstance(status, RunStatus):
        return status
    try:
        return RunStatus(status)
    except ValueError:
        names = ", ".join(s.value for s in RunStatus)
        raise InvalidInput(f"unknown status {status!r}; use one of {names}") from None
