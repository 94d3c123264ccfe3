"""The store's interface and its neutral outcomes.

The agent depends on :class:`RunStore`, a small protocol; ``sqlite.py`` and ``postgres.py``
implement it with their own SQL, migrations, clock and error mapping.

Stores return neutral outcomes (:class:`Refusal` with a :class:`RefusalReason`, ``None`` for
"not found"); the agent words the messages people read. Stores raise only for
infrastructure: the database cannot be opened, is locked, or belongs to someone else.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..models import (
    STORED,
    Brief,
    Decision,
    EmailSequence,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
    recorded_decision,
)
from ..signing import SnapshotSigner, json_text

if TYPE_CHECKING:
    from ..notify.policy import NotifyPolicy
    from .batches import (
        Batch,
        BatchAction,
        BatchApproved,
        BatchClaim,
        BatchCounts,
        BatchLeadRow,
        BatchPaused,
        BatchRefusal,
        LeadClaim,
        LeadState,
        LineRecord,
        NewBatch,
    )
    from .forks import Family, ForkLink
    from .outbox import Delivery, DueRun, OutboxClaim, OutboxOutcome

OutboxPlan = Callable[[Mapping[str, Any], datetime, SnapshotSigner], list[dict[str, Any]]]
"""What :meth:`RunStore.enqueue` is given: the run's row, now and the signer -> outbox rows."""


def decision_json(decision: Decision) -> str:
    """A person's answer as a run's row stores it (``pending_json``, an item of
    ``decided_json``): canonical JSON, MACed as text, the same bytes every release wrote."""
    sequence = decision.sequence
    return json_text(
        {
            "kind": decision.kind,
            "text": decision.text,
            "sequence": sequence.model_dump(mode="json") if sequence else None,
            "reviewer": decision.reviewer,
            "round": decision.round,
        }
    )


def decision_from_json(text: str) -> Decision:
    return decision_from_data(json.loads(text))


def decision_from_data(data: Mapping[str, Any]) -> Decision:
    """An answer from its stored JSON data (as :func:`decision_json` wrote it), as it was
    recorded: validated when it came in, not held to a rule added since."""
    sequence = data.get("sequence")
    return recorded_decision(
        data["kind"],
        text=data.get("text"),
        sequence=EmailSequence.model_validate(sequence, context=STORED) if sequence else None,
        reviewer=data.get("reviewer"),
        round=data.get("round"),
    )


@dataclass(frozen=True)
class NewRun:
    """A freshly paused run, as the agent hands it to :meth:`RunStore.insert_paused`."""

    interaction_id: str
    brief: Brief
    draft: EmailSequence
    question: str
    snapshot: bytes
    serialization_version: str
    review: bool = False
    max_rounds: int | None = None
    fields: tuple[str, ...] = ()
    notify: NotifyPolicy | None = None
    """Where the run's notifications go (None: nowhere), kept with the run."""


@dataclass(frozen=True)
class Claim:
    """The right to apply one action to one run, held until ``complete`` or ``release``."""

    interaction_id: str
    token: str
    pause_id: str
    snapshot: bytes
    serialization_version: str
    action: Decision
    run: Run
    """The run as it was when claimed (status is the paused one it came from)."""
    expires_at: datetime


@dataclass(frozen=True)
class Paused:
    """The automa paused again for review: store the new snapshot under ``pause_id``."""

    pause_id: str
    snapshot: bytes
    serialization_version: str
    sequence: EmailSequence
    round: int


@dataclass(frozen=True)
class Finished:
    """The automa finished: completed with ``sequence``, or rejected with a reason."""

    status: Literal[RunStatus.COMPLETED, RunStatus.REJECTED]
    sequence: EmailSequence
    rejection: str | None = None


class RefusalReason(str, Enum):
    """Why a claim was refused; the agent turns each into the error people read."""

    NOT_FOUND = "not_found"
    TAMPERED = "tampered"
    """The row, its snapshot or its history does not match its MAC."""
    UNSIGNED = "unsigned"
    """The snapshot has no signature (stored by 0.1, or by another program)."""
    UNKNOWN_FORMAT = "unknown_format"
    DAMAGED = "damaged"
    """The row's text does not parse."""
    HELD = "held"
    """Another caller holds an unexpired claim."""
    CONFLICT = "conflict"
    """The run already took a different feedback or decision."""
    WRONG_STATE = "wrong_state"
    """The action does not fit where the run is (e.g. approve before audience feedback)."""
    ROUND_LIMIT = "round_limit"
    NO_ROUND = "no_round"
    """A fork of a round the run never paused at."""
    NOT_KEPT = "not_kept"
    """A fork of a pause whose snapshot was not kept (paused before 0.6 kept every pause)."""


@dataclass(frozen=True)
class Refusal:
    """A claim that did not happen. Nothing in the store changed."""

    reason: RefusalReason
    run: Run | None = None
    """The run as stored, when it could be read."""
    held_until: datetime | None = None
    pending: Decision | None = None
    """For ``HELD``: what the holder is applying."""
    decided: Decision | None = None
    """For ``CONFLICT``: the feedback or decision the run already took."""
    version: str | None = None
    """For ``UNKNOWN_FORMAT``: the snapshot's serialization version."""
    problem: str | None = None
    """For ``TAMPERED`` and ``DAMAGED``: what is wrong, as a fragment ("its snapshot was
    altered…"); the agent words the sentence."""


@dataclass(frozen=True)
class AlreadyDone:
    """The same action was applied before: here is its result; nothing changed."""

    run: Run


ClaimOutcome = Claim | AlreadyDone | Refusal


class RunStore(Protocol):
    """Where runs wait. Every method is atomic; none deserializes a snapshot."""

    location: str
    """The file or server, for messages (a URL without its password)."""
    lease_seconds: float

    async def insert_paused(self, new: NewRun) -> Run:
        """Store a freshly paused run, signed, with its 'paused' event."""
        ...

    async def get(self, interaction_id: str) -> ListedRun | None:
        """The run, a :class:`DamagedRun` when it cannot be shown, or None."""
        ...

    async def list(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ListedRun]:
        """Runs newest first (damaged rows included, never hidden)."""
        ...

    async def counts(self) -> dict[RunStatus, int]:
        """How many runs each status has (statuses without runs left out)."""
        ...

    async def history(self, interaction_id: str) -> builtins.list[RunEvent] | Refusal | None:
        """The run's events oldest first; a TAMPERED refusal if they were altered."""
        ...

    async def claim(
        self,
        interaction_id: str,
        action: Decision,
        supported_versions: Collection[str],
        *,
        token: str | None = None,
    ) -> ClaimOutcome:
        """Take the run to apply ``action`` (see :func:`judge_claim`) under ``token``, the
        fencing token the caller chose (a new one when None). Asked again with the same
        token after an error of topic ``commit_unknown``, it hands back the claim if that
        commit went through, instead of refusing the run as held."""
        ...

    async def renew(self, claim: Claim) -> datetime | None:
        """Extend the claim's lease; None when the claim was lost to another resumer."""
        ...

    async def complete(self, claim: Claim, result: Paused | Finished) -> Run | None:
        """Record the result, fenced: None when the claim is no longer ours."""
        ...

    async def release(self, claim: Claim, error: str, *, announce: bool = False) -> bool:
        """Give the run back with the error recorded; False when the claim was lost.
        ``announce``: the step failed (not interrupted), so a ``run.failed`` is queued."""
        ...

    async def purge(self, older_than: timedelta, statuses: Collection[RunStatus]) -> int:
        """Delete runs of these statuses unchanged for ``older_than``, with their history."""
        ...

    async def trust_unsigned(self, interaction_ids: Collection[str] | None) -> builtins.list[str]:
        """Sign unsigned snapshots (all when None): an operator's explicit decision."""
        ...

    async def signer(self) -> SnapshotSigner | None:
        """This installation's signer (one-click links are signed with it too); None while
        no database exists yet."""
        ...

    async def claim_notifications(
        self, limit: int, lease_seconds: float
    ) -> builtins.list[OutboxClaim]:
        """Lease up to ``limit`` due notifications for one delivery attempt each; no other
        caller gets them until the lease ends or the outcome is recorded."""
        ...

    async def finish_notification(self, claim: OutboxClaim, outcome: OutboxOutcome) -> bool:
        """Record an attempt's outcome, fenced by the lease; False when the lease was lost."""
        ...

    async def enqueue(self, interaction_id: str, plan: OutboxPlan) -> int:
        """Queue, in one transaction, the outbox rows ``plan`` makes from the run's row (with
        its policy), the store's clock and signer; a row already queued is not queued again
        (ids are derived from what they announce). Returns how many rows ``plan`` made; 0
        when the run is gone."""
        ...

    async def notifications(
        self, interaction_id: str | None = None, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        """Notifications newest first (of one run, or all)."""
        ...

    async def retry_notification(self, notification_id: str) -> Delivery | None:
        """Queue a failed notification again, due now; None when there is no such one. A
        pending or delivered one is returned unchanged."""
        ...

    async def fork(
        self,
        parent_id: str,
        round: int,
        new_id: str,
        link: ForkLink,
        supported_versions: Collection[str],
    ) -> Run | Refusal:
        """Store a new run ``new_id`` paused where ``parent_id`` paused at ``round`` (0: the
        audience question), from that pause's kept snapshot, linked to its parent (see
        ``forks.py``); a refusal writes nothing."""
        ...

    async def family(self, interaction_id: str) -> Family | None:
        """The run's family (its root, then every fork below it); None for no such run."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...

    # ------------------------------------------------------------------ batches (issue 23)
    # Personalization batches: see ``store/batches.py`` for the tables and their rules.

    async def create_batch(self, new: NewBatch) -> tuple[Batch, bool]:
        """Create the batch and its leads, held by ``new.token``; when the run has a batch
        for this list already, that one, untouched. True when created."""
        ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def batches(self, interaction_id: str) -> builtins.list[Batch]:
        """The run's batches, newest first."""
        ...

    async def take_batch(
        self, batch_id: str, action: BatchAction | None, *, token: str
    ) -> BatchClaim | BatchRefusal:
        """Hold the batch to write its sample or apply ``action`` (see ``batches.judge_take``)."""
        ...

    async def renew_batch(self, claim: BatchClaim) -> bool:
        """Extend the hold's lease; False when it was lost."""
        ...

    async def step_batch(
        self, claim: BatchClaim, result: BatchPaused | BatchApproved
    ) -> Batch | None:
        """Record the holder's step (paused again, or approved), fenced: None when lost."""
        ...

    async def release_batch(self, claim: BatchClaim, error: str) -> bool:
        """Give the batch back with the error; False when the hold was lost."""
        ...

    async def reset_sample(self, claim: BatchClaim, before_round: int) -> int:
        """Set the sample's leads written in a round before ``before_round`` back to
        pending (to be rewritten with new guidance), fenced by the hold; how many."""
        ...

    async def claim_leads(
        self,
        batch_id: str,
        limit: int,
        lease_seconds: float,
        *,
        sample: bool = False,
        token: str | None = None,
    ) -> builtins.list[LeadClaim]:
        """Lease up to ``limit`` leads to write (``sample``: only the sample's), lowest
        position first: pending ones, and claimed ones whose lease ran out. A lead claimed
        :data:`MAX_ATTEMPTS` times already is skipped instead. ``token``: the lease token
        (a worker leasing several times gives its own each time, so that one renewal and
        one recording cover all its leads); a new one when None."""
        ...

    async def renew_leads(self, batch_id: str, token: str, lease_seconds: float) -> int:
        """Extend the lease of the leads ``token`` holds; how many it still holds."""
        ...

    async def record_lines(
        self, batch_id: str, token: str, round: int, records: Sequence[LineRecord]
    ) -> int:
        """Record each lead's result if ``token`` still holds it (fenced); how many were."""
        ...

    async def batch_counts(self, batch_id: str) -> BatchCounts: ...

    async def batch_leads(
        self,
        batch_id: str,
        *,
        states: Sequence[LeadState] = ("pending", "claimed", "written", "skipped"),
        sample: bool = False,
        after: int = -1,
        limit: int = 1000,
    ) -> builtins.list[BatchLeadRow]:
        """Leads by position (from ``after`` + 1), of these states (``sample``: only the
        sample's)."""
        ...

    async def finish_batch(self, batch_id: str) -> Batch | None:
        """Mark a writing batch done when no lead is left to write; the batch as it is."""
        ...

    async def list_due_soonest(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[DueRun]:
        """Runs waiting with a deadline pending (the pause they wait at has one), soonest
        deadline first; then the other runs, newest first; optionally only those of one
        ``status``. Never reads a snapshot."""
        ...
