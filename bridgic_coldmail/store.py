"""The SQLite store: one row per interaction id, holding the snapshot and everything around it.

Design notes:

* Every write runs in a ``BEGIN IMMEDIATE`` transaction: it takes SQLite's write lock up
  front (waiting up to the busy timeout), so a read-then-write can never fail half way with
  "database is locked". Tasks sharing one connection take turns through an ``asyncio.Lock``;
  processes take turns through SQLite's lock.
* Resuming starts with a *claim* inside such a transaction: exactly one caller, in any
  process, moves the run from ``awaiting_feedback`` to ``resuming``; everyone else is told why
  not (completed, being resumed, unknown). A claim carries a lease, so a resumer that dies
  mid-refine leaves the run claimable again once the lease runs out.
* The snapshot's signature (see :mod:`signing`) and serialization version are checked in the
  claim, before anything changes and before any byte reaches Bridgic.
* Listing and showing never read, let alone deserialize, a snapshot: the brief, draft,
  feedback and final sequence are stored beside it as JSON.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
        self._write_lock = asyncio.Lock()
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
        except BaseException:
            await conn.close()
            raise
        return cls(conn, shown, signer, lease_seconds, busy_timeout)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._conn.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction; commits on success, rolls back on any error."""
        async with self._write_lock:
            with _storage_errors(self.path, self.busy_timeout):
                await self._conn.execute("BEGIN IMMEDIATE")
            try:
                with _storage_errors(self.path, self.busy_timeout):
                    yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            with _storage_errors(self.path, self.busy_timeout):
                await self._conn.execute("COMMIT")

    async def _event(self, interaction_id: str, at: str, kind: str, detail: str | None) -> None:
        await self._conn.execute(
            "INSERT INTO run_events (interaction_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (interaction_id, at, kind, detail),
        )

    async def insert_paused(
        self,
        interaction_id: str,
        brief: Brief,
        draft: EmailSequence,
        question: str,
        snapshot_bytes: bytes,
        serialization_version: str,
    ) -> Run:
        """Store a freshly paused run, signed."""
        now = _iso(_now())
        signature = self._signer.sign(interaction_id, serialization_version, snapshot_bytes)
        async with self._write() as conn:
            rows = await conn.execute_fetchall(
                f"""INSERT INTO runs (interaction_id, status, brief_json, draft_json, question,
                        snapshot, serialization_version, signature, created_at, updated_at)
                    VALUES (?, 'awaiting_feedback', ?, ?, ?, ?, ?, ?, ?, ?)
                    RETURNING {_RUN_COLUMNS}""",
                (
                    interaction_id,
                    brief.model_dump_json(),
                    draft.model_dump_json(),
                    question,
                    snapshot_bytes,
                    serialization_version,
                    signature,
                    now,
                    now,
                ),
            )
            await self._event(interaction_id, now, "paused", None)
        return _run_from_row(next(iter(rows)))

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
        await self.get(interaction_id)
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                "SELECT at, kind, detail FROM run_events WHERE interaction_id = ? ORDER BY id",
                (interaction_id,),
            )
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
        now = _now()
        async with self._write() as conn:
            rows = await conn.execute_fetchall(
                f"""SELECT {_RUN_COLUMNS}, claim_expires_at, snapshot, serialization_version,
                        signature
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
            if status is RunStatus.RESUMING and (row["claim_expires_at"] or "") >= _iso(now):
                raise RunBeingResumed(
                    f"run {interaction_id} is being resumed by another process right now; "
                    f"run `coldmail show {interaction_id}` in a moment to see the result (if "
                    f"that process died, it can be resumed again after {row['claim_expires_at']})"
                )
            snapshot = self._verified_snapshot(row, supported_versions)
            token = uuid.uuid4().hex
            expires = now + timedelta(seconds=self.lease_seconds)
            await conn.execute(
                """UPDATE runs SET status = 'resuming', feedback = ?, claim_token = ?,
                       claim_expires_at = ?, updated_at = ?
                   WHERE interaction_id = ?""",
                (feedback, token, _iso(expires), _iso(now), interaction_id),
            )
            await self._event(interaction_id, _iso(now), "feedback", feedback)
        return Claim(interaction_id, token, snapshot, row["serialization_version"])

    def _verified_snapshot(self, row: aiosqlite.Row, supported_versions: Collection[str]) -> bytes:
        interaction_id = row["interaction_id"]
        version = row["serialization_version"]
        if version not in supported_versions:
            raise SnapshotError(
                f"run {interaction_id} was saved with snapshot format {version!r}, but this "
                f"release reads only {', '.join(sorted(supported_versions))}; resume it with "
                "the bridgic-coldmail release that paused it"
            )
        snapshot, signature = row["snapshot"], row["signature"]
        if (
            snapshot is None
            or signature is None
            or not self._signer.verify(interaction_id, version, bytes(snapshot), bytes(signature))
        ):
            raise SnapshotIntegrityError(
                f"the snapshot of run {interaction_id} does not match its signature: it was "
                "altered, truncated or copied from another run, and was not loaded; the run "
                "cannot be resumed (restore the database from a backup)"
            )
        return bytes(snapshot)

    async def complete(self, claim: Claim, final: EmailSequence) -> Run:
        """Record the refined sequence and drop the snapshot, which has done its job."""
        now = _iso(_now())
        async with self._write() as conn:
            rows = await conn.execute_fetchall(
                f"""UPDATE runs
                    SET status = 'completed', final_json = ?, snapshot = NULL, signature = NULL,
                        last_error = NULL, claim_token = NULL, claim_expires_at = NULL,
                        completed_at = ?, updated_at = ?
                    WHERE interaction_id = ? AND claim_token = ? AND status = 'resuming'
                    RETURNING {_RUN_COLUMNS}""",
                (final.model_dump_json(), now, now, claim.interaction_id, claim.token),
            )
            for row in rows:
                await self._event(claim.interaction_id, now, "completed", row["feedback"])
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
        now = _iso(_now())
        async with self._write() as conn:
            cursor = await conn.execute(
                """UPDATE runs
                   SET status = 'awaiting_feedback', last_error = ?, claim_token = NULL,
                       claim_expires_at = NULL, updated_at = ?
                   WHERE interaction_id = ? AND claim_token = ?""",
                (error, now, claim.interaction_id, claim.token),
            )
            if cursor.rowcount:
                await self._event(claim.interaction_id, now, "failed", error)

    async def purge(self, older_than: timedelta, statuses: Collection[RunStatus]) -> int:
        """Delete runs of these statuses not updated for ``older_than``; returns how many."""
        cutoff = _iso(_now() - older_than)
        marks = ", ".join("?" for _ in statuses)
        where = f"status IN ({marks}) AND updated_at < ?"
        params = (*(s.value for s in statuses), cutoff)
        async with self._write() as conn:
            await conn.execute(
                f"DELETE FROM run_events WHERE interaction_id IN "
                f"(SELECT interaction_id FROM runs WHERE {where})",
                params,
            )
            cursor = await conn.execute(f"DELETE FROM runs WHERE {where}", params)
        return cursor.rowcount


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
