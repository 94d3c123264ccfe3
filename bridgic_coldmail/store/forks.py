"""Kept pauses and forks: every pause's signed snapshot, and runs started from one of them.

Until 0.6 a run kept only the snapshot of the pause it waits at. Now every pause's snapshot
is kept, and each is stored once: the pause a run waits at (or is being resumed from) is the
run's own snapshot in ``runs``, checked with the run's signature; when ``complete`` replaces
it (the next review round) or clears it (the outcome), it moves to a row of ``pauses`` — the
run, the round (0: the audience question), Bridgic's interaction id of that pause, the
sequence under review, the snapshot — MACed over all of them, in the complete's own
transaction (one ``INSERT … SELECT`` that copies the bytes inside the database). A *fork* is
a new run started from one of those pauses with different input: its row is the parent's at
that pause (brief, draft, fields, the audience feedback and the decisions taken before that
round), its snapshot the kept one signed anew under the fork's own id, and its link to the
parent (``parent_id``, ``fork_json``: parent, round, feedback or guidance) carries a MAC of
its own. The fork is then resumed through the ordinary claim, like any paused run.

What the MACs promise here is what ``codec.py`` says of runs: a database writer without the
key cannot get a kept snapshot loaded that this installation did not write, nor move one to
another run or another round (the MAC covers both), nor link a run to a parent it was not
forked from. They can delete kept pauses (the fork is then refused as not kept) and strip a
fork's link (the fork then looks like a run of its own).

Runs stored before the kept pauses existed can still be forked from the pause they wait at
(the run's own snapshot, checked with its own signature); their earlier pauses say they were
not kept. Databases written while 0.6 was being built also held the current pause in
``pauses``; a migration dropped those copies, and a kept row of the current round, should one
be there, is still used (and checked with its MAC) before the run's own snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..models import STORED, DamagedRun, EmailSequence, ListedRun, Run, RunStatus
from ..signing import SnapshotSigner, json_text
from .codec import RowChange, decode_row, iso
from .outbox import pause_timers, read_policy, seal_policy
from .protocol import Claim, Finished, Paused, Refusal, RefusalReason
from .rules import paused_status

PAUSE_DOMAIN = b"bridgic-coldmail kept pause v1"
FORK_DOMAIN = b"bridgic-coldmail fork link v1"

PAUSE_COLUMNS = (
    "interaction_id",
    "round",
    "pause_id",
    "serialization_version",
    "sequence_json",
    "created_at",
    "mac",
    "snapshot",
)
"""The columns of ``pauses``, in the order stores write them (the snapshot last)."""

FORK_COLUMNS = ("parent_id", "fork_json", "fork_mac")
"""The run's link to its parent (all None for a run that is no fork)."""

MAX_FAMILY = 200
"""The most members a family lists (the run's own line of descent always among them)."""
MAX_DEPTH = 100
"""How many parents up the root is looked for."""

ForkKind = Literal["feedback", "revise"]


# --------------------------------------------------------------------------- kept pauses


def pause_mac(signer: SnapshotSigner, pause: Mapping[str, Any]) -> bytes:
    """The MAC of a kept pause: its run, its round, Bridgic's id, format, sequence, bytes."""
    return signer.mac_values(
        PAUSE_DOMAIN,
        [
            str(pause["interaction_id"]),
            int(pause["round"]),
            str(pause["pause_id"]),
            str(pause["serialization_version"]),
            pause.get("sequence_json"),
            bytes(pause["snapshot"]),
        ],
    )


def kept_pause(
    signer: SnapshotSigner,
    interaction_id: str,
    round: int,
    *,
    pause_id: str,
    serialization_version: str,
    snapshot: bytes,
    sequence_json: str | None,
    now: datetime | str,
) -> dict[str, Any]:
    """The ``pauses`` row of a pause this process just produced (signed here)."""
    row: dict[str, Any] = {
        "interaction_id": interaction_id,
        "round": round,
        "pause_id": pause_id,
        "serialization_version": serialization_version,
        "sequence_json": sequence_json,
        "created_at": now if isinstance(now, str) else iso(now),
        "snapshot": snapshot,
    }
    row["mac"] = pause_mac(signer, row)
    return row


def pause_left(
    claim: Claim,
    result: Paused | Finished,
    row: Mapping[str, Any],
    signer: SnapshotSigner,
    *,
    now: datetime,
) -> dict[str, Any] | None:
    """The kept pause of the snapshot ``complete`` is about to replace or clear: the pause
    the claim resumed from, MACed over the bytes the claim verified (``snapshot`` left out:
    the stores copy it from the run's row inside the database, so it never travels twice;
    bytes changed in between do not match the MAC, and a fork of that round is refused).
    None when the result pauses at that same round again (the new snapshot replaces it,
    as a kept row of a round did before). ``row``: the run's columns as the complete read
    them (the claim changed neither its round nor its sequence); ``created_at`` is when it
    was kept (now)."""
    round = 0 if claim.run.status is RunStatus.AWAITING_FEEDBACK else int(claim.run.round or 0)
    if isinstance(result, Paused) and result.round == round:
        return None
    pause = kept_pause(
        signer,
        claim.interaction_id,
        round,
        pause_id=claim.pause_id,
        serialization_version=claim.serialization_version,
        snapshot=claim.snapshot,
        sequence_json=row.get("sequence_json") if round else None,
        now=now,
    )
    del pause["snapshot"]
    return pause


KEEP_LEFT_COLUMNS = PAUSE_COLUMNS[:-1]
"""The columns :func:`pause_left` gives, in order (the snapshot comes from ``runs``)."""


def left_values(pause: Mapping[str, Any]) -> list[Any]:
    """The values of a :func:`pause_left` row in :data:`KEEP_LEFT_COLUMNS` order, then the
    run's id again (the copy's ``WHERE``)."""
    return [*(pause[name] for name in KEEP_LEFT_COLUMNS), pause["interaction_id"]]


# --------------------------------------------------------------------------- fork links


@dataclass(frozen=True)
class ForkLink:
    """Where a fork came from: its parent, the pause (round 0: the audience question), and
    the input it was given there instead."""

    parent_id: str
    round: int
    kind: ForkKind
    text: str
    reviewer: str | None = None

    def to_json(self) -> str:
        return json_text(
            {
                "parent_id": self.parent_id,
                "round": self.round,
                "kind": self.kind,
                "text": self.text,
                "reviewer": self.reviewer,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ForkLink:
        data = json.loads(text)
        kind = data["kind"]
        if kind not in ("feedback", "revise"):
            raise ValueError(f"unknown fork kind {kind!r}")
        return cls(
            parent_id=str(data["parent_id"]),
            round=int(data["round"]),
            kind=kind,
            text=str(data["text"]),
            reviewer=data.get("reviewer"),
        )

    @property
    def angle(self) -> str:
        """What the fork tried, for one line: ``feedback: …`` or ``guidance: …``."""
        label = "feedback" if self.kind == "feedback" else "guidance"
        return f"{label}: {self.text}"

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "parent_id": self.parent_id,
            "round": self.round,
            "kind": self.kind,
            "text": self.text,
            "reviewer": self.reviewer,
        }


def seal_link(signer: SnapshotSigner, interaction_id: str, link: ForkLink) -> dict[str, Any]:
    """The fork's ``parent_id``, ``fork_json`` and ``fork_mac`` columns."""
    text = link.to_json()
    return {
        "parent_id": link.parent_id,
        "fork_json": text,
        "fork_mac": signer.mac_values(FORK_DOMAIN, [interaction_id, link.parent_id, text]),
    }


LinkState = Literal["none", "verified", "altered"]


def read_link(row: Mapping[str, Any], signer: SnapshotSigner) -> tuple[LinkState, ForkLink | None]:
    """The run's fork link: ``none`` (no fork), ``verified`` with the link, or ``altered``
    (a link whose MAC does not match, or that names another parent than its column)."""
    parent_id, text, mac = (row.get(name) for name in FORK_COLUMNS)
    if parent_id is None and text is None and mac is None:
        return "none", None
    if parent_id is None or text is None or mac is None:
        return "altered", None
    expected = signer.mac_values(
        FORK_DOMAIN, [str(row["interaction_id"]), str(parent_id), str(text)]
    )
    if not signer.check_mac(bytes(mac), expected):
        return "altered", None
    try:
        link = ForkLink.from_json(str(text))
    except (ValueError, KeyError, TypeError):
        return "altered", None
    if link.parent_id != parent_id:
        return "altered", None
    return "verified", link


# --------------------------------------------------------------------------- forking


@dataclass(frozen=True)
class ForkPlan:
    """A fork the rules allow: the parent as verified, and the pause to start from."""

    parent: Run
    round: int
    pause_id: str
    serialization_version: str
    snapshot: bytes
    sequence_json: str | None
    """The sequence under review at that round (None at the audience question)."""


def judge_fork(
    row: Mapping[str, Any] | None,
    kept: Mapping[str, Any] | None,
    round: int,
    *,
    supported_versions: Collection[str],
    signer: SnapshotSigner,
) -> ForkPlan | Refusal:
    """Decide a fork of ``row``'s pause at ``round`` (0: the audience question), given the
    kept pause of that round (``kept``, None when there is none). ``row`` holds the run's
    columns with its ``snapshot``.

    The parent is checked as a claim checks it (its row MAC first), then the kept snapshot
    (its MAC over run, round and bytes), or, for the pause the run waits at (or is being
    resumed from), whose snapshot is the run's own, the run's snapshot signature."""
    if row is None:
        return Refusal(RefusalReason.NOT_FOUND)
    decoded = decode_row(row, signer)
    if isinstance(decoded, DamagedRun):
        reason = RefusalReason.TAMPERED if decoded.tampered else RefusalReason.DAMAGED
        return Refusal(reason, problem=decoded.detail)
    run = decoded
    if not run.verified:
        return Refusal(
            RefusalReason.NOT_KEPT,
            run=run,
            problem="it was stored by a release before 0.5, whose text is not signed (a "
            "fork would sign it); finish it with resume instead",
        )
    if not _has_round(run, row, round):
        return Refusal(RefusalReason.NO_ROUND, run=run)
    if kept is not None:
        return _from_kept(run, kept, round, supported_versions, signer)
    status = run.status
    if status is RunStatus.RESUMING:
        status = paused_status(row)
    current = 0 if status is RunStatus.AWAITING_FEEDBACK else run.round
    snapshot, signature = row.get("snapshot"), row.get("signature")
    if not status.is_paused or current != round or snapshot is None:
        return Refusal(RefusalReason.NOT_KEPT, run=run)
    version = str(row["serialization_version"])
    if signature is None or not signer.verify(
        run.interaction_id, version, bytes(snapshot), bytes(signature)
    ):
        return Refusal(
            RefusalReason.TAMPERED,
            run=run,
            problem="its snapshot was altered, truncated or copied from another run",
        )
    if version not in supported_versions:
        return Refusal(RefusalReason.UNKNOWN_FORMAT, run=run, version=version)
    return ForkPlan(
        parent=run,
        round=round,
        pause_id=str(row.get("pause_id") or run.interaction_id),
        serialization_version=version,
        snapshot=bytes(snapshot),
        sequence_json=row.get("sequence_json") if round else None,
    )


def _has_round(run: Run, row: Mapping[str, Any], round: int) -> bool:
    """Whether the run ever paused at ``round`` (0 always: every run starts there)."""
    if round == 0:
        return True
    reached = run.round
    if reached is None or not run.review:
        return False
    return 1 <= round <= reached


def _from_kept(
    run: Run,
    kept: Mapping[str, Any],
    round: int,
    supported_versions: Collection[str],
    signer: SnapshotSigner,
) -> ForkPlan | Refusal:
    altered = Refusal(
        RefusalReason.TAMPERED,
        run=run,
        problem=f"the snapshot kept of its pause at round {round} was altered, truncated or "
        "copied from another run or round",
    )
    snapshot = kept.get("snapshot")
    if snapshot is None or kept.get("mac") is None:
        return altered
    try:
        expected = pause_mac(signer, {**kept, "interaction_id": run.interaction_id, "round": round})
    except (TypeError, ValueError, KeyError):
        return altered
    if not signer.check_mac(bytes(kept["mac"]), expected):
        return altered
    sequence_json = kept.get("sequence_json")
    if (round == 0) != (sequence_json is None):
        return altered
    version = str(kept["serialization_version"])
    if version not in supported_versions:
        return Refusal(RefusalReason.UNKNOWN_FORMAT, run=run, version=version)
    return ForkPlan(
        parent=run,
        round=round,
        pause_id=str(kept["pause_id"]),
        serialization_version=version,
        snapshot=bytes(snapshot),
        sequence_json=sequence_json,
    )


@dataclass
class ForkWrite:
    """What a granted fork writes: the new run's row and event, its snapshot (the pause it
    waits at, kept in its row like any run's current pause), its link, its notify policy
    (the parent's, sealed anew), and its pause's timers (its outbox rows: a fork whose first
    step fails waits there under its own deadline)."""

    change: RowChange
    snapshot: bytes
    link: dict[str, Any]
    policy: tuple[str | None, bytes | None]
    timers: list[dict[str, Any]] = field(default_factory=list)


def plan_fork(
    row: Mapping[str, Any],
    plan: ForkPlan,
    new_id: str,
    link: ForkLink,
    *,
    now: datetime,
    signer: SnapshotSigner,
) -> ForkWrite:
    """The fork's row: the parent's at the pause, under ``new_id``, signed here."""
    round = plan.round
    at_review = round > 0
    decided = None
    if at_review:
        earlier = [d for d in json.loads(row.get("decided_json") or "[]") if d["round"] < round]
        decided = json_text(earlier) if earlier else None
    stamp = iso(now)
    change = RowChange(
        {
            "interaction_id": new_id,
            "status": (
                RunStatus.AWAITING_REVIEW if at_review else RunStatus.AWAITING_FEEDBACK
            ).value,
            "review": 1 if plan.parent.review else 0,
            "round": round if at_review else None,
            "max_rounds": row.get("max_rounds"),
            "fields_json": row.get("fields_json"),
            "brief_json": row["brief_json"],
            "draft_json": row["draft_json"],
            "question": row["question"],
            "feedback": row.get("feedback") if at_review else None,
            "sequence_json": plan.sequence_json,
            "rejection": None,
            "decided_json": decided,
            "pending_json": None,
            "last_error": None,
            "pause_id": plan.pause_id,
            "serialization_version": plan.serialization_version,
            "signature": signer.sign(new_id, plan.serialization_version, plan.snapshot),
            "event_count": 0,
            "created_at": stamp,
            "updated_at": stamp,
            "completed_at": None,
            "claim_token": None,
            "claim_expires_at": None,
        }
    )
    where = f"review round {round}" if at_review else "the audience question"
    note = f"forked from run {link.parent_id} at {where}"
    if at_review:
        sequence = EmailSequence.model_validate_json(str(plan.sequence_json), context=STORED)
        change.add_event(now, "review", detail=note, round=round, sequence=sequence)
    else:
        change.add_event(now, "paused", detail=note)
    change.seal(signer, sign_row=True)
    inherited = read_policy(row, signer)
    policy = seal_policy(signer, new_id, inherited)
    timers = (
        pause_timers(new_id, plan.pause_id, round if at_review else None, inherited.wait, now=now)
        if inherited is not None
        else []
    )
    return ForkWrite(
        change,
        plan.snapshot,
        seal_link(signer, new_id, link),
        policy,
        [t.row(signer, now=now) for t in timers],
    )


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class FamilyMember:
    """One run of a family, as the family lists it."""

    run: ListedRun
    link: ForkLink | None
    """How it was forked (None: the family's root, or a run whose link is altered)."""
    altered: bool = False
    """Its link to its parent does not match its MAC: shown, never trusted."""

    @property
    def interaction_id(self) -> str:
        return self.run.interaction_id

    def to_public_dict(self) -> dict[str, Any]:
        run = self.run
        status = run.status.value if isinstance(run, Run) else str(run.status)
        return {
            "interaction_id": run.interaction_id,
            "status": status,
            "round": run.round if isinstance(run, Run) else None,
            "damaged": isinstance(run, DamagedRun),
            "fork": self.link.to_public_dict() if self.link else None,
            "link_altered": self.altered,
        }


@dataclass(frozen=True)
class Family:
    """A run's family: the root (the first run up the parent links that is still stored),
    then every fork below it, oldest first."""

    interaction_id: str
    """The run the family was asked for."""
    members: tuple[FamilyMember, ...]
    parent_gone: str | None = None
    """The id of the root's parent when that run is no longer stored (purged)."""
    truncated: bool = False

    @property
    def is_alone(self) -> bool:
        """No parent, no fork: nothing to show."""
        return len(self.members) <= 1 and self.parent_gone is None

    def member(self, interaction_id: str) -> FamilyMember | None:
        return next((m for m in self.members if m.interaction_id == interaction_id), None)

    @property
    def parent_id(self) -> str | None:
        own = self.member(self.interaction_id)
        return own.link.parent_id if own and own.link else None

    def forks_of(self, interaction_id: str) -> list[FamilyMember]:
        return [m for m in self.members if m.link and m.link.parent_id == interaction_id]

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "interaction_id": self.interaction_id,
            "parent_id": self.parent_id,
            "parent_gone": self.parent_gone,
            "forks": [m.interaction_id for m in self.forks_of(self.interaction_id)],
            "members": [m.to_public_dict() for m in self.members],
            "truncated": self.truncated,
        }


def family_of(
    interaction_id: str,
    up: Sequence[Mapping[str, Any]],
    down: Sequence[Mapping[str, Any]],
    signer: SnapshotSigner,
) -> Family | None:
    """The family from the rows read: ``up`` the run and its ancestors (run first), ``down``
    the root's descendants (root first). Links are verified; a chain stops at an altered
    link (its ancestors are not the run's family, as far as anyone can prove)."""
    if not up:
        return None
    root_row = up[0]
    parent_gone: str | None = None
    by_id = {str(r["interaction_id"]): r for r in up}
    current = up[0]
    seen = {str(current["interaction_id"])}
    while True:
        state, link = read_link(current, signer)
        if state != "verified" or link is None:
            break
        parent = by_id.get(link.parent_id)
        if parent is None:
            parent_gone = link.parent_id
            break
        if link.parent_id in seen:
            break
        seen.add(link.parent_id)
        current = root_row = parent
    root_id = str(root_row["interaction_id"])
    members = [FamilyMember(decode_row(root_row, signer), None)]
    listed = {root_id}
    for row in down:
        member_id = str(row["interaction_id"])
        if member_id in listed:
            continue
        state, link = read_link(row, signer)
        if state == "none":
            continue
        if state == "verified" and link is not None and link.parent_id not in listed:
            continue  # not below the root (the rows may have changed between the reads)
        listed.add(member_id)
        members.append(FamilyMember(decode_row(row, signer), link, altered=state == "altered"))
    if interaction_id not in listed:  # a run whose own link is altered: still shown
        own = up[0]
        state, link = read_link(own, signer)
        members.append(FamilyMember(decode_row(own, signer), link, altered=state == "altered"))
    return Family(
        interaction_id,
        tuple(members),
        parent_gone=parent_gone,
        truncated=len(down) >= MAX_FAMILY,
    )


def fork_refusal_problem(refusal: Refusal, parent_id: str, round: int) -> str | None:
    """The sentence for the refusals only forks have (no such round, not kept)."""
    run = refusal.run
    where = "the audience question" if round == 0 else f"review round {round}"
    if refusal.reason is RefusalReason.NO_ROUND:
        if run is not None and not run.review:
            reached = "it has no review rounds (it was started without review)"
        elif run is not None and run.round is None:
            reached = "it has not reached review yet"
        else:
            reached = f"it has reached review round {run.round if run else '?'} so far"
        return (
            f"run {parent_id} never paused at {where}: {reached}; fork round 0 (the "
            "audience question) or a round it reached"
        )
    if refusal.reason is RefusalReason.NOT_KEPT:
        if refusal.problem:
            return f"run {parent_id} cannot be forked: {refusal.problem}"
        return (
            f"the snapshot of run {parent_id} at {where} was not kept: the run paused there "
            "before this database kept every pause (release 0.6); only the pause it waits "
            "at now, and pauses after the upgrade, can be forked"
        )
    return None
