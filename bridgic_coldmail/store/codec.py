"""Rows as runs and events: which columns each MAC covers, and decoding them.

:func:`decode_row` turns a row into a :class:`Run` after checking its MAC, or into a
:class:`DamagedRun` that says what is wrong; :func:`row_mac_values` and
:func:`event_mac_values` say exactly which columns each MAC covers.

What the MACs do and do not promise: a database writer without the key cannot get a
snapshot loaded that this installation did not write, nor show text it did not write. They
can delete runs or history, and can roll a run back to an earlier genuine state of itself
by restoring an old copy of its row and events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from ..models import (
    STORED,
    Brief,
    DamagedRun,
    EmailSequence,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
)
from ..signing import MacValue, SnapshotSigner, is_v2_signature
from .protocol import Refusal, RefusalReason


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


_PLAIN = frozenset({str, int, bytes, type(None)})


def _mac_value(value: Any) -> MacValue:
    if type(value) in _PLAIN:  # the common case, in one test
        return value  # type: ignore[no-any-return]
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


def run_from_row(
    row: Mapping[str, Any],
    *,
    verified: bool = True,
    brief: Brief | None = None,
    draft: EmailSequence | None = None,
) -> Run:
    """Build the :class:`Run` (no MAC check: use :func:`decode_row`). ``brief`` and
    ``draft``: the objects the row's JSON was just written from (spares parsing it again)."""
    status = RunStatus(row["status"])
    sequence_json = row.get("sequence_json")
    sequence = (
        EmailSequence.model_validate_json(sequence_json, context=STORED) if sequence_json else None
    )
    fields_json = row.get("fields_json")
    return Run(
        interaction_id=row["interaction_id"],
        status=status,
        brief=brief or Brief.model_validate_json(row["brief_json"], context=STORED),
        draft=draft or EmailSequence.model_validate_json(row["draft_json"], context=STORED),
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
