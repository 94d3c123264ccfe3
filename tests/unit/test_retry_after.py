"""``Retry-After`` as servers send it (LLM APIs and notification receivers alike): seconds,
an HTTP date, or something hostile."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from bridgic_coldmail.retry import retry_after, retry_after_seconds


def _headers(value: str) -> httpx.Headers:
    return httpx.Headers({"retry-after": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("-3", 0.0),
        ("nan", 0.0),
        ("inf", math.inf),  # left to the caller: the schedule ignores it, the LLM policy fails
        ("garbage", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
    ],
)
def test_retry_after_values(value: str, expected: float | None) -> None:
    assert retry_after_seconds(_headers(value)) == expected


def test_retry_after_as_an_http_date_in_the_future() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=90)
    seconds = retry_after_seconds(_headers(format_datetime(when, usegmt=True)))
    assert seconds is not None and 80 <= seconds <= 91


def test_retry_after_as_a_date_in_an_unknown_zone_is_read_as_utc() -> None:
    """RFC 5322's ``-0000`` zone parses to a naive datetime; it used to raise TypeError out
    of the retry policy (for an LLM's 429 too) instead of being read."""
    when = datetime.now(timezone.utc) + timedelta(seconds=90)
    text = when.strftime("%a, %d %b %Y %H:%M:%S -0000")
    seconds = retry_after_seconds(_headers(text))
    assert seconds is not None and 80 <= seconds <= 91
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    error = httpx.HTTPStatusError(
        "429", request=request, response=httpx.Response(429, headers=_headers(text))
    )
    after = retry_after(error)
    assert after is not None and 80 <= after <= 91
