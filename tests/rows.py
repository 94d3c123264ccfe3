"""Raw access to a store's rows, for tests only: read, tamper, age, expire leases.

Tests reach below the store's API only through a :class:`Rows` object, never with ad-hoc
SQL, so the same test runs against SQLite and PostgreSQL (``tests/pg.py`` provides
``PostgresRows``). Everything here bypasses the store on purpose — it is how an attacker
with write access to the database, a crash, or time passing looks from the inside.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from bridgic_coldmail.signing import KeySource, SnapshotSigner, key_file_for, load_signer
from bridgic_coldmail.store.codec import iso, row_mac_values
from bridgic_coldmail.store.sqlite_sql import V1_RUNS

TIME_COLUMNS = ("created_at", "updated_at", "completed_at", "claim_expires_at")


class Rows(Protocol):
    """What tests may do to a store's tables directly."""

    def row(self, interaction_id: str) -> dict[str, Any] | None:
        """Every column of the run (the snapshot as bytes), or None."""
        ...

    def set(self, interaction_id: str, **columns: Any) -> None:
        """Overwrite columns of one run (times as datetimes)."""
        ...

    def insert(self, row: dict[str, Any]) -> None:
        """Insert a run row exactly as given (e.g. a copy under another id)."""
        ...

    def delete(self, interaction_id: str) -> None:
        """Delete a run's row (not its events)."""
        ...

    def events(self, interaction_id: str) -> list[dict[str, Any]]:
        """The run's history rows, by ``seq``."""
        ...

    def set_event(self, interaction_id: str, seq: int, **columns: Any) -> None:
        """Overwrite columns of one history event."""
        ...

    def delete_event(self, interaction_id: str, seq: int) -> None:
        """Delete one history event."""
        ...

    def meta(self, key: str) -> str | None:
        """A value of ``coldmail_meta``."""
        ...

    def schema_versions(self) -> list[int]:
        """The migrations recorded as applied, in order."""
        ...

    def count(self) -> int:
        """How many runs are stored."""
        ...

    def ids(self) -> list[str]:
        """Every stored run's id, oldest first."""
        ...

    def record_schema_version(self, version: int) -> None:
        """Record a migration as applied (e.g. one from a newer release)."""
        ...

    def lock(self) -> Any:
        """A context manager holding the store's write lock (SQLite: the file; PostgreSQL:
        the runs table) while its block runs."""
        ...

    def notifications(self, interaction_id: str | None = None) -> list[dict[str, Any]]:
        """The outbox rows (of one run, or all), oldest first, by id within a moment."""
        ...

    def set_notification(self, notification_id: str, **columns: Any) -> None:
        """Overwrite columns of one outbox row (times as datetimes)."""
        ...

    def pauses(self, interaction_id: str) -> list[dict[str, Any]]:
        """The run's kept pauses, by round."""
        ...

    def set_pause(self, interaction_id: str, round: int, **columns: Any) -> None:
        """Overwrite columns of one kept pause."""
        ...

    def delete_pauses(self, interaction_id: str) -> None:
        """Delete every kept pause of a run."""
        ...

    def execute(self, statement: str, *params: Any) -> None:
        """Run one statement as written (``?`` placeholders, rewritten for PostgreSQL)."""

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        """Every column of a personalization batch (issue 23), or None."""
        ...

    def set_batch(self, batch_id: str, **columns: Any) -> None:
        """Overwrite columns of a batch (times as datetimes)."""
        ...

    def batch_leads(self, batch_id: str) -> list[dict[str, Any]]:
        """A batch's lead rows, by position."""
        ...

    def set_batch_lead(self, batch_id: str, position: int, **columns: Any) -> None:
        """Overwrite columns of one lead row of a batch (times as datetimes)."""
        ...


def expire_lease(rows: Rows, interaction_id: str) -> None:
    """As if the resumer's lease ran out a minute ago."""
    rows.set(interaction_id, claim_expires_at=datetime.now(timezone.utc) - timedelta(minutes=1))


def age(rows: Rows, interaction_id: str, by: timedelta) -> None:
    """As if the run was created and last changed ``by`` ago."""
    then = datetime.now(timezone.utc) - by
    rows.set(interaction_id, created_at=then, updated_at=then)


class SqliteRows:
    """:class:`Rows` over an SQLite file, with the standard library's ``sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _stored(value: Any) -> Any:
        return iso(value) if isinstance(value, datetime) else value

    def row(self, interaction_id: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            found = conn.execute("SELECT * FROM runs WHERE interaction_id = ?", (interaction_id,))
            row = found.fetchone()
            return None if row is None else dict(row)

    def set(self, interaction_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE runs SET {assignments} WHERE interaction_id = ?",
                (*(self._stored(v) for v in columns.values()), interaction_id),
            )

    def insert(self, row: dict[str, Any]) -> None:
        names = list(row)
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                [self._stored(row[n]) for n in names],
            )

    def delete(self, interaction_id: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE interaction_id = ?", (interaction_id,))

    def events(self, interaction_id: str) -> list[dict[str, Any]]:
        with self._connect() as conn:
            found = conn.execute(
                "SELECT * FROM run_events WHERE interaction_id = ? ORDER BY seq", (interaction_id,)
            )
            return [dict(r) for r in found.fetchall()]

    def set_event(self, interaction_id: str, seq: int, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE run_events SET {assignments} WHERE interaction_id = ? AND seq = ?",
                (*(self._stored(v) for v in columns.values()), interaction_id, seq),
            )

    def delete_event(self, interaction_id: str, seq: int) -> None:
        with self._connect() as conn:
            conn.execute(
                "DELETE FROM run_events WHERE interaction_id = ? AND seq = ?",
                (interaction_id, seq),
            )

    def meta(self, key: str) -> str | None:
        with self._connect() as conn:
            found = conn.execute("SELECT value FROM coldmail_meta WHERE key = ?", (key,))
            row = found.fetchone()
            return None if row is None else str(row[0])

    def schema_versions(self) -> list[int]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT version FROM coldmail_schema ORDER BY 1")]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def ids(self) -> list[str]:
        with self._connect() as conn:
            found = conn.execute("SELECT interaction_id FROM runs ORDER BY created_at")
            return [str(r[0]) for r in found]

    def record_schema_version(self, version: int) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO coldmail_schema (version, name, applied_at) VALUES (?, ?, ?)",
                (version, "from the future", iso(datetime.now(timezone.utc))),
            )

    def notifications(self, interaction_id: str | None = None) -> list[dict[str, Any]]:
        where, params = (
            ("WHERE interaction_id = ?", (interaction_id,)) if interaction_id else ("", ())
        )
        with self._connect() as conn:
            found = conn.execute(
                f"SELECT * FROM notifications {where} ORDER BY created_at, id", params
            )
            return [dict(r) for r in found.fetchall()]

    def set_notification(self, notification_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE notifications SET {assignments} WHERE id = ?",
                (*(self._stored(v) for v in columns.values()), notification_id),
            )

    def pauses(self, interaction_id: str) -> list[dict[str, Any]]:
        with self._connect() as conn:
            found = conn.execute(
                "SELECT * FROM pauses WHERE interaction_id = ? ORDER BY round", (interaction_id,)
            )
            return [dict(r) for r in found.fetchall()]

    def set_pause(self, interaction_id: str, round: int, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE pauses SET {assignments} WHERE interaction_id = ? AND round = ?",
                (*(self._stored(v) for v in columns.values()), interaction_id, round),
            )

    def delete_pauses(self, interaction_id: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM pauses WHERE interaction_id = ?", (interaction_id,))

    def execute(self, statement: str, *params: Any) -> None:
        with self._connect() as conn:
            conn.execute(statement, params)

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            found = conn.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
            row = found.fetchone()
            return None if row is None else dict(row)

    def set_batch(self, batch_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE batches SET {assignments} WHERE batch_id = ?",
                (*(self._stored(v) for v in columns.values()), batch_id),
            )

    def batch_leads(self, batch_id: str) -> list[dict[str, Any]]:
        with self._connect() as conn:
            found = conn.execute(
                "SELECT * FROM batch_leads WHERE batch_id = ? ORDER BY position", (batch_id,)
            )
            return [dict(r) for r in found.fetchall()]

    def set_batch_lead(self, batch_id: str, position: int, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE batch_leads SET {assignments} WHERE batch_id = ? AND position = ?",
                (*(self._stored(v) for v in columns.values()), batch_id, position),
            )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold SQLite's write lock (an open ``BEGIN IMMEDIATE``) while the block runs."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")


def signer_for(db_path: Path) -> SnapshotSigner:
    """The signer of an SQLite database's key file (for tests that act as its owner)."""
    return load_signer(KeySource(None, key_file_for(db_path)), may_create=False, holds_runs=True)


def write_as_owner(rows: Rows, signer: SnapshotSigner, interaction_id: str, **columns: Any) -> None:
    """Change columns and re-sign the row and its snapshot with the real key: what a newer
    release of this package (holding the key) could have written — not an attacker."""
    row = rows.row(interaction_id)
    assert row is not None, interaction_id
    row.update(columns)
    snapshot = row.get("snapshot")
    if snapshot is not None:
        row["signature"] = signer.sign(
            interaction_id, str(row["serialization_version"]), bytes(snapshot)
        )
    row["row_mac"] = signer.row_mac(row_mac_values(row))
    rows.set(
        interaction_id, **{**columns, "signature": row["signature"], "row_mac": row["row_mac"]}
    )


def make_schema_1_database(db_path: Path, runs: list[tuple[str, bytes, str]]) -> None:
    """An SQLite database exactly as bridgic-coldmail 0.1 wrote it: schema 1, unsigned
    snapshots. ``runs``: (interaction id, snapshot bytes, brief JSON), all awaiting feedback."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    draft = (
        '{"opener":{"subject":"s","body":"b","wait_days":0},'
        '"follow_up":{"subject":"s2","body":"b2","wait_days":3}}'
    )
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE coldmail_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL)"
        )
        for statement in V1_RUNS:
            conn.execute(statement)
        conn.execute("INSERT INTO coldmail_schema VALUES (1, 'runs table', '2026-11-01T00:00:00')")
        for interaction_id, snapshot, brief_json in runs:
            conn.execute(
                "INSERT INTO runs (interaction_id, status, brief_json, draft_json, question, "
                "snapshot, serialization_version, created_at, updated_at) "
                "VALUES (?, 'awaiting_feedback', ?, ?, 'Who?', ?, '1.0', ?, ?)",
                (
                    interaction_id,
                    brief_json,
                    draft,
                    snapshot,
                    "2026-11-01T00:00:00.000000+00:00",
                    "2026-11-01T00:00:00.000000+00:00",
                ),
            )


def as_legacy(rows: Rows, signer: SnapshotSigner, interaction_id: str, **columns: Any) -> None:
    """Make a run look exactly as one stored before 0.5 looks after the upgrade: no row MAC,
    the upgrade's legacy mark, and (given in ``columns``) whatever else that release wrote."""
    rows.set(
        interaction_id, row_mac=None, legacy_mark=signer.legacy_mark(interaction_id), **columns
    )
