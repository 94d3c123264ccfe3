"""Numbered schema migrations, recorded in ``coldmail_schema`` and applied on open.

Append new migrations; never edit one that has shipped. Each runs inside the same
``BEGIN IMMEDIATE`` transaction as the version check, so concurrent openers apply it once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosqlite

from .signing import SnapshotSigner


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[aiosqlite.Connection, SnapshotSigner], Awaitable[None]]


async def _execute_script(conn: aiosqlite.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction first; run statement by statement.
    # Statements end with ";" at the end of a line; a trigger body ends with "END;".
    statement: list[str] = []
    for line in script.splitlines():
        statement.append(line)
        text = "\n".join(statement).strip()
        if text.endswith(";") and (" TRIGGER " not in text or text.endswith("END;")):
            await conn.execute(text[:-1])
            statement = []
    if "\n".join(statement).strip():
        await conn.execute("\n".join(statement))


async def _v1_runs(conn: aiosqlite.Connection, signer: SnapshotSigner) -> None:
    await _execute_script(conn, V1_SCHEMA)


V1_SCHEMA = """
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
CREATE INDEX runs_by_age ON runs (created_at DESC, interaction_id DESC)
"""
"""Schema 1 (bridgic-coldmail 0.1), kept verbatim: tests build old databases from it."""


async def _v2_signatures_and_history(conn: aiosqlite.Connection, signer: SnapshotSigner) -> None:
    await _execute_script(
        conn,
        """
        ALTER TABLE runs ADD COLUMN signature BLOB;
        CREATE TABLE run_events (
            id             INTEGER PRIMARY KEY AUTOINCREMENT,
            interaction_id TEXT NOT NULL,
            at             TEXT NOT NULL,
            kind           TEXT NOT NULL
                           CHECK (kind IN ('paused', 'feedback', 'failed', 'completed')),
            detail         TEXT
        );
        CREATE INDEX run_events_by_run ON run_events (interaction_id, id);
        CREATE INDEX runs_by_status_and_update ON runs (status, updated_at);
        CREATE TABLE coldmail_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
        """,
    )
    # Runs paused by 0.1 were stored unsigned. They are signed now, trusting the bytes as they
    # are at the moment of the upgrade (documented in the README).
    rows = await conn.execute_fetchall(
        "SELECT interaction_id, serialization_version, snapshot FROM runs "
        "WHERE snapshot IS NOT NULL"
    )
    for interaction_id, version, snapshot in rows:
        await conn.execute(
            "UPDATE runs SET signature = ? WHERE interaction_id = ?",
            (signer.sign(interaction_id, version, bytes(snapshot)), interaction_id),
        )
    # Their history so far, from the timestamps schema 1 kept.
    await conn.execute(
        "INSERT INTO run_events (interaction_id, at, kind) "
        "SELECT interaction_id, created_at, 'paused' FROM runs ORDER BY created_at"
    )
    await conn.execute(
        "INSERT INTO run_events (interaction_id, at, kind, detail) "
        "SELECT interaction_id, completed_at, 'completed', feedback FROM runs "
        "WHERE status = 'completed' ORDER BY completed_at"
    )


HISTORY_TRIGGERS = """
CREATE TRIGGER run_paused AFTER INSERT ON runs BEGIN
    INSERT INTO run_events (interaction_id, at, kind)
    VALUES (NEW.interaction_id, NEW.created_at, 'paused');
END;
CREATE TRIGGER run_claimed AFTER UPDATE OF status ON runs
WHEN NEW.status = 'resuming' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'feedback', NEW.feedback);
END;
CREATE TRIGGER run_released AFTER UPDATE OF status ON runs
WHEN OLD.status = 'resuming' AND NEW.status = 'awaiting_feedback' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'failed', NEW.last_error);
END;
CREATE TRIGGER run_completed AFTER UPDATE OF status ON runs
WHEN NEW.status = 'completed' AND OLD.status <> 'completed' BEGIN
    INSERT INTO run_events (interaction_id, at, kind, detail)
    VALUES (NEW.interaction_id, NEW.updated_at, 'completed', NEW.feedback);
END;
CREATE TRIGGER run_deleted AFTER DELETE ON runs BEGIN
    DELETE FROM run_events WHERE interaction_id = OLD.interaction_id;
END
"""


async def _v3_history_by_triggers(conn: aiosqlite.Connection, signer: SnapshotSigner) -> None:
    # The history is written by triggers, so that every write stays one SQL statement (one
    # round trip to SQLite's thread) and its history can never be left out.
    await _execute_script(conn, HISTORY_TRIGGERS)


_V4_COLUMNS = (
    "interaction_id, status, brief_json, draft_json, question, serialization_version, "
    "feedback, final_json, last_error, claim_token, claim_expires_at, created_at, updated_at, "
    "completed_at, snapshot, signature"
)


async def _v4_snapshot_last(conn: aiosqlite.Connection, signer: SnapshotSigner) -> None:
    # SQLite lays a row out in column order and a 4-5 KB snapshot spills into overflow pages:
    # with the snapshot in the middle, reading any later column (status times, feedback)
    # walked those pages, and listing 50 runs of a 100,000-run store cost 1.6x more than of
    # a 1,000-run one (benchmarks/). The table is rebuilt with the blobs last.
    await _execute_script(
        conn,
        f"""
        CREATE TABLE runs_v4 (
            interaction_id        TEXT PRIMARY KEY,
            status                TEXT NOT NULL
                                  CHECK (status IN ('awaiting_feedback', 'resuming', 'completed')),
            brief_json            TEXT NOT NULL,
            draft_json            TEXT NOT NULL,
            question              TEXT NOT NULL,
            serialization_version TEXT NOT NULL,
            feedback              TEXT,
            final_json            TEXT,
            last_error            TEXT,
            claim_token           TEXT,
            claim_expires_at      TEXT,
            created_at            TEXT NOT NULL,
            updated_at            TEXT NOT NULL,
            completed_at          TEXT,
            snapshot              BLOB,
            signature             BLOB
        );
        INSERT INTO runs_v4 ({_V4_COLUMNS}) SELECT {_V4_COLUMNS} FROM runs;
        DROP TABLE runs;
        ALTER TABLE runs_v4 RENAME TO runs;
        CREATE INDEX runs_by_status_and_age ON runs (status, created_at DESC, interaction_id DESC);
        CREATE INDEX runs_by_age ON runs (created_at DESC, interaction_id DESC);
        CREATE INDEX runs_by_status_and_update ON runs (status, updated_at);
        """,
    )
    await _execute_script(conn, HISTORY_TRIGGERS)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs table", _v1_runs),
    Migration(2, "snapshot signatures, run history, metadata", _v2_signatures_and_history),
    Migration(3, "history written by triggers", _v3_history_by_triggers),
    Migration(4, "snapshot and signature as the last columns", _v4_snapshot_last),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
