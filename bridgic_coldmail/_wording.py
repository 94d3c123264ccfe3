"""Every sentence a person reads about a run (internal): the refusals, the races, the history.

The store answers with neutral outcomes (a :class:`~.store.Refusal` and its reason, a run,
``None``); the runner and the agent hand them here and raise what comes back, so the command
line, the inbox and the JSON API show the same words for the same state, and a change of
wording is one edit. A message that is a rule's own (``limit must be between 1 and 1000``)
stays beside the rule that checks it (``models.py``, ``merge.py``, ``export/``).
"""

from __future__ import annotations

import asyncio

from .errors import (
    ColdmailError,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
    SnapshotError,
    SnapshotIntegrityError,
    StoreError,
)
from .models import DEADLINE_ACTOR, DamagedRun, Decision, ListedRun, Run, RunEvent, RunStatus
from .store import Claim, Refusal, RefusalReason
from .store.batches import BatchRefusal
from .text import preview, preview_list

# ---------------------------------------------------------------------------- refusals


def refusal_error(
    interaction_id: str,
    refusal: Refusal,
    action: Decision,
    *,
    location: str,
    supported_versions: frozenset[str],
) -> ColdmailError:
    """The error a person reads for a refused claim (``location``: the store, for
    :class:`RunNotFound`; ``supported_versions``: the snapshot formats this release reads)."""
    reason, run = refusal.reason, refusal.run
    if reason is RefusalReason.NOT_FOUND:
        return RunNotFound(interaction_id, location)
    if reason is RefusalReason.TAMPERED:
        return integrity_error(interaction_id, refusal.problem, tampered=True)
    if reason is RefusalReason.UNSIGNED:
        return SnapshotIntegrityError(
            f"run {interaction_id} has no signature: it was stored by bridgic-coldmail "
            "0.1 or written by another program, and was not loaded (loading a snapshot "
            "can run code). If you trust whoever wrote this database, trust the run "
            "explicitly and try again",
            topic="unsigned",
        )
    if reason is RefusalReason.DAMAGED:
        return integrity_error(interaction_id, refusal.problem, tampered=False)
    if reason is RefusalReason.UNKNOWN_FORMAT:
        versions = ", ".join(sorted(supported_versions))
        return SnapshotError(
            f"run {interaction_id} was saved with snapshot format {refusal.version!r}, "
            f"but this release reads only {versions}; resume it with the "
            "bridgic-coldmail release that paused it"
        )
    pending = refusal.pending
    if reason is RefusalReason.HELD and pending is not None and pending.reviewer == DEADLINE_ACTOR:
        did = {
            "feedback": "going on without an answer, with the brief's own audience",
            "approve": "approving the version under review",
            "reject": "rejecting the run",
        }.get(pending.kind, "applying its outcome")
        return RunConflict(
            f"run {interaction_id}'s deadline has passed and the deadline is {did} right now; "
            "your answer was not applied (should that step fail, the run waits for an answer "
            f"again: `coldmail show {interaction_id}` shows where it is)",
            topic="deadline",
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
            f"({decided.describe() if decided else 'decided'}); nothing changed"
        )
    taken = (
        f" ({decided.describe()})" if decided is not None and decided.round == action.round else ""
    )
    return RunConflict(
        f"round {action.round} of run {interaction_id} was already decided{taken}; the "
        f"run is at round {run.round}"
    )


def answered_by_deadline(
    interaction_id: str, history: list[RunEvent], action: Decision
) -> RunConflict | None:
    """The conflict to report when the pause ``action`` answers was answered by its deadline
    (None when a person answered it): what the deadline did, and when."""

    def answers(event: RunEvent) -> bool:
        if action.kind == "feedback":  # the audience question
            return event.round is None and event.kind in ("feedback", "rejected")
        answered = ("approved", "revised", "rejected")  # revised: a stalled fork's guidance
        return event.kind in answered and action.round in (None, event.round)

    event = next(
        (e for e in reversed(history) if e.actor == DEADLINE_ACTOR and e.verified and answers(e)),
        None,
    )
    if event is None:
        return None
    did = {
        "feedback": f"went on without an answer, with the audience {preview(event.detail)}",
        "approved": "approved the version under review",
        "revised": f"revised with the fork's own guidance {preview(event.detail)}",
        "rejected": "rejected the run",
    }[event.kind]
    return RunConflict(
        f"run {interaction_id}'s deadline passed at {event.at:%Y-%m-%d %H:%M} UTC and the "
        f"deadline {did}; nothing changed (`coldmail show {interaction_id}` shows the run "
        "and its history)",
        topic="deadline",
    )


def _doing(pending: Decision | None) -> str:
    if pending is None or pending.kind == "feedback":
        return "being resumed"
    return f"being {pending.event_kind} (review decision)"


def damaged_error(damaged: DamagedRun) -> ColdmailError:
    """The error for a run that is stored but cannot be shown."""
    return integrity_error(damaged.interaction_id, damaged.detail, tampered=damaged.tampered)


def integrity_error(interaction_id: str, detail: str | None, *, tampered: bool) -> ColdmailError:
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


def not_final(run: Run) -> str:
    """Why a run has nothing to export yet."""
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


def not_exportable(run: Run, problem: str) -> RunConflict:
    """Approving emails no lead could be exported with (``problem`` says why)."""
    return RunConflict(
        f"run {run.interaction_id} cannot be approved: the emails under review at round "
        f"{run.round} cannot be exported ({problem}); edit them, then approve",
        topic="not_exportable",
    )


def unknown_fields_problem(unknown: list[str]) -> str:
    """The part of :func:`not_exportable` for merge fields the run does not have."""
    return f"they use merge fields the run does not have: {preview_list(unknown)}"


def unknown_fields_message(unknown: list[str], fields: tuple[str, ...]) -> str:
    """Edited emails that use merge fields the run does not have."""
    known = preview_list(fields, quoted=False) or "none"
    return (
        "the emails use merge fields the run does not have: "
        f"{preview_list(sorted(unknown), quoted=False)} (its fields: {known})"
    )


# ---------------------------------------------------------------------------- the runner's


def refused_by_snapshot(claim: Claim) -> SnapshotError:
    """The automa paused again where it was: the snapshot did not take the step."""
    return SnapshotError(
        f"the snapshot of run {claim.interaction_id} did not accept the "
        f"{'feedback' if claim.action.kind == 'feedback' else 'decision'}"
    )


def snapshot_not_loaded(claim: Claim, exc: Exception) -> SnapshotError:
    """Bridgic could not load the snapshot."""
    return SnapshotError(
        f"the snapshot of run {claim.interaction_id} cannot be loaded "
        f"({type(exc).__name__}: {exc}); it was written by an incompatible release"
    )


def snapshot_not_automa(claim: Claim, loaded: object) -> SnapshotError:
    """The snapshot holds some other automa."""
    return SnapshotError(
        f"the snapshot of run {claim.interaction_id} holds a "
        f"{type(loaded).__name__}, not a ColdMailAutoma"
    )


def taken_over(claim: Claim) -> RunBeingResumed:
    """The lease keeper lost the claim while the LLM worked: the step was stopped."""
    return RunBeingResumed(
        f"run {claim.interaction_id} was taken over by another resumer; this "
        "one stopped without recording anything"
    )


def fenced_out(claim: Claim, found: ListedRun | None) -> ColdmailError:
    """The claim was taken over while this resumer worked: say what the store holds
    (``found``: the run as read afterwards, None when it could not be read)."""
    taken = (
        f"run {claim.interaction_id} was taken over by another resumer while this one "
        "worked (its lease expired and was not renewed in time), and this one recorded "
        "nothing"
    )
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
        f" with the feedback {preview(found.feedback)}" if claim.action.kind == "feedback" else ""
    )
    return RunBeingResumed(
        f"{taken}; another resumer's result is recorded: the run is "
        f"{found.describe_state()}{feedback}"
    )


def unconfirmed(claim: Claim, failure: StoreError, waited: float) -> StoreError:
    """The store failed as the result was recorded and did not answer for a whole lease: say
    so, and name the retry that is safe (the same action for the same pause)."""
    action = claim.action
    if action.kind == "feedback":
        what, again = "the feedback", "resume it with the same feedback"
    else:
        what = f"the decision ({action.describe()})"
        again = f"apply the same decision for round {claim.run.round}"
    return StoreError(
        f"{what} for run {claim.interaction_id} was worked out, but whether it was recorded "
        f"could not be confirmed: recording it failed ({failure}), and so did every check "
        f"for {waited:g} s. To finish, {again}: if it was recorded, that returns the "
        "recorded result; if not, it is applied once",
        topic="unconfirmed",
    )


def failure_note(exc: BaseException) -> str:
    """What a run given back records as its last error."""
    if isinstance(exc, ColdmailError):
        return str(exc)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "the resume was interrupted before it finished"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- batches (#23)


def batch_tampered(batch_id: str) -> ColdmailError:
    from .errors import SnapshotIntegrityError

    return SnapshotIntegrityError(
        f"the personalization batch {batch_id} was changed outside bridgic-coldmail (its MAC "
        "or its snapshot's signature does not verify); it is not used. Restore the database "
        "from a backup, or delete the batch's rows and run coldmail personalize again",
        topic="tampered",
    )


def batch_refusal(interaction_id: str, refusal: BatchRefusal) -> ColdmailError:
    """The error for a :class:`~.store.batches.BatchRefusal`."""
    from .errors import RunBeingResumed, RunConflict
    from .store.batches import BatchRefusalReason

    reason = refusal.reason
    batch = refusal.batch
    if reason is BatchRefusalReason.TAMPERED:
        return batch_tampered(batch.batch_id if batch else "?")
    if reason is BatchRefusalReason.NOT_FOUND:
        return RunConflict(
            f"run {interaction_id}'s personalization batch is gone; start it again with "
            f"coldmail personalize {interaction_id} --leads LEADS.csv",
            topic="no_batch",
        )
    if reason is BatchRefusalReason.HELD:
        return RunBeingResumed(
            f"another process is working on run {interaction_id}'s sample right now; wait "
            f"for it, then see where it is with coldmail personalize {interaction_id} --status",
            topic="held",
        )
    if reason is BatchRefusalReason.NEEDS_ANSWER:
        return RunConflict(
            f"run {interaction_id}'s sample waits for a person: approve it (coldmail "
            f"personalize {interaction_id} --approve-sample) or give guidance (--guidance)",
            topic="awaiting_approval",
        )
    status = batch.status if batch else "unknown"
    if status in ("writing", "done"):
        return RunConflict(
            f"run {interaction_id}'s sample was approved already; guidance cannot change lines "
            "being written. Start a new batch with another lead list to write them again",
            topic="approved",
        )
    return RunConflict(
        f"run {interaction_id}'s sample is not written yet, so there is nothing to answer; "
        f"run coldmail personalize {interaction_id} --leads LEADS.csv to write it",
        topic="not_paused",
    )
