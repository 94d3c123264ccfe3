"""When to try a notification again: the first retry within seconds, then backing off to a
day between tries, about three days in all (the shape the Standard Webhooks specification
recommends), with jitter so that many notifications that failed together do not all come
back at the same second.

A receiver's ``Retry-After`` pushes the next try later, never sooner, and is capped at the
ladder's longest step: unlike an LLM step (``retry.RetryPolicy`` fails when asked to wait
longer than a minute), a notification has all the time it needs. An infinite or unparseable
``Retry-After`` is ignored. After the last try a notification is *failed*: kept, shown, and
retried only when a person asks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .channels import DeliveryResult

DEFAULT_DELAYS: tuple[float, ...] = (
    5,
    30,
    2 * 60,
    10 * 60,
    30 * 60,
    3600,
    2 * 3600,
    4 * 3600,
    8 * 3600,
    12 * 3600,
    24 * 3600,
    24 * 3600,
)
"""Seconds before each retry: 13 tries over about 75 hours."""


@dataclass(frozen=True)
class RetrySchedule:
    """How often, and how patiently, a notification is delivered again."""

    delays: Sequence[float] = DEFAULT_DELAYS
    """Seconds to wait after the 1st, 2nd, … failed try; its length is the number of retries."""
    jitter: float = 0.2
    """Each delay is multiplied by a random factor within ±this fraction."""

    def __post_init__(self) -> None:
        if not all(math.isfinite(d) and d >= 0 for d in self.delays):
            raise ValueError("retry delays must be finite and not negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("the jitter must be a fraction from 0 to below 1")

    @property
    def attempts(self) -> int:
        """Tries in all, the first included."""
        return len(self.delays) + 1

    @property
    def max_retry_after(self) -> float:
        """The longest wait a receiver's ``Retry-After`` can ask for."""
        return max(self.delays, default=0.0)

    def next_delay(
        self, attempts: int, result: DeliveryResult, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the next try after try number ``attempts`` (1-based) ended with
        ``result``; None when there is none (delivered, refused for good, or the last try).
        """
        if result.outcome != "retry" or attempts < 1 or attempts > len(self.delays):
            return None
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        delay = self.delays[attempts - 1] * spread
        asked = result.retry_after
        if asked is not None and math.isfinite(asked):
            delay = max(delay, min(asked, self.max_retry_after))
        return delay


DEFAULT_SCHEDULE = RetrySchedule()
