"""Personalization batches in the store, shared by both backends (issue 23).

A **batch** is one ``personalize`` of a completed run with one lead list (identified by the
list's digest, so running the command again finds the same batch and resumes it). Its row
holds the settings, the status, whether a person approved the sample, the guidance they
gave, and — while the sample waits for them — the paused Bridgic automa's snapshot, signed
like a run's (``SnapshotSigner.sign`` under the pause's interaction id). Its status:

* ``sampling``: someone holds the batch (``claim_token``, a lease) to write the sample, or
  to apply a person's answer (``pending_json``). A holder that dies leaves the lease to run
  out; the next ``personalize`` or answer takes the batch over.
* ``awaiting_approval``: paused; the snapshot waits for :meth:`approve` or guidance.
* ``writing``: the sample was approved; workers write the rest.
* ``done``: no lead is left to write.

Each **lead** is one row: its position, its row in the CSV, its address and its columns as
JSON, its state (``pending``, ``claimed``, ``written``, ``skipped``), its line and who wrote
it, the sample round it was written for, and what it cost. Workers claim pending leads in
chunks with a lease (PostgreSQL ``FOR UPDATE SKIP LOCKED``, SQLite one ``UPDATE …
RETURNING`` under the write lock, as the outbox does) and record each line *fenced by the
lease token*: a worker whose lease ran out and was taken over records nothing, so each lead
is written once. A lead whose line is stored is never claimed again, so a killed worker
costs at most the calls it had in flight; its leased leads come back when the lease ends.

**MACs.** The batch row's MAC covers everything a person or the export relies on: the run,
the list's digest, the settings, the status, the sample's approval, the round and the
guidance, the pause's id. A lead's MAC covers its batch, position, row, address, columns
and — once written — its line, its writer and its round. A database writer without the key
cannot approve a sample, plant a lead (whose planted columns the honesty check would take
as facts) or plant a line that gets exported: such a row is reported as altered, never
used. They can delete rows, or set a written lead back to pending (it is then written and
paid for again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from ..signing import MacValue, SnapshotSigner, json_text
from .codec import parse_time

BATCH_DOMAIN = b"bridgic-coldmail batch v1"
LEAD_DOMAIN = b"bridgic-coldmail batch lead v1"
MAX_ERROR_CHARS = 500
"""A lead's or a batch's error is cut at this many characters."""

BatchStatus = Literal["sampling", "awaiting_approval", "writing", "done"]
LeadState = Literal["pending", "claimed", "written", "skipped"]
LEAD_STATES: tuple[LeadState, ...] = ("pending", "claimed", "written", "skipped")

BATCH_COLUMNS = (
    "batch_id",
    "interaction_id",
    "leads_digest",
    "settings_json",
    "lead_count",
    "sample_size",
    "status",
    "sample_approved",
    "round",
    "guidance_json",
    "pause_id",
    "pending_json",
    "serialization_version",
    "claim_token",
    "claim_expires_at",
    "last_error",
    "created_at",
    "updated_at",
    "row_mac",
    "signature",
)
"""Every column of ``batches`` but the snapshot, in the order stores select them."""
_BATCH_MACED = BATCH_COLUMNS[: BATCH_COLUMNS.index("pending_json")]

LEAD_COLUMNS = (
    "batch_id",
    "position",
    "lead_row",
    "email",
    "lead_json",
    "in_sample",
    "state",
    "line",
    "writer",
    "round",
    "attempts",
    "lease_token",
    "lease_until",
    "error",
    "calls",
    "tokens",
    "written_at",
    "mac",
)
INSERTED_LEAD_COLUMNS = (
    "batch_id",
    "position",
    "lead_row",
    "email",
    "lead_json",
    "in_sample",
    "state",
    "error",
    "mac",
)
MAX_ATTEMPTS = 3
"""Claims of one lead at most: a lead whose lease ran out this often (its worker died each
time, or its calls kept failing for reasons another run may not meet) is skipped."""


# --------------------------------------------------------------------------- what goes in


@dataclass(frozen=True)
class BatchLead:
    """One lead of the list as the batch stores it: its columns, or why it cannot be used
    (a row the lead reader refused: it is stored skipped, and reported)."""

    row: int | None
    email: str
    values: Mapping[str, str]
    problem: str | None = None


@dataclass(frozen=True)
class NewBatch:
    """A batch to create, held from the start by ``token`` (its creator writes the sample)."""

    batch_id: str
    interaction_id: str
    leads_digest: str
    settings: Mapping[str, Any]
    sample_size: int
    leads: Sequence[BatchLead]
    token: str


@dataclass(frozen=True)
class BatchAction:
    """A person's answer to the sample: approve it, or rewrite it with ``text``."""

    kind: Literal["approve", "guide"]
    text: str | None = None
    reviewer: str | None = None

    def to_json(self) -> str:
        return json_text({"kind": self.kind, "text": self.text, "reviewer": self.reviewer})

    @classmethod
    def from_json(cls, text: str) -> BatchAction:
        data = json.loads(text)
        if data.get("kind") == "approve":
            return cls("approve", data.get("text"), data.get("reviewer"))
        return cls("guide", data.get("text"), data.get("reviewer"))


@dataclass(frozen=True)
class LineRecord:
    """How one claimed lead ended: its line, or why it has none."""

    position: int
    line: str | None
    writer: str
    error: str | None = None
    retry_later: bool = False
    """No line, for a failure another run may not meet: the lead goes back to pending
    (until :data:`MAX_ATTEMPTS`)."""
    calls: int = 0
    tokens: int = 0


# --------------------------------------------------------------------------- what comes out


@dataclass(frozen=True)
class Batch:
    """A batch as people see it (never its snapshot)."""

    batch_id: str
    interaction_id: str
    leads_digest: str
    settings: Mapping[str, Any]
    lead_count: int
    sample_size: int
    status: BatchStatus
    sample_approved: bool
    round: int
    guidance: tuple[str, ...]
    pause_id: str | None
    pending: BatchAction | None
    held_until: datetime | None
    """The lease of whoever holds the batch (``sampling``), when held."""
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    verified: bool
    """False: the row was made or changed outside bridgic-coldmail; it is not used."""


@dataclass(frozen=True)
class BatchClaim:
    """A batch held to write its sample or apply an answer; ``snapshot`` is set (and its
    signature verified) when the batch was paused."""

    batch: Batch
    token: str
    expires: datetime
    action: BatchAction | None
    snapshot: bytes | None = None
    serialization_version: str | None = None

    @property
    def batch_id(self) -> str:
        return self.batch.batch_id


class BatchRefusalReason(str, Enum):
    NOT_FOUND = "not_found"
    TAMPERED = "tampered"
    HELD = "held"
    """Someone else holds the batch (its lease runs)."""
    NOT_PAUSED = "not_paused"
    """The batch is not waiting for an answer (still sampling, or approved already)."""
    NEEDS_ANSWER = "needs_answer"
    """The batch waits for a person's answer; nothing to take over."""


@dataclass(frozen=True)
class BatchRefusal:
    reason: BatchRefusalReason
    batch: Batch | None = None


@dataclass(frozen=True)
class LeadClaim:
    """A lead a worker holds for writing its line."""

    batch_id: str
    position: int
    row: int | None
    email: str
    values: Mapping[str, str]
    token: str
    attempts: int
    in_sample: bool


@dataclass(frozen=True)
class BatchLeadRow:
    """A lead as people (and the export) see it."""

    position: int
    row: int | None
    email: str
    state: LeadState
    line: str | None
    writer: str | None
    round: int | None
    error: str | None
    calls: int
    tokens: int
    attempts: int
    in_sample: bool
    written_at: datetime | None
    verified: bool
    """False: altered outside bridgic-coldmail: its line (if any) is never used."""


@dataclass(frozen=True)
class BatchCounts:
    """How many leads each state has, and what the written ones cost."""

    pending: int = 0
    claimed: int = 0
    written: int = 0
    skipped: int = 0
    calls: int = 0
    tokens: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.claimed + self.written + self.skipped

    @property
    def open(self) -> int:
        """Leads still to write (pending or claimed)."""
        return self.pending + self.claimed


# --------------------------------------------------------------------------- MACs


def batch_mac(signer: SnapshotSigner, row: Mapping[str, Any]) -> bytes:
    return signer.mac_values(BATCH_DOMAIN, [_mac_value(row.get(c)) for c in _BATCH_MACED])


def lead_mac(signer: SnapshotSigner, row: Mapping[str, Any]) -> bytes:
    """The MAC of a lead row: its identity and columns, and its line once written."""
    values: list[MacValue] = [
        str(row["batch_id"]),
        int(row["position"]),
        _mac_value(row.get("lead_row")),
        str(row["email"]),
        str(row["lead_json"]),
        int(row.get("in_sample") or 0),
    ]
    if row.get("state") == "written":
        values += [
            str(row.get("line")),
            _mac_value(row.get("writer")),
            _mac_value(row.get("round")),
        ]
    return signer.mac_values(LEAD_DOMAIN, values)


def _mac_value(value: Any) -> MacValue:
    if value is None or isinstance(value, (str, int, bytes)):
        return value
    return str(value)


def batch_verified(row: Mapping[str, Any], signer: SnapshotSigner) -> bool:
    mac = row.get("row_mac")
    try:
        return mac is not None and signer.check_mac(bytes(mac), batch_mac(signer, row))
    except (KeyError, TypeError, ValueError):
        return False


def lead_verified(row: Mapping[str, Any], signer: SnapshotSigner) -> bool:
    mac = row.get("mac")
    try:
        return mac is not None and signer.check_mac(bytes(mac), lead_mac(signer, row))
    except (KeyError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- rows


def new_batch_row(new: NewBatch, *, now: datetime, expires: datetime) -> dict[str, Any]:
    """The ``batches`` row of a new batch, held by its creator, unsealed."""
    return {
        "batch_id": new.batch_id,
        "interaction_id": new.interaction_id,
        "leads_digest": new.leads_digest,
        "settings_json": json_text(dict(new.settings)),
        "lead_count": len(new.leads),
        "sample_size": new.sample_size,
        "status": "sampling",
        "sample_approved": 0,
        "round": 1,
        "guidance_json": "[]",
        "pause_id": None,
        "pending_json": None,
        "serialization_version": None,
        "claim_token": new.token,
        "claim_expires_at": expires,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
        "row_mac": None,
        "signature": None,
    }


def seal_batch(row: dict[str, Any], signer: SnapshotSigner) -> dict[str, Any]:
    row["row_mac"] = batch_mac(signer, row)
    return row


def new_lead_rows(new: NewBatch, signer: SnapshotSigner) -> list[dict[str, Any]]:
    """The ``batch_leads`` rows of a new batch, MACed: the first ``sample_size`` usable
    leads are its sample; a row the lead reader refused is stored skipped, with why."""
    rows = []
    sampled = 0
    for position, lead in enumerate(new.leads):
        usable = lead.problem is None
        in_sample = usable and sampled < new.sample_size
        sampled += in_sample
        row = {
            "batch_id": new.batch_id,
            "position": position,
            "lead_row": lead.row,
            "email": lead.email,
            "lead_json": json_text(dict(lead.values)),
            "in_sample": int(in_sample),
            "state": "pending" if usable else "skipped",
            "error": None if usable else bounded(lead.problem),
        }
        row["mac"] = lead_mac(signer, row)
        rows.append(row)
    return rows


def batch_of(row: Mapping[str, Any], signer: SnapshotSigner) -> Batch:
    """A ``batches`` row as a :class:`Batch` (``verified`` says whether to trust it)."""
    verified = batch_verified(row, signer)
    try:
        settings = json.loads(str(row["settings_json"]))
        guidance = tuple(str(g) for g in json.loads(str(row["guidance_json"])))
    except (ValueError, TypeError):
        settings, guidance, verified = {}, (), False
    pending_text = row.get("pending_json")
    try:
        pending = BatchAction.from_json(str(pending_text)) if pending_text else None
    except (ValueError, TypeError, AttributeError):
        pending = None
    status = str(row["status"])
    expires = row.get("claim_expires_at")
    return Batch(
        batch_id=str(row["batch_id"]),
        interaction_id=str(row["interaction_id"]),
        leads_digest=str(row["leads_digest"]),
        settings=settings if isinstance(settings, dict) else {},
        lead_count=int(row["lead_count"]),
        sample_size=int(row["sample_size"]),
        status=status if status in _STATUSES else "done",  # type: ignore[arg-type]
        sample_approved=bool(row["sample_approved"]),
        round=int(row["round"]),
        guidance=guidance,
        pause_id=row.get("pause_id"),
        pending=pending,
        held_until=parse_time(expires) if expires is not None and row.get("claim_token") else None,
        last_error=row.get("last_error"),
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        verified=verified,
    )


_STATUSES = ("sampling", "awaiting_approval", "writing", "done")


def lead_claim_of(row: Mapping[str, Any], token: str) -> LeadClaim:
    return LeadClaim(
        batch_id=str(row["batch_id"]),
        position=int(row["position"]),
        row=row.get("lead_row"),
        email=str(row["email"]),
        values=_values(row["lead_json"]),
        token=token,
        attempts=int(row["attempts"]),
        in_sample=bool(row["in_sample"]),
    )


def _values(text: Any) -> dict[str, str]:
    data = json.loads(str(text))
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def lead_row_of(row: Mapping[str, Any], signer: SnapshotSigner) -> BatchLeadRow:
    verified = lead_verified(row, signer)
    state = str(row["state"])
    written_at = row.get("written_at")
    return BatchLeadRow(
        position=int(row["position"]),
        row=row.get("lead_row"),
        email=str(row["email"]),
        state=state if state in LEAD_STATES else "skipped",
        line=row.get("line") if verified else None,
        writer=row.get("writer"),
        round=row.get("round"),
        error=row.get("error")
        if verified
        else "it was changed outside bridgic-coldmail; its line is not used",
        calls=int(row.get("calls") or 0),
        tokens=int(row.get("tokens") or 0),
        attempts=int(row.get("attempts") or 0),
        in_sample=bool(row.get("in_sample")),
        written_at=parse_time(written_at) if written_at is not None else None,
        verified=verified,
    )


def recorded_lead(
    claim_row: Mapping[str, Any], record: LineRecord, round: int, signer: SnapshotSigner
) -> dict[str, Any]:
    """The columns a claimed lead gets when its result is recorded (``state``, ``line``,
    ``writer``, ``round``, ``error``, ``mac``…): written, skipped, or back to pending."""
    if not lead_verified(claim_row, signer):
        state: LeadState = "skipped"
        record = LineRecord(record.position, None, record.writer, ALTERED, False, record.calls,
                            record.tokens)  # fmt: skip
    elif record.line is not None:
        state = "written"
    elif record.retry_later and int(claim_row["attempts"]) < MAX_ATTEMPTS:
        state = "pending"
    else:
        state = "skipped"
    row = {
        **claim_row,
        "state": state,
        "line": record.line,
        "writer": record.writer if record.line is not None else None,
        "round": round if state != "pending" else None,
    }
    return {
        "state": state,
        "line": record.line,
        "writer": row["writer"],
        "round": row["round"],
        "error": bounded(record.error),
        "calls": record.calls,
        "tokens": record.tokens,
        "mac": lead_mac(signer, row),
    }


RECORDED_COLUMNS = ("state", "line", "writer", "round", "error", "calls", "tokens", "mac")
"""The columns :func:`recorded_lead` gives, in the order stores write them."""
ALTERED = "it was changed outside bridgic-coldmail; it is not written"


def reset_lead(row: Mapping[str, Any], signer: SnapshotSigner) -> dict[str, Any]:
    """A sample lead set back to pending: its position and its MAC without a line."""
    pending = {**row, "state": "pending", "line": None, "writer": None, "round": None}
    return {"position": int(row["position"]), "mac": lead_mac(signer, pending)}


def sort_claimed(
    rows: Sequence[Mapping[str, Any]], signer: SnapshotSigner
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Leads just leased, by position: those to write, and those to skip instead (altered
    outside bridgic-coldmail, or claimed :data:`MAX_ATTEMPTS` times already), with why."""
    claimed: list[dict[str, Any]] = []
    refused: list[tuple[int, str]] = []
    for row in sorted(rows, key=lambda r: int(r["position"])):
        if not lead_verified(row, signer):
            refused.append((int(row["position"]), ALTERED))
        elif int(row["attempts"]) > MAX_ATTEMPTS:
            refused.append(
                (
                    int(row["position"]),
                    f"its line was started {MAX_ATTEMPTS} times and never finished (the "
                    "worker stopped, or the LLM kept failing); it is skipped",
                )
            )
        else:
            claimed.append(dict(row))
    return claimed, refused


def bounded(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.replace("\x00", " ").split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# --------------------------------------------------------------------------- decisions


@dataclass
class TakePlan:
    """What taking a batch writes: its new row (sealed) and the claim handed out."""

    row: dict[str, Any]
    snapshot: bytes | None
    again: bool = False
    """The same token holds it already (a retry after a lost reply): nothing to write."""


def judge_take(
    row: Mapping[str, Any] | None,
    action: BatchAction | None,
    *,
    token: str,
    now: datetime,
    expires: datetime,
    signer: SnapshotSigner,
    snapshot: bytes | None,
) -> TakePlan | BatchRefusal:
    """Whether ``token`` may take the batch: to write its sample (``action`` None: a new or
    abandoned batch) or to apply a person's answer to a paused one.

    * A batch held under a running lease by another token is ``HELD``; the same token gets
      it back unchanged (``again``).
    * ``action`` None on a paused batch: ``NEEDS_ANSWER``; on a writing/done one:
      ``NOT_PAUSED`` (the caller goes on writing the rest).
    * An answer to a batch not paused (sampling with an abandoned first sample, writing,
      done): ``NOT_PAUSED``. An answer to one held whose lease ran out resumes with the
      answer that holder was applying (its snapshot is the one still stored).
    """
    if row is None:
        return BatchRefusal(BatchRefusalReason.NOT_FOUND)
    batch = batch_of(row, signer)
    if not batch.verified:
        return BatchRefusal(BatchRefusalReason.TAMPERED, batch)
    held_by = row.get("claim_token")
    lease = row.get("claim_expires_at")
    held = batch.status == "sampling" and held_by is not None and lease is not None
    running = held and parse_time(lease) > now
    if running and held_by == token:
        return TakePlan(dict(row), snapshot, again=True)
    if running:
        return BatchRefusal(BatchRefusalReason.HELD, batch)
    if batch.status in ("writing", "done"):
        return BatchRefusal(BatchRefusalReason.NOT_PAUSED, batch)
    if batch.status == "awaiting_approval" and action is None:
        return BatchRefusal(BatchRefusalReason.NEEDS_ANSWER, batch)
    if batch.status == "sampling" and batch.pause_id is None and action is not None:
        return BatchRefusal(BatchRefusalReason.NOT_PAUSED, batch)
    if batch.status == "sampling" and batch.pause_id is not None and action is None:
        # Abandoned while applying an answer: take it over with that answer.
        action = batch.pending
    if batch.pause_id is not None:
        signature = row.get("signature")
        version = row.get("serialization_version")
        if (
            snapshot is None
            or signature is None
            or version is None
            or not signer.verify(str(batch.pause_id), str(version), snapshot, bytes(signature))
        ):
            return BatchRefusal(BatchRefusalReason.TAMPERED, batch)
    new = dict(row)
    new.update(
        status="sampling",
        pending_json=action.to_json() if action is not None else None,
        claim_token=token,
        claim_expires_at=expires,
        updated_at=now,
    )
    return TakePlan(seal_batch(new, signer), snapshot)


def claim_of_plan(plan: TakePlan, token: str, signer: SnapshotSigner) -> BatchClaim:
    batch = batch_of(plan.row, signer)
    return BatchClaim(
        batch=batch,
        token=token,
        expires=parse_time(plan.row["claim_expires_at"]),
        action=batch.pending,
        snapshot=plan.snapshot,
        serialization_version=plan.row.get("serialization_version"),
    )


def holds_batch(row: Mapping[str, Any] | None, claim: BatchClaim) -> bool:
    return (
        row is not None
        and row.get("status") == "sampling"
        and row.get("claim_token") == claim.token
    )


@dataclass(frozen=True)
class BatchPaused:
    """The sample is written: the automa paused for a person under ``pause_id``."""

    pause_id: str
    snapshot: bytes
    serialization_version: str
    round: int
    guidance: tuple[str, ...]


@dataclass(frozen=True)
class BatchApproved:
    """The person approved the sample: the rest may be written."""


def plan_step(
    row: Mapping[str, Any],
    result: BatchPaused | BatchApproved,
    *,
    now: datetime,
    signer: SnapshotSigner,
) -> tuple[dict[str, Any], bytes | None]:
    """The batch's new row after its holder's step, and the snapshot to store (None: keep
    none — an approved batch has nothing left to resume)."""
    new = dict(row)
    new.update(claim_token=None, claim_expires_at=None, pending_json=None, updated_at=now)
    new["last_error"] = None
    if isinstance(result, BatchPaused):
        new.update(
            status="awaiting_approval",
            pause_id=result.pause_id,
            serialization_version=result.serialization_version,
            round=result.round,
            guidance_json=json_text(list(result.guidance)),
            signature=signer.sign(result.pause_id, result.serialization_version, result.snapshot),
        )
        snapshot: bytes | None = result.snapshot
    else:
        new.update(
            status="writing",
            sample_approved=1,
            pause_id=None,
            serialization_version=None,
            signature=None,
        )
        snapshot = None
    return seal_batch(new, signer), snapshot


def plan_batch_release(
    row: Mapping[str, Any], error: str, *, now: datetime, signer: SnapshotSigner
) -> dict[str, Any]:
    """Give the batch back: paused again if it was (its snapshot untouched), else free for
    the next ``personalize`` to write the sample."""
    new = dict(row)
    status = "awaiting_approval" if row.get("pause_id") is not None else "sampling"
    new.update(
        status=status,
        claim_token=None,
        claim_expires_at=None,
        pending_json=None,
        last_error=bounded(error),
        updated_at=now,
    )
    return seal_batch(new, signer)


def plan_done(row: Mapping[str, Any], *, now: datetime, signer: SnapshotSigner) -> dict[str, Any]:
    new = dict(row)
    new.update(status="done", updated_at=now)
    return seal_batch(new, signer)


def counts_of(rows: Sequence[Mapping[str, Any]]) -> BatchCounts:
    """``SELECT state, COUNT(*), SUM(calls), SUM(tokens) … GROUP BY state`` as counts."""
    found: dict[str, int] = {}
    calls = tokens = 0
    for row in rows:
        found[str(row["state"])] = int(row["n"])
        calls += int(row["calls"] or 0)
        tokens += int(row["tokens"] or 0)
    return BatchCounts(
        pending=found.get("pending", 0),
        claimed=found.get("claimed", 0),
        written=found.get("written", 0),
        skipped=found.get("skipped", 0),
        calls=calls,
        tokens=tokens,
    )
