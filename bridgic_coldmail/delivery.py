"""The worker that empties the outbox: claims due notifications with a lease, delivers each
through :func:`.notify.channels.deliver`, and records what happened by the retry schedule.

Any number of workers may run against one store (``coldmail worker`` on several hosts, one
inside each ``coldmail serve``): a notification is leased to one of them at a time, and a
worker that outlives its lease cannot record over the next one's attempt (fencing). A worker
killed mid-delivery leaves its notifications leased; another worker (or the same one,
restarted) delivers them once the lease ends, with the same id, so receivers that saw the
first attempt drop the second. Stopping (SIGTERM, Ctrl-C) claims nothing more and finishes
the deliveries in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .deadlines import DeadlineKeeper
from .errors import ConfigurationError, StoreError
from .notify.channels import DeliveryResult, deliver, make_http_client
from .notify.schedule import DEFAULT_SCHEDULE, RetrySchedule
from .store.outbox import OutboxClaim, OutboxOutcome

if TYPE_CHECKING:
    from ._runner import Runner
    from .settings import Settings
    from .store import RunStore

DEFAULT_BATCH = 10
"""Notifications claimed (and delivered concurrently) at once."""
DEFAULT_POLL_SECONDS = 2.0
"""How often an idle worker looks for due notifications (no LISTEN: PgBouncer's
transaction pooling has none)."""
LEASE_MARGIN_SECONDS = 10.0


def lease_for(settings: Settings) -> float:
    """A lease outlasting one attempt (``COLDMAIL_NOTIFY_TIMEOUT``, which bounds it as a
    whole) and the store calls around it."""
    return 2 * settings.notify_timeout + LEASE_MARGIN_SECONDS


@dataclass
class WorkerStats:
    """What a worker did, for its report and for tests."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0
    """Attempts whose lease ran out before their outcome was recorded."""
    timers: int = 0
    """Reminders and deadlines fired (or found not needed)."""

    @property
    def attempts(self) -> int:
        return self.delivered + self.retried + self.failed + self.lost


@dataclass
class Worker:
    """Delivers one store's outbox. ``await worker.run_once()`` does what is due now;
    ``await worker.run(stop)`` keeps going until ``stop`` is set."""

    store: RunStore
    settings: Settings
    schedule: RetrySchedule = DEFAULT_SCHEDULE
    batch: int = DEFAULT_BATCH
    poll_seconds: float = DEFAULT_POLL_SECONDS
    lease_seconds: float | None = None
    keeper: DeadlineKeeper | None = None
    """Fires reminders and deadlines; by default one that cannot apply outcomes that need
    a runner (``proceed``, ``reject``): give ``DeadlineKeeper(store, runner.apply)``."""
    report: Callable[[str], None] | None = None
    """Called with one line per attempt (no secret in it)."""
    rng: random.Random = field(default_factory=random.Random)
    stats: WorkerStats = field(default_factory=WorkerStats)

    async def run_once(self) -> int:
        """Deliver every notification due now (those that fail again are left for later);
        returns the number of attempts made."""
        made = 0
        async with _HttpClient(self.settings) as client:
            while True:
                fired = self.stats.timers
                done = await self._deliver_batch(client)
                made += done
                # A timer that fired queued messages due now: deliver them in this pass too.
                if done < self.batch and self.stats.timers == fired:
                    return made

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a batch in flight is always finished first. The
        store out of reach for a while (locked, restarting, the network down) is waited
        out: the worker says so and tries again at its next poll."""
        async with _HttpClient(self.settings) as client:
            while not stop.is_set():
                fired = self.stats.timers
                try:
                    done = await self._deliver_batch(client)
                except StoreError as exc:
                    self._say(f"the store is out of reach ({exc}); trying again")
                    done = 0
                if done >= self.batch or self.stats.timers != fired:
                    continue
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
                except asyncio.TimeoutError:
                    pass

    async def _deliver_batch(self, client: Any) -> int:
        lease = self.lease_seconds if self.lease_seconds is not None else lease_for(self.settings)
        claims = await self.store.claim_notifications(self.batch, lease)
        if claims:
            # Shielded: a cancelled worker still records what it delivered.
            await asyncio.shield(
                asyncio.gather(*(self._deliver(claim, client) for claim in claims))
            )
        return len(claims)

    async def _deliver(self, claim: OutboxClaim, client: Any) -> None:
        notification = claim.notification
        if claim.timer is not None:
            timer = claim.timer
            shown = f"{timer.kind} {timer.n} of run {timer.interaction_id}"
            if timer.kind == "deadline":
                shown = f"the deadline of run {timer.interaction_id}"
            keeper = self.keeper or DeadlineKeeper(self.store)
            try:
                outcome, said = await keeper.fire(timer)
            except Exception as exc:  # the LLM gave up, the store is out of reach: again later
                outcome = self._outcome(claim, DeliveryResult.retry(f"{type(exc).__name__}: {exc}"))
                said = f"could not fire: {outcome.error}"
            self._say(f"{shown}: {said}")
        elif notification is None:
            shown = f"notification {claim.id}"
            problem = f"{shown}: {claim.problem}"
            outcome = (
                self._outcome(claim, DeliveryResult.retry(problem))
                if claim.retryable
                else OutboxOutcome.failed(problem)
            )
        else:
            shown = (
                f"{notification.event} of run {notification.run.interaction_id} to "
                f"{notification.destination.display}"
            )
            try:
                result = await deliver(
                    notification,
                    self.settings,
                    http_client=client,
                    signer=await self.store.signer(),
                )
            except Exception as exc:  # a bug must not lose the notification: try again
                result = DeliveryResult.retry(f"{type(exc).__name__}: {exc}")
            outcome = self._outcome(claim, result)
        if claim.timer is not None:
            if not await self._finish(claim, outcome):
                self._say(f"lost the lease on {shown}; another worker looks at it again")
            return
        try:
            recorded = await self.store.finish_notification(claim, outcome)
        except StoreError:  # left leased: delivered again, with the same id, after the lease
            recorded = False
        if not recorded:
            self.stats.lost += 1
            self._say(f"lost the lease on {shown}; another worker tries it again")
            return
        if outcome.status == "delivered":
            self.stats.delivered += 1
            self._say(f"delivered {shown} (attempt {claim.attempts})")
        elif outcome.status == "pending":
            self.stats.retried += 1
            self._say(
                f"not delivered {shown} (attempt {claim.attempts}): {outcome.error}; "
                f"next try in {outcome.retry_in:.0f} s"
            )
        else:
            self.stats.failed += 1
            self._say(f"failed {shown}: {outcome.error}")

    async def _finish(self, claim: OutboxClaim, outcome: OutboxOutcome) -> bool:
        try:
            recorded = await self.store.finish_notification(claim, outcome)
        except StoreError:
            recorded = False
        if recorded:
            self.stats.timers += 1
        else:
            self.stats.lost += 1
        return recorded

    def _outcome(self, claim: OutboxClaim, result: DeliveryResult) -> OutboxOutcome:
        if result.delivered:
            return OutboxOutcome.delivered()
        if result.outcome == "permanent":
            return OutboxOutcome.failed(result.reason)
        delay = self.schedule.next_delay(claim.attempts, result, self.rng)
        if delay is None:
            return OutboxOutcome.failed(
                f"gave up after {claim.attempts} attempts; the last: {result.reason}"
            )
        return OutboxOutcome.retry(result.reason, delay)

    def _say(self, line: str) -> None:
        if self.report is not None:
            self.report(line)


def timed_worker(
    store: RunStore, settings: Settings, *, report: Callable[[str], None] | None = None
) -> tuple[Worker, Runner]:
    """A worker that also applies deadlines' outcomes, with the runner it uses (close it
    with ``await runner.aclose()``; it builds an LLM only when a deadline proceeds at an
    audience question)."""
    from ._runner import Runner

    runner = Runner(store, settings)
    worker = Worker(store, settings, keeper=DeadlineKeeper(store, runner.apply), report=report)
    return worker, runner


class _HttpClient:
    """One HTTP client shared by a worker's deliveries; none without the notify extra
    (each webhook attempt then reports what to install, and is retried)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None

    async def __aenter__(self) -> Any:
        try:
            self._client = make_http_client(self._settings)
        except ConfigurationError:
            self._client = None
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
