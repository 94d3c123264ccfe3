"""``SyncColdMailAgent``: the same API for hosts that are not async (scripts, Flask, Django).

It runs a private event loop on a daemon thread and submits each call to it, so it works
from any thread — including one that already runs an event loop, such as a notebook — and
several threads may share one instance. Every method is the async agent's, blocking.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import Unpack

from .agent import ColdMailAgent, OpenOptions
from .models import Brief, Decision, EmailSequence, ListedRun, Run, RunEvent, RunStatus
from .settings import Settings

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

T = TypeVar("T")


class SyncColdMailAgent:
    """Blocking twin of :class:`ColdMailAgent`. Use as ``with SyncColdMailAgent.open(...)``."""

    def __init__(self, opener: AbstractAsyncContextManager[ColdMailAgent]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="coldmail-sync-agent", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._opener = opener
        try:
            self._agent = self._call(opener.__aenter__())
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def open(
        cls, db_path: str | os.PathLike[str] | None = None, **options: Unpack[OpenOptions]
    ) -> SyncColdMailAgent:
        """Open the agent (arguments as :meth:`ColdMailAgent.open`); close it with ``close()``
        or by using it as a context manager."""
        return cls(ColdMailAgent.open(db_path, **options))

    def _call(self, coro: Awaitable[T]) -> T:
        if self._closed:
            raise RuntimeError("this SyncColdMailAgent is closed; open a new one")
        future = asyncio.run_coroutine_threadsafe(_awaited(coro), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller: the call unwinds and gives back its claim
            raise

    @property
    def db_path(self) -> str:
        """The store this agent uses."""
        return self._agent.db_path

    @property
    def settings(self) -> Settings:
        """The agent's resolved settings."""
        return self._agent.settings

    def start(
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
        """Draft and pause; see :meth:`ColdMailAgent.start`."""
        return self._call(
            self._agent.start(
                brief,
                review=review,
                fields=fields,
                notify=notify,
                respond_within=respond_within,
                remind_every=remind_every,
                on_timeout=on_timeout,
                escalate_to=escalate_to,
            )
        )

    def resume(self, interaction_id: str, feedback: str, *, reviewer: str | None = None) -> Run:
        """Resume with audience feedback; see :meth:`ColdMailAgent.resume`."""
        return self._call(self._agent.resume(interaction_id, feedback, reviewer=reviewer))

    def approve(
        self, interaction_id: str, *, reviewer: str | None = None, round: int | None = None
    ) -> Run:
        """Approve the sequence under review; see :meth:`ColdMailAgent.approve`."""
        return self._call(self._agent.approve(interaction_id, reviewer=reviewer, round=round))

    def revise(
        self,
        interaction_id: str,
        guidance: str,
        *,
        reviewer: str | None = None,
        round: int | None = None,
    ) -> Run:
        """Ask for another version; see :meth:`ColdMailAgent.revise`."""
        return self._call(
            self._agent.revise(interaction_id, guidance, reviewer=reviewer, round=round)
        )

    def edit(
        self,
        interaction_id: str,
        sequence: EmailSequence | Mapping[str, Any],
        *,
        reviewer: str | None = None,
        round: int | None = None,
    ) -> Run:
        """Put the reviewer's own emails under review; see :meth:`ColdMailAgent.edit`."""
        return self._call(
            self._agent.edit(interaction_id, sequence, reviewer=reviewer, round=round)
        )

    def reject(
        self,
        interaction_id: str,
        reason: str,
        *,
        reviewer: str | None = None,
        round: int | None = None,
    ) -> Run:
        """End the run as rejected; see :meth:`ColdMailAgent.reject`."""
        return self._call(
            self._agent.reject(interaction_id, reason, reviewer=reviewer, round=round)
        )

    def decide(self, interaction_id: str, decision: Decision) -> Run:
        """Apply feedback or a review decision; see :meth:`ColdMailAgent.decide`."""
        return self._call(self._agent.decide(interaction_id, decision))

    def get(self, interaction_id: str) -> Run:
        """The stored run; see :meth:`ColdMailAgent.get`."""
        return self._call(self._agent.get(interaction_id))

    def list(
        self, status: RunStatus | str | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ListedRun]:
        """Stored runs, newest first; see :meth:`ColdMailAgent.list`."""
        return self._call(self._agent.list(status, limit=limit, offset=offset))

    def counts(self) -> dict[RunStatus, int]:
        """How many stored runs each status has; see :meth:`ColdMailAgent.counts`."""
        return self._call(self._agent.counts())

    def history(self, interaction_id: str) -> builtins.list[RunEvent]:
        """The run's events, oldest first; see :meth:`ColdMailAgent.history`."""
        return self._call(self._agent.history(interaction_id))

    def purge(
        self,
        older_than: timedelta,
        statuses: Iterable[RunStatus | str] = (RunStatus.COMPLETED,),
    ) -> int:
        """Delete old runs; see :meth:`ColdMailAgent.purge`."""
        return self._call(self._agent.purge(older_than, statuses))

    def export(
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
        """Export the final sequence for a lead list; see :meth:`ColdMailAgent.export`."""
        return self._call(
            self._agent.export(
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
        )

    def preview_export(
        self,
        interaction_id: str,
        leads: str | os.PathLike[str],
        *,
        profile: str = "generic",
        variants: Sequence[str] = (),
        disabled_rules: Iterable[str] | None = None,
    ) -> ExportReport:
        """What an export would find; see :meth:`ColdMailAgent.preview_export`."""
        return self._call(
            self._agent.preview_export(
                interaction_id,
                leads,
                profile=profile,
                variants=variants,
                disabled_rules=disabled_rules,
            )
        )

    def lint(
        self, interaction_id: str, *, disabled_rules: Iterable[str] | None = None
    ) -> builtins.list[LintIssue]:
        """Check the newest sequence; see :meth:`ColdMailAgent.lint`."""
        return self._call(self._agent.lint(interaction_id, disabled_rules=disabled_rules))

    def trust_unsigned(self, interaction_ids: Collection[str] | None) -> builtins.list[str]:
        """Sign unsigned legacy runs; see :meth:`ColdMailAgent.trust_unsigned`."""
        return self._call(self._agent.trust_unsigned(interaction_ids))

    def link(self, interaction_id: str, *, expires_at: datetime | None = None) -> str:
        """A signed one-click link to the run's pause; see :meth:`ColdMailAgent.link`."""
        return self._call(self._agent.link(interaction_id, expires_at=expires_at))

    def open_link(self, token: str, *, form_token: str | None = None) -> OpenedLink:
        """What a one-click link opens; see :meth:`ColdMailAgent.open_link`."""
        return self._call(self._agent.open_link(token, form_token=form_token))

    def notifications(
        self, interaction_id: str | None = None, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        """Notifications newest first; see :meth:`ColdMailAgent.notifications`."""
        return self._call(self._agent.notifications(interaction_id, limit=limit))

    def retry_notification(self, notification_id: str) -> Delivery:
        """Queue a failed notification again; see :meth:`ColdMailAgent.retry_notification`."""
        return self._call(self._agent.retry_notification(notification_id))

    def fork(
        self,
        interaction_id: str,
        *,
        round: int | None = None,
        feedback: str | None = None,
        guidance: str | None = None,
        reviewer: str | None = None,
        key: str | None = None,
    ) -> Run:
        """Start a variant from one of the run's pauses; see :meth:`ColdMailAgent.fork`."""
        return self._call(
            self._agent.fork(
                interaction_id,
                round=round,
                feedback=feedback,
                guidance=guidance,
                reviewer=reviewer,
                key=key,
            )
        )

    def family(self, interaction_id: str) -> Family:
        """The run's family; see :meth:`ColdMailAgent.family`."""
        return self._call(self._agent.family(interaction_id))

    def family_variants(self, interaction_id: str) -> builtins.list[str]:
        """The family's other approved runs; see :meth:`ColdMailAgent.family_variants`."""
        return self._call(self._agent.family_variants(interaction_id))

    def personalize(
        self,
        interaction_id: str,
        leads: str | os.PathLike[str],
        *,
        sample: int | None = None,
        guidance: str | None = None,
        on_line: Callable[[LineResult], None] | None = None,
    ) -> BatchReport:
        """See :meth:`ColdMailAgent.personalize`."""
        return self._call(
            self._agent.personalize(
                interaction_id, leads, sample=sample, guidance=guidance, on_line=on_line
            )
        )

    def approve_sample(
        self,
        interaction_id: str,
        *,
        leads: str | os.PathLike[str] | None = None,
        on_line: Callable[[LineResult], None] | None = None,
        write_rest: bool = True,
        batch: str | None = None,
    ) -> BatchReport:
        """See :meth:`ColdMailAgent.approve_sample`."""
        return self._call(
            self._agent.approve_sample(
                interaction_id, leads=leads, on_line=on_line, write_rest=write_rest, batch=batch
            )
        )

    def guide_sample(
        self,
        interaction_id: str,
        guidance: str,
        *,
        leads: str | os.PathLike[str] | None = None,
        batch: str | None = None,
    ) -> BatchReport:
        """See :meth:`ColdMailAgent.guide_sample`."""
        return self._call(
            self._agent.guide_sample(interaction_id, guidance, leads=leads, batch=batch)
        )

    def batch_status(
        self,
        interaction_id: str,
        *,
        leads: str | os.PathLike[str] | None = None,
        batch: str | None = None,
    ) -> BatchReport:
        """See :meth:`ColdMailAgent.batch_status`."""
        return self._call(self._agent.batch_status(interaction_id, leads=leads, batch=batch))

    def batch_reports(self, interaction_id: str) -> builtins.list[BatchReport]:
        """See :meth:`ColdMailAgent.batch_reports`."""
        return self._call(self._agent.batch_reports(interaction_id))

    def batch_lines(
        self, interaction_id: str, batch: str, *, after: int = -1, limit: int = 100
    ) -> builtins.list[BatchLeadRow]:
        """See :meth:`ColdMailAgent.batch_lines`."""
        return self._call(self._agent.batch_lines(interaction_id, batch, after=after, limit=limit))

    def estimate_lines(self, interaction_id: str, leads: str | os.PathLike[str]) -> BatchEstimate:
        """See :meth:`ColdMailAgent.estimate_lines`."""
        return self._call(self._agent.estimate_lines(interaction_id, leads))

    def list_due_soonest(
        self, status: RunStatus | str | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[DueRun]:
        """Runs with the soonest deadline first; see :meth:`ColdMailAgent.list_due_soonest`."""
        return self._call(self._agent.list_due_soonest(status, limit=limit, offset=offset))

    def close(self) -> None:
        """Close the store and stop the private loop (idempotent)."""
        if self._closed:
            return
        try:
            self._call(_close_after_pending(self._opener))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncColdMailAgent:
        return self

    def __del__(self) -> None:
        # Left open, its store connection and its thread live until the process ends; say so,
        # as an unclosed file or socket does (shown with python -W default or under pytest).
        if not getattr(self, "_closed", True):
            warnings.warn(
                f"unclosed {type(self).__name__} on {self._agent.db_path!r}: call close() or "
                "use it in a with block",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _close_after_pending(opener: AbstractAsyncContextManager[ColdMailAgent]) -> None:
    """Let interrupted calls finish unwinding (releasing claims) before the store closes."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)
    await opener.__aexit__(None, None, None)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
