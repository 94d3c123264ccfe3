"""The SQLite store: one row per interaction id, holding the snapshot and everything around it.

Design notes:

* Every write is a single SQL statement in autocommit mode, so it is atomic on its own and
  two tasks sharing one connection cannot interleave inside a transaction.
* Resuming starts with an atomic *claim*: ``UPDATE … WHERE status = 'awaiting_feedback'
  RETURNING snapshot``. Exactly one caller, in any process, gets the row; everyone else sees
  why not (completed, being resumed, unknown). A claim carries a lease, so a resumer that
  dies mid-refine leaves the run claimable again once the lease runs out.
* Listing and showing never read, let alone deserialize, a snapshot: the brief, draft,
  feedback and final sequence are stored beside it as JSON.
* The schema is versioned from day one: numbered migrations, recorded in
  ``coldmail_schema`` and applied on open.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiosqlite

from .errors import ColdmailError, RunBeingResumed, RunConflict, RunNotFound, StoreError
from .models import Brief, EmailSequence, Run, RunStatus

DEFAULT_DB_PATH = Path("snapshots") / "coldmail.db"
DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_LEASE_SECONDS = 300.0

# Numbered migrations. Append, never edit: a database records which ones it has applied.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs table",
        """
        CREATE TABLE runs (
            interaction_id        TEXT PRIMARY KEY,
            status                TEXT NOT NULL
                                  CHECK (status IN ('awaiting_feedback', 'resuming', 'completed')),
            brief_json            TEXT NOT NULL,
            draft_json            TEXT NOT NULL,
            question              TEXT NOT NULL,
            snapshot              BLOB,
            serialization_version TEXT NOT NULL,
            feedback              TEXT,
            final_json            TEXT,
            last_error            TEXT,
            claim_token           TEXT,
            claim_expires_at      TEXT,
            created_at            TEXT NOT NULL,
            updated_at            TEXT NOT NULL,
            completed_at          TEXT
        );
        CREATE INDEX runs_by_status_and_age ON runs (status, created_at DESC, interaction_id DESC);
        CREATE INDEX runs_by_age ON runs (created_at DESC, interaction_id DESC);
        """,
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

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

    def __init__(self, conn: aiosqlite.Connection, path: str, lease_seconds: float) -> None:
        self._conn = conn
        self.path = path
        self.lease_seconds = lease_seconds

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
        """Open the database and bring its schema up to date. The caller must ``close()`` it."""
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
                await _migrate(conn, shown)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, shown, lease_seconds)

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
        """Store a freshly paused run."""
        now = _iso(_now())
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                f"""INSERT INTO runs (interaction_id, status, brief_json, draft_json, question,
                        snapshot, serialization_version, created_at, updated_at)
                    VALUES (?, 'awaiting_feedback', ?, ?, ?, ?, ?, ?, ?)
                    RETURNING {_RUN_COLUMNS}""",
                (
                    interaction_id,
                    brief.model_dump_json(),
                    draft.model_dump_json(),
                    question,
                    snapshot_bytes,
                    serialization_version,
                    now,
                    now,
                ),
            )
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

    async def claim(self, interaction_id: str, feedback: str) -> Claim | Run:
        """Atomically claim a run for resuming with ``feedback``.

        Returns a :class:`Claim` when this caller won, or the stored completed :class:`Run`
        when it already completed with the same feedback.

        Raises:
            RunNotFound: nothing is stored under ``interaction_id``.
            RunConflict: the run completed with different feedback.
            RunBeingResumed: another caller holds an unexpired claim.
        """
        now = _now()
        token = uuid.uuid4().hex
        expires = now + timedelta(seconds=self.lease_seconds)
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                """UPDATE runs
                   SET status = 'resuming', feedback = ?, claim_token = ?,
                       claim_expires_at = ?, updated_at = ?
                   WHERE interaction_id = ?
                     AND (status = 'awaiting_feedback'
                          OR (status = 'resuming' AND claim_expires_at < ?))
                   RETURNING snapshot, serialization_version""",
                (feedback, token, _iso(expires), _iso(now), interaction_id, _iso(now)),
            )
        for row in rows:
            if row["snapshot"] is None:
                raise StoreError(f"run {interaction_id} has no snapshot stored; it cannot resume")
            return Claim(
                interaction_id, token, bytes(row["snapshot"]), row["serialization_version"]
            )

        # Lost: say why. The row may have moved on since, which only changes the explanation.
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                f"SELECT {_RUN_COLUMNS}, claim_expires_at FROM runs WHERE interaction_id = ?",
                (interaction_id,),
            )
        found = next(iter(rows), None)
        if found is None:
            raise RunNotFound(interaction_id, self.path)
        row = found
        if row["status"] == RunStatus.COMPLETED.value:
            if row["feedback"] == feedback:
                return _run_from_row(row)
            raise RunConflict(
                f"run {interaction_id} already completed with different feedback "
                f"({_preview(row['feedback'])}); start a new run to try another audience"
            )
        raise RunBeingResumed(
            f"run {interaction_id} is being resumed by another process right now; "
            f"run `coldmail show {interaction_id}` in a moment to see the result "
            f"(if that process died, the run can be resumed again after "
            f"{row['claim_expires_at'] or 'its lease expires'})"
        )

    async def complete(self, claim: Claim, final: EmailSequence) -> Run:
        """Record the refined sequence and drop the snapshot, which has done its job."""
        now = _iso(_now())
        with _storage_errors(self.path):
            rows = await self._conn.execute_fetchall(
                f"""UPDATE runs
                    SET status = 'completed', final_json = ?, snapshot = NULL,
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
        with _storage_errors(self.path):
            await self._conn.execute(
                """UPDATE runs
                   SET status = 'awaiting_feedback', last_error = ?, claim_token = NULL,
                       claim_expires_at = NULL, updated_at = ?
                   WHERE interaction_id = ? AND claim_token = ?""",
                (error, _iso(_now()), claim.interaction_id, claim.token),
            )


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


async def _migrate(conn: aiosqlite.Connection, path: str) -> None:
    """Apply the missing migrations in one IMMEDIATE transaction (safe across processes)."""
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
                f"{path} is an SQLite database of another application (it has no "
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
                f"{path} has schema version {current}, newer than this bridgic-coldmail "
                f"understands ({SCHEMA_VERSION}); upgrade bridgic-coldmail"
            )
        for version, name, sql in MIGRATIONS:
            if version > current:
                for statement in filter(str.strip, sql.split(";")):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO coldmail_schema (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, _iso(_now())),
                )
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


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
