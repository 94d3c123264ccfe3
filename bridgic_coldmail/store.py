"""The SQLite store: one row per interaction id, holding the snapshot and everything around it.

Design notes:

* Every write is one SQL statement. SQLite runs a lone statement as its own transaction and
  takes the write lock before it reads (waiting up to the busy timeout), which is what
  ``BEGIN IMMEDIATE`` does for several statements: a read-then-write can never fail half way
  with "database is locked". One statement is also one round trip to aiosqlite's thread,
  which is most of what this layer costs (see benchmarks/NOTES.md). The history is written by
  triggers inside the same statement. Migrations, the only multi-statement writes, run in an
  explicit ``BEGIN IMMEDIATE`` transaction.
* Resuming starts with a *claim*: ``UPDATE … SET status = 'resuming' WHERE status =
  'awaiting_feedback' AND <signature verifies> RETURNING snapshot``. Exactly one caller, in any
  process, gets the row; a refusal changes nothing, and a second read explains it (completed,
  being resumed, tampered, unknown). A claim carries a lease, so a resumer that dies
  mid-refine leaves the run claimable again once the lease runs out.
* The snapshot's signature (see :mod:`signing`) and serialization version are checked by the
  claim statement itself, so no unverified byte ever leaves the database for Bridgic.
* Listing and showing never read, let alone deserialize, a snapshot: the brief, draft,
  feedback and final sequence are stored beside it as JSON.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import (
    ColdmailError,
    ConfigurationError,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
    SnapshotError,
    SnapshotIntegrityError,
    StoreError,
)
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .models import Brief, EmailSequence, Run, RunEvent, RunStatus
from .signing import SnapshotSigner, load_signer

DEFAULT_DB_PATH = Path("snapshots") / "coldmail.db"
DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_LEASE_SECONDS = 300.0

# Everything but the snapshot: what a Run is built from.
_RUN_COLUMNS = (
    "interaction_id, status, brief_json, draft_json, question, feedback, final_json, "
    "last_error, created_at, updated_at"
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    # Fixed width, UTC: lexical order is time order, so the indexes sort correctly.
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _run_from_row(row: aiosqlite.Row) -> Run:
    final = row["final_json"]
    return Run(
        interaction_id=row["interaction_id"],
        status=RunStatus(row["status"]),
        brief=Brief.model_validate_json(row["brief_json"]),
        draft=EmailSequence.model_validate_json(row["draft_json"]),
        question=row["question"],
        feedback=row["feedback"],
        final=EmailSequence.model_validate_json(final) if final else None,
        last_error=row["last_error"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


@dataclass(frozen=True)
class Claim:
    """The right to resume one run, held until ``complete`` or ``release``."""

    interaction_id: str
    token: str
    snapshot_bytes: bytes
    serialization_version: str


class RunStore:
    """Runs in one SQLite file. Open with ``async with RunStore.open(path) as store``."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: str,
        signer: SnapshotSigner,
        lease_seconds: float,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self._conn = conn
        self._signer = signer
        self.path = path
        self.lease_seconds = lease_seconds
        self.busy_timeout = busy_timeout

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> AsyncIterator[RunStore]:
        """Open (creating if needed) the database at ``path``; always closes it on exit."""
        store = await cls.connect(path, busy_timeout=busy_timeout, lease_seconds=lease_seconds)
        try:
            yield store
        finally:
            await store.close()

    @classmethod
    async def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> RunStore:
        """Open the database, bring its schema up to date and load the signing key.

        The caller must ``close()`` the store.
        """
        db_path = _prepare_path(Path(path))
        shown = str(db_path)
        with _storage_errors(shown, busy_timeout):
            conn = await aiosqlite.connect(db_path, isolation_level=None, timeout=busy_timeout)
        try:
            conn.row_factory = aiosqlite.Row
            with _storage_errors(shown, busy_timeout):
                await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute("PRAGMA synchronous = FULL")
                signer = await _migrate(conn, db_path)
                await conn.create_function(
                    "coldmail_verify", 4, _verifier(signer), deterministic=True
                )
        except BaseException:
            await conn.close()
            raise
        return cls(conn, shown, signer, lease_seconds, busy_timeout)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._conn.close()

    async def insert_paused(
        self,
        interaction_id: str,
        brief: Brief,
        draft: EmailSequence,
        question: str,
        snapshot_bytes: bytes,
        serialization_version: str,
    ) -> Run:
        """Store a freshly paused run, signed (its 'paused' event is written by a trigger)."""
        now = _now()
        signature = self._signer.sign(interaction_id, serialization_version, snapshot_bytes)
        with _storage_errors(self.path, self.busy_timeout):
            await self._conn.execute(
                """INSERT INTO runs (interaction_id, status, brief_json, draft_json, question,
                       snapshot, serialization_version, signature, created_at, updated_at)
                   VALUES (?, 'awaiting_feedback', ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    interaction_id,
                    brief.model_dump_json(),
                    draft.model_dump_json(),
                    question,
                    snapshot_bytes,
                    serialization_version,
                    signature,
                    _iso(now),
                    _iso(now),
                ),
            )
        return Run(
            interaction_id=interaction_id,
            status=RunStatus.AWAITING_FEEDBACK,
            brief=brief,
            draft=draft,
            question=question,
            created_at=now,
            updated_at=now,
        )

    async def get(self, interaction_id: str) -> Run:
        """The run stored under ``interaction_id``; ``RunNotFound`` if there is none."""
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE interaction_id = ?", (interaction_id,)
            )
        for row in rows:
            return _run_from_row(row)
        raise RunNotFound(interaction_id, self.path)

    async def history(self, interaction_id: str) -> list[RunEvent]:
        """The run's events, oldest first; ``RunNotFound`` if there is no such run."""
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                "SELECT at, kind, detail FROM run_events WHERE interaction_id = ? ORDER BY id",
                (interaction_id,),
            )
        if not rows:  # every stored run has a 'paused' event; no events means no such run
            await self.get(interaction_id)
        return [
            RunEvent(at=datetime.fromisoformat(r["at"]), kind=r["kind"], detail=r["detail"])
            for r in rows
        ]

    async def list(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[Run]:
        """Runs, newest first, optionally of one status; never reads a snapshot."""
        where, params = ("WHERE status = ?", [status.value]) if status else ("", [])
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                f"""SELECT {_RUN_COLUMNS} FROM runs {where}
                    ORDER BY created_at DESC, interaction_id DESC LIMIT ? OFFSET ?""",
                (*params, limit, offset),
            )
        return [_run_from_row(row) for row in rows]

    async def claim(
        self, interaction_id: str, feedback: str, supported_versions: Collection[str]
    ) -> Claim | Run:
        """Claim a run for resuming with ``feedback``, or say why it cannot be.

        Returns a :class:`Claim` when this caller won, or the stored completed :class:`Run`
        when it already completed with the same feedback. Every refusal leaves the row as it
        was.

        Raises:
            RunNotFound: nothing is stored under ``interaction_id``.
            RunConflict: the run completed with different feedback.
            RunBeingResumed: another caller holds an unexpired claim.
            SnapshotError: the snapshot's format is not in ``supported_versions``.
            SnapshotIntegrityError: the snapshot's signature does not match.
        """
        now = _iso(_now())
        token = uuid.uuid4().hex
        expires = _iso(_now() + timedelta(seconds=self.lease_seconds))
        versions = sorted(supported_versions)
        marks = ", ".join("?" for _ in versions)
        with _storage_errors(self.path, self.busy_timeout):
            rows = await self._conn.execute_fetchall(
                f"""UPDATE runs
                    SET status = 'resuming', feedback = ?, claim_token = ?,
                        claim_expires_at = ?, updated_at = ?
                    WHERE interaction_id = ?
                      AND (status = 'awaiting_feedback'
                           OR (status = 'resuming' AND claim_expires_at < ?))
                      AND serialization_version IN ({marks})
                      AND coldmail_verify(interaction_id, serialization_version, snapshot,
                                          signature)
                    RETURNING snapshot, serialization_version""",
                (feedback, token, expires, now, interaction_id, now, *versions),
            )
        for row in rows:
            return Claim(interaction_id, token, bytes(row[0]), row[1])
        return await self._explain_refusal(interaction_id, feedback, versions, now)

    async def _explain_refusal(
        self, interaction_id: str, feedback: str, versions: Sequence[str], now: str
    ) -> Run:
        """Why the claim matched no row: raise the matching error (or return a completed run)."""
        with _storage_errors(self.path, self.busy_timeout):
            rows = await self._conn.execute_fetchall(
                f"""SELECT {_RUN_COLUMNS}, claim_expires_at, serialization_version,
                        coldmail_verify(interaction_id, serialization_version, snapshot,
                                        signature) AS verified
                    FROM runs WHERE interaction_id = ?""",
                (interaction_id,),
            )
        row = next(iter(rows), None)
        if row is None:
            raise RunNotFound(interaction_id, self.path)
        status = RunStatus(row["status"])
        if status is RunStatus.COMPLETED:
            if row["feedback"] == feedback:
                return _run_from_row(row)
            raise RunConflict(
                f"run {interaction_id} already completed with different feedback "
                f"({_preview(row['feedback'])}); start a new run to try another audience"
            )
        if status is RunStatus.RESUMING and (row["claim_expires_at"] or "") >= now:
            raise RunBeingResumed(
                f"run {interaction_id} is being resumed by another process right now; "
                f"run `coldmail show {interaction_id}` in a moment to see the result (if "
                f"that process died, it can be resumed again after {row['claim_expires_at']})"
            )
        if row["serialization_version"] not in versions:
            raise SnapshotError(
                f"run {interaction_id} was saved with snapshot format "
                f"{row['serialization_version']!r}, but this release reads only "
                f"{', '.join(versions)}; resume it with the bridgic-coldmail release that "
                "paused it"
            )
        if not row["verified"]:
            raise SnapshotIntegrityError(
                f"the snapshot of run {interaction_id} does not match its signature: it was "
                "altered, truncated or copied from another run, and was not loaded; the run "
                "cannot be resumed (restore the database from a backup)"
            )
        # It became claimable between the two statements (a release): let the caller retry.
        raise RunBeingResumed(f"run {interaction_id} changed while it was being claimed; try again")

    async def complete(self, claim: Claim, final: EmailSequence) -> Run:
        """Record the refined sequence and drop the snapshot, which has done its job."""
        now = _iso(_now())
        with _storage_errors(self.path, self.busy_timeout):
            rows = await self._conn.execute_fetchall(
                f"""UPDATE runs
                    SET status = 'completed', final_json = ?, snapshot = NULL, signature = NULL,
                        last_error = NULL, claim_token = NULL, claim_expires_at = NULL,
                        completed_at = ?, updated_at = ?
                    WHERE interaction_id = ? AND claim_token = ? AND status = 'resuming'
                    RETURNING {_RUN_COLUMNS}""",
                (final.model_dump_json(), now, now, claim.interaction_id, claim.token),
            )
        for row in rows:
            return _run_from_row(row)
        # Our lease ran out and another resumer took over; theirs is the result of record.
        run = await self.get(claim.interaction_id)
        if run.status is RunStatus.COMPLETED:
            return run
        raise RunBeingResumed(
            f"run {claim.interaction_id} took longer than its {self.lease_seconds:g} s lease "
            "and was claimed by another resumer; raise COLDMAIL_LEASE_SECONDS if the LLM is slow"
        )

    async def release(self, claim: Claim, error: str) -> None:
        """Give the run back (status ``awaiting_feedback``), recording why the resume failed."""
        with _storage_errors(self.path, self.busy_timeout):
            await self._conn.execute(
                """UPDATE runs
                   SET status = 'awaiting_feedback', last_error = ?, claim_token = NULL,
                       claim_expires_at = NULL, updated_at = ?
                   WHERE interaction_id = ? AND claim_token = ?""",
                (error, _iso(_now()), claim.interaction_id, claim.token),
            )

    async def purge(self, older_than: timedelta, statuses: Collection[RunStatus]) -> int:
        """Delete runs of these statuses not updated for ``older_than``; returns how many.

        Their history goes with them (a trigger).
        """
        cutoff = _iso(_now() - older_than)
        names = sorted(s.value for s in statuses)
        marks = ", ".join("?" for _ in names)
        with _storage_errors(self.path, self.busy_timeout):
            cursor = await self._conn.execute(
                f"DELETE FROM runs WHERE status IN ({marks}) AND updated_at < ?",
                (*names, cutoff),
            )
        return cursor.rowcount


def _verifier(signer: SnapshotSigner) -> Callable[[Any, Any, Any, Any], bool]:
    """The SQL function ``coldmail_verify(id, version, snapshot, signature)``."""

    def verify(interaction_id: Any, version: Any, snapshot: Any, signature: Any) -> bool:
        if not isinstance(snapshot, bytes) or not isinstance(signature, bytes):
            return False
        return signer.verify(str(interaction_id), str(version), snapshot, signature)

    return verify


def _preview(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _prepare_path(path: Path) -> Path:
    """Refuse paths SQLite would misreport, and create the parent folder if it is missing."""
    if str(path) in ("", ":memory:"):
        raise StoreError("give the database a file path; an in-memory database loses every run")
    if path.is_dir():
        raise StoreError(f"{path} is a directory; give a file path such as {path / 'coldmail.db'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for {path}: {exc.strerror or exc}") from None
    return path


async def _migrate(conn: aiosqlite.Connection, db_path: Path) -> SnapshotSigner:
    """Check the schema and the key, apply missing migrations; one IMMEDIATE transaction."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {
            row[0]
            for row in await conn.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        if tables and "coldmail_schema" not in tables:
            raise StoreError(
                f"{db_path} is an SQLite database of another application (it has no "
                "coldmail_schema table); choose another --db path"
            )
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS coldmail_schema (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   applied_at TEXT NOT NULL)"""
        )
        rows = await conn.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM coldmail_schema")
        current = next(iter(rows))[0]
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{db_path} has schema version {current}, newer than this bridgic-coldmail "
                f"understands ({SCHEMA_VERSION}); upgrade bridgic-coldmail"
            )

        fingerprint = None
        if "coldmail_meta" in tables:
            found = await conn.execute_fetchall(
                "SELECT value FROM coldmail_meta WHERE key = 'key_fingerprint'"
            )
            fingerprint = next((r[0] for r in found), None)
        signer = load_signer(db_path, may_create=fingerprint is None)
        if fingerprint is not None and fingerprint != signer.fingerprint:
            raise ConfigurationError(
                f"the signing key from {signer.source} is not the key that signed the runs in "
                f"{db_path}; restore the original key file or COLDMAIL_SECRET_KEY"
            )

        for migration in MIGRATIONS:
            if migration.version > current:
                await migration.apply(conn, signer)
                await conn.execute(
                    "INSERT INTO coldmail_schema (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _iso(_now())),
                )
        if fingerprint is None:
            await conn.execute(
                "INSERT INTO coldmail_meta (key, value) VALUES ('key_fingerprint', ?)",
                (signer.fingerprint,),
            )
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    return signer


@contextmanager
def _storage_errors(path: str, busy_timeout: float | None = None) -> Iterator[None]:
    """Turn sqlite3's errors into a ``StoreError`` that names the file and what to do."""
    try:
        yield
    except ColdmailError:
        raise
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            waited = f" for more than {busy_timeout:g} s" if busy_timeout else ""
            raise StoreError(
                f"{path} is locked by another process{waited}; wait for it to finish and retry"
            ) from None
        if "readonly" in text or "unable to open" in text:
            raise StoreError(
                f"cannot write to {path} ({text}); check the file's permissions or choose "
                "another --db path"
            ) from None
        raise StoreError(f"database error in {path}: {text}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path} is not a usable SQLite database ({exc}); choose another --db path"
        ) from None
