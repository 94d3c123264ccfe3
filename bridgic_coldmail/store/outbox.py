"""The notifications outbox, shared by both backends: what a run's pause writes beside it,
and what a worker claims, delivers and records.

A run started with destinations keeps them as its *notify policy* (the run's
``policy_json``, MACed with the run's id: a database writer cannot point a run's messages
somewhere else). Each state change a reviewer hears about — paused for audience feedback,
a review round waiting, completed, rejected, failed — writes one row per destination into
``notifications`` in the **same transaction** as the change, with one multi-row ``INSERT``
(no statement at all when the run notifies nobody). A row's id is derived from the run,
the pause, the event and the destination (``Notification.make_id``) and is the table's
primary key, written with ``ON CONFLICT DO NOTHING``: the same event can never be queued
twice. Each row is MACed over what it will say and where it goes, so a row a database
writer made or edited is never delivered (it is marked failed instead).

Workers claim due rows with a lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: one
``UPDATE … RETURNING`` under ``BEGIN IMMEDIATE``), commit, deliver outside any
transaction, then record the outcome fenced by the lease token, so a worker whose lease ran
out cannot overwrite a newer attempt. A worker killed mid-delivery leaves its rows leased;
they come back when the lease ends, and the receiver sees the same id again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from ..errors import ConfigurationError
from ..notify.destinations import parse_destination
from ..notify.messages import Notification
from ..notify.policy import AnnouncedEvent, NotifyPolicy
from ..signing import SnapshotSigner, json_text
from .codec import iso, parse_time, run_from_row

POLICY_DOMAIN = b"bridgic-coldmail notify policy v1"
NOTIFICATION_DOMAIN = b"bridgic-coldmail notification v1"
NOTIFICATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a notification id looks like (``Notification.make_id`` makes UUIDs)."""
MAX_ERROR_CHARS = 500
"""A delivery's last error is cut at this many characters."""

NotificationStatus = Literal["pending", "delivered", "failed"]
NOTIFICATION_STATUSES: tuple[NotificationStatus, ...] = get_args(NotificationStatus)
NOTIFICATION_COLUMNS = (
    "id",
    "interaction_id",
    "event",
    "destination",
    "record_json",
    "mac",
    "status",
    "attempts",
    "next_attempt_at",
    "lease_token",
    "lease_until",
    "last_error",
    "created_at",
    "delivered_at",
)
INSERTED_COLUMNS = NOTIFICATION_COLUMNS[:9] + ("created_at",)
"""The columns an enqueue writes (the rest start empty)."""


def seal_policy(
    signer: SnapshotSigner, interaction_id: str, policy: NotifyPolicy | None
) -> tuple[str | None, bytes | None]:
    """The run's ``policy_json`` and ``policy_mac`` columns (both None: nobody notified)."""
    if policy is None or not policy.destinations:
        return None, None
    text = policy.to_json()
    return text, signer.mac_values(POLICY_DOMAIN, [interaction_id, text])


def read_policy(row: Mapping[str, Any], signer: SnapshotSigner) -> NotifyPolicy | None:
    """The run's policy if it has one and it verifies; None otherwise (an altered policy
    notifies nobody: its destinations may be anyone's)."""
    text = row.get("policy_json")
    if text is None:
        return None
    mac = row.get("policy_mac")
    expected = signer.mac_values(POLICY_DOMAIN, [str(row["interaction_id"]), str(text)])
    if mac is None or not signer.check_mac(bytes(mac), expected):
        return None
    try:
        return NotifyPolicy.from_json(str(text))
    except (ValueError, KeyError, TypeError):
        return None


def plan_notifications(
    row: Mapping[str, Any],
    event: AnnouncedEvent,
    *,
    now: datetime,
    signer: SnapshotSigner,
    n: int = 1,
) -> list[dict[str, Any]]:
    """The outbox rows announcing ``event`` of the run ``row`` now is (the row as the
    transaction writes it, with its policy columns): one per destination, none when the run
    notifies nobody or not of this event."""
    policy = read_policy(row, signer)
    if policy is None or event not in policy.events:
        return []
    run = run_from_row(row)
    pause_id = run.pause_id if run.status.is_paused else None
    rows = []
    for value in policy.destinations:
        try:
            destination = parse_destination(value)
        except Exception:  # an extra uninstalled since the run started: kept, shown failed
            continue
        notification = Notification(
            id=Notification.make_id(run.interaction_id, pause_id, event, n, destination.value),
            event=event,
            run=run,
            destination=destination,
            created_at=now,
            pause_id=pause_id,
        )
        record = json_text(notification.to_record())
        rows.append(
            {
                "id": notification.id,
                "interaction_id": run.interaction_id,
                "event": event,
                "destination": destination.value,
                "record_json": record,
                "mac": notification_mac(signer, notification.id, destination.value, record),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    return rows


def notification_mac(signer: SnapshotSigner, id: str, destination: str, record: str) -> bytes:
    return signer.mac_values(NOTIFICATION_DOMAIN, [id, destination, record])


def insert_values(rows: Sequence[Mapping[str, Any]], *, as_text: bool) -> list[Any]:
    """The rows' values in :data:`INSERTED_COLUMNS` order (``as_text``: times as ISO text,
    as SQLite stores them)."""
    out: list[Any] = []
    for row in rows:
        for name in INSERTED_COLUMNS:
            value = row[name]
            out.append(iso(value) if as_text and isinstance(value, datetime) else value)
    return out


def insert_statement(table: str, count: int, mark: str) -> str:
    """One multi-row ``INSERT … ON CONFLICT (id) DO NOTHING`` of ``count`` rows."""
    one = "(" + ", ".join(mark for _ in INSERTED_COLUMNS) + ")"
    return (
        f"INSERT INTO {table} ({', '.join(INSERTED_COLUMNS)}) VALUES "
        f"{', '.join(one for _ in range(count))} ON CONFLICT (id) DO NOTHING"
    )


@dataclass(frozen=True)
class OutboxClaim:
    """A notification a worker holds for one delivery attempt."""

    id: str
    token: str
    attempts: int
    """This attempt's number (1 for the first)."""
    notification: Any
    """The :class:`~bridgic_coldmail.notify.Notification` to deliver; None when the row does
    not verify or cannot be read (see ``problem``): it must not be delivered."""
    problem: str | None = None
    retryable: bool = False
    """The problem is this installation's (an extra not installed): try again later."""


@dataclass(frozen=True)
class Delivery:
    """One notification's delivery state, for people (no secret in it)."""

    id: str
    interaction_id: str
    event: str
    destination: str
    """The destination's display form (``https://host/… (3f9c2a)``), never its URL."""
    status: NotificationStatus
    attempts: int
    next_attempt_at: datetime | None
    """When the next attempt is due (pending only)."""
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    verified: bool
    """False: the row was made or edited outside bridgic-coldmail (never delivered)."""

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "interaction_id": self.interaction_id,
            "event": self.event,
            "destination": self.destination,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": _iso_or_none(self.next_attempt_at),
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "delivered_at": _iso_or_none(self.delivered_at),
            "verified": self.verified,
        }


def _iso_or_none(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None


def verified_row(row: Mapping[str, Any], signer: SnapshotSigner) -> bool:
    mac = row.get("mac")
    try:
        expected = notification_mac(
            signer, str(row["id"]), str(row["destination"]), str(row["record_json"])
        )
    except (TypeError, KeyError):
        return False
    return mac is not None and signer.check_mac(bytes(mac), expected)


def claim_of(row: Mapping[str, Any], signer: SnapshotSigner) -> OutboxClaim:
    """The :class:`OutboxClaim` of a row a worker just leased."""
    from ..notify.messages import Notification

    base = {"id": str(row["id"]), "token": str(row["lease_token"]), "attempts": row["attempts"]}
    if not verified_row(row, signer):
        return OutboxClaim(
            **base,
            notification=None,
            problem="it was made or changed outside bridgic-coldmail; not delivered",
        )
    try:
        notification = Notification.from_record(json.loads(row["record_json"]))
    except ConfigurationError as exc:  # an extra uninstalled since it was queued
        return OutboxClaim(**base, notification=None, problem=str(exc), retryable=True)
    except Exception as exc:  # a release that cannot read it
        return OutboxClaim(
            **base, notification=None, problem=f"it cannot be read ({type(exc).__name__})"
        )
    return OutboxClaim(**base, notification=notification)


def delivery_of(row: Mapping[str, Any], signer: SnapshotSigner) -> Delivery:
    """A row as people see it."""
    found = str(row["status"])
    status: NotificationStatus = "failed"
    for known in NOTIFICATION_STATUSES:
        if found == known:
            status = known
    return Delivery(
        id=str(row["id"]),
        interaction_id=str(row["interaction_id"]),
        event=str(row["event"]),
        destination=display_destination(str(row["destination"])),
        status=status,
        attempts=int(row["attempts"]),
        next_attempt_at=parse_time(row["next_attempt_at"]) if status == "pending" else None,
        last_error=row.get("last_error"),
        created_at=parse_time(row["created_at"]),
        delivered_at=parse_time(row["delivered_at"]) if row.get("delivered_at") else None,
        verified=verified_row(row, signer),
    )


def display_destination(value: str) -> str:
    """A stored DEST as it may be shown: its display form, never the URL."""
    from ..notify.destinations import _url_display, parse_destination

    try:
        return parse_destination(value).display
    except Exception:
        return _url_display(value) if "://" in value else "(unreadable destination)"


def bounded_error(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.replace("\x00", " ").split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class OutboxOutcome:
    """What a delivery attempt leaves a notification as."""

    status: NotificationStatus
    """``delivered``; ``pending``: try again in ``retry_in`` seconds; ``failed``: for good."""
    error: str | None = None
    retry_in: float = 0.0

    @classmethod
    def delivered(cls) -> OutboxOutcome:
        return cls("delivered")

    @classmethod
    def retry(cls, error: str, retry_in: float) -> OutboxOutcome:
        return cls("pending", error, max(0.0, retry_in))

    @classmethod
    def failed(cls, error: str) -> OutboxOutcome:
        return cls("failed", error)


def event_of_result(result: Any) -> AnnouncedEvent:
    """The event a completed step announces (``Paused`` or ``Finished``)."""
    from ..models import RunStatus
    from .protocol import Paused

    if isinstance(result, Paused):
        return "run.review"
    return "run.completed" if result.status is RunStatus.COMPLETED else "run.rejected"
