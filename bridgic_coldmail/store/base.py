"""What every run store does, said once: the interface, its neutral outcomes, and the rules.

The agent depends on :class:`RunStore`, a small protocol; ``sqlite.py`` and ``postgres.py``
implement it with their own SQL, migrations, clock and error mapping. Everything that must
not differ between them lives here as plain functions over plain data:

* :func:`judge_claim` decides, from a row and the requested step, whether the caller may
  take the run, already has its answer, or is refused — and why. Backends call it inside the
  transaction that holds the row, so the decision and the write are one atomic step.
* :func:`decode_row` turns a row into a :class:`Run` after checking its MAC, or into a
  :class:`DamagedRun` that says what is wrong; :func:`row_mac_values` and
  :func:`event_mac_values` say exactly which columns each MAC covers.

Stores return neutral outcomes (:class:`Refusal` with a :class:`RefusalReason`, ``None`` for
"not found"); the agent words the messages people read. Stores raise only for
infrastructure: the database cannot be opened, is locked, or belongs to someone else.

What the MACs do and do not promise: a database writer without the key cannot get a
snapshot loaded that this installation did not write, nor show text it did not write. They
can delete runs or history, and can roll a run back to an earlier genuine state of itself
by restoring an old copy of its row and events.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from ..models import (
    STORED,
    Brief,
    DamagedRun,
    Decision,
    EmailSequence,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
)
from ..signing import MacValue, SnapshotSigner, is_v2_signature, json_text

ActionKind = Literal["feedback", "approve", "revise", "edit", "reject"]


@dataclass(frozen=True)
class Action:
    """What a claim is for: the audience feedback, or a reviewer's decision."""

    kind: ActionKind
    text: str | None = None
    sequence: EmailSequence | None = None
    reviewer: str | None = None
    round: int | None = None
    """The review round a decision answers; None: the run's current round."""

    @classmethod
    def feedback(cls, text: str, reviewer: str | None = None) -> Action:
        return cls("feedback", text=text, reviewer=reviewer)

    @classmethod
    def of(cls, decision: Decision) -> Action:
        return cls(
            decision.kind,
            text=decision.text,
            sequence=decision.sequence,
            reviewer=decision.reviewer,
            round=decision.round,
        )

    def decision(self) -> Decision:
        """The review decision this action carries (not for ``feedback``); built from data
        that was validated when it came in, so no rule added since refuses it."""
        assert self.kind != "feedback"
        data = {"kind": self.kind, "text": self.text, "sequence": self.sequence}
        return Decision.model_validate(
            {**data, "reviewer": self.reviewer, "round": self.round}, context=STORED
        )

    def same_as(self, other: Action) -> bool:
        """Whether two actions would do the same thing (who sent them does not matter)."""
        return (self.kind, self.text, self.sequence) == (other.kind, other.text, other.sequence)

    def to_json(self) -> str:
        return json_text(
            {
                "kind": self.kind,
                "text": self.text,
                "sequence": self.sequence.model_dump(mode="json") if self.sequence else None,
                "reviewer": self.reviewer,
                "round": self.round,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Action:
        return cls.from_data(json.loads(text))

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Action:
        """An action from its JSON data (as :meth:`to_json` wrote it)."""
        sequence = data.get("sequence")
        return cls(
            data["kind"],
            text=data.get("text"),
            sequence=EmailSequence.model_validate(sequence, context=STORED) if sequence else None,
            reviewer=data.get("reviewer"),
            round=data.get("round"),
        )

    @property
    def event_kind(self) -> str:
        """The history event that records this action arriving."""
        return {
            "feedback": "feedback",
            "approve": "approved",
            "revise": "revised",
            "edit": "edited",
            "reject": "rejected",
        }[self.kind]


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


@dataclass(frozen=True)
class Claim:
    """The right to apply one action to one run, held until ``complete`` or ``release``."""

    interaction_id: str
    token: str
    pause_id: str
    snapshot: bytes
    serialization_version: str
    action: Action
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


@dataclass(frozen=True)
class Refusal:
    """A claim that did not happen. Nothing in the store changed."""

    reason: RefusalReason
    run: Run | None = None
    """The run as stored, when it could be read."""
    held_until: datetime | None = None
    pending: Action | None = None
    """For ``HELD``: what the holder is applying."""
    decided: Action | None = None
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
        self, interaction_id: str, action: Action, supported_versions: Collection[str]
    ) -> ClaimOutcome:
        """Take the run to apply ``action`` (see :func:`judge_claim`)."""
        ...

    async def renew(self, claim: Claim) -> datetime | None:
        """Extend the claim's lease; None when the claim was lost to another resumer."""
        ...

    async def complete(self, claim: Claim, result: Paused | Finished) -> Run | None:
        """Record the result, fenced: None when the claim is no longer ours."""
        ...

    async def release(self, claim: Claim, error: str) -> bool:
        """Give the run back with the error recorded; False when the claim was lost."""
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

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...


def status_counts(rows: Iterable[tuple[str, int]]) -> dict[RunStatus, int]:
    """``SELECT status, COUNT(*) … GROUP BY status`` as a mapping; a status this release does
    not know (an altered row) is left out, as no tab lists it."""
    known = {status.value: status for status in RunStatus}
    return {known[name]: int(count) for name, count in rows if name in known}


# --------------------------------------------------------------------------- rows


RUN_COLUMNS = (
    "interaction_id",
    "status",
    "review",
    "round",
    "max_rounds",
    "fields_json",
    "brief_json",
    "draft_json",
    "question",
    "feedback",
    "sequence_json",
    "rejection",
    "decided_json",
    "pending_json",
    "last_error",
    "pause_id",
    "serialization_version",
    "signature",
    "event_count",
    "created_at",
    "updated_at",
    "completed_at",
    "claim_token",
    "claim_expires_at",
    "row_mac",
    "legacy_mark",
)
"""Every column but the snapshot, in the order stores select them."""

_MACED = RUN_COLUMNS[: RUN_COLUMNS.index("created_at")]
"""What the row MAC covers: all the text people read and everything a resume relies on. Not
covered: the timestamps (when, not what: ``purge`` ages runs by them) and the lease (renewed
often, and checked against the claim token, which is)."""

EVENT_COLUMNS = (
    "interaction_id",
    "seq",
    "at",
    "kind",
    "round",
    "actor",
    "detail",
    "sequence_json",
)


def row_mac_values(row: Mapping[str, Any]) -> list[MacValue]:
    """The values the row MAC covers, in a fixed order."""
    return [_mac_value(row.get(name)) for name in _MACED]


def event_mac_values(event: Mapping[str, Any]) -> list[MacValue]:
    """The values an event MAC covers, in a fixed order."""
    return [_mac_value(event.get(name)) for name in EVENT_COLUMNS]


def _mac_value(value: Any) -> MacValue:
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (str, int, bytes)) or value is None:
        return value
    raise TypeError(f"cannot MAC a {type(value).__name__}")


def iso(moment: datetime) -> str:
    """Fixed width, UTC: lexical order is time order."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_time(value: Any) -> datetime:
    """A stored timestamp (ISO text in SQLite, a datetime in PostgreSQL) as an aware datetime.

    Timestamps are not signed; one stored without a time zone is read as UTC, so comparing
    it with the clock can never fail."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def decode_row(row: Mapping[str, Any], signer: SnapshotSigner) -> ListedRun:
    """A row as a :class:`Run`, or as a :class:`DamagedRun` saying why it cannot be shown.

    A row with a MAC is shown only if the MAC matches. A row without one must carry the mark
    the 0.5 upgrade gave every run already stored (``signing.legacy_mark``) and no snapshot
    signature of 0.5 or later: then it is a run of an earlier release, shown with
    ``verified=False``. Anything else is a row whose MAC was removed: tampered.
    """
    if not is_legacy(row, signer):
        try:
            matches = signer.check_mac(row.get("row_mac"), signer.row_mac(row_mac_values(row)))
        except TypeError:  # a value of the wrong type in a signed column
            matches = False
        if not matches:
            return _damaged(row, "its text was changed outside bridgic-coldmail", tampered=True)
    try:
        return run_from_row(row, verified=row.get("row_mac") is not None)
    except (ValidationError, ValueError, TypeError, KeyError) as exc:
        return _damaged(row, f"its stored text cannot be read ({type(exc).__name__})", False)


def is_legacy(row: Mapping[str, Any], signer: SnapshotSigner) -> bool:
    """A run stored before this database was upgraded to 0.5: no row MAC, a valid legacy
    mark, and no signature of this release."""
    if row.get("row_mac") is not None or is_v2_signature(row.get("signature")):
        return False
    mark = row.get("legacy_mark")
    return signer.check_mac(mark, signer.legacy_mark(str(row["interaction_id"])))


def run_from_row(row: Mapping[str, Any], *, verified: bool = True) -> Run:
    """Build the :class:`Run` (no MAC check: use :func:`decode_row`)."""
    status = RunStatus(row["status"])
    sequence_json = row.get("sequence_json")
    sequence = (
        EmailSequence.model_validate_json(sequence_json, context=STORED) if sequence_json else None
    )
    fields_json = row.get("fields_json")
    return Run(
        interaction_id=row["interaction_id"],
        status=status,
        brief=Brief.model_validate_json(row["brief_json"], context=STORED),
        draft=EmailSequence.model_validate_json(row["draft_json"], context=STORED),
        question=row["question"],
        feedback=row.get("feedback"),
        final=sequence if status is RunStatus.COMPLETED else None,
        last_error=row.get("last_error"),
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        review=bool(row.get("review")),
        round=row.get("round"),
        max_rounds=row.get("max_rounds"),
        sequence=sequence,
        rejection=row.get("rejection"),
        fields=tuple(json.loads(fields_json)) if fields_json else (),
        pause_id=row.get("pause_id"),
        verified=verified,
    )


def _damaged(row: Mapping[str, Any], problem: str, tampered: bool) -> DamagedRun:
    def moment(name: str) -> datetime | None:
        try:
            return parse_time(row[name])
        except (TypeError, ValueError, KeyError):
            return None

    return DamagedRun(
        interaction_id=str(row["interaction_id"]),
        status=str(row.get("status")),
        problem=f"run {row['interaction_id']} is damaged: {problem}",
        detail=problem,
        tampered=tampered,
        created_at=moment("created_at"),
        updated_at=moment("updated_at"),
    )


def decode_events(
    run_row: Mapping[str, Any], events: Sequence[Mapping[str, Any]], signer: SnapshotSigner
) -> list[RunEvent] | Refusal:
    """The run's events after checking each MAC and, for a signed row, that none is missing."""
    signed_row = run_row.get("row_mac") is not None
    out: list[RunEvent] = []
    for index, event in enumerate(events, start=1):
        mac = event.get("mac")
        try:
            verified = mac is not None and signer.check_mac(
                mac, signer.event_mac(event_mac_values(event))
            )
        except TypeError:
            verified = False
        if (mac is not None or signed_row) and not verified:  # a signed run writes every MAC
            return Refusal(
                RefusalReason.TAMPERED,
                problem=f"history event {index} was changed outside bridgic-coldmail",
            )
        try:
            sequence_json = event.get("sequence_json")
            out.append(
                RunEvent(
                    at=parse_time(event["at"]),
                    kind=event["kind"],
                    detail=event.get("detail"),
                    round=event.get("round"),
                    actor=event.get("actor"),
                    sequence=(
                        EmailSequence.model_validate_json(sequence_json, context=STORED)
                        if sequence_json
                        else None
                    ),
                    verified=verified,
                )
            )
        except (ValidationError, ValueError, KeyError) as exc:
            return Refusal(
                RefusalReason.DAMAGED,
                problem=f"history event {index} cannot be read ({type(exc).__name__})",
            )
    if signed_row:
        count = int(run_row.get("event_count") or 0)
        if [int(e["seq"]) for e in events] != list(range(1, count + 1)):
            return Refusal(
                RefusalReason.TAMPERED, problem="its history has events missing or added"
            )
    return out


def decode_history(
    row: Mapping[str, Any], events: Sequence[Mapping[str, Any]], signer: SnapshotSigner
) -> list[RunEvent] | Refusal:
    """A run's history: its row checked first (a tampered row refuses its history too), then
    every event (see :func:`decode_events`)."""
    run = decode_row(row, signer)
    if not isinstance(run, Run):
        reason = RefusalReason.TAMPERED if run.tampered else RefusalReason.DAMAGED
        return Refusal(reason, problem=run.detail)
    return decode_events(row, events, signer)


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class ClaimPlan:
    """A granted claim: its fencing token, and the pause the run is taken from."""

    token: str
    from_status: RunStatus


def paused_status(row: Mapping[str, Any]) -> RunStatus:
    """The pause a ``resuming`` row came from: review once it has a round, else feedback."""
    return (
        RunStatus.AWAITING_REVIEW if row.get("round") is not None else RunStatus.AWAITING_FEEDBACK
    )


def judge_claim(
    row: Mapping[str, Any] | None,
    action: Action,
    *,
    now: datetime,
    supported_versions: Collection[str],
    signer: SnapshotSigner,
    snapshot: bytes | None,
) -> ClaimPlan | AlreadyDone | Refusal:
    """Decide a claim. The caller holds the row (a transaction) and writes what this says.

    The order matters: a refusal for tampering comes before anything else, and a run whose
    action was already applied returns its result even if the snapshot is gone.
    """
    if row is None:
        return Refusal(RefusalReason.NOT_FOUND)
    decoded = decode_row(row, signer)
    if isinstance(decoded, DamagedRun):
        reason = RefusalReason.TAMPERED if decoded.tampered else RefusalReason.DAMAGED
        return Refusal(reason, problem=decoded.detail)
    run = decoded
    status = run.status
    if status is RunStatus.RESUMING:
        expires = _lease_end(row.get("claim_expires_at"))
        pending = Action.from_json(row["pending_json"]) if row.get("pending_json") else None
        if expires is not None and expires >= now:
            return Refusal(RefusalReason.HELD, run=run, held_until=expires, pending=pending)
        status = paused_status(row)  # the lease ran out: the run is paused again

    legacy = row.get("row_mac") is None
    if action.kind == "feedback":
        if status is RunStatus.AWAITING_FEEDBACK:
            return _check_snapshot(row, run, status, supported_versions, signer, snapshot, legacy)
        if run.feedback == action.text:
            return AlreadyDone(run)
        feedback = Action.feedback(run.feedback) if run.feedback else None
        return Refusal(RefusalReason.CONFLICT, run=run, decided=feedback)

    # A review decision.
    if status is RunStatus.AWAITING_FEEDBACK:
        return Refusal(RefusalReason.WRONG_STATE, run=run)
    decided = decisions(row)
    current_round = run.round or 0
    if status.is_final:
        last = decided[-1] if decided else None
        if last is not None and last.same_as(action) and action.round in (None, last.round):
            return AlreadyDone(run)
        return Refusal(RefusalReason.CONFLICT, run=run, decided=last)
    # awaiting_review
    if action.round is not None and action.round != current_round:
        if action.round > current_round:
            return Refusal(RefusalReason.WRONG_STATE, run=run)
        earlier = next((d for d in decided if d.round == action.round), None)
        if earlier is not None and earlier.same_as(action):
            return AlreadyDone(run)
        return Refusal(RefusalReason.CONFLICT, run=run, decided=earlier)
    if action.round is None and decided and _repeats_last(decided[-1], action, current_round):
        return AlreadyDone(run)
    if action.kind == "revise" and current_round >= (run.max_rounds or current_round):
        return Refusal(RefusalReason.ROUND_LIMIT, run=run)
    return _check_snapshot(row, run, status, supported_versions, signer, snapshot, legacy)


def _repeats_last(last: Action, action: Action, current_round: int) -> bool:
    """Whether ``action``, sent without a round, repeats the decision that made the current
    round: the same request sent again because its answer was lost (a dropped connection, a
    process that died after the commit, a client that timed out). It gets the stored result;
    to take the same decision again on purpose, a caller names the round."""
    return last.round == current_round - 1 and last.same_as(action)


def holds(row: Mapping[str, Any] | None, claim: Claim) -> bool:
    """Whether ``claim`` still holds the run (the fence): it is resuming under its token."""
    return (
        row is not None
        and row.get("status") == RunStatus.RESUMING.value
        and row.get("claim_token") == claim.token
    )


def recorded(row: Mapping[str, Any] | None, claim: Claim, signer: SnapshotSigner) -> Run | None:
    """The run, if it already records ``claim``'s action for the pause it was claimed from —
    this claim's completion committed though its acknowledgement was lost, or another
    resumer recorded the same action after taking the lease over — else None.

    Read from the row alone, no new column: feedback is recorded once the run has moved past
    the audience question with that feedback; a decision once ``decided_json`` holds the same
    decision for the claimed round."""
    if row is None or holds(row, claim):
        return None
    run = decode_row(row, signer)
    if not isinstance(run, Run):
        return None
    action = claim.action
    if action.kind == "feedback":
        refined = row.get("round") is not None or run.status.is_final
        return run if refined and run.feedback == action.text else None
    taken = next((d for d in decisions(row) if d.round == claim.run.round), None)
    return run if taken is not None and taken.same_as(action) else None


def decisions(row: Mapping[str, Any]) -> list[Action]:
    """The review decisions the run took, one per round, oldest first."""
    text = row.get("decided_json")
    return [Action.from_data(item) for item in json.loads(text)] if text else []


def _lease_end(value: Any) -> datetime | None:
    """When a lease ends; an unreadable one (the column is not signed) counts as ended."""
    try:
        return parse_time(value) if value else None
    except (TypeError, ValueError):
        return None


def _check_snapshot(
    row: Mapping[str, Any],
    run: Run,
    status: RunStatus,
    supported_versions: Collection[str],
    signer: SnapshotSigner,
    snapshot: bytes | None,
    legacy: bool,
) -> ClaimPlan | Refusal:
    version = str(row["serialization_version"])
    signature = row.get("signature")
    if snapshot is None:
        return Refusal(RefusalReason.DAMAGED, run=run, problem="its snapshot is missing")
    if signature is None:
        return Refusal(RefusalReason.UNSIGNED, run=run)
    if not signer.verify(
        str(row["interaction_id"]), version, snapshot, bytes(signature), legacy=legacy
    ):
        return Refusal(
            RefusalReason.TAMPERED,
            run=run,
            problem="its snapshot was altered, truncated or copied from another run",
        )
    if version not in supported_versions:
        return Refusal(RefusalReason.UNKNOWN_FORMAT, run=run, version=version)
    return ClaimPlan(token=uuid.uuid4().hex, from_status=status)


def new_event(
    interaction_id: str,
    seq: int,
    at: datetime,
    kind: str,
    *,
    detail: str | None = None,
    round: int | None = None,
    actor: str | None = None,
    sequence: EmailSequence | None = None,
) -> dict[str, Any]:
    """An event row (without its MAC)."""
    return {
        "interaction_id": interaction_id,
        "seq": seq,
        "at": iso(at),
        "kind": kind,
        "round": round,
        "actor": actor,
        "detail": detail,
        "sequence_json": sequence.model_dump_json() if sequence else None,
    }


@dataclass
class RowChange:
    """Column values to write, starting from the current row; knows how to re-MAC."""

    row: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    def add_event(self, at: datetime, kind: str, **details: Any) -> None:
        count = int(self.row.get("event_count") or 0) + 1
        self.row["event_count"] = count
        self.events.append(new_event(self.row["interaction_id"], count, at, kind, **details))

    def seal(self, signer: SnapshotSigner, *, sign_row: bool) -> None:
        """Compute the row MAC (only for rows this process may sign) and every event MAC."""
        self.row["row_mac"] = signer.row_mac(row_mac_values(self.row)) if sign_row else None
        for event in self.events:
            event["mac"] = signer.event_mac(event_mac_values(event))


def claim_from(
    row: Mapping[str, Any],
    change: RowChange,
    plan: ClaimPlan,
    action: Action,
    *,
    snapshot: bytes,
    expires: datetime,
) -> Claim:
    """The :class:`Claim` a granted claim hands the agent, from the row it just wrote."""
    run = run_from_row(change.row, verified=row.get("row_mac") is not None)  # just signed
    return Claim(
        interaction_id=str(row["interaction_id"]),
        token=plan.token,
        pause_id=str(row.get("pause_id") or row["interaction_id"]),
        snapshot=snapshot,
        serialization_version=str(row["serialization_version"]),
        action=action,
        run=run.model_copy(update={"status": plan.from_status}),
        expires_at=expires,
    )


def plan_claim(
    row: Mapping[str, Any], plan: ClaimPlan, action: Action, *, now: datetime, lease: float
) -> tuple[RowChange, datetime]:
    """The row after a granted claim: resuming, with the action pending and its event."""
    expires = now + timedelta(seconds=lease)
    change = RowChange(dict(row))
    if row.get("status") == RunStatus.RESUMING.value:  # taken over from a resumer that died
        change.add_event(
            now,
            "failed",
            detail="the previous attempt stopped before it finished (its lease ran out)",
            round=row.get("round"),
        )
    change.row.update(
        status=RunStatus.RESUMING.value,
        pending_json=action.to_json(),
        claim_token=plan.token,
        claim_expires_at=iso(expires),
        updated_at=iso(now),
    )
    if action.kind == "feedback":
        change.row["feedback"] = action.text
    detail = None if action.kind in ("approve", "edit") else action.text
    change.add_event(
        now,
        action.event_kind,
        detail=detail,
        round=row.get("round"),
        actor=action.reviewer,
        sequence=action.sequence,
    )
    return change, expires


def plan_complete(
    row: Mapping[str, Any],
    claim: Claim,
    result: Paused | Finished,
    *,
    now: datetime,
    signature: bytes | None,
) -> RowChange:
    """The row after the claimed action ran: paused for review, or finished."""
    change = RowChange(dict(row))
    action = claim.action
    change.row.update(
        pending_json=None,
        claim_token=None,
        claim_expires_at=None,
        last_error=None,
        updated_at=iso(now),
    )
    if action.kind != "feedback":
        taken = Action(
            action.kind,
            text=action.text,
            sequence=action.sequence,
            reviewer=action.reviewer,
            round=claim.run.round,
        )
        earlier = json.loads(row.get("decided_json") or "[]")  # appended to, not re-decoded
        change.row["decided_json"] = json_text([*earlier, json.loads(taken.to_json())])
    if isinstance(result, Paused):
        change.row.update(
            status=RunStatus.AWAITING_REVIEW.value,
            round=result.round,
            sequence_json=result.sequence.model_dump_json(),
            pause_id=result.pause_id,
            serialization_version=result.serialization_version,
            signature=signature,
        )
        change.add_event(now, "review", round=result.round, sequence=result.sequence)
    else:
        change.row.update(
            status=result.status.value,
            sequence_json=result.sequence.model_dump_json(),
            rejection=result.rejection,
            signature=None,
            completed_at=iso(now),
        )
        if result.status is RunStatus.COMPLETED:
            change.add_event(now, "completed", detail=row.get("feedback"), round=row.get("round"))
    return change


def plan_release(row: Mapping[str, Any], error: str, *, now: datetime) -> RowChange:
    """The row given back to its pause with the error recorded."""
    change = RowChange(dict(row))
    back_to = paused_status(row)
    change.row.update(
        status=back_to.value,
        pending_json=None,
        claim_token=None,
        claim_expires_at=None,
        last_error=error,
        updated_at=iso(now),
    )
    change.add_event(now, "failed", detail=error, round=row.get("round"))
    return change


def plan_insert(new: NewRun, *, now: datetime, signature: bytes) -> RowChange:
    """The row and 'paused' event of a freshly paused run."""
    change = RowChange(
        {
            "interaction_id": new.interaction_id,
            "status": RunStatus.AWAITING_FEEDBACK.value,
            "review": 1 if new.review else 0,
            "round": None,
            "max_rounds": new.max_rounds,
            "fields_json": json_text(list(new.fields)) if new.fields else None,
            "brief_json": new.brief.model_dump_json(),
            "draft_json": new.draft.model_dump_json(),
            "question": new.question,
            "feedback": None,
            "sequence_json": None,
            "rejection": None,
            "decided_json": None,
            "pending_json": None,
            "last_error": None,
            "pause_id": new.interaction_id,
            "serialization_version": new.serialization_version,
            "signature": signature,
            "event_count": 0,
            "created_at": iso(now),
            "updated_at": iso(now),
            "completed_at": None,
            "claim_token": None,
            "claim_expires_at": None,
        }
    )
    change.add_event(now, "paused")
    return change
