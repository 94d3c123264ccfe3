"""The SQLite store: one file, one row per run, its snapshot and its signed history beside it.

Design notes:

* Every operation is **one transaction run on aiosqlite's thread in one hop**: ``BEGIN
  IMMEDIATE`` (the write lock, waiting up to the busy timeout), read the row, check its MACs
  and decide in Python with the rules of ``base.py``, write the row and its history events,
  ``COMMIT``. One hop per operation is most of what this layer costs (benchmarks/NOTES.md),
  and checking in Python keeps SQLite and PostgreSQL on the same rules. aiosqlite has no
  public call for "run this function on your thread", so :meth:`SqliteRunStore._hop` uses
  its ``_execute`` (aiosqlite is pinned below 0.23; ``tests/integration/test_store.py`` checks it).
* A claim decides **outside the write lock**, in the same hop: it reads the row (a committed
  read), checks and decides, then writes in a short ``BEGIN IMMEDIATE`` only if every column
  and the schema cookie are still what it read (a compare-and-set), else decides again. Its
  Python no longer holds the lock other processes wait for (benchmarks/NOTES.md, change 4).
* Durability where it matters: a pause and a result are committed with ``synchronous=FULL``
  (fsync before the call returns); a claim, a lease renewal and a release with ``NORMAL``,
  because losing one to a power cut only leaves the run claimable again.
* **Group commit** (``group.py``): the completes that arrive while one commits are recorded
  in the next transaction together, a savepoint each (a run's row, its events and the
  notifications announcing it: a member that fails writes none of them), so N concurrent
  results cost one hop and one fsync; each caller hears back only after that COMMIT.
* Listing and showing never read, let alone deserialize, a snapshot; the snapshot and its
  signature are the last columns so that reading the others never walks its overflow pages.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: writers wait in SQLite's busy handler
    fcntl = None  # type: ignore[assignment]

from ..errors import ColdmailError, DatabaseNotFound, StoreError
from ..models import Decision, ListedRun, Run, RunEvent, RunStatus
from ..settings import DEFAULT_BUSY_TIMEOUT, DEFAULT_LEASE_SECONDS
from ..signing import KeySource, SnapshotSigner, key_file_for
from . import sqlite_sql as sql
from .batches import (
    BATCH_COLUMNS,
    INSERTED_LEAD_COLUMNS,
    LEAD_COLUMNS,
    LEAD_STATES,
    RECORDED_COLUMNS,
    Batch,
    BatchAction,
    BatchApproved,
    BatchClaim,
    BatchCounts,
    BatchLeadRow,
    BatchPaused,
    BatchRefusal,
    LeadClaim,
    LeadState,
    LineRecord,
    NewBatch,
    batch_of,
    batch_verified,
    claim_of_plan,
    counts_of,
    holds_batch,
    judge_take,
    lead_claim_of,
    lead_row_of,
    new_batch_row,
    new_lead_rows,
    plan_batch_release,
    plan_done,
    plan_step,
    recorded_lead,
    reset_lead,
    seal_batch,
    sort_claimed,
)
from .codec import (
    RUN_COLUMNS,
    RowChange,
    decode_history,
    decode_row,
    is_legacy,
    iso,
    run_from_row,
    status_counts,
)
from .forks import (
    FORK_COLUMNS,
    KEEP_LEFT_COLUMNS,
    MAX_DEPTH,
    MAX_FAMILY,
    PAUSE_COLUMNS,
    Family,
    ForkLink,
    family_of,
    judge_fork,
    left_values,
    pause_left,
    plan_fork,
)
from .group import GroupCommit, Outcome
from .migrations import Migration, migrate, run_blocking
from .outbox import (
    NOTIFICATION_COLUMNS,
    Delivery,
    DueRun,
    DueSoonestSql,
    OutboxClaim,
    OutboxOutcome,
    bounded_error,
    claim_of,
    delivery_of,
    due_deadline,
    event_of_result,
    insert_statement,
    insert_values,
    page_due_soonest,
    plan_notifications,
    plan_sample_notifications,
    seal_policy,
)
from .protocol import Claim, ClaimOutcome, Finished, NewRun, OutboxPlan, Paused, Refusal
from .rules import (
    ClaimPlan,
    claim_from,
    claimed_again,
    completed_run,
    holds,
    intact,
    judge_claim,
    plan_claim,
    plan_complete,
    plan_insert,
    plan_release,
    recorded,
    seal_held,
)
from .sqlite_sql import EXPECTED_OBJECTS, LEGACY_MARK_VERSION, MIGRATIONS

T = TypeVar("T")

_SELECT_ROW = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE interaction_id = ?"
_SELECT_ROW_WITH_SNAPSHOT = (
    f"SELECT {', '.join(RUN_COLUMNS)}, snapshot FROM runs WHERE interaction_id = ?"
)
_HOLD_ROW = (
    # The schema cookie comes with the row, so the planted-object check costs no statement
    # of its own (a one-row select, left-joined: the cookie comes even without a run).
    f"SELECT s.schema_version AS schema_cookie, {', '.join('r.' + c for c in RUN_COLUMNS)}, "
    "r.snapshot, r.policy_json, r.policy_mac "
    "FROM (SELECT schema_version FROM pragma_schema_version) AS s "
    "LEFT JOIN runs AS r ON r.interaction_id = ?"
)
_UPDATE_COLUMNS = [c for c in RUN_COLUMNS if c != "interaction_id"]
_UPDATE_ROW = (
    f"UPDATE runs SET {', '.join(f'{c} = ?' for c in _UPDATE_COLUMNS)} WHERE interaction_id = ?"
)
_UPDATE_ROW_AND_SNAPSHOT = (
    f"UPDATE runs SET {', '.join(f'{c} = ?' for c in _UPDATE_COLUMNS)}, snapshot = ? "
    "WHERE interaction_id = ?"
)
_UPDATE_ROW_IF_UNCHANGED = (
    # A compare-and-set: every column as it was read, and the schema cookie that was checked.
    f"UPDATE runs SET {', '.join(f'{c} = ?' for c in _UPDATE_COLUMNS)} WHERE interaction_id = ? "
    f"AND {' AND '.join(f'{c} IS ?' for c in _UPDATE_COLUMNS)} "
    "AND (SELECT schema_version FROM pragma_schema_version) = ?"
)
_INSERT_ROW = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}, snapshot, policy_json, policy_mac) "
    f"VALUES ({', '.join('?' for _ in RUN_COLUMNS)}, ?, ?, ?)"
)
_SELECT_ROW_WITH_POLICY = (
    f"SELECT {', '.join(RUN_COLUMNS)}, policy_json, policy_mac FROM runs WHERE interaction_id = ?"
)
_NOTIFICATION_SELECT = f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications"
_SELECT_FORKED = (
    # The parent (snapshot and notify policy included) and its kept pause of the round.
    f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, r.snapshot, r.policy_json, "
    f"r.policy_mac, {', '.join(f'p.{c} AS kept_{c}' for c in PAUSE_COLUMNS)} "
    "FROM runs AS r LEFT JOIN pauses AS p ON p.interaction_id = r.interaction_id "
    "AND p.round = ? WHERE r.interaction_id = ?"
)
_INSERT_FORK = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}, snapshot, policy_json, policy_mac, "
    f"{', '.join(FORK_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in RUN_COLUMNS)}, ?, ?, ?, ?, ?, ?)"
)
_KEEP_LEFT = (
    # The run's current snapshot, about to be replaced or cleared, copied to the kept pauses
    # inside the database (store/forks.py, pause_left).
    f"INSERT OR REPLACE INTO pauses ({', '.join(PAUSE_COLUMNS)}) "
    f"SELECT {', '.join('?' for _ in KEEP_LEFT_COLUMNS)}, snapshot FROM runs "
    "WHERE interaction_id = ? AND snapshot IS NOT NULL"
)
_FAMILY_COLUMNS = f"{', '.join(RUN_COLUMNS)}, {', '.join(FORK_COLUMNS)}"
_FAMILY_UP = (
    # The run, then its parent, the parent's parent…: by the parent_id column (each link is
    # verified in Python), at most MAX_DEPTH steps.
    "WITH RECURSIVE line(interaction_id, depth) AS ("
    " SELECT interaction_id, 0 FROM runs WHERE interaction_id = ?"
    " UNION SELECT r.parent_id, line.depth + 1 FROM runs AS r JOIN line"
    " ON r.interaction_id = line.interaction_id"
    " WHERE r.parent_id IS NOT NULL AND line.depth < ?) "
    f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, "
    f"{', '.join('r.' + c for c in FORK_COLUMNS)} "
    "FROM line JOIN runs AS r ON r.interaction_id = line.interaction_id ORDER BY line.depth"
)
_FAMILY_DOWN = (
    # The root and every run below it, oldest first.
    "WITH RECURSIVE tree(interaction_id) AS ("
    " SELECT ? UNION SELECT r.interaction_id FROM runs AS r JOIN tree"
    " ON r.parent_id = tree.interaction_id) "
    f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, "
    f"{', '.join('r.' + c for c in FORK_COLUMNS)} "
    "FROM tree JOIN runs AS r ON r.interaction_id = tree.interaction_id "
    "ORDER BY r.created_at, r.interaction_id LIMIT ?"
)
_EVENT_COLUMNS = "interaction_id, seq, at, kind, round, actor, detail, sequence_json, mac"
_INSERT_EVENT = f"INSERT INTO run_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SqliteRunStore:
    """Runs in one SQLite file. Open with ``await SqliteRunStore.connect(path)`` (and
    ``close()``), or ``async with store.open_store(settings)``."""

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
        self._schema = _SchemaGuard(path)
        self.location = path
        self.lease_seconds = lease_seconds
        self.busy_timeout = busy_timeout
        self._group: GroupCommit[Callable[[sqlite3.Connection], Any]] = GroupCommit(
            self._complete_group
        )

    @classmethod
    async def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        secret_key: str | None = None,
        key_file: Path | None = None,
        create: bool = True,
    ) -> SqliteRunStore:
        """Open the database, migrate it and load its signing key; ``create``: make the file,
        its folder and its key when there is no database yet.

        The caller must ``close()`` the store.

        Raises:
            DatabaseNotFound: ``create`` is False and there is no database at ``path`` (no
                file, or an empty one); nothing was created.
            StoreError: the path cannot hold a database, or the file is not ours.
            ConfigurationError: no usable signing key (see ``signing.load_signer``).
        """
        db_path = _prepare_path(Path(path), create=create)
        shown = str(path)
        keys = KeySource(secret=secret_key, file=key_file or key_file_for(db_path))
        # Without create, SQLite opens an existing file only (mode=rw), so a file deleted
        # since the check above is not silently made again.
        target = db_path if create else f"{db_path.absolute().as_uri()}?mode=rw"
        conn = aiosqlite.connect(
            target, isolation_level=None, timeout=busy_timeout, uri=not create, factory=_Connection
        )
        try:
            with _storage_errors(shown, busy_timeout, missing_ok=not create):
                await conn
        except BaseException:
            await _stopped(conn)
            raise
        lock = _WriterLock.open(db_path, busy_timeout)
        try:
            conn.row_factory = sqlite3.Row
            with _storage_errors(shown, busy_timeout):
                await _on_thread(conn, lambda db: setattr(db, "writer_lock", lock))
                await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute("PRAGMA synchronous = FULL")
                signer = await _on_thread(conn, lambda db: _migrate(db, shown, keys, create))
        except BaseException:
            await conn.close()
            if lock is not None:
                lock.close(forget=True)
            raise
        return cls(conn, shown, signer, lease_seconds, busy_timeout)

    async def signer(self) -> SnapshotSigner:
        return self._signer

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._conn.close()

    async def _hop(self, work: Callable[[sqlite3.Connection], T], *, checked: bool = False) -> T:
        """Run ``work`` on the connection's thread; first make sure no object was planted in
        the schema (``checked``: ``work`` reads the schema cookie itself, with its row)."""
        schema = self._schema

        def guarded(db: sqlite3.Connection) -> T:
            if not checked:
                schema.check(db)
            return work(db)

        with _storage_errors(self.location, self.busy_timeout):
            return await _on_thread(self._conn, guarded)

    # ------------------------------------------------------------------ writes

    async def insert_paused(self, new: NewRun) -> Run:
        """Store a freshly paused run, signed, with its 'paused' event (durable)."""
        signer = self._signer
        now = _now()
        signature = signer.sign(new.interaction_id, new.serialization_version, new.snapshot)
        change = plan_insert(new, now=now, signature=signature)
        change.seal(signer, sign_row=True)
        policy = seal_policy(signer, new.interaction_id, new.notify)
        announced = plan_notifications(
            {**change.row, "policy_json": policy[0], "policy_mac": policy[1]},
            "run.paused",
            now=now,
            signer=signer,
        )

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    _INSERT_ROW,
                    [*(change.row.get(c) for c in RUN_COLUMNS), new.snapshot, *policy],
                )
                _insert_events(db, change)
                _enqueue(db, announced)

        await self._hop(work)
        # Just signed here: no MAC to check; the brief and draft just dumped are reused.
        return run_from_row(change.row, brief=new.brief, draft=new.draft)

    async def claim(
        self,
        interaction_id: str,
        action: Decision,
        supported_versions: Collection[str],
        *,
        token: str | None = None,
    ) -> ClaimOutcome:
        """Take the run to apply ``action``, or say why not; a refusal writes nothing.
        ``token``: see :func:`judge_claim`. An error once the claim is written (at its
        commit) has topic ``commit_unknown``: the claim may hold the run."""
        signer, lease, schema = self._signer, self.lease_seconds, self._schema
        location = self.location

        def work(db: sqlite3.Connection) -> ClaimOutcome:
            # Decided on a committed read, without the write lock; written only if the row
            # (and the schema) is still what was read, else read and decided again.
            while True:
                row = _hold(db, interaction_id, schema)
                cookie = schema.checked
                now = _now()
                snapshot = bytes(row["snapshot"]) if row and row["snapshot"] is not None else None
                verdict = judge_claim(
                    row,
                    action,
                    now=now,
                    supported_versions=supported_versions,
                    signer=signer,
                    snapshot=snapshot,
                    token=token,
                )
                if not isinstance(verdict, ClaimPlan):
                    return verdict
                assert row is not None and snapshot is not None
                if verdict.again:  # nothing written
                    return claimed_again(row, verdict, action, snapshot=snapshot, now=now)
                change, expires = plan_claim(row, verdict, action, now=now, lease=lease)
                change.seal(signer, sign_row=row["row_mac"] is not None)
                written = False
                try:
                    with _transaction(db, durable=False) as tx:
                        written = _update_if_unchanged(db, row, change, cookie)
                        if not written:
                            tx.rollback()
                except sqlite3.Error as exc:
                    if not written:
                        raise
                    raise StoreError(
                        f"the claim's commit in {location} failed ({exc}): it may have been "
                        "recorded; look before you retry",
                        topic="commit_unknown",
                    ) from None
                if written:
                    return claim_from(
                        row, change, verdict, action, snapshot=snapshot, expires=expires
                    )

        return await self._hop(work, checked=True)

    async def renew(self, claim: Claim) -> datetime | None:
        """Extend the lease from now; None when the claim was lost (fenced out)."""
        lease = self.lease_seconds

        def work(db: sqlite3.Connection) -> datetime | None:
            with _transaction(db, durable=False):
                expires = _now() + timedelta(seconds=lease)
                cursor = db.execute(
                    "UPDATE runs SET claim_expires_at = ? "
                    "WHERE interaction_id = ? AND claim_token = ? AND status = 'resuming'",
                    (iso(expires), claim.interaction_id, claim.token),
                )
                return expires if cursor.rowcount == 1 else None

        return await self._hop(work)

    async def complete(self, claim: Claim, result: Paused | Finished) -> Run | None:
        """Record the result if the claim is still ours (durable). Idempotent: when the run
        already records the claim's action (an earlier call committed but its reply was
        lost), that run, unchanged; None when fenced out."""
        signer = self._signer
        signature = (
            signer.sign(claim.interaction_id, result.serialization_version, result.snapshot)
            if isinstance(result, Paused)
            else None
        )
        snapshot = result.snapshot if isinstance(result, Paused) else None

        schema = self._schema

        def work(db: sqlite3.Connection) -> Run | None:
            """In the group's transaction (``group.py``), in a savepoint of its own: writes
            the result and its notifications only if the claim still holds the run."""
            row = _hold(db, claim.interaction_id, schema)
            if not holds(row, claim):
                return recorded(row, claim, signer)
            assert row is not None
            now = _now()
            ok = intact(row, claim, signer)  # else altered since the claim: never re-MACed
            change = plan_complete(row, claim, result, now=now, signature=signature)
            seal_held(change, row, claim, signer, ok=ok)
            left = pause_left(claim, result, row, signer, now=now)
            if left is not None:  # before its snapshot is replaced: each stored once
                db.execute(_KEEP_LEFT, left_values(left))
            _update(db, change, snapshot=snapshot)
            nth = result.round if isinstance(result, Paused) else 1  # round N: the Nth review
            event = event_of_result(result)
            if ok:  # an altered run is announced to no one (its text is not ours)
                _enqueue(db, plan_notifications(change.row, event, now=now, signer=signer, n=nth))
            return completed_run(claim, result, change.row)

        return cast("Run | None", await self._group.commit(work))

    async def _complete_group(
        self, members: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> list[Outcome]:
        """Completes in one durable transaction, one hop (see ``group.py``, ``_run_group``)."""
        outcomes = await self._hop(functools.partial(_run_group, members=members), checked=True)
        return [(value, error and self._mapped(error)) for value, error in outcomes]

    def _mapped(self, error: BaseException) -> BaseException:
        """A member's own error as the ``StoreError`` a lone call would have raised."""
        try:
            with _storage_errors(self.location, self.busy_timeout):
                raise error
        except BaseException as mapped:
            return mapped

    async def release(self, claim: Claim, error: str, *, announce: bool = False) -> bool:
        """Give the run back with the error recorded; False when the claim was lost.
        ``announce``: queue a ``run.failed`` notification with it."""
        signer = self._signer
        query = _SELECT_ROW_WITH_POLICY if announce else _SELECT_ROW

        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db, durable=False) as tx:
                row = _held_row(db, claim, query)
                if row is None:
                    tx.rollback()
                    return False
                now = _now()
                ok = intact(row, claim, signer)  # else altered since the claim: never re-MACed
                change = plan_release(row, error, now=now)
                seal_held(change, row, claim, signer, ok=ok)
                _update(db, change)
                if announce and ok:
                    n = int(change.row["event_count"])
                    _enqueue(
                        db,
                        plan_notifications(change.row, "run.failed", now=now, signer=signer, n=n),
                    )
                return True

        return await self._hop(work)

    async def purge(self, older_than: timedelta, statuses: Collection[RunStatus]) -> int:
        """Delete runs of these statuses not updated for ``older_than``, and their history."""
        cutoff = iso(_now() - older_than)
        names = sorted(s.value for s in statuses)
        marks = ", ".join("?" for _ in names)
        chosen = f"SELECT interaction_id FROM runs WHERE status IN ({marks}) AND updated_at < ?"

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                db.execute(
                    f"DELETE FROM run_events WHERE interaction_id IN ({chosen})",
                    (*names, cutoff),
                )
                db.execute(
                    f"DELETE FROM notifications WHERE interaction_id IN ({chosen})",
                    (*names, cutoff),
                )
                db.execute(
                    f"DELETE FROM pauses WHERE interaction_id IN ({chosen})", (*names, cutoff)
                )
                deleted = db.execute(
                    f"DELETE FROM runs WHERE interaction_id IN ({chosen})", (*names, cutoff)
                ).rowcount
                return int(deleted)

        return await self._hop(work)

    async def trust_unsigned(self, interaction_ids: Collection[str] | None) -> builtins.list[str]:
        """Sign the unsigned snapshots of these runs (all when None); returns their ids.

        Only for an operator who has decided that whoever wrote them is trusted: signing is
        what lets Bridgic's loader (pickle) run them.
        """
        signer = self._signer

        def work(db: sqlite3.Connection) -> list[str]:
            with _transaction(db):
                rows = db.execute(
                    "SELECT interaction_id, serialization_version, snapshot, legacy_mark, "
                    "row_mac, signature FROM runs "
                    "WHERE snapshot IS NOT NULL AND signature IS NULL AND row_mac IS NULL "
                    "ORDER BY created_at"
                ).fetchall()
                wanted = None if interaction_ids is None else set(interaction_ids)
                signed = []
                for interaction_id, version, snapshot, *_ in rows:
                    if wanted is not None and interaction_id not in wanted:
                        continue
                    row = {"interaction_id": interaction_id, "legacy_mark": _[0]}
                    if not is_legacy(row, signer):
                        continue  # a row of this release stripped of its MACs: never signed
                    signature = signer.sign_trusted(interaction_id, version, bytes(snapshot))
                    db.execute(
                        "UPDATE runs SET signature = ? WHERE interaction_id = ?",
                        (signature, interaction_id),
                    )
                    signed.append(str(interaction_id))
                return signed

        return await self._hop(work)

    # ------------------------------------------------------------------ the outbox

    async def claim_notifications(
        self, limit: int, lease_seconds: float
    ) -> builtins.list[OutboxClaim]:
        """Lease up to ``limit`` due notifications (one ``UPDATE … RETURNING`` under the
        write lock: two workers never get the same row)."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> list[OutboxClaim]:
            with _transaction(db, durable=False):
                now = _now()
                rows = db.execute(
                    "UPDATE notifications SET lease_token = ?, lease_until = ?, "
                    "attempts = attempts + 1 WHERE id IN (SELECT id FROM notifications "
                    "WHERE status = 'pending' AND next_attempt_at <= ? "
                    "AND (lease_until IS NULL OR lease_until < ?) "
                    "ORDER BY next_attempt_at, id LIMIT ?) "
                    f"RETURNING {', '.join(NOTIFICATION_COLUMNS)}",
                    (
                        uuid.uuid4().hex,
                        iso(now + timedelta(seconds=lease_seconds)),
                        iso(now),
                        iso(now),
                        limit,
                    ),
                ).fetchall()
                return [claim_of(dict(row), signer) for row in rows]

        return await self._hop(work)

    async def finish_notification(self, claim: OutboxClaim, outcome: OutboxOutcome) -> bool:
        """Record the attempt's outcome if the lease is still ours."""

        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db, durable=False):
                now = _now()
                cursor = db.execute(
                    "UPDATE notifications SET status = ?, next_attempt_at = ?, "
                    "last_error = COALESCE(?, last_error), delivered_at = ?, "
                    "lease_token = NULL, lease_until = NULL WHERE id = ? AND lease_token = ?",
                    (
                        outcome.status,
                        iso(now + timedelta(seconds=outcome.retry_in)),
                        bounded_error(outcome.error),
                        iso(now) if outcome.status == "delivered" else None,
                        claim.id,
                        claim.token,
                    ),
                )
                return cursor.rowcount == 1

        return await self._hop(work)

    async def enqueue(self, interaction_id: str, plan: OutboxPlan) -> int:
        """Queue the rows ``plan`` makes from the run's row now (see ``RunStore.enqueue``)."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db, durable=False):
                row = _fetch(db, _SELECT_ROW_WITH_POLICY, interaction_id)
                if row is None:
                    return 0
                rows = plan(row, _now(), signer)
                _enqueue(db, rows)
                return len(rows)

        return await self._hop(work)

    async def notifications(
        self, interaction_id: str | None = None, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        """Notifications newest first, of one run or all."""
        where, params = (
            ("WHERE interaction_id = ?", [interaction_id]) if interaction_id else ("", [])
        )
        query = f"{_NOTIFICATION_SELECT} {where} ORDER BY created_at DESC, id LIMIT ?"
        rows = await self._hop(lambda db: db.execute(query, (*params, limit)).fetchall())
        return [delivery_of(dict(row), self._signer) for row in rows]

    async def retry_notification(self, notification_id: str) -> Delivery | None:
        """A failed notification queued again from the start of the schedule, due now."""

        def work(db: sqlite3.Connection) -> dict[str, Any] | None:
            with _transaction(db):
                db.execute(
                    "UPDATE notifications SET status = 'pending', attempts = 0, "
                    "next_attempt_at = ?, lease_token = NULL, lease_until = NULL "
                    "WHERE id = ? AND status = 'failed'",
                    (iso(_now()), notification_id),
                )
                row = db.execute(f"{_NOTIFICATION_SELECT} WHERE id = ?", (notification_id,))
                found = row.fetchone()
                return None if found is None else dict(found)

        found = await self._hop(work)
        return None if found is None else delivery_of(found, self._signer)

    # ------------------------------------------------------------------ reads

    async def get(self, interaction_id: str) -> ListedRun | None:
        """The run, a ``DamagedRun`` when it cannot be shown, or None."""
        row = await self._hop(lambda db: _fetch(db, _SELECT_ROW, interaction_id))
        return None if row is None else decode_row(row, self._signer)

    async def list(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ListedRun]:
        """Runs, newest first, optionally of one status; never reads a snapshot."""
        where, params = ("WHERE status = ?", [status.value]) if status else ("", [])
        query = (
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} "
            "ORDER BY created_at DESC, interaction_id DESC LIMIT ? OFFSET ?"
        )
        rows = await self._hop(lambda db: db.execute(query, (*params, limit, offset)).fetchall())
        return [decode_row(dict(row), self._signer) for row in rows]

    async def counts(self) -> dict[RunStatus, int]:
        """How many runs each status has."""
        query = "SELECT status, COUNT(*) FROM runs GROUP BY status"
        rows = await self._hop(lambda db: db.execute(query).fetchall())
        return status_counts((row[0], row[1]) for row in rows)

    async def history(self, interaction_id: str) -> builtins.list[RunEvent] | Refusal | None:
        """The run's events, oldest first; a TAMPERED refusal when they were altered."""

        def work(db: sqlite3.Connection) -> tuple[dict[str, Any] | None, list[Any]]:
            with _transaction(db, immediate=False):
                row = _fetch(db, _SELECT_ROW, interaction_id)
                events = db.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM run_events WHERE interaction_id = ? "
                    "ORDER BY seq",
                    (interaction_id,),
                ).fetchall()
                return row, [dict(e) for e in events]

        row, events = await self._hop(work)
        return None if row is None else decode_history(row, events, self._signer)

    # ------------------------------------------------------------------ forks

    async def fork(
        self,
        parent_id: str,
        round: int,
        new_id: str,
        link: ForkLink,
        supported_versions: Collection[str],
    ) -> Run | Refusal:
        """Store the fork of ``parent_id``'s pause at ``round`` as run ``new_id`` (durable),
        or say why not (nothing written). One transaction: the parent and its kept pause
        read in one statement, then the fork's row (its snapshot in it), event and notify
        policy."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> Run | Refusal:
            with _transaction(db) as tx:
                found = db.execute(_SELECT_FORKED, (round, parent_id)).fetchone()
                row, kept = _split_kept(None if found is None else dict(found))
                plan = judge_fork(
                    row, kept, round, supported_versions=supported_versions, signer=signer
                )
                if isinstance(plan, Refusal):
                    tx.rollback()
                    return plan
                assert row is not None
                write = plan_fork(row, plan, new_id, link, now=_now(), signer=signer)
                change = write.change
                db.execute(
                    _INSERT_FORK,
                    [
                        *(change.row.get(c) for c in RUN_COLUMNS),
                        write.snapshot,
                        *write.policy,
                        *(write.link[c] for c in FORK_COLUMNS),
                    ],
                )
                _insert_events(db, change)
                _enqueue(db, write.timers)
                return run_from_row(change.row)  # just signed here

        return await self._hop(work)

    async def family(self, interaction_id: str) -> Family | None:
        """The run's family: up the parent links to the root, then the root's forks, theirs
        and so on (at most ``MAX_FAMILY``), read in one transaction."""

        def work(db: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            with _transaction(db, immediate=False):
                up = [dict(r) for r in db.execute(_FAMILY_UP, (interaction_id, MAX_DEPTH))]
                if not up:
                    return [], []
                top = str(up[-1]["interaction_id"])
                down = [dict(r) for r in db.execute(_FAMILY_DOWN, (top, MAX_FAMILY))]
                return up, down

        up, down = await self._hop(work)
        return family_of(interaction_id, up, down, self._signer)

    # ------------------------------------------------------------------ batches (issue 23)

    async def create_batch(self, new: NewBatch) -> tuple[Batch, bool]:
        """Create the batch and its leads (one transaction), held by ``new.token``; the
        run's batch for this list, untouched, when there is one. True when created."""
        signer = self._signer
        now = _now()
        expires = now + timedelta(seconds=self.lease_seconds)
        row = seal_batch(new_batch_row(new, now=now, expires=expires), signer)
        leads = new_lead_rows(new, signer)

        def work(db: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            with _transaction(db):
                found = db.execute(
                    f"{_BATCH_SELECT} WHERE interaction_id = ? AND leads_digest = ?",
                    (new.interaction_id, new.leads_digest),
                ).fetchone()
                if found is not None:
                    return dict(found), False
                db.execute(
                    f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in BATCH_COLUMNS)})",
                    [_stored(row.get(c)) for c in BATCH_COLUMNS],
                )
                db.executemany(
                    f"INSERT INTO batch_leads ({', '.join(INSERTED_LEAD_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in INSERTED_LEAD_COLUMNS)})",
                    [[lead[c] for c in INSERTED_LEAD_COLUMNS] for lead in leads],
                )
                return row, True

        stored, created = await self._hop(work)
        return batch_of(stored, signer), created

    async def get_batch(self, batch_id: str) -> Batch | None:
        """The batch, or None."""
        found = await self._hop(
            lambda db: db.execute(f"{_BATCH_SELECT} WHERE batch_id = ?", (batch_id,)).fetchone()
        )
        return None if found is None else batch_of(dict(found), self._signer)

    async def batches(self, interaction_id: str) -> builtins.list[Batch]:
        """The run's batches, newest first."""
        rows = await self._hop(
            lambda db: db.execute(
                f"{_BATCH_SELECT} WHERE interaction_id = ? ORDER BY created_at DESC, batch_id",
                (interaction_id,),
            ).fetchall()
        )
        return [batch_of(dict(row), self._signer) for row in rows]

    async def take_batch(
        self, batch_id: str, action: BatchAction | None, *, token: str
    ) -> BatchClaim | BatchRefusal:
        """Hold the batch to write its sample or apply ``action`` (``batches.judge_take``)."""
        signer, lease = self._signer, self.lease_seconds

        def work(db: sqlite3.Connection) -> BatchClaim | BatchRefusal:
            with _transaction(db, durable=False) as tx:
                found = db.execute(
                    f"{_BATCH_SELECT_WITH_SNAPSHOT} WHERE batch_id = ?", (batch_id,)
                ).fetchone()
                row = None if found is None else dict(found)
                snapshot = None
                if row is not None:
                    stored = row.pop("snapshot")
                    snapshot = None if stored is None else bytes(stored)
                now = _now()
                verdict = judge_take(
                    row,
                    action,
                    token=token,
                    now=now,
                    expires=now + timedelta(seconds=lease),
                    signer=signer,
                    snapshot=snapshot,
                )
                if isinstance(verdict, BatchRefusal):
                    tx.rollback()
                    return verdict
                if not verdict.again:
                    _update_batch(db, verdict.row)
                return claim_of_plan(verdict, token, signer)

        return await self._hop(work)

    async def renew_batch(self, claim: BatchClaim) -> bool:
        """Extend the hold's lease from now; False when it was lost."""
        lease = self.lease_seconds

        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db, durable=False):
                cursor = db.execute(
                    "UPDATE batches SET claim_expires_at = ? "
                    "WHERE batch_id = ? AND claim_token = ? AND status = 'sampling'",
                    (iso(_now() + timedelta(seconds=lease)), claim.batch_id, claim.token),
                )
                return cursor.rowcount == 1

        return await self._hop(work)

    async def step_batch(
        self, claim: BatchClaim, result: BatchPaused | BatchApproved
    ) -> Batch | None:
        """Record the holder's step, fenced (durable): None when the hold was lost. A
        pause also queues its ``batch.sample_ready`` notifications, in its transaction."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> dict[str, Any] | None:
            with _transaction(db) as tx:
                found = db.execute(f"{_BATCH_SELECT} WHERE batch_id = ?", (claim.batch_id,))
                row = found.fetchone()
                if row is None or not holds_batch(dict(row), claim):
                    tx.rollback()
                    return None
                now = _now()
                new, snapshot = plan_step(dict(row), result, now=now, signer=signer)
                _update_batch(db, new, snapshot=snapshot)
                if isinstance(result, BatchPaused):
                    run_row = _fetch(db, _SELECT_ROW_WITH_POLICY, str(new["interaction_id"]))
                    (written,) = db.execute(_SAMPLE_WRITTEN, (claim.batch_id,)).fetchone()
                    _enqueue(
                        db,
                        plan_sample_notifications(
                            run_row, new, int(written), now=now, signer=signer
                        ),
                    )
                return new

        new = await self._hop(work)
        return None if new is None else batch_of(new, signer)

    async def release_batch(self, claim: BatchClaim, error: str) -> bool:
        """Give the batch back with the error; False when the hold was lost."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db, durable=False) as tx:
                found = db.execute(f"{_BATCH_SELECT} WHERE batch_id = ?", (claim.batch_id,))
                row = found.fetchone()
                if row is None or not holds_batch(dict(row), claim):
                    tx.rollback()
                    return False
                _update_batch(db, plan_batch_release(dict(row), error, now=_now(), signer=signer))
                return True

        return await self._hop(work)

    async def reset_sample(self, claim: BatchClaim, before_round: int) -> int:
        """The sample's leads finished in an earlier round, pending again (fenced)."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db) as tx:
                found = db.execute(f"{_BATCH_SELECT} WHERE batch_id = ?", (claim.batch_id,))
                batch = found.fetchone()
                if batch is None or not holds_batch(dict(batch), claim):
                    tx.rollback()
                    return 0
                rows = db.execute(
                    f"{_LEAD_SELECT} WHERE batch_id = ? AND in_sample = 1 "
                    "AND state IN ('written', 'skipped') AND (round IS NULL OR round < ?)",
                    (claim.batch_id, before_round),
                ).fetchall()
                changes = [reset_lead(dict(row), signer) for row in rows]
                db.executemany(
                    "UPDATE batch_leads SET state = 'pending', line = NULL, writer = NULL, "
                    "round = NULL, error = NULL, attempts = 0, lease_token = NULL, "
                    "lease_until = NULL, written_at = NULL, mac = ? "
                    "WHERE batch_id = ? AND position = ?",
                    [(c["mac"], claim.batch_id, c["position"]) for c in changes],
                )
                return len(changes)

        return await self._hop(work)

    async def claim_leads(
        self,
        batch_id: str,
        limit: int,
        lease_seconds: float,
        *,
        sample: bool = False,
        token: str | None = None,
    ) -> builtins.list[LeadClaim]:
        """Lease up to ``limit`` leads to write, lowest position first (one ``UPDATE …
        RETURNING`` under the write lock: two workers never get the same lead)."""
        signer = self._signer
        token = token or uuid.uuid4().hex
        only_sample = " AND in_sample = 1" if sample else ""

        def work(db: sqlite3.Connection) -> list[dict[str, Any]]:
            with _transaction(db, durable=False):
                now = _now()
                rows = db.execute(
                    "UPDATE batch_leads SET state = 'claimed', lease_token = ?, lease_until = ?, "
                    "attempts = attempts + 1 WHERE batch_id = ? AND position IN ("
                    "SELECT position FROM batch_leads WHERE batch_id = ? AND (state = 'pending' "
                    f"OR (state = 'claimed' AND lease_until < ?)){only_sample} "
                    f"ORDER BY position LIMIT ?) RETURNING {', '.join(LEAD_COLUMNS)}",
                    (
                        token,
                        iso(now + timedelta(seconds=lease_seconds)),
                        batch_id,
                        batch_id,
                        iso(now),
                        limit,
                    ),
                ).fetchall()
                claimed, refused = sort_claimed([dict(r) for r in rows], signer)
                db.executemany(
                    "UPDATE batch_leads SET state = 'skipped', error = ?, lease_token = NULL, "
                    "lease_until = NULL WHERE batch_id = ? AND position = ? AND lease_token = ?",
                    [(why, batch_id, position, token) for position, why in refused],
                )
                return claimed

        return [lead_claim_of(row, token) for row in await self._hop(work)]

    async def renew_leads(self, batch_id: str, token: str, lease_seconds: float) -> int:
        """Extend the lease of the leads ``token`` holds; how many it still holds."""

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db, durable=False):
                cursor = db.execute(
                    "UPDATE batch_leads SET lease_until = ? "
                    "WHERE batch_id = ? AND lease_token = ? AND state = 'claimed'",
                    (iso(_now() + timedelta(seconds=lease_seconds)), batch_id, token),
                )
                return int(cursor.rowcount)

        return await self._hop(work)

    async def record_lines(
        self, batch_id: str, token: str, round: int, records: Sequence[LineRecord]
    ) -> int:
        """Record each lead's result if ``token`` still holds it (fenced, durable)."""
        signer = self._signer
        if not records:
            return 0
        by_position = {r.position: r for r in records}

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                marks = ", ".join("?" for _ in by_position)
                rows = db.execute(
                    f"{_LEAD_SELECT} WHERE batch_id = ? AND lease_token = ? AND state = 'claimed' "
                    f"AND position IN ({marks})",
                    (batch_id, token, *by_position),
                ).fetchall()
                now = iso(_now())
                updates = []
                for found in rows:
                    row = dict(found)
                    change = recorded_lead(row, by_position[row["position"]], round, signer)
                    updates.append(
                        (
                            *(change[c] for c in RECORDED_COLUMNS),
                            now if change["state"] == "written" else None,
                            batch_id,
                            row["position"],
                            token,
                        )
                    )
                db.executemany(_RECORD_LEAD, updates)
                return len(updates)

        return await self._hop(work)

    async def batch_counts(self, batch_id: str) -> BatchCounts:
        """How many leads each state has, and the calls and tokens recorded."""
        rows = await self._hop(
            lambda db: db.execute(
                "SELECT state, COUNT(*) AS n, SUM(calls) AS calls, SUM(tokens) AS tokens "
                "FROM batch_leads WHERE batch_id = ? GROUP BY state",
                (batch_id,),
            ).fetchall()
        )
        return counts_of([dict(row) for row in rows])

    async def batch_leads(
        self,
        batch_id: str,
        *,
        states: Sequence[LeadState] = LEAD_STATES,
        sample: bool = False,
        after: int = -1,
        limit: int = 1000,
    ) -> builtins.list[BatchLeadRow]:
        """Leads by position after ``after``, of these states (``sample``: the sample's)."""
        chosen: list[str] = [s for s in LEAD_STATES if s in states] or ["none"]
        marks = ", ".join("?" for _ in chosen)
        only_sample = " AND in_sample = 1" if sample else ""
        query = (
            f"{_LEAD_SELECT} WHERE batch_id = ? AND state IN ({marks}){only_sample} "
            "AND position > ? ORDER BY position LIMIT ?"
        )
        rows = await self._hop(
            lambda db: db.execute(query, (batch_id, *chosen, after, limit)).fetchall()
        )
        return [lead_row_of(dict(row), self._signer) for row in rows]

    async def finish_batch(self, batch_id: str) -> Batch | None:
        """Mark a writing batch done when no lead is left to write; the batch as it is."""
        signer = self._signer

        def work(db: sqlite3.Connection) -> dict[str, Any] | None:
            with _transaction(db, durable=False):
                found = db.execute(f"{_BATCH_SELECT} WHERE batch_id = ?", (batch_id,)).fetchone()
                if found is None:
                    return None
                row = dict(found)
                if row["status"] != "writing" or not batch_verified(row, signer):
                    return row
                left = db.execute(
                    "SELECT 1 FROM batch_leads WHERE batch_id = ? "
                    "AND state IN ('pending', 'claimed') LIMIT 1",
                    (batch_id,),
                ).fetchone()
                if left is not None:
                    return row
                done = plan_done(row, now=_now(), signer=signer)
                _update_batch(db, done)
                return done

        found = await self._hop(work)
        return None if found is None else batch_of(found, signer)

    # ------------------------------------------------------------------ "due soonest"

    async def list_due_soonest(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[DueRun]:
        """Runs waiting with a deadline pending, soonest first, then the others newest
        first; optionally of one status. Never reads a snapshot."""
        sql = DueSoonestSql.build(
            runs="runs", notifications="notifications", mark="?", status=status
        )

        async def fetch(statement: str, params: builtins.list[Any]) -> builtins.list[Any]:
            rows = await self._hop(lambda db: db.execute(statement, params).fetchall())
            return [dict(row) for row in rows]

        rows = await page_due_soonest(fetch, sql, limit=limit, offset=offset)
        return [
            DueRun(decode_row(row, self._signer), due_deadline(row, self._signer)) for row in rows
        ]


async def _stopped(conn: aiosqlite.Connection) -> None:
    """Wait for the thread of a connection that failed to open. aiosqlite tells it to stop
    but does not wait, and ``close()`` does nothing without a connection; a thread still
    running when the event loop closes reports into it and dies with a traceback ("Event
    loop is closed") after the error was printed."""
    thread = conn._thread
    if thread.is_alive():
        await asyncio.to_thread(thread.join, _THREAD_STOP_SECONDS)


_THREAD_STOP_SECONDS = 5.0
"""How long to wait for that thread: it has nothing left to do but stop."""


async def _on_thread(conn: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` on the connection's thread: one round trip, however many statements."""
    result = await conn._execute(work, conn._conn)  # type: ignore[no-untyped-call]
    return cast(T, result)


def _run_group(
    db: sqlite3.Connection, members: Sequence[Callable[[sqlite3.Connection], Any]]
) -> list[Outcome]:
    """Run every member in one durable transaction, each in a savepoint; their values or
    errors, in order, once the COMMIT returned.

    When a failure took the whole transaction with it (SQLite rolls back by itself on some
    I/O, full-disk and out-of-memory errors), the writes of the members before it are gone
    too: the transaction is run again without the member that failed.
    """
    failed: dict[int, BaseException] = {}
    while True:
        outcomes: list[Outcome] = []
        try:
            with _transaction(db):
                for index, work in enumerate(members):
                    if index in failed:
                        outcomes.append((None, failed[index]))
                        continue
                    db.execute("SAVEPOINT complete")
                    try:
                        outcomes.append((work(db), None))
                    except Exception as exc:
                        failed[index] = exc
                        outcomes.append((None, exc))
                        if not db.in_transaction:
                            raise _StartOver from None
                        db.execute("ROLLBACK TO complete")
                    db.execute("RELEASE complete")
        except _StartOver:
            continue
        return outcomes


class _StartOver(Exception):
    """A member's failure rolled the whole group transaction back: run it again without."""


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.done = False

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")
        self.done = True


@contextmanager
def _transaction(
    db: sqlite3.Connection, *, durable: bool = True, immediate: bool = True
) -> Iterator[_Tx]:
    """One transaction; ``durable=False`` commits without waiting for an fsync. A write
    (``immediate``) first queues on the database's writer lock (``_WriterLock``)."""
    lock = getattr(db, "writer_lock", None) if immediate else None
    if lock is not None:
        lock.acquire()
    try:
        with _sqlite_transaction(db, durable=durable, immediate=immediate) as tx:
            yield tx
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def _sqlite_transaction(db: sqlite3.Connection, *, durable: bool, immediate: bool) -> Iterator[_Tx]:
    if not durable:
        db.execute("PRAGMA synchronous = NORMAL")
    tx = _Tx(db)
    try:
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield tx
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if not tx.done:
            db.execute("COMMIT")
    finally:
        if not durable:
            db.execute("PRAGMA synchronous = FULL")


WRITER_LOCK_SUFFIX = "-writer.lock"
"""The file beside the database that its writers queue on."""


class _WriterLock:
    """Writers of one database queue on a lock of the file beside it (``flock``), and SQLite's
    own write lock is then free by the time they ask for it.

    SQLite's busy handler makes a writer that finds the database locked sleep 1, 2, 5, 10 …
    100 ms between tries: with several processes, the lock was often free while every writer
    slept (benchmarks/NOTES.md, change 3). Here a waiter tries again every few hundred
    microseconds (without the GIL), for at most the busy timeout, then fails as SQLite
    would ("database is locked"). The lock is only a queue: SQLite's lock still decides, so a
    writer that does not take this one (an older release, the ``sqlite3`` shell) is still
    excluded, and when the file cannot be made (a read-only folder) writers go without it.
    The operating system releases the lock of a process that dies, however it dies.
    """

    _FIRST_PAUSE = 0.0002
    _LONGEST_PAUSE = 0.002

    def __init__(self, fd: int, path: Path, created: bool, timeout: float) -> None:
        self._fd = fd
        self._path = path
        self._created = created
        self._timeout = timeout

    @classmethod
    def open(cls, db_path: Path, timeout: float) -> _WriterLock | None:
        """The lock file of ``db_path`` (made if missing), or None when it cannot be had."""
        if fcntl is None:
            return None
        path = db_path.with_name(db_path.name + WRITER_LOCK_SUFFIX)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            created = not path.exists()
            fd = os.open(path, flags, 0o600)
        except OSError:
            return None
        return cls(fd, path, created, timeout)

    def acquire(self) -> None:
        """Take the lock, waiting up to the busy timeout.

        Raises:
            sqlite3.OperationalError: "database is locked", as SQLite says after its own wait.
        """
        deadline: float | None = None
        pause = self._FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._timeout
            elif now >= deadline:
                raise sqlite3.OperationalError("database is locked")
            time.sleep(min(pause, max(deadline - now, 0)))
            pause = min(pause * 2, self._LONGEST_PAUSE)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self, *, forget: bool = False) -> None:
        """Close the file (idempotent); ``forget``: remove it too if this store made it (an
        open that failed leaves nothing behind)."""
        if forget and self._created:
            self._path.unlink(missing_ok=True)
            self._created = False
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Connection(sqlite3.Connection):
    """sqlite3's connection, carrying its database's writer lock (closed with it)."""

    writer_lock: _WriterLock | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.writer_lock is not None:
                self.writer_lock.close()


class _SchemaGuard:
    """Refuses a database holding a trigger, a view or any object this release did not make.

    Cheap on every call: the objects are listed only when the schema cookie (``PRAGMA
    schema_version``, which SQLite bumps on every schema change, by any connection) differs
    from the one this store last checked. Each store has its own guard, and a new store
    always lists the objects once, so no cookie value can be forged to skip the check.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self.checked: int | None = None

    def check(self, db: sqlite3.Connection, cookie: int | None = None) -> None:
        """``cookie``: already read by the caller, with its row."""
        if cookie is None:
            cookie = int(db.execute("PRAGMA schema_version").fetchone()[0])
        if cookie != self.checked:
            _check_schema_objects(db, self.location)
            self.checked = cookie


def _check_schema_objects(db: sqlite3.Connection, location: str) -> None:
    """List the schema's objects and refuse any this release did not create."""
    found = {
        (str(kind), str(name))
        for kind, name in db.execute("SELECT type, name FROM sqlite_master")
        if not str(name).startswith("sqlite_autoindex_")
    }
    planted = sorted(found - EXPECTED_OBJECTS)
    if planted:
        listed = ", ".join(f"{kind} {name}" for kind, name in planted)
        raise StoreError(
            f"{location} holds schema objects bridgic-coldmail did not create ({listed}); it "
            "was changed outside bridgic-coldmail and is not used. Restore it from a backup",
            topic="tampered_schema",
        )


def _fetch(db: sqlite3.Connection, query: str, interaction_id: str) -> dict[str, Any] | None:
    row = db.execute(query, (interaction_id,)).fetchone()
    return None if row is None else dict(row)


def _held_row(
    db: sqlite3.Connection, claim: Claim, query: str = _SELECT_ROW
) -> dict[str, Any] | None:
    """The row if ``claim`` still holds it (the fence), else None."""
    row = _fetch(db, query, claim.interaction_id)
    return row if holds(row, claim) else None


def _hold(
    db: sqlite3.Connection, interaction_id: str, schema: _SchemaGuard
) -> dict[str, Any] | None:
    """The run's row (snapshot included) in the open transaction, after checking the schema
    cookie that comes with it (see ``_SchemaGuard``)."""
    found = db.execute(_HOLD_ROW, (interaction_id,)).fetchone()
    schema.check(db, cookie=int(found["schema_cookie"]))
    if found["interaction_id"] is None:
        return None
    row = dict(found)
    del row["schema_cookie"]
    return row


_KEEP = object()


def _update(db: sqlite3.Connection, change: RowChange, *, snapshot: Any = _KEEP) -> None:
    """Write the changed row (and its snapshot, when given) and its new events."""
    row = change.row
    values = [row.get(c) for c in _UPDATE_COLUMNS]
    if snapshot is _KEEP:
        db.execute(_UPDATE_ROW, [*values, row["interaction_id"]])
    else:
        db.execute(_UPDATE_ROW_AND_SNAPSHOT, [*values, snapshot, row["interaction_id"]])
    _insert_events(db, change)


def _enqueue(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """The outbox rows announcing a change: one statement, none when there are none."""
    if rows:
        db.execute(
            insert_statement("notifications", len(rows), "?"), insert_values(rows, as_text=True)
        )


def _update_if_unchanged(
    db: sqlite3.Connection, read: dict[str, Any], change: RowChange, cookie: int | None
) -> bool:
    """Write the changed row and its events if the row is still as ``read`` and the schema
    cookie still the one checked; False (nothing written) otherwise."""
    row = change.row
    values = [row.get(c) for c in _UPDATE_COLUMNS]
    unchanged = [read.get(c) for c in _UPDATE_COLUMNS]
    cursor = db.execute(
        _UPDATE_ROW_IF_UNCHANGED, [*values, row["interaction_id"], *unchanged, cookie]
    )
    if cursor.rowcount != 1:
        return False
    _insert_events(db, change)
    return True


def _split_kept(
    found: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The parent's row and its kept pause (None when there is none) from one joined row."""
    if found is None:
        return None, None
    kept = {c: found.pop(f"kept_{c}") for c in PAUSE_COLUMNS}
    return found, (kept if kept["interaction_id"] is not None else None)


def _insert_events(db: sqlite3.Connection, change: RowChange) -> None:
    db.executemany(
        _INSERT_EVENT,
        [
            (
                e["interaction_id"],
                e["seq"],
                e["at"],
                e["kind"],
                e["round"],
                e["actor"],
                e["detail"],
                e["sequence_json"],
                e["mac"],
            )
            for e in change.events
        ],
    )


def _prepare_path(path: Path, *, create: bool = True) -> Path:
    """Refuse paths SQLite would misreport, and create the parent folder if it is missing
    (``create``; otherwise a missing file is :class:`DatabaseNotFound`).

    A symlink is followed to its real file (so the key beside it is found the same way
    whichever name is used); anything but a regular file or a new path is refused, because
    SQLite would block on a FIFO and create ``-wal``/``-shm`` files beside a device.
    """
    if str(path) in ("", ":memory:"):
        raise StoreError(
            "give the database a file path; an in-memory database loses every run",
            topic="store_path",
        )
    if path.is_symlink():
        target = Path(os.readlink(path))
        if not path.exists():
            raise StoreError(
                f"{path} is a symbolic link to {target}, which does not exist", topic="store_path"
            )
        path = path.resolve()
    if path.is_dir():
        raise StoreError(
            f"{path} is a directory; give a file path such as {path / 'coldmail.db'}",
            topic="store_path",
        )
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise StoreError(
                f"{path} is not a regular file (it is a {_file_kind(mode)})",
                topic="store_path",
            )
    if not create:
        if not path.exists() or path.stat().st_size == 0:  # SQLite would write a header
            raise DatabaseNotFound(str(path))
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder for {path}: {exc.strerror or exc}", topic="store_path"
        ) from None
    return path


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _migrate(
    db: sqlite3.Connection, shown: str, keys: KeySource, create: bool = True
) -> SnapshotSigner:
    """Check the schema and the key, apply missing migrations; one IMMEDIATE transaction.
    Without ``create``, an empty file is no database: nothing is written to it."""
    with _transaction(db):
        return run_blocking(migrate(_SqliteDialect(db, shown), keys, create=create))


class _SqliteDialect:
    """The migration runner's steps in SQLite: blocking calls on the connection's thread,
    inside the open's ``BEGIN IMMEDIATE`` (SQLite's write lock is the migration lock)."""

    migrations = MIGRATIONS
    key_hint = "restore the original key file or COLDMAIL_SECRET_KEY"

    def __init__(self, db: sqlite3.Connection, location: str) -> None:
        self._db = db
        self.location = location

    async def tables(self) -> set[str]:
        return {row[0] for row in self._db.execute(sql.TABLES)}

    def foreign(self) -> StoreError:
        return StoreError(
            f"{self.location} is an SQLite database of another application (it has no "
            "coldmail_schema table)",
            topic="store_path",
        )

    async def create_version_table(self) -> None:
        self._db.execute(sql.CREATE_VERSION_TABLE)

    async def applied(self) -> set[int]:
        return {row[0] for row in self._db.execute(sql.APPLIED)}

    async def fingerprint(self) -> str | None:
        found = self._db.execute(sql.FINGERPRINT).fetchone()
        return found[0] if found else None

    async def holds_runs(self) -> bool:
        return bool(self._db.execute(sql.HOLDS_RUNS).fetchone())

    async def apply(self, migration: Migration) -> None:
        for statement in migration.statements:
            self._db.execute(statement)
        self._db.execute(sql.RECORD_MIGRATION, (migration.version, migration.name, iso(_now())))

    async def upgraded(self, before: int, signer: SnapshotSigner) -> None:
        """Crossing :data:`LEGACY_MARK_VERSION`: mark every run already stored as a run of
        an earlier release."""
        if before < LEGACY_MARK_VERSION:
            ids = [row[0] for row in self._db.execute(sql.RUN_IDS)]
            self._db.executemany(sql.MARK_LEGACY, [(signer.legacy_mark(i), i) for i in ids])

    async def refuse_planted(self) -> None:
        _check_schema_objects(self._db, self.location)

    async def remember_fingerprint(self, fingerprint: str) -> None:
        self._db.execute(sql.REMEMBER_FINGERPRINT, (fingerprint,))


@contextmanager
def _storage_errors(
    path: str, busy_timeout: float | None = None, *, missing_ok: bool = False
) -> Iterator[None]:
    """Turn sqlite3's errors into a ``StoreError`` that names the file and what happened
    (``missing_ok``: a file that vanished is :class:`DatabaseNotFound`)."""
    try:
        yield
    except ColdmailError:
        raise
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if missing_ok and "unable to open" in text and not Path(path).exists():
            raise DatabaseNotFound(path) from None
        if "locked" in text or "busy" in text:
            waited = f" for more than {busy_timeout:g} s" if busy_timeout else ""
            raise StoreError(
                f"{path} is locked by another process{waited}; wait for it to finish and retry"
            ) from None
        if "readonly" in text or "unable to open" in text:
            raise StoreError(
                f"cannot write to {path} ({text}); check the file's permissions",
                topic="store_path",
            ) from None
        if "disk is full" in text or "database or disk is full" in text:
            raise StoreError(f"the disk holding {path} is full; free some space") from None
        raise StoreError(f"database error in {path}: {text}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path} is not a usable SQLite database ({exc})", topic="store_path"
        ) from None


# --------------------------------------------------------------------------- batches (issue 23)

_BATCH_SELECT = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches"
_SAMPLE_WRITTEN = (
    "SELECT COUNT(*) FROM batch_leads WHERE batch_id = ? AND in_sample = 1 AND state = 'written'"
)
_BATCH_SELECT_WITH_SNAPSHOT = f"SELECT {', '.join(BATCH_COLUMNS)}, snapshot FROM batches"
_LEAD_SELECT = f"SELECT {', '.join(LEAD_COLUMNS)} FROM batch_leads"
_UPDATED_BATCH_COLUMNS = [c for c in BATCH_COLUMNS if c != "batch_id"]
_RECORD_LEAD = (
    "UPDATE batch_leads SET state = ?, line = ?, writer = ?, round = ?, error = ?, "
    "calls = calls + ?, tokens = tokens + ?, mac = ?, written_at = ?, lease_token = NULL, "
    "lease_until = NULL WHERE batch_id = ? AND position = ? AND lease_token = ? "
    "AND state = 'claimed'"
)
assert RECORDED_COLUMNS == ("state", "line", "writer", "round", "error", "calls", "tokens", "mac")


def _stored(value: Any) -> Any:
    """A value as SQLite stores it (times as ISO text)."""
    return iso(value) if isinstance(value, datetime) else value


def _update_batch(db: sqlite3.Connection, row: dict[str, Any], *, snapshot: Any = _KEEP) -> None:
    """Write every column of a batch row (and its snapshot, when given)."""
    values = [_stored(row.get(c)) for c in _UPDATED_BATCH_COLUMNS]
    assignments = ", ".join(f"{c} = ?" for c in _UPDATED_BATCH_COLUMNS)
    if snapshot is _KEEP:
        db.execute(
            f"UPDATE batches SET {assignments} WHERE batch_id = ?", [*values, row["batch_id"]]
        )
    else:
        db.execute(
            f"UPDATE batches SET {assignments}, snapshot = ? WHERE batch_id = ?",
            [*values, snapshot, row["batch_id"]],
        )
