"""An SQLite store that does not exist yet: reading never creates it, the first run does.

Opening an agent on a path with no database (a fresh machine, a mistyped ``--db``) used to
create the file, its folder and a signing key, so a command that only reads — ``list``,
``show``, the inbox with no runs — left a new empty database behind and reported "no runs".
:func:`~bridgic_coldmail.store.connect_store` hands out this store instead: every read answers
as an empty store does (nothing found, an empty list) without touching the disk, and looks
again each time, so a database another process creates meanwhile is found; the first
``insert_paused`` (starting a run) creates the database, and from then on every call goes
straight to the real store.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from ..errors import DatabaseNotFound, StoreError
from ..models import Decision, ListedRun, Run, RunEvent, RunStatus
from ..signing import SnapshotSigner
from .batches import (
    LEAD_STATES,
    Batch,
    BatchAction,
    BatchApproved,
    BatchClaim,
    BatchCounts,
    BatchLeadRow,
    BatchPaused,
    BatchRefusal,
    BatchRefusalReason,
    LeadClaim,
    LeadState,
    LineRecord,
    NewBatch,
)
from .forks import Family, ForkLink
from .outbox import Delivery, DueRun, OutboxClaim, OutboxOutcome
from .protocol import (
    Claim,
    ClaimOutcome,
    Finished,
    NewRun,
    OutboxPlan,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
)

T = TypeVar("T")


class DeferredSqliteStore:
    """A :class:`RunStore` over an SQLite path that holds no database yet."""

    def __init__(self, location: str, lease_seconds: float, opener: Opener) -> None:
        self.location = location
        self.lease_seconds = lease_seconds
        self._opener = opener
        self._store: RunStore | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _existing(self, *, create: bool = False) -> RunStore | None:
        """The real store: opened when the database exists (or ``create``), else None."""
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None and not self._closed:
                try:
                    self._store = await self._opener(create)
                except DatabaseNotFound:
                    if create:
                        raise
            return self._store

    async def _read(self, work: Callable[[RunStore], Awaitable[T]], empty: T) -> T:
        store = await self._existing()
        return empty if store is None else await work(store)

    async def insert_paused(self, new: NewRun) -> Run:
        store = await self._existing(create=True)
        if store is None:
            raise StoreError(f"the store for {self.location} is closed; open a new one")
        return await store.insert_paused(new)

    async def get(self, interaction_id: str) -> ListedRun | None:
        return await self._read(lambda s: s.get(interaction_id), None)

    async def list(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ListedRun]:
        return await self._read(lambda s: s.list(status, limit=limit, offset=offset), [])

    async def counts(self) -> dict[RunStatus, int]:
        return await self._read(lambda s: s.counts(), {})

    async def history(self, interaction_id: str) -> builtins.list[RunEvent] | Refusal | None:
        return await self._read(lambda s: s.history(interaction_id), None)

    async def claim(
        self,
        interaction_id: str,
        action: Decision,
        supported_versions: Collection[str],
        *,
        token: str | None = None,
    ) -> ClaimOutcome:
        return await self._read(
            lambda s: s.claim(interaction_id, action, supported_versions, token=token),
            Refusal(RefusalReason.NOT_FOUND),
        )

    async def renew(self, claim: Claim) -> datetime | None:
        return await self._read(lambda s: s.renew(claim), None)

    async def complete(self, claim: Claim, result: Paused | Finished) -> Run | None:
        return await self._read(lambda s: s.complete(claim, result), None)

    async def release(self, claim: Claim, error: str, *, announce: bool = False) -> bool:
        return await self._read(lambda s: s.release(claim, error, announce=announce), False)

    async def purge(self, older_than: timedelta, statuses: Collection[RunStatus]) -> int:
        return await self._read(lambda s: s.purge(older_than, statuses), 0)

    async def trust_unsigned(self, interaction_ids: Collection[str] | None) -> builtins.list[str]:
        return await self._read(lambda s: s.trust_unsigned(interaction_ids), [])

    async def signer(self) -> SnapshotSigner | None:
        return await self._read(lambda s: s.signer(), None)

    async def claim_notifications(
        self, limit: int, lease_seconds: float
    ) -> builtins.list[OutboxClaim]:
        return await self._read(lambda s: s.claim_notifications(limit, lease_seconds), [])

    async def finish_notification(self, claim: OutboxClaim, outcome: OutboxOutcome) -> bool:
        return await self._read(lambda s: s.finish_notification(claim, outcome), False)

    async def notifications(
        self, interaction_id: str | None = None, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        return await self._read(lambda s: s.notifications(interaction_id, limit=limit), [])

    async def enqueue(self, interaction_id: str, plan: OutboxPlan) -> int:
        return await self._read(lambda s: s.enqueue(interaction_id, plan), 0)

    async def retry_notification(self, notification_id: str) -> Delivery | None:
        return await self._read(lambda s: s.retry_notification(notification_id), None)

    async def fork(
        self,
        parent_id: str,
        round: int,
        new_id: str,
        link: ForkLink,
        supported_versions: Collection[str],
    ) -> Run | Refusal:
        return await self._read(
            lambda s: s.fork(parent_id, round, new_id, link, supported_versions),
            Refusal(RefusalReason.NOT_FOUND),
        )

    async def family(self, interaction_id: str) -> Family | None:
        return await self._read(lambda s: s.family(interaction_id), None)

    # Batches belong to a completed run: the database exists by then, or there is none.

    async def _batch_write(self, work: Callable[[RunStore], Awaitable[T]]) -> T:
        store = await self._existing()
        if store is None:
            raise StoreError(f"there is no database at {self.location}; start a run first")
        return await work(store)

    async def create_batch(self, new: NewBatch) -> tuple[Batch, bool]:
        return await self._batch_write(lambda s: s.create_batch(new))

    async def get_batch(self, batch_id: str) -> Batch | None:
        return await self._read(lambda s: s.get_batch(batch_id), None)

    async def batches(self, interaction_id: str) -> builtins.list[Batch]:
        return await self._read(lambda s: s.batches(interaction_id), [])

    async def take_batch(
        self, batch_id: str, action: BatchAction | None, *, token: str
    ) -> BatchClaim | BatchRefusal:
        return await self._read(
            lambda s: s.take_batch(batch_id, action, token=token),
            BatchRefusal(BatchRefusalReason.NOT_FOUND),
        )

    async def renew_batch(self, claim: BatchClaim) -> bool:
        return await self._read(lambda s: s.renew_batch(claim), False)

    async def step_batch(
        self, claim: BatchClaim, result: BatchPaused | BatchApproved
    ) -> Batch | None:
        return await self._read(lambda s: s.step_batch(claim, result), None)

    async def release_batch(self, claim: BatchClaim, error: str) -> bool:
        return await self._read(lambda s: s.release_batch(claim, error), False)

    async def reset_sample(self, claim: BatchClaim, before_round: int) -> int:
        return await self._read(lambda s: s.reset_sample(claim, before_round), 0)

    async def claim_leads(
        self,
        batch_id: str,
        limit: int,
        lease_seconds: float,
        *,
        sample: bool = False,
        token: str | None = None,
    ) -> builtins.list[LeadClaim]:
        return await self._read(
            lambda s: s.claim_leads(batch_id, limit, lease_seconds, sample=sample, token=token),
            [],
        )

    async def renew_leads(self, batch_id: str, token: str, lease_seconds: float) -> int:
        return await self._read(lambda s: s.renew_leads(batch_id, token, lease_seconds), 0)

    async def record_lines(
        self, batch_id: str, token: str, round: int, records: Sequence[LineRecord]
    ) -> int:
        return await self._read(lambda s: s.record_lines(batch_id, token, round, records), 0)

    async def batch_counts(self, batch_id: str) -> BatchCounts:
        return await self._read(lambda s: s.batch_counts(batch_id), BatchCounts())

    async def batch_leads(
        self,
        batch_id: str,
        *,
        states: Sequence[LeadState] = LEAD_STATES,
        sample: bool = False,
        after: int = -1,
        limit: int = 1000,
    ) -> builtins.list[BatchLeadRow]:
        return await self._read(
            lambda s: s.batch_leads(
                batch_id, states=states, sample=sample, after=after, limit=limit
            ),
            [],
        )

    async def finish_batch(self, batch_id: str) -> Batch | None:
        return await self._read(lambda s: s.finish_batch(batch_id), None)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            if self._store is not None:
                await self._store.close()

    async def list_due_soonest(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[DueRun]:
        return await self._read(
            lambda s: s.list_due_soonest(status, limit=limit, offset=offset), []
        )


Opener = Callable[[bool], Awaitable[RunStore]]
"""Opens the real store; its argument says whether it may create the database."""
