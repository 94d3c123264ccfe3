"""Reaching the reviewer: where notifications go, what they say, how each is delivered and
retried, and the signed links they carry.

The outbox that stores notifications in the same transaction as the state change they
announce, and the worker that delivers them, build on these modules:

* :mod:`.destinations`: a DEST string → :class:`EmailDestination` and its kin;
* :mod:`.messages`: :class:`Notification` (one event, one run, one destination) →
  :class:`Message` (subject, text, HTML, Slack JSON, webhook body);
* :mod:`.channels`: :func:`deliver` one attempt → :class:`DeliveryResult`;
* :mod:`.schedule`: :class:`RetrySchedule`, when to try again;
* :mod:`.links`: :func:`make_link` / :func:`read_token` / :func:`check_run`.
"""

from __future__ import annotations

from .channels import DeliveryResult, deliver, make_http_client
from .destinations import (
    AppriseDestination,
    Destination,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
    parse_destination,
    parse_destinations,
    require_channels,
)
from .links import LinkClaim, check_run, current_pause, make_link, make_token, read_token
from .messages import (
    EVENTS,
    Event,
    Links,
    Message,
    Notification,
    Outcome,
    SampleNote,
    compose,
    links_for,
)
from .schedule import DEFAULT_SCHEDULE, RetrySchedule

__all__ = [
    "DEFAULT_SCHEDULE",
    "EVENTS",
    "AppriseDestination",
    "DeliveryResult",
    "Destination",
    "EmailDestination",
    "Event",
    "LinkClaim",
    "Links",
    "Message",
    "Notification",
    "Outcome",
    "RetrySchedule",
    "SampleNote",
    "SlackDestination",
    "WebhookDestination",
    "check_run",
    "compose",
    "current_pause",
    "deliver",
    "links_for",
    "make_http_client",
    "make_link",
    "make_token",
    "parse_destination",
    "parse_destinations",
    "read_token",
    "require_channels",
]
