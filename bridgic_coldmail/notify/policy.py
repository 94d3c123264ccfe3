"""Where one run's notifications go and how long it waits: ``COLDMAIL_NOTIFY`` (every run's)
and the run's own ``notify=`` destinations, with the events ``COLDMAIL_NOTIFY_EVENTS`` names,
and its wait policy (a deadline per pause, reminders before it, what the deadline does and
who hears of it), all checked at the edge (before any LLM call) and fixed when the run
starts. The policy is stored with the run under a MAC: a database writer can neither send a
run's messages elsewhere nor make its deadline approve it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..errors import InvalidInput
from ..signing import json_text
from .destinations import parse_destinations, require_channels

if TYPE_CHECKING:
    from ..settings import Settings

AnnouncedEvent = Literal[
    "run.paused",
    "run.review",
    "run.completed",
    "run.rejected",
    "run.failed",
    "batch.sample_ready",
]
"""The events a state change announces (reminders and deadlines come from the worker);
``batch.sample_ready``: a personalization batch's sample waits for approval."""
ANNOUNCED_EVENTS: tuple[AnnouncedEvent, ...] = get_args(AnnouncedEvent)
EVENTS_BEFORE_BATCHES: frozenset[str] = frozenset(ANNOUNCED_EVENTS[:5])
"""Every event a run announced before ``batch.sample_ready`` existed: a policy stored
then (one without :data:`POLICY_FORMAT`) with all of them meant "every event", so it
announces the new one too."""
POLICY_FORMAT = 2
"""Written in every policy stored from ``batch.sample_ready`` on: its ``events`` are exactly
what was chosen, so five events there are a choice to leave the sample out, not "all"."""


OnTimeout = Literal["wait", "proceed", "reject"]
"""What a deadline does: keep waiting (and escalate), go on without the person (refine with
the brief's own audience guess at the audience question; approve the sequence under review
at a review round), or end the run as rejected."""
ON_TIMEOUT: tuple[OnTimeout, ...] = get_args(OnTimeout)

MIN_DURATION = 1.0
MAX_DURATION = 365 * 24 * 3600.0
"""A deadline or a reminder interval is from one second to a year."""
MAX_REMINDERS = 10
"""Reminders sent at one pause, at most (without a deadline, reminding stops there)."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+|\d+(?:\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: str | float | int, *, name: str = "a duration") -> float:
    """Seconds in ``90s``, ``15m``, ``36h``, ``3d``, ``2w``, ``1h30m`` or a plain number of
    seconds, from one second to a year.

    Raises:
        InvalidInput: anything else, saying what is accepted.
    """
    huge = False
    if isinstance(value, bool):
        raise InvalidInput(f"{name} is a duration such as 90s, 36h or 3d, not {value!r}")
    if isinstance(value, int | float):
        # An int past float's range (JSON carries any number of digits) is out of range.
        huge = abs(value) >= 1e300
        seconds = math.inf if huge else float(value)
    else:
        text = str(value).strip().lower()
        if len(text) > 40 or not _DURATION.fullmatch(text):
            raise InvalidInput(
                f"{name} is a duration such as 90s, 15m, 36h, 3d or 1h30m, not {str(value)[:40]!r}"
            )
        parts = _PART.findall(text)
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts) if parts else float(text)
    if not math.isfinite(seconds) or not MIN_DURATION <= seconds <= MAX_DURATION:
        shown = "a number that large" if huge else f"{value!r:.40}"
        raise InvalidInput(f"{name} must be from 1 second to 365 days, not {shown}")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``: the shortest of :func:`parse_duration`'s spellings."""
    left, out = round(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out.append(f"{left // size}{unit}")
            left %= size
    return "".join(out) or "0s"


@dataclass(frozen=True)
class WaitPolicy:
    """How long each pause of a run waits for its person, fixed when the run starts. Each
    pause (the audience question, every review round) gets its own deadline, counted from
    when it paused."""

    respond_within: float | None = None
    """Seconds a pause waits before its deadline; None: no deadline."""
    remind_every: float | None = None
    """Seconds between reminders while a pause waits (before its deadline); None: none."""
    on_timeout: OnTimeout = "wait"
    escalate_to: tuple[str, ...] = ()
    """DESTs told when a deadline passes (``run.escalated``), besides the run's own."""

    def __post_init__(self) -> None:
        if self.on_timeout not in ON_TIMEOUT:
            raise InvalidInput(
                f"the deadline's outcome is one of {', '.join(ON_TIMEOUT)}, "
                f"not {self.on_timeout!r:.40}"
            )
        if self.respond_within is None and (self.on_timeout != "wait" or self.escalate_to):
            what = "--escalate-to" if self.escalate_to else f"--on-timeout {self.on_timeout}"
            raise InvalidInput(
                f"{what} needs a deadline: give --respond-within too (e.g. --respond-within 3d)"
            )
        if (
            self.respond_within is not None
            and self.remind_every is not None
            and self.remind_every >= self.respond_within
        ):
            raise InvalidInput(
                f"--remind-every ({format_duration(self.remind_every)}) must be shorter than "
                f"--respond-within ({format_duration(self.respond_within)}), or no reminder "
                "would ever be sent"
            )

    @property
    def timed(self) -> bool:
        """Whether a pause has anything to fire: a deadline or reminders."""
        return self.respond_within is not None or self.remind_every is not None

    def to_data(self) -> dict[str, Any]:
        return {
            "respond_within": self.respond_within,
            "remind_every": self.remind_every,
            "on_timeout": self.on_timeout,
            "escalate_to": list(self.escalate_to),
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> WaitPolicy:
        return cls(
            respond_within=_optional_seconds(data.get("respond_within")),
            remind_every=_optional_seconds(data.get("remind_every")),
            on_timeout=data.get("on_timeout", "wait"),
            escalate_to=tuple(str(d) for d in data.get("escalate_to") or ()),
        )

    def describe(self) -> str:
        """One line for people: ``answer within 3d, reminded every 1d; then: approve``."""
        if not self.timed:
            return "no deadline"
        parts = []
        if self.respond_within is not None:
            parts.append(f"answer within {format_duration(self.respond_within)}")
        else:
            parts.append("no deadline")
        if self.remind_every is not None:
            parts.append(f"reminded every {format_duration(self.remind_every)}")
        said = ", ".join(parts)
        if self.respond_within is not None:
            said += f"; then {OUTCOME_WORDS[self.on_timeout]}"
        return said


OUTCOME_WORDS: dict[OnTimeout, str] = {
    "wait": "keep waiting (and escalate)",
    "proceed": "go on without an answer",
    "reject": "reject the run",
}


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class NotifyPolicy:
    """Where a run's notifications go, which events are sent and how long each pause
    waits, fixed when it starts."""

    destinations: tuple[str, ...]
    """Each destination's canonical DEST (``Destination.value``)."""
    events: tuple[AnnouncedEvent, ...] = ANNOUNCED_EVENTS
    wait: WaitPolicy = field(default_factory=WaitPolicy)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "notify": list(self.destinations),
            "events": list(self.events),
            "format": POLICY_FORMAT,
        }
        if self.wait.timed:
            data["wait"] = self.wait.to_data()
        return json_text(data)

    @classmethod
    def from_json(cls, text: str) -> NotifyPolicy:
        data = json.loads(text)
        events = tuple(e for e in data.get("events", ()) if e in ANNOUNCED_EVENTS)
        if "format" not in data and set(events) == EVENTS_BEFORE_BATCHES:
            events = ANNOUNCED_EVENTS
        wait = WaitPolicy.from_data(data["wait"]) if data.get("wait") else WaitPolicy()
        return cls(tuple(str(d) for d in data["notify"]), events, wait)


def notify_policy(
    settings: Settings,
    notify: str | Iterable[str] = (),
    *,
    respond_within: str | float | None = None,
    remind_every: str | float | None = None,
    on_timeout: str | None = None,
    escalate_to: str | Iterable[str] = (),
) -> NotifyPolicy | None:
    """The run's policy: the settings' destinations and ``notify`` (a list of DESTs, or one
    comma-separated string), duplicates dropped, and its wait policy (each part given here,
    else the setting's default); None when it notifies nobody and has no deadline nor
    reminders.

    Raises:
        InvalidInput: a DEST or a duration is malformed, there are more than 20
            destinations, or the wait policy does not hold together (an outcome without a
            deadline, reminders no sooner than the deadline).
        ConfigurationError: a destination this installation cannot reach (email without
            ``COLDMAIL_SMTP_URL``, a webhook without ``COLDMAIL_WEBHOOK_SECRET``, a missing
            extra).
    """
    for name, value in (("notify", notify), ("escalate_to", escalate_to)):
        if not isinstance(value, str) and not isinstance(value, Iterable):
            raise InvalidInput(f"{name} takes a list of destinations, not {type(value).__name__}")
    given = parse_destinations(notify) if notify else ()
    chosen = parse_destinations([d.value for d in (*settings.notify, *given)])
    escalated = parse_destinations(escalate_to) if escalate_to else settings.escalate_to
    within = (
        parse_duration(respond_within, name="--respond-within")
        if respond_within is not None
        else settings.respond_within
    )
    every = (
        parse_duration(remind_every, name="--remind-every")
        if remind_every is not None
        else settings.remind_every
    )
    outcome: Any = on_timeout if on_timeout is not None else settings.on_timeout
    wait = WaitPolicy(within, every, outcome, tuple(d.value for d in escalated))
    if not chosen and not wait.timed:
        return None
    require_channels((*chosen, *escalated), settings)
    events = settings.notify_events or ANNOUNCED_EVENTS
    return NotifyPolicy(tuple(d.value for d in chosen), events, wait)
