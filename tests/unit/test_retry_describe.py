"""How a failed LLM call is described in one line (``retry.describe``)."""

from __future__ import annotations

from aiohttp.http_exceptions import ContentLengthError

from bridgic_coldmail.retry import describe


def test_a_broken_body_is_described_without_aiohttp_s_internal_400() -> None:
    """A body shorter than its Content-Length: the server sent 200; "400" is aiohttp's own
    code for a parse error and must not read as an HTTP status."""
    try:
        try:
            raise ContentLengthError("Not enough data to satisfy content length header.")
        except ContentLengthError as inner:
            raise ConnectionError("Response payload is not completed") from inner
    except ConnectionError as exc:
        said = describe(exc)
    assert said == "ContentLengthError: Not enough data to satisfy content length header."


def test_other_errors_keep_their_own_words() -> None:
    assert describe(ConnectionResetError(104, "Connection reset by peer")) == (
        "ConnectionResetError: [Errno 104] Connection reset by peer"
    )
