"""One retry policy for LLM calls: bounded exponential backoff that honours ``Retry-After``.

Retried: HTTP 429, 408, 409 and 5xx, connection errors, a step that exceeds its timeout, and
output that does not validate (the model may do better on a second try). Anything else —
a 400, a 401, a bad model name — fails at once: retrying cannot fix it.

For the ``OpenAILlm`` this package builds from the environment, the OpenAI SDK's retries and
Bridgic's retry decorator are switched off so that this policy is the only one (otherwise
the three multiply, and Bridgic's ignores ``Retry-After``). An injected LLM keeps its own.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import ValidationError

from .text import terminal_safe

_RETRIED_STATUS = {408, 409, 429}


class InvalidOutput(ValueError):
    """The LLM's answer broke a rule checked after parsing; another try may do better."""


class Unretryable(Exception):
    """A failure the same request would meet again (a refused form, an oversized answer):
    never retried, whatever it wraps."""


class FailureNote(Exception):
    """What a failure's message should add (e.g. which forms of structured output the server
    refused): raised ``from`` the failure, whose retryability it keeps."""


MAX_SUMMARY_CHARS = 300
"""The longest summary of an error's cause put into a message (and so stored)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an LLM step is retried."""

    attempts: int = 4
    """Tries in all, the first included."""
    base_delay: float = 0.5
    """Seconds before the second try; doubled for each further one."""
    max_delay: float = 8.0
    """Cap on the backoff between two tries."""
    max_retry_after: float = 60.0
    """Cap on a server's ``Retry-After``; a longer wait fails the step instead."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or min(self.base_delay, self.max_delay, self.max_retry_after) < 0:
            raise ValueError("attempts must be at least 1 and delays must not be negative")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based), with ±20% jitter."""
        delay: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.2)


NO_RETRY = RetryPolicy(attempts=1)


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (Bridgic's ``original_exception``, ``__cause__``)."""
    links = [exc]
    for _ in range(10):
        inner = getattr(links[-1], "original_exception", None) or links[-1].__cause__
        if inner is None or inner in links:
            break
        links.append(inner)
    return links


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception: Bridgic wraps the client's errors in its retry errors."""
    return chain(exc)[-1]


def is_retryable(exc: BaseException) -> bool:
    """Whether another try could succeed (see the module docstring)."""
    if any(isinstance(link, Unretryable) for link in chain(exc)):
        return False
    for link in chain(exc):
        if isinstance(link, (TimeoutError, ValidationError, ConnectionError, InvalidOutput)):
            return True
        status = _status_code(link)
        if status is not None:
            return status in _RETRIED_STATUS or status >= 500
        # openai.APIConnectionError / APITimeoutError; httpx's and httpcore's transport errors.
        if type(link).__name__ in {"APIConnectionError", "APITimeoutError"}:
            return True
        if _is_transport_error(link):
            return True
    return False


def describe(exc: BaseException) -> str:
    """``Type: message`` of the most informative link in the chain, summarized; for an HTTP
    error, ``Type: Error code: N - the body's message``."""
    for link in reversed(chain(exc)):
        status = _status_code(link)
        if status is not None and getattr(link, "body", None) is not None:
            message = f"Error code: {status} - {error_message(link)}"
            return f"{type(link).__name__}: {summarize(message)}"
        if _text(link).strip():
            return f"{type(link).__name__}: {summarize(_text(link))}"
    return type(exc).__name__


def _text(exc: BaseException) -> str:
    """An exception's message. aiohttp's parse errors (a body shorter than its length, a
    broken chunk) print their internal code first, ``400, message: …``, which reads like an
    HTTP status the server never sent: their message alone."""
    message, code = getattr(exc, "message", None), getattr(exc, "code", None)
    if type(exc).__module__.startswith("aiohttp") and isinstance(message, str) and code:
        return message
    return str(exc)


def error_message(exc: BaseException) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": …}}``,
    ``{"error": "…"}``, ``{"message": …}``; the OpenAI SDK keeps what is under ``error`` as
    the exception's ``body``), else the body as text, else the exception's own message."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body
    if body is not None:
        return json.dumps(body, default=str)
    return str(getattr(exc, "message", exc))


def summarize(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    """``text`` as one short line that is safe to print and to store: whitespace runs become
    one space, control and bidi characters become visible escapes, and past ``limit``
    characters the rest is replaced by a count."""

    line = " ".join(str(text)[: limit * 8].split())
    line = terminal_safe(line)
    if len(line) <= limit and len(text) <= limit * 8:
        return line
    return f"{line[:limit].rstrip()}… (cut from {len(text):,} characters)"


def retry_after(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` in seconds, if the error carries one."""
    response = getattr(root_cause(exc), "response", None)
    headers: Any = getattr(response, "headers", None)
    if headers is None:
        return None
    return retry_after_seconds(headers)


def retry_after_seconds(headers: Any) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms`` in seconds, from a
    response's headers (anything with a case-insensitive ``get``); None when absent."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 5322's "-0000": UTC, the local zone unknown
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transport_error(exc: BaseException) -> bool:
    return any(
        cls.__name__ in {"TransportError", "NetworkError"}
        and cls.__module__.startswith(("httpx", "httpcore"))
        for cls in type(exc).__mro__
    )
