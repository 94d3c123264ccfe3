"""The retry schedule of notifications."""

from __future__ import annotations

import math
import random

import pytest

from bridgic_coldmail.notify import DEFAULT_SCHEDULE, DeliveryResult, RetrySchedule

RETRY = DeliveryResult.retry("HTTP 503")


def test_the_first_retry_comes_within_seconds_and_the_ladder_spans_about_three_days() -> None:
    rng = random.Random(1)
    delays = [DEFAULT_SCHEDULE.next_delay(n, RETRY, rng) for n in range(1, 14)]
    assert delays[-1] is None  # the 13th try was the last
    steps = [d for d in delays if d is not None]
    assert len(steps) == DEFAULT_SCHEDULE.attempts - 1 == 12
    assert 4 <= steps[0] <= 6
    assert all(b > a for a, b in zip(steps[:9], steps[1:10], strict=True))  # backing off...
    assert 24 * 3600 * 0.8 <= steps[-1] <= 24 * 3600 * 1.2  # ...up to a day
    assert 60 * 3600 < sum(steps) < 90 * 3600


def test_jitter_spreads_notifications_that_failed_together() -> None:
    rng = random.Random(7)
    seen = {DEFAULT_SCHEDULE.next_delay(3, RETRY, rng) for _ in range(50)}
    assert len(seen) > 40
    assert all(d is not None and 96 <= d <= 144 for d in seen)  # 2 min ± 20%


@pytest.mark.parametrize("result", [DeliveryResult.ok(200), DeliveryResult.permanent("410")])
def test_nothing_follows_a_delivery_or_a_permanent_refusal(result: DeliveryResult) -> None:
    assert DEFAULT_SCHEDULE.next_delay(1, result) is None


def test_retry_after_pushes_later_never_sooner_and_is_capped_at_a_day() -> None:
    schedule = RetrySchedule(jitter=0)
    assert schedule.next_delay(1, DeliveryResult.retry("429", after=120)) == 120
    assert schedule.next_delay(1, DeliveryResult.retry("429", after=1)) == 5
    assert schedule.next_delay(4, DeliveryResult.retry("429", after=1)) == 600
    assert schedule.next_delay(1, DeliveryResult.retry("429", after=1e12)) == 24 * 3600
    # The last step's jitter may exceed the cap: a Retry-After never shortens it.
    late = RetrySchedule(delays=(10,), jitter=0.5)
    assert late.next_delay(1, DeliveryResult.retry("x", after=12), random.Random(3)) >= 10 * 0.5


@pytest.mark.parametrize("after", [math.inf, -math.inf, math.nan])
def test_an_infinite_or_nan_retry_after_is_ignored(after: float) -> None:
    schedule = RetrySchedule(jitter=0)
    assert schedule.next_delay(2, DeliveryResult.retry("503", after=after)) == 30


def test_a_schedule_refuses_impossible_delays() -> None:
    with pytest.raises(ValueError):
        RetrySchedule(delays=(5, math.inf))
    with pytest.raises(ValueError):
        RetrySchedule(delays=(-1,))
    with pytest.raises(ValueError):
        RetrySchedule(jitter=1.5)
    assert RetrySchedule(delays=()).next_delay(1, RETRY) is None
