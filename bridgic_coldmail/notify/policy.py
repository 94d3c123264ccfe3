"""Where one run's notifications go: ``COLDMAIL_NOTIFY`` (every run's) and the run's own
``notify=`` destinations, checked at the edge (before any LLM call) and fixed when the run
starts, with the events ``COLDMAIL_NOTIFY_EVENTS`` names."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from ..errors import InvalidInput
from ..signing import json_text
from .destinations import parse_destinations, require_channels

if TYPE_CHECKING:
    from ..settings import Settings

AnnouncedEvent = Literal["run.paused", "run.review", "run.completed", "run.rejected", "run.failed"]
"""The events a state change announces (reminders and deadlines come from the worker)."""
ANNOUNCED_EVENTS: tuple[AnnouncedEvent, ...] = get_args(AnnouncedEvent)


@dataclass(frozen=True)
class NotifyPolicy:
    """Where a run's notifications go and which events are sent, fixed when it starts."""

    destinations: tuple[str, ...]
    """Each destination's canonical DEST (``Destination.value``)."""
    events: tuple[AnnouncedEvent, ...] = ANNOUNCED_EVENTS

    def to_json(self) -> str:
        return json_text({"notify": list(self.destinations), "events": list(self.events)})

    @classmethod
    def from_json(cls, text: str) -> NotifyPolicy:
        data = json.loads(text)
        events = tuple(e for e in data.get("events", ()) if e in ANNOUNCED_EVENTS)
        return cls(tuple(str(d) for d in data["notify"]), events)


def notify_policy(settings: Settings, notify: str | Iterable[str] = ()) -> NotifyPolicy | None:
    """The run's policy: the settings' destinations and ``notify`` (a list of DESTs, or one
    comma-separated string), duplicates dropped; None when there are none.

    Raises:
        InvalidInput: a DEST is malformed, or there are more than 20 in all.
        ConfigurationError: a destination this installation cannot reach (email without
            ``COLDMAIL_SMTP_URL``, a webhook without ``COLDMAIL_WEBHOOK_SECRET``, a missing
            extra).
    """
    if not isinstance(notify, str) and not isinstance(notify, Iterable):
        raise InvalidInput(f"notify takes a list of destinations, not {type(notify).__name__}")
    given = parse_destinations(notify) if notify else ()
    chosen = parse_destinations([d.value for d in (*settings.notify, *given)])
    if not chosen:
        return None
    require_channels(chosen, settings)
    events = settings.notify_events or ANNOUNCED_EVENTS
    return NotifyPolicy(tuple(d.value for d in chosen), events)
