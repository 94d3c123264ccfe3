"""``coldmail worker`` and ``coldmail notifications``: delivering the outbox, and showing
(and retrying) what was delivered. Destinations are always shown in their display form
(``https://host/… (3f9c2a)``), never with a URL's token or password."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence

from ..agent import ColdMailAgent
from ..errors import InvalidInput
from ..models import validate_interaction_id
from ..settings import Settings
from ..store import connect_store
from ..store.outbox import NOTIFICATION_ID, Delivery, Timer
from ..text import terminal_safe
from .render import json_for_terminal

MAX_LISTED = 1000


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``worker`` and ``notifications`` with the CLI's ``command(name, help, json)``."""
    worker = command(
        "worker",
        "deliver the notifications waiting in the outbox, and fire due reminders and deadlines",
        False,
    )
    worker.add_argument(
        "--once",
        action="store_true",
        help="deliver and fire what is due now, then exit (for cron and tests)",
    )
    listing = command(
        "notifications",
        "list notification deliveries (all, or one run's); `notifications retry ID` "
        "queues a failed one again",
    )
    listing.add_argument(
        "target",
        nargs="*",
        metavar="ID",
        help="a run's interaction id; or `retry NOTIFICATION_ID`",
    )
    listing.add_argument(
        "--limit", type=int, default=50, help=f"at most this many (1-{MAX_LISTED})"
    )


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """``coldmail worker``: until SIGTERM or Ctrl-C (then the deliveries in flight finish),
    or, with ``--once``, until nothing is due."""
    return asyncio.run(_worker(args.once, settings))


async def _worker(once: bool, settings: Settings) -> int:
    from ..delivery import timed_worker

    store = await connect_store(settings, missing="defer")
    try:
        worker, runner = timed_worker(store, settings, report=_say)
        if once:
            await worker.run_once()
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            _say(f"Delivering notifications from {store.location} (Ctrl-C or SIGTERM to stop)")
            await worker.run(stop)
        stats = worker.stats
        _say(
            f"{stats.delivered} delivered, {stats.retried} to be tried again, "
            f"{stats.failed} failed"
            + (f", {stats.lost} lost to another worker" if stats.lost else "")
            + (f"; {stats.timers} reminders and deadlines fired" if stats.timers else "")
            + "."
        )
        await runner.aclose()
    finally:
        await store.close()
    return 0


def check_notifications_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments before the database is opened."""
    target: Sequence[str] = args.target
    retry = len(target) == 2 and target[0] == "retry"
    if len(target) > 1 and not retry:
        raise InvalidInput(
            "give one run's id, or `retry NOTIFICATION_ID` (see `coldmail notifications -h`)"
        )
    if retry:
        notification_id = target[1]
        if not NOTIFICATION_ID.fullmatch(notification_id):
            raise InvalidInput(
                "a notification id is 1 to 64 letters, digits, '-' or '_' (as "
                "`coldmail notifications` lists them)"
            )
    if len(target) == 1:
        validate_interaction_id(target[0])
    if not 1 <= args.limit <= MAX_LISTED:
        raise InvalidInput(f"--limit must be between 1 and {MAX_LISTED}")


async def notifications_command(args: argparse.Namespace, agent: ColdMailAgent) -> str:
    """``coldmail notifications [ID]`` and ``coldmail notifications retry NOTIFICATION_ID``."""
    target: Sequence[str] = args.target
    if len(target) == 2:
        found = await agent.retry_notification(target[1])
        if args.json:
            return json_for_terminal(found.to_public_dict())
        if found.status == "pending" and found.attempts == 0:
            return f"Queued again: {format_delivery(found)}"
        return (
            f"Only a failed notification can be retried; this one is {found.status}: "
            f"{format_delivery(found)}"
        )
    run_id = target[0] if target else None
    deliveries = await agent.notifications(run_id, limit=args.limit)
    if args.json:
        return json_for_terminal([d.to_public_dict() for d in deliveries])
    if not deliveries:
        return "No notifications" + (f" for run {run_id}." if run_id else ".")
    return "\n".join(format_delivery(d) for d in deliveries)


def format_delivery(delivery: Delivery) -> str:
    """One line per notification: id, state, event, run, destination, attempts, next try,
    last error."""
    timer = delivery.timer
    if timer is not None:
        return _format_timer(delivery, timer)
    parts = [
        delivery.id,
        delivery.status,
        delivery.event,
        f"run {delivery.interaction_id}",
        f"to {delivery.destination}",
        f"{delivery.attempts} attempt(s)",
    ]
    if delivery.status == "pending" and delivery.next_attempt_at is not None:
        parts.append(f"next {delivery.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC")
    if delivery.delivered_at is not None:
        parts.append(f"delivered {delivery.delivered_at:%Y-%m-%d %H:%M:%S} UTC")
    if not delivery.verified:
        parts.append("ALTERED outside bridgic-coldmail: never delivered")
    if delivery.last_error and delivery.status != "delivered":
        parts.append(f"last error: {delivery.last_error}")
    return terminal_safe(" · ".join(parts))


def _format_timer(delivery: Delivery, timer: Timer) -> str:
    """A reminder or deadline: when it is due, what it does, what became of it."""
    what = f"reminder {timer.n}" if timer.kind == "reminder" else "deadline"
    if timer.kind == "deadline":
        what += f" (then {timer.wait.on_timeout})"
    parts = [
        delivery.id,
        f"timer {delivery.state}",
        what,
        f"run {delivery.interaction_id}",
        f"at {timer.due_at:%Y-%m-%d %H:%M:%S} UTC",
    ]
    if delivery.last_error and delivery.status != "pending":
        parts.append(delivery.last_error)
    elif delivery.last_error:
        parts.append(f"last error: {delivery.last_error}")
    return terminal_safe(" · ".join(parts))


def format_deliveries(deliveries: Sequence[Delivery]) -> str:
    """The deliveries section of ``coldmail show`` (shown when the run notifies anyone)."""
    return "\n".join(["NOTIFICATIONS", *(format_delivery(d) for d in deliveries)])


def deliveries_json(deliveries: Sequence[Delivery]) -> str:
    return json.dumps([d.to_public_dict() for d in deliveries])


def _say(line: str) -> None:
    print(terminal_safe(line), flush=True, file=sys.stdout)
