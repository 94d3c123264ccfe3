"""How fast a batch calls the LLM: one :class:`Pacer` shared by every call of a batch.

Three limits, checked in this order before each call (:meth:`Pacer.slot`):

1. **A pause after HTTP 429.** When the server says "too many requests", the *whole batch*
   waits: no call starts before the ``Retry-After`` it gave (or, without one, the retry
   policy's backoff, growing with each 429 in a row). Calls already on the wire finish.
2. **How many calls at once**, additive-increase / multiplicative-decrease as TCP does: it
   starts at the ``concurrency`` setting, halves on a 429 (once per round of calls: the 429s
   of calls sent before the last halving do not halve it again) and grows back by one call per
   round of successes, up to the setting. Throughput is calls in flight ÷ latency, so halving
   the calls in flight halves the request rate.
3. **A tokens-per-minute budget**, when set: each call reserves its estimated tokens (prompt
   and answer, see ``estimate.py``) in a token bucket of that many tokens refilled at that
   rate, the way providers count. The bucket is ``aiolimiter.AsyncLimiter``.

And two ends: a ``Retry-After`` longer than the retry policy allows, or too many failures in a
row across the batch (:data:`MAX_RATE_LIMITED_IN_A_ROW` 429s, or
:data:`MAX_FAILURES_IN_A_ROW` leads whose calls all failed), **halt** the batch with one
:class:`~bridgic_coldmail.errors.LlmError`: every later slot raises it, so that an outage or
an exhausted quota stops a batch of 10,000 leads instead of skipping them all.

One pacer paces one process. Workers on several hosts each have their own; they can share a
pause by calling :meth:`Pacer.pause_until` with a time they read from the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from ..errors import ConfigurationError, LlmError
from ..retry import RetryPolicy
from ..settings import Settings

MAX_RATE_LIMITED_IN_A_ROW = 30
"""429 answers in a row, across the batch, with no success between them: the batch halts."""
MAX_FAILURES_IN_A_ROW = 10
"""Leads in a row whose every call failed (not 429: errors, timeouts): the batch halts."""


@dataclass(frozen=True)
class Ticket:
    """One call's place in the batch: its serial number, in the order slots were given."""

    serial: int


@dataclass
class PacerStats:
    """What the pacer did, for the progress line and the batch's record."""

    calls: int = 0
    rate_limited: int = 0
    halvings: int = 0
    paused_seconds: float = 0.0
    """Seconds calls spent waiting for a pause after a 429 to end (summed over calls)."""
    budget_seconds: float = 0.0
    """Seconds calls spent waiting for the tokens-per-minute budget (summed over calls)."""


class Pacer:
    """The limits one batch's calls share (see the module docstring).

    Args:
        concurrency: most calls in flight at once (the ``personalize_concurrency`` setting).
        tokens_per_minute: the budget, or None for none (``personalize_tokens_per_minute``).
        retry: the backoff after a 429 without ``Retry-After``, and the longest
            ``Retry-After`` honoured (``max_retry_after``).
        period: the budget's period in seconds; 60 for tokens per minute (tests shorten it).
    """

    def __init__(
        self,
        concurrency: int,
        *,
        tokens_per_minute: int | None = None,
        retry: RetryPolicy | None = None,
        period: float = 60.0,
        max_rate_limited_in_a_row: int = MAX_RATE_LIMITED_IN_A_ROW,
        max_failures_in_a_row: int = MAX_FAILURES_IN_A_ROW,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if tokens_per_minute is not None and tokens_per_minute < 1:
            raise ValueError("tokens_per_minute must be at least 1, or None for no budget")
        self.concurrency = concurrency
        self.tokens_per_minute = tokens_per_minute
        self.retry = retry or RetryPolicy()
        self.stats = PacerStats()
        self._max_rate_limited = max_rate_limited_in_a_row
        self._max_failures = max_failures_in_a_row
        self._budget = AsyncLimiter(tokens_per_minute, period) if tokens_per_minute else None
        self._limit = float(concurrency)
        self._in_flight = 0
        self._serial = 0
        self._halved_after = 0
        """Calls with a serial up to this one were sent before the last halving."""
        self._resume_at = 0.0
        """``time.monotonic()`` before which no call starts (a 429's pause)."""
        self._rate_limited_in_a_row = 0
        self._failures_in_a_row = 0
        self._halted: LlmError | None = None
        self._changed = asyncio.Condition()

    @property
    def limit(self) -> int:
        """Calls allowed in flight right now (halved by 429s, back up to ``concurrency``)."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        """Calls holding a slot right now."""
        return self._in_flight

    @property
    def paused_for(self) -> float:
        """Seconds until calls may start again after a 429 (0 when not paused)."""
        return max(0.0, self._resume_at - time.monotonic())

    @property
    def halted(self) -> LlmError | None:
        """Why the batch halted, or None while it runs."""
        return self._halted

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[Ticket]:
        """Wait until one more call may start, for a call of about ``tokens`` tokens; hold
        its place while the call runs. Report how it went with :meth:`succeeded` or
        :meth:`rate_limited` before leaving the block. Calls waiting for a place are woken
        when a call leaves its slot, and then see the new limit, pause or halt.

        Raises:
            LlmError: the batch has halted.
            ConfigurationError: one call needs more tokens than the whole budget.
        """
        if self._budget is not None and tokens > self._budget.max_rate:
            raise ConfigurationError(
                f"one call needs about {tokens:,} tokens, more than the whole budget of "
                f"{self.tokens_per_minute:,} tokens a minute; raise the budget"
            )
        ticket = await self._take_place()
        try:
            if self._budget is not None and tokens > 0:
                started = time.monotonic()
                await self._budget.acquire(tokens)
                self.stats.budget_seconds += time.monotonic() - started
            await self._wait_for_pause()  # a 429 may have come while waiting for the budget
            self._check_halted()
            self.stats.calls += 1
            yield ticket
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    async def _take_place(self) -> Ticket:
        async with self._changed:
            while True:
                self._check_halted()
                pause = self._resume_at - time.monotonic()
                if pause > 0:
                    self._changed.release()  # others may report, finish or wait meanwhile
                    try:
                        await self._sleep(pause)
                    finally:
                        await self._changed.acquire()
                elif self._in_flight < self.limit:
                    break
                else:
                    await self._changed.wait()
            self._in_flight += 1
            self._serial += 1
            return Ticket(self._serial)

    async def _sleep(self, seconds: float) -> None:
        started = time.monotonic()
        await asyncio.sleep(seconds)
        self.stats.paused_seconds += time.monotonic() - started

    async def _wait_for_pause(self) -> None:
        while (pause := self._resume_at - time.monotonic()) > 0:
            await self._sleep(pause)

    def _check_halted(self) -> None:
        if self._halted is not None:
            raise self._halted

    def succeeded(self, ticket: Ticket) -> None:
        """The call answered: grow back by one call per round of successes."""
        self._rate_limited_in_a_row = 0
        self._failures_in_a_row = 0
        self._limit = min(float(self.concurrency), self._limit + 1.0 / self._limit)

    def rate_limited(self, ticket: Ticket, retry_after: float | None) -> None:
        """The call got HTTP 429: pause the whole batch and halve the calls in flight.

        Raises:
            LlmError: the server asks for a longer wait than the retry policy allows, or
                refused too many calls in a row; the batch halts.
        """
        self.stats.rate_limited += 1
        self._rate_limited_in_a_row += 1
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            self.halt(
                f"the LLM server asks to wait {retry_after:g} s before the next call, longer "
                f"than the {self.retry.max_retry_after:g} s allowed; the batch stops here — run "
                "it again later (no lead with a line is written twice)"
            )
        if self._rate_limited_in_a_row >= self._max_rate_limited:
            self.halt(
                f"the LLM server refused {self._rate_limited_in_a_row} calls in a row as too "
                "many requests (HTTP 429); the batch stops here — check the account's rate "
                "limits and quota, lower the concurrency or the token budget, and run it again"
            )
        wait = retry_after if retry_after is not None else self.retry.backoff(
            self._rate_limited_in_a_row
        )  # fmt: skip
        self.pause_until(time.monotonic() + wait)
        if ticket.serial > self._halved_after:
            self._limit = max(1.0, self._limit / 2)
            self._halved_after = self._serial
            self.stats.halvings += 1

    def lead_failed(self) -> None:
        """Every call for one lead failed (not 429s).

        Raises:
            LlmError: :data:`MAX_FAILURES_IN_A_ROW` leads in a row did; the batch halts.
        """
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self._max_failures:
            self.halt(
                f"the LLM failed for {self._failures_in_a_row} leads in a row; the batch "
                "stops here rather than skip every lead — check the LLM server and settings, "
                "then run it again"
            )

    def pause_until(self, when: float) -> None:
        """Start no call before ``when`` (a ``time.monotonic()`` value); never shortens a
        pause already set."""
        self._resume_at = max(self._resume_at, when)

    def halt(self, message: str) -> None:
        """Stop the batch: this and every later :meth:`slot` raise ``LlmError(message)``."""
        if self._halted is None:
            self._halted = LlmError(message, topic="batch_halted")
        raise self._halted


def pacer_for(settings: Settings, retry: RetryPolicy | None = None) -> Pacer:
    """The pacer the settings ask for (``personalize_concurrency``, ``…_tokens_per_minute``)."""
    return Pacer(
        settings.personalize_concurrency,
        tokens_per_minute=settings.personalize_tokens_per_minute,
        retry=retry,
    )
