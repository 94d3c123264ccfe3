"""The error tree. Every message says what happened and what to do next.

Each class carries the exit code the command line uses for it and the HTTP status the web
inbox answers with, so neither the CLI nor the web app keeps a second table in sync with
this one.
"""

from __future__ import annotations


class ColdmailError(Exception):
    """Base class of every error this package raises on purpose.

    ``topic`` names the situation more precisely than the class (e.g. ``"unsigned"``), so
    that a front end can add its own hint (the CLI names its commands and flags; the
    library's messages never do).
    """

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, *args: object, topic: str | None = None) -> None:
        super().__init__(*args)
        self.topic = topic


class InvalidInput(ColdmailError, ValueError):
    """Input was refused before anything changed: a brief, feedback, a review decision, an
    interaction id, a query parameter, a lead list, an argument; an export with nothing to
    export, or over its size limit."""

    exit_code = 2
    http_status = 422


class RunNotFound(ColdmailError, KeyError):
    """No run is stored under this interaction id."""

    exit_code = 3
    http_status = 404

    def __init__(self, interaction_id: str, db_path: str) -> None:
        self.interaction_id = interaction_id
        super().__init__(
            f"no run with interaction id {interaction_id} in {db_path}", topic="not_found"
        )

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class RunConflict(ColdmailError):
    """The run already took other feedback, or its round another decision (the same one again
    returns the stored result); or what was asked does not fit where the run is: a decision
    before audience feedback, past the round limit, not in review mode, or after the run
    completed or was rejected; an export before the run completed."""

    exit_code = 4
    http_status = 409


class RunBeingResumed(ColdmailError):
    """Another feedback or decision holds the claim on this run right now, or took it over
    from this one (this one's lease ran out)."""

    exit_code = 5
    http_status = 409


class LlmError(ColdmailError):
    """The LLM call failed, timed out or returned output that does not validate.

    When this happens while feedback or a decision is applied, the run is back where it
    paused (``awaiting_feedback`` or ``awaiting_review``) and can be resumed again.
    """

    exit_code = 6
    http_status = 502


class ConfigurationError(ColdmailError):
    """The agent cannot be set up: no LLM configured, an unusable setting, or a signing key
    that cannot be used."""

    exit_code = 7
    http_status = 503


class StoreError(ColdmailError):
    """The store cannot be used: no database there yet (:class:`DatabaseNotFound`), a
    directory, a device, not an SQLite file, another application's, locked, unwritable, full,
    from a newer release; a PostgreSQL server unreachable or not answering, a login refused,
    out of connections, a database not in UTF8; or a run that cannot be read."""

    exit_code = 8
    http_status = 503


class DatabaseNotFound(StoreError):
    """There is no bridgic-coldmail database where one was looked for, and the caller only
    reads (``missing="refuse"``): nothing was created (starting a run creates the database)."""

    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(f"there is no database at {location}", topic="no_database")


class SnapshotError(StoreError):
    """A stored snapshot cannot be resumed by this version of the code: a serialization
    format it does not know, or a class it cannot import (the message names it); retrying
    will not help."""

    http_status = 500


class SnapshotIntegrityError(SnapshotError):
    """A stored run, its snapshot or its history does not match its signature (altered,
    truncated or copied from another run), or its snapshot is unsigned.

    It is refused before any of its bytes reach Bridgic's loader and never shown; the run is
    left unchanged.
    """

    exit_code = 9
    http_status = 500


INTERRUPTED = 130
"""The exit code after Ctrl-C (128 + SIGINT), as shells expect. The run is unchanged or
resumable: after feedback or a decision, the message says which, read from the store."""
OUTPUT_CLOSED = 141
"""The exit code when the reader of the output went away (128 + SIGPIPE), as ``yes | head``
(``coldmail list --json | head``); nothing more is printed."""

EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "unexpected error": 1,
    "bad input": InvalidInput.exit_code,
    "not found": RunNotFound.exit_code,
    "conflict": RunConflict.exit_code,
    "being resumed": RunBeingResumed.exit_code,
    "LLM failure": LlmError.exit_code,
    "configuration": ConfigurationError.exit_code,
    "storage": StoreError.exit_code,
    "integrity": SnapshotIntegrityError.exit_code,
    "interrupted": INTERRUPTED,
    "output closed": OUTPUT_CLOSED,
}
"""Exit codes of the ``coldmail`` command, by meaning (docs/reference/errors.md is generated
from this module)."""


class LinkRefused(ColdmailError):
    """A one-click link cannot be used: it is forged, edited, truncated, oversized, or signed
    with another key. Its message says nothing about any run."""

    exit_code = 2
    http_status = 403


class LinkExpired(LinkRefused):
    """A genuine one-click link whose time is over."""

    http_status = 410


class LinkRunGone(LinkRefused):
    """A genuine one-click link to a run that is no longer stored."""

    http_status = 404


class LinkAnswered(LinkRefused):
    """A genuine one-click link to a pause that is over (it was answered, or the run moved
    on), used to act: a page that only shows still shows the run."""

    http_status = 410
