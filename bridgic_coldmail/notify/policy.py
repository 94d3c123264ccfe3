"""Where one run's notifications go: ``COLDMAIL_NOTIFY`` (every run's) and the run's own
``notify=`` destinations, checked at the edge (before any LLM call) and fixed when the run
starts, with the events ``COLDMAIL_NOTIFY_EVENTS`` names."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InvalidInput
from ..settings import Settings
from ..store.outbox import ANNOUNCED_EVENTS, NotifyPolicy
from .destinations import parse_destinations, require_channels


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
