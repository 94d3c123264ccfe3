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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from ..errors import ConfigurationError
from ..models import RunStatus
from ..notify.destinations import Destination, parse_destination
from ..notify.messages import Event, Notification, SampleNote
from ..notify.policy import (
    ANNOUNCED_EVENTS,
    MAX_REMINDERS,
    ON_TIMEOUT,
    OUTCOME_WORDS,
    AnnouncedEvent,
    NotifyPolicy,
    OnTimeout,
    WaitPolicy,
)
from ..signing import SnapshotSigner, json_text
from .codec import RUN_COLUMNS, iso, parse_time, run_from_row

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
    if policy is None or not (policy.destinations or policy.wait.timed):
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


PAUSE_EVENTS: tuple[AnnouncedEvent, ...] = ("run.paused", "run.review")
"""The events of a pause: each starts the pause's deadline and reminders."""
TIMER_DESTINATION = "coldmail:timer"
"""The destination of a *timer* row: the worker fires it (a reminder, a deadline) instead
of delivering it. Timers live in the outbox so that they are written in the pause's own
transaction and claimed, leased and fenced like every notification."""
TimerKind = Literal["reminder", "deadline"]


@dataclass(frozen=True)
class Timer:
    """A reminder or a deadline of one pause, due at ``due_at``. The worker re-checks all of
    it when it fires: the row verifies (a database writer cannot bring a deadline forward),
    it is due, and the run still waits at ``pause_id``."""

    kind: TimerKind
    interaction_id: str
    pause_id: str
    round: int | None
    """The review round waiting; None at the audience question."""
    n: int
    """The reminder's number (1 for the first); 1 for a deadline."""
    due_at: datetime
    deadline: datetime | None
    """The pause's deadline, if it has one."""
    wait: WaitPolicy

    @property
    def event(self) -> Event:
        return "run.deadline" if self.kind == "deadline" else "run.reminder"

    @property
    def id(self) -> str:
        return Notification.make_id(
            self.interaction_id, self.pause_id, self.event, self.n, TIMER_DESTINATION
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "interaction_id": self.interaction_id,
            "pause_id": self.pause_id,
            "round": self.round,
            "n": self.n,
            "due_at": iso(self.due_at),
            "deadline": iso(self.deadline) if self.deadline else None,
            "wait": self.wait.to_data(),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Timer:
        kind = record["kind"]
        if kind not in ("reminder", "deadline"):
            raise ValueError(f"unknown timer {kind!r}")
        deadline = record.get("deadline")
        return cls(
            kind=kind,
            interaction_id=str(record["interaction_id"]),
            pause_id=str(record["pause_id"]),
            round=record.get("round"),
            n=int(record["n"]),
            due_at=parse_time(record["due_at"]),
            deadline=parse_time(deadline) if deadline else None,
            wait=WaitPolicy.from_data(record["wait"]),
        )

    def row(self, signer: SnapshotSigner, *, now: datetime) -> dict[str, Any]:
        """Its outbox row, due at ``due_at``."""
        record = json_text(self.to_record())
        return {
            "id": self.id,
            "interaction_id": self.interaction_id,
            "event": self.event,
            "destination": TIMER_DESTINATION,
            "record_json": record,
            "mac": notification_mac(signer, self.id, TIMER_DESTINATION, record),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": self.due_at,
            "created_at": now,
        }

    def next_reminder(self) -> Timer | None:
        """The reminder after this one, if one is due before the deadline (and within
        :data:`MAX_REMINDERS`)."""
        every = self.wait.remind_every
        if self.kind != "reminder" or every is None or self.n >= MAX_REMINDERS:
            return None
        due = self.due_at + timedelta(seconds=every)
        if self.deadline is not None and due >= self.deadline:
            return None
        return replace(self, n=self.n + 1, due_at=due)


def pause_timers(
    run_id: str, pause_id: str, round: int | None, wait: WaitPolicy, *, now: datetime
) -> list[Timer]:
    """The timers a pause starts with: its deadline, and its first reminder (each reminder
    plans the next one when it fires, so a pause holds at most two timer rows)."""
    deadline = (
        now + timedelta(seconds=wait.respond_within) if wait.respond_within is not None else None
    )
    timers = []
    if deadline is not None:
        timers.append(Timer("deadline", run_id, pause_id, round, 1, deadline, deadline, wait))
    if wait.remind_every is not None:
        first = now + timedelta(seconds=wait.remind_every)
        if deadline is None or first < deadline:
            timers.append(Timer("reminder", run_id, pause_id, round, 1, first, deadline, wait))
    return timers


def plan_notifications(
    row: Mapping[str, Any],
    event: Event,
    *,
    now: datetime,
    signer: SnapshotSigner,
    n: int = 1,
    timer: Timer | None = None,
    on_timeout: OnTimeout | None = None,
) -> list[dict[str, Any]]:
    """The outbox rows announcing ``event`` of the run ``row`` now is (the row as the
    transaction writes it, with its policy columns): one per destination, none when the run
    notifies nobody or not of this event. A pause (``run.paused``, ``run.review``) also
    starts its timers.

    The events of a timer (``run.reminder``, ``run.deadline``, ``run.escalated``) take the
    ``timer`` that fired, and ``on_timeout``: what the deadline did. ``run.escalated`` goes
    to the policy's ``escalate_to``, the others to the run's destinations.
    """
    policy = read_policy(row, signer)
    if policy is None:
        return []
    run = run_from_row(row)
    wait = policy.wait
    rows: list[dict[str, Any]] = []
    pause_id: str | None
    if timer is not None:
        deadline, pause_id, round = timer.deadline, timer.pause_id, timer.round
        # After a deadline that proceeded or rejected, the pause is gone: no link to answer.
        link_pause = pause_id if on_timeout in (None, "wait") else None
    else:
        round = run.round if run.status is RunStatus.AWAITING_REVIEW else None
        pause_id = run.pause_id if run.status.is_paused else None
        link_pause = pause_id
        deadline = None
        if event in PAUSE_EVENTS and pause_id is not None:
            timers = pause_timers(run.interaction_id, pause_id, round, wait, now=now)
            rows.extend(t.row(signer, now=now) for t in timers)
            deadline = next((t.due_at for t in timers if t.kind == "deadline"), None)
    announced = event not in ANNOUNCED_EVENTS or event in policy.events
    targets = policy.destinations
    if event == "run.escalated":  # a destination of the run's own heard it as run.deadline
        targets = tuple(d for d in wait.escalate_to if d not in policy.destinations)
    if not announced:
        targets = ()
    escalated = _parsed(wait.escalate_to) if event == "run.deadline" else ()
    for destination in _parsed(targets):  # an extra uninstalled since the run started: skipped
        notification = Notification(
            id=Notification.make_id(run.interaction_id, pause_id, event, n, destination.value),
            event=event,
            run=run,
            destination=destination,
            created_at=now,
            pause_id=link_pause,
            deadline=deadline,
            on_timeout=on_timeout or (wait.on_timeout if deadline else None),
            reminder=n if event == "run.reminder" else None,
            escalated_to=escalated,
        )
        rows.append(outbox_row(notification, signer))
    return rows


def outbox_row(notification: Notification, signer: SnapshotSigner) -> dict[str, Any]:
    """The outbox row of ``notification``, due when it was made, MACed."""
    record = json_text(notification.to_record())
    destination = notification.destination.value
    return {
        "id": notification.id,
        "interaction_id": notification.run.interaction_id,
        "event": notification.event,
        "destination": destination,
        "record_json": record,
        "mac": notification_mac(signer, notification.id, destination, record),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": notification.created_at,
        "created_at": notification.created_at,
    }


SAMPLE_EVENT: AnnouncedEvent = "batch.sample_ready"


def sample_pause_key(batch_id: str) -> str:
    """What stands for the pause in a sample notification's id: the batch (with the round
    as ``n``), so that each round of a batch's sample is announced once per destination,
    however often the step that paused it is tried."""
    return f"batch:{batch_id}"


def plan_sample_notifications(
    run_row: Mapping[str, Any] | None,
    batch_row: Mapping[str, Any],
    written: int,
    *,
    now: datetime,
    signer: SnapshotSigner,
) -> list[dict[str, Any]]:
    """The outbox rows announcing that a batch's sample waits for approval
    (``batch.sample_ready``): one per destination of the batch's run (``run_row``, read in
    the transaction that pauses the sample, with its policy columns); none when the run
    notifies nobody, not of this event, or its policy does not verify. ``batch_row`` is
    the batch as the pause leaves it; ``written``: its sample lines written. No timers: a
    run's deadline and reminders are for the run's own pauses."""
    if run_row is None:
        return []
    policy = read_policy(run_row, signer)
    if policy is None or SAMPLE_EVENT not in policy.events:
        return []
    sample = SampleNote.of(
        str(batch_row["batch_id"]),
        int(batch_row["round"]),
        written,
        int(batch_row["lead_count"]),
        tuple(str(g) for g in json.loads(str(batch_row["guidance_json"]))),
    )
    run = run_from_row(run_row)
    rows = []
    for destination in _parsed(policy.destinations):  # as in plan_notifications
        notification = Notification(
            id=Notification.make_id(
                run.interaction_id,
                sample_pause_key(sample.batch_id),
                SAMPLE_EVENT,
                sample.round,
                destination.value,
            ),
            event=SAMPLE_EVENT,
            run=run,
            destination=destination,
            created_at=now,
            sample=sample,
        )
        rows.append(outbox_row(notification, signer))
    return rows


def _parsed(values: Sequence[str]) -> tuple[Destination, ...]:
    found = []
    for value in values:
        try:
            found.append(parse_destination(value))
        except Exception:
            continue
    return tuple(found)


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
    timer: Timer | None = None
    """The reminder or deadline to fire, when the row is a timer (``notification`` is None
    then, and so is ``problem`` when it verifies)."""


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
    timer: Timer | None = None
    """For a timer row (a reminder or a deadline, ``destination`` ``timer``): what it
    fires and when. Its status reads ``pending`` (not fired yet), ``delivered`` (fired, or
    not needed: ``last_error`` says which) or ``failed``."""

    @property
    def state(self) -> str:
        """Its state in words: a notification's status; a timer's ``due``, ``fired``,
        ``not needed`` (its pause was answered first) or ``failed``."""
        if self.timer is None and self.destination != "timer":
            return self.status
        if self.status == "delivered" and self.last_error:
            return "not needed"
        return {"pending": "due", "delivered": "fired", "failed": "failed"}[self.status]

    def to_public_dict(self) -> dict[str, Any]:
        timer = self.timer
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
            "timer": None
            if timer is None
            else {
                "kind": timer.kind,
                "due_at": iso(timer.due_at),
                "round": timer.round,
                "on_timeout": timer.wait.on_timeout if timer.kind == "deadline" else None,
            },
        }


@dataclass(frozen=True)
class WaitState:
    """What a waiting run's person has left: the current pause's deadline and what it does
    then, the next reminder, and the reminders sent at this pause (from its timer rows)."""

    deadline: datetime | None = None
    on_timeout: str | None = None
    next_reminder: datetime | None = None
    reminders_sent: int = 0

    @property
    def timed(self) -> bool:
        return (
            self.deadline is not None or self.next_reminder is not None or bool(self.reminders_sent)
        )

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "deadline": _iso_or_none(self.deadline),
            "on_timeout": self.on_timeout,
            "next_reminder": _iso_or_none(self.next_reminder),
            "reminders_sent": self.reminders_sent,
        }

    def describe(self) -> str:
        """One line for people: ``deadline 2026-12-03 10:00 UTC, then reject the run · …``."""
        parts = []
        if self.deadline is not None:
            then = OUTCOME_WORDS[self.on_timeout if self.on_timeout in ON_TIMEOUT else "wait"]
            parts.append(f"deadline {self.deadline:%Y-%m-%d %H:%M} UTC, then {then}")
        if self.next_reminder is not None:
            parts.append(f"next reminder {self.next_reminder:%Y-%m-%d %H:%M} UTC")
        if self.reminders_sent:
            parts.append(f"{self.reminders_sent} reminder(s) sent")
        return " · ".join(parts)


def wait_state(pause_id: str | None, deliveries: Sequence[Delivery]) -> WaitState:
    """The wait of the pause ``pause_id`` (a run's current one; None: the run waits for
    nobody) from the run's deliveries (:meth:`RunStore.notifications`)."""
    if pause_id is None:
        return WaitState()
    pending = {
        d.timer.kind: d.timer
        for d in deliveries
        if d.timer is not None and d.timer.pause_id == pause_id and d.status == "pending"
    }
    deadline = pending.get("deadline")
    reminder = pending.get("reminder")
    sent = sum(
        1
        for d in deliveries
        if d.timer is not None
        and d.timer.pause_id == pause_id
        and d.timer.kind == "reminder"
        and d.status == "delivered"
        and not d.last_error
    )
    return WaitState(
        deadline=deadline.due_at if deadline else None,
        on_timeout=deadline.wait.on_timeout if deadline else None,
        next_reminder=reminder.due_at if reminder else None,
        reminders_sent=sent,
    )


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
    if row["destination"] == TIMER_DESTINATION:
        try:
            timer = Timer.from_record(json.loads(row["record_json"]))
        except Exception as exc:  # a release that cannot read it
            return OutboxClaim(
                **base, notification=None, problem=f"it cannot be read ({type(exc).__name__})"
            )
        return OutboxClaim(**base, notification=None, timer=timer)
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
    verified = verified_row(row, signer)
    timer = None
    if verified and row["destination"] == TIMER_DESTINATION:
        try:
            timer = Timer.from_record(json.loads(row["record_json"]))
        except Exception:
            timer = None
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
        verified=verified,
        timer=timer,
    )


def display_destination(value: str) -> str:
    """A stored DEST as it may be shown: its display form, never the URL."""
    from ..notify.destinations import _url_display, parse_destination

    if value == TIMER_DESTINATION:
        return "timer"
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
    def delivered(cls, note: str | None = None) -> OutboxOutcome:
        """Delivered (a timer: fired, or ``note`` says why it was not needed)."""
        return cls("delivered", note)

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


# ------------------------------------------------------------------ "due soonest"


@dataclass(frozen=True)
class DueRun:
    """A run as the inbox's "due soonest" order lists it, with its current pause's deadline."""

    run: Any
    """The :data:`~bridgic_coldmail.models.ListedRun` (a ``DamagedRun`` when it cannot be
    shown)."""
    deadline: Timer | None
    """The pending deadline of the pause the run waits at; None when it has none (or its
    row does not verify: it is then listed where its row sorts it, without a deadline)."""


DEADLINE_ORDER_STATUSES = (RunStatus.AWAITING_FEEDBACK.value, RunStatus.AWAITING_REVIEW.value)
"""The statuses whose runs wait at a pause, so may have a deadline pending."""
DUE_COLUMNS = ("timer_id", "timer_record", "timer_mac")
"""The deadline row's columns a "due soonest" row carries beside the run's."""


@dataclass(frozen=True)
class DueSoonestSql:
    """The statements of :meth:`RunStore.list_due_soonest`, for one backend's table names
    and parameter mark.

    A pause's deadline row stays ``pending`` after the pause was answered (the worker finds
    it not needed when it falls due), so the deadline of the pause a run waits at is its
    *newest* deadline row — every pause of a run with a deadline gets one when it pauses —
    and it counts only while that row is pending and the run waits. The rows are found
    through ``notifications_due`` (status, due time) in due order; "newest" is a look at
    ``notifications_by_run``. No JSON is read in SQL: an unreadable row can neither fail
    the query nor be shown as a deadline (its MAC is checked in Python).
    """

    with_deadline: str
    """Runs with a deadline pending, soonest first: params :meth:`params` + limit, offset."""
    count_with_deadline: str
    """How many runs :attr:`with_deadline` lists in all: params :meth:`params`."""
    without_deadline: str
    """The other runs, newest first: params :meth:`params` + limit, offset."""
    status: RunStatus | None

    @classmethod
    def build(
        cls, *, runs: str, notifications: str, mark: str, status: RunStatus | None
    ) -> DueSoonestSql:
        paused = ", ".join(f"'{s}'" for s in DEADLINE_ORDER_STATUSES)
        current = (
            f"d.destination = {mark} AND d.event = 'run.deadline' AND d.status = 'pending' "
            f"AND NOT EXISTS (SELECT 1 FROM {notifications} later "
            "WHERE later.interaction_id = d.interaction_id "
            f"AND later.destination = {mark} AND later.event = 'run.deadline' "
            "AND (later.created_at > d.created_at "
            "OR (later.created_at = d.created_at AND later.id > d.id)))"
        )
        of_status = f" AND r.status = {mark}" if status is not None else ""
        columns = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        joined = (
            f"FROM {notifications} d JOIN {runs} r ON r.interaction_id = d.interaction_id "
            f"WHERE {current} AND r.status IN ({paused}){of_status}"
        )
        return cls(
            with_deadline=(
                f"SELECT {columns}, d.id AS timer_id, d.record_json AS timer_record, "
                f"d.mac AS timer_mac {joined} "
                f"ORDER BY d.next_attempt_at, d.id LIMIT {mark} OFFSET {mark}"
            ),
            count_with_deadline=f"SELECT COUNT(*) AS n {joined}",
            without_deadline=(
                f"SELECT {columns} FROM {runs} r WHERE NOT (r.status IN ({paused}) "
                f"AND EXISTS (SELECT 1 FROM {notifications} d "
                f"WHERE d.interaction_id = r.interaction_id AND {current})){of_status} "
                f"ORDER BY r.created_at DESC, r.interaction_id DESC LIMIT {mark} OFFSET {mark}"
            ),
            status=status,
        )

    def params(self) -> list[Any]:
        """The parameters every statement starts with (the timer destination twice, then
        the status when one is asked)."""
        status = [self.status.value] if self.status is not None else []
        return [TIMER_DESTINATION, TIMER_DESTINATION, *status]


def due_deadline(row: Mapping[str, Any], signer: SnapshotSigner) -> Timer | None:
    """The deadline a "due soonest" row carries, if its row verifies, reads as a deadline
    and belongs to the pause the run waits at."""
    if row.get("timer_id") is None:
        return None
    verifies = {
        "id": row["timer_id"],
        "destination": TIMER_DESTINATION,
        "record_json": row["timer_record"],
        "mac": row["timer_mac"],
    }
    if not verified_row(verifies, signer):
        return None
    try:
        timer = Timer.from_record(json.loads(str(row["timer_record"])))
    except Exception:
        return None
    if timer.kind != "deadline" or timer.pause_id != row.get("pause_id"):
        return None
    return timer


Fetch = Callable[[str, list[Any]], Awaitable[Sequence[Mapping[str, Any]]]]
"""Runs one statement with its parameters and returns its rows."""


async def page_due_soonest(
    fetch: Fetch, sql: DueSoonestSql, *, limit: int, offset: int
) -> list[Mapping[str, Any]]:
    """One page of the "due soonest" order: the runs with a deadline, then the others.
    ``fetch(statement, params)`` returns a statement's rows (as mappings)."""
    first = list(await fetch(sql.with_deadline, [*sql.params(), limit, offset]))
    if len(first) == limit:
        return first
    if first:
        with_deadline = offset + len(first)
    else:
        counted = await fetch(sql.count_with_deadline, sql.params())
        with_deadline = int(counted[0]["n"])
    rest_offset = max(0, offset - with_deadline)
    rest = await fetch(sql.without_deadline, [*sql.params(), limit - len(first), rest_offset])
    return [*first, *rest]
