"""The claim rules every backend shares, as plain functions over plain data.

:func:`judge_claim` decides, from a row and the requested step, whether the caller may
take the run, already has its answer, or is refused — and why. Backends call it inside the
transaction that holds the row, so the decision and the write are one atomic step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ..models import DEADLINE_ACTOR, DamagedRun, Decision, Run, RunStatus, recorded_decision
from ..signing import SnapshotSigner, json_text
from .codec import RowChange, decode_row, iso, parse_time, row_mac_values, run_from_row
from .protocol import (
    AlreadyDone,
    Claim,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    decision_from_data,
    decision_from_json,
    decision_json,
)

# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class ClaimPlan:
    """A granted claim: its fencing token, and the pause the run is taken from."""

    token: str
    from_status: RunStatus
    again: bool = False
    """The run is already resuming under this token: a claim whose commit went through
    though its reply was lost, asked again. Nothing is written; the claim is handed back."""
    run: Run | None = None
    """The run as :func:`judge_claim` decoded and verified it (spares decoding it again)."""


def paused_status(row: Mapping[str, Any]) -> RunStatus:
    """The pause a ``resuming`` row came from: review once it has a round, else feedback."""
    return (
        RunStatus.AWAITING_REVIEW if row.get("round") is not None else RunStatus.AWAITING_FEEDBACK
    )


def judge_claim(
    row: Mapping[str, Any] | None,
    action: Decision,
    *,
    now: datetime,
    supported_versions: Collection[str],
    signer: SnapshotSigner,
    snapshot: bytes | None,
    token: str | None = None,
) -> ClaimPlan | AlreadyDone | Refusal:
    """Decide a claim. The caller holds the row (a transaction) and writes what this says.

    The order matters: a refusal for tampering comes before anything else, and a run whose
    action was already applied returns its result even if the snapshot is gone.

    ``token`` is the claim's fencing token, chosen by the caller before the first attempt
    (a new one when None): a run already resuming under it is that caller's own claim,
    whose commit reply was lost, and is handed back (``again``) instead of refused as held.
    """
    token = token or uuid.uuid4().hex
    if row is None:
        return Refusal(RefusalReason.NOT_FOUND)
    decoded = decode_row(row, signer)
    if isinstance(decoded, DamagedRun):
        reason = RefusalReason.TAMPERED if decoded.tampered else RefusalReason.DAMAGED
        return Refusal(reason, problem=decoded.detail)
    run = decoded
    status = run.status
    if status is RunStatus.RESUMING and row.get("claim_token") == token:
        legacy = row.get("row_mac") is None
        paused = paused_status(row)
        mine = _check_snapshot(
            row, run, paused, supported_versions, signer, snapshot, legacy, token
        )
        return replace(mine, again=True) if isinstance(mine, ClaimPlan) else mine
    if status is RunStatus.RESUMING:
        expires = _lease_end(row.get("claim_expires_at"))
        pending = decision_from_json(row["pending_json"]) if row.get("pending_json") else None
        if expires is not None and expires >= now:
            return Refusal(RefusalReason.HELD, run=run, held_until=expires, pending=pending)
        status = paused_status(row)  # the lease ran out: the run is paused again

    legacy = row.get("row_mac") is None
    if action.kind == "feedback":
        if status is RunStatus.AWAITING_FEEDBACK:
            return _check_snapshot(
                row, run, status, supported_versions, signer, snapshot, legacy, token
            )
        if run.feedback == action.text:
            return AlreadyDone(run)
        feedback = recorded_decision("feedback", text=run.feedback) if run.feedback else None
        return Refusal(RefusalReason.CONFLICT, run=run, decided=feedback)

    # A review decision.
    if status is RunStatus.AWAITING_FEEDBACK:
        if action.kind == "reject" and action.reviewer == DEADLINE_ACTOR:
            # A deadline that rejects ends the run at its audience question too.
            return _check_snapshot(
                row, run, status, supported_versions, signer, snapshot, legacy, token
            )
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
    return _check_snapshot(row, run, status, supported_versions, signer, snapshot, legacy, token)


def _repeats_last(last: Decision, action: Decision, current_round: int) -> bool:
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


def intact(row: Mapping[str, Any], claim: Claim, signer: SnapshotSigner) -> bool:
    """Whether the row ``claim`` holds still matches the MAC its claim sealed it with: no
    keyless writer changed a signed column (or the MAC) since the claim verified it. The
    claim of a run stored before 0.5 sealed no MAC: nothing to check."""
    if not claim.run.verified:
        return True
    try:
        return signer.check_mac(row.get("row_mac"), signer.row_mac(row_mac_values(row)))
    except TypeError:  # a value of the wrong type in a signed column
        return False


def seal_held(
    change: RowChange, row: Mapping[str, Any], claim: Claim, signer: SnapshotSigner, *, ok: bool
) -> None:
    """Seal a change to the row ``claim`` holds (``ok``: :func:`intact`). Never over an edit
    made since the claim: the row then keeps the MAC it has, which does not match, so the
    run reads as tampered from now on; its new events are still sealed (the result is
    recorded, not lost)."""
    change.seal(signer, sign_row=claim.run.verified and ok)
    if not ok:
        change.row["row_mac"] = row.get("row_mac")


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


def decisions(row: Mapping[str, Any]) -> list[Decision]:
    """The review decisions the run took, one per round, oldest first."""
    text = row.get("decided_json")
    return [decision_from_data(item) for item in json.loads(text)] if text else []


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
    token: str,
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
    return ClaimPlan(token=token, from_status=status, run=run)


def claim_from(
    row: Mapping[str, Any],
    change: RowChange,
    plan: ClaimPlan,
    action: Decision,
    *,
    snapshot: bytes,
    expires: datetime,
) -> Claim:
    """The :class:`Claim` a granted claim hands the agent, from the row it just wrote: the
    verified run copied with what the claim changed, not decoded again."""
    if plan.run is not None:
        run = plan.run.model_copy(
            update={
                "feedback": change.row.get("feedback"),
                "updated_at": parse_time(change.row["updated_at"]),
                "status": plan.from_status,
            }
        )
    else:
        run = run_from_row(change.row, verified=row.get("row_mac") is not None)  # just signed
        run = run.model_copy(update={"status": plan.from_status})
    return Claim(
        interaction_id=str(row["interaction_id"]),
        token=plan.token,
        pause_id=str(row.get("pause_id") or row["interaction_id"]),
        snapshot=snapshot,
        serialization_version=str(row["serialization_version"]),
        action=action,
        run=run,
        expires_at=expires,
    )


def claimed_again(
    row: Mapping[str, Any], plan: ClaimPlan, action: Decision, *, snapshot: bytes, now: datetime
) -> Claim:
    """The :class:`Claim` for a plan ``again``: the row as it stands, nothing written (the
    lease keeper renews its lease)."""
    expires = _lease_end(row.get("claim_expires_at")) or now
    return claim_from(row, RowChange(dict(row)), plan, action, snapshot=snapshot, expires=expires)


def plan_claim(
    row: Mapping[str, Any], plan: ClaimPlan, action: Decision, *, now: datetime, lease: float
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
        pending_json=decision_json(action),
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
        taken = recorded_decision(
            action.kind,
            text=action.text,
            sequence=action.sequence,
            reviewer=action.reviewer,
            round=claim.run.round,
        )
        earlier = json.loads(row.get("decided_json") or "[]")  # appended to, not re-decoded
        change.row["decided_json"] = json_text([*earlier, json.loads(decision_json(taken))])
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


def completed_run(claim: Claim, result: Paused | Finished, row: Mapping[str, Any]) -> Run:
    """The run as ``complete`` just wrote it (``row``, from :func:`plan_complete`): the
    claimed run and the result, copied, not decoded again."""
    status = RunStatus(row["status"])
    return claim.run.model_copy(
        update={
            "status": status,
            "last_error": None,
            "updated_at": parse_time(row["updated_at"]),
            "round": row.get("round"),
            "sequence": result.sequence,
            "final": result.sequence if status is RunStatus.COMPLETED else None,
            "rejection": row.get("rejection"),
            "pause_id": row.get("pause_id"),
        }
    )


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
