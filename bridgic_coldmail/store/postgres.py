"""The PostgreSQL store: many hosts, one set of runs, the same promises as the SQLite file.

Design notes:

* **The same rules, in the same order, as SQLite.** Every write is one transaction that
  locks the run's row (``SELECT … FOR UPDATE``), checks its signature and MACs and decides in
  Python with ``base.py`` (``judge_claim``, ``plan_*``), then writes the row and its history
  events and commits. A snapshot leaves the store only after its signature verified and the
  claim committed; a refusal writes nothing. Only the holder of the current claim token can
  renew, complete or release (fencing), because those too read the locked row first.
* **Two round trips per write.** A transaction is sent as two multi-statement simple queries:
  ``BEGIN``, its settings and the locking ``SELECT``; then the writes and ``COMMIT``. psycopg
  binds their parameters client-side with libpq's quoting (``AsyncClientCursor``), which is
  what lets several statements share one round trip; on a loopback socket this beat both
  one statement per round trip and psycopg's pipeline mode (benchmarks/NOTES.md).
* **Group commit** (``group.py``): concurrent completes lock their rows in one ``SELECT …
  = ANY(…) ORDER BY interaction_id FOR UPDATE`` and are written (each its row, events and
  notifications) and committed together (two round trips and one WAL flush for the group);
  when the server refuses the group, nothing was committed and each member is recorded alone.
* **The server's clock.** Leases, ``created_at``/``updated_at`` and history times come from
  ``clock_timestamp()`` read in the locking ``SELECT`` (if another transaction changed the
  row while this one waited for its lock, PostgreSQL re-evaluates it on the new row), so
  hosts whose clocks disagree still agree on who holds a lease. ``purge`` ages runs by the
  server's clock too.
* **Nothing planted.** Built-in functions are called as ``pg_catalog.…`` and tables by their
  schema, and opening refuses a ``coldmail`` schema holding a trigger, a rule or a relation
  the migrations did not create: such an object could undo the claim's write inside the
  store's own transaction and let two resumers through.
* **PgBouncer in transaction pooling works.** No session state: per-transaction settings
  are ``set_config(…, true)`` (``lock_timeout`` from ``busy_timeout``, an idle-in-transaction
  limit, ``synchronous_commit``); migrations take ``pg_advisory_xact_lock``, released at
  commit; no ``LISTEN``, no ``search_path`` (tables are schema-qualified). Server-side
  prepared statements are off unless ``prepare_statements`` is set (then psycopg prepares
  the repeated reads; the writes are simple queries, never prepared).
* **Durability where it matters**, as on SQLite: a pause and a result commit with the
  server's ``synchronous_commit`` (on by default); a claim, a renewal and a release with
  ``synchronous_commit = off``, since losing one to a crash only leaves the run claimable
  again (the WAL is sequential: a result's commit flushes the claim before it).
* **Faults.** A restart closes every pooled connection: the pool's ``check`` finds one closed
  without a round trip (end of stream on its socket) and drains the pool. A round trip that
  commits nothing (a read, a write's first one) or may run twice (a lease renewal) is sent
  again on a fresh connection when its own turns out lost; one that commits never is, and a
  lost answer to it is a ``StoreError`` with the topic ``commit_unknown``. Every call has a
  deadline: the server's ``statement_timeout`` and ``lock_timeout`` bound its work, and a
  watchdog shuts the socket down when no answer came in time (a stalled proxy acknowledges
  every packet, so no TCP timeout fires, and cancelling the task would make psycopg wait for
  a cancel). psycopg's own log records go to a ``NullHandler`` (an application's logging
  still gets them), never to a command-line user's terminal.
* **Errors by SQLSTATE**, never by message text; connection failures (which carry no
  SQLSTATE) pass libpq's reason through. The password of the URL never appears in a
  message, a log line or a ``repr``: messages show the URL redacted, and libpq's text is
  scrubbed of the password, which libpq echoes for some malformed URLs.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import re
import select
import socket
import time
import uuid
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ColdmailError, ConfigurationError, StoreError
from ..models import Decision, ListedRun, Run, RunEvent, RunStatus
from ..settings import Settings, is_libpq_keywords, redact_url
from ..signing import KeySource, SnapshotSigner
from . import postgres_sql as sql
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
    BatchRefusalReason,
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
    EVENT_COLUMNS,
    RUN_COLUMNS,
    RowChange,
    decode_history,
    decode_row,
    is_legacy,
    parse_time,
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
from .migrations import Migration, migrate
from .outbox import (
    INSERTED_COLUMNS,
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
from .postgres_sql import EXPECTED_RELATIONS, MIGRATION_LOCK, MIGRATIONS, SCHEMA
from .protocol import (
    Claim,
    ClaimOutcome,
    Finished,
    NewRun,
    OutboxPlan,
    Paused,
    Refusal,
    RefusalReason,
)
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

try:
    import psycopg
    from psycopg import AsyncClientCursor, AsyncConnection, IsolationLevel, pq
    from psycopg.rows import DictRow, dict_row
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "a postgresql:// database needs the postgres extra: "
        "pip install 'bridgic-coldmail[postgres]'"
    ) from None

_COLUMNS = ", ".join(RUN_COLUMNS)
_TIME_COLUMNS = (
    "created_at",
    "updated_at",
    "completed_at",
    "claim_expires_at",
    "at",
    "next_attempt_at",
    "lease_until",
    "delivered_at",
)
_EVENT_SELECT = ", ".join([*EVENT_COLUMNS, "mac"])
_SELECT_ROW = f"SELECT {_COLUMNS} FROM coldmail.runs WHERE interaction_id = %s"
_SELECT_ROWS = f"SELECT {_COLUMNS} FROM coldmail.runs WHERE interaction_id = ANY(%s)"
_LOCK_ROW = (
    f"SELECT {_COLUMNS}, policy_json, policy_mac, pg_catalog.clock_timestamp() AS db_now "
    "FROM coldmail.runs WHERE interaction_id = %s FOR UPDATE"
)
_LOCK_ROWS = (
    f"SELECT {_COLUMNS}, policy_json, policy_mac, pg_catalog.clock_timestamp() AS db_now "
    "FROM coldmail.runs WHERE interaction_id = ANY(%s) ORDER BY interaction_id FOR UPDATE"
)
_NOTIFICATION_SELECT = f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM coldmail.notifications"
_LOCK_ROW_WITH_SNAPSHOT = (
    f"SELECT {_COLUMNS}, snapshot, policy_json, policy_mac, "
    "pg_catalog.clock_timestamp() AS db_now FROM coldmail.runs "
    "WHERE interaction_id = %s FOR UPDATE"
)
_SELECT_EVENTS = (
    f"SELECT {_EVENT_SELECT} FROM coldmail.run_events WHERE interaction_id = %s ORDER BY seq"
)
_INSERT_EVENT_ROW = f"({', '.join('%s' for _ in range(len(EVENT_COLUMNS) + 1))})"
_SELECT_FORKED = (
    # The parent (snapshot and notify policy included), its kept pause of the round, and
    # the server's clock. Nothing is locked: the fork changes nothing of its parent.
    f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, r.snapshot, r.policy_json, "
    f"r.policy_mac, {', '.join(f'p.{c} AS kept_{c}' for c in PAUSE_COLUMNS)}, "
    "pg_catalog.clock_timestamp() AS db_now "
    "FROM coldmail.runs AS r LEFT JOIN coldmail.pauses AS p "
    "ON p.interaction_id = r.interaction_id AND p.round = %s WHERE r.interaction_id = %s"
)
_INSERT_FORK = (
    f"INSERT INTO coldmail.runs ({_COLUMNS}, snapshot, policy_json, policy_mac, "
    f"{', '.join(FORK_COLUMNS)}) "
    f"VALUES ({', '.join('%s' for _ in RUN_COLUMNS)}, %s, %s, %s, %s, %s, %s)"
)
_LEFT_TYPES = {"round": "integer", "created_at": "timestamptz", "mac": "bytea"}
_LEFT_VALUES = ", ".join(f"%s::{_LEFT_TYPES.get(c, 'text')}" for c in KEEP_LEFT_COLUMNS)
_KEEP_LEFT = (
    # The run's current snapshot, about to be replaced or cleared, copied to the kept pauses
    # inside the server: its bytes never travel twice (store/forks.py, pause_left).
    f"INSERT INTO coldmail.pauses ({', '.join(PAUSE_COLUMNS)}) "
    f"SELECT {_LEFT_VALUES}, "
    "snapshot FROM coldmail.runs WHERE interaction_id = %s AND snapshot IS NOT NULL "
    "ON CONFLICT (interaction_id, round) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in PAUSE_COLUMNS[2:])
)
_FAMILY_SELECT = (
    f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, "
    f"{', '.join('r.' + c for c in FORK_COLUMNS)} "
)
# The run, then its parent, the parent's parent…, by the parent_id column (each link is
# verified in Python), at most MAX_DEPTH steps; then the root and every run below it.
_FAMILY_UP = (
    "WITH RECURSIVE line(interaction_id, depth) AS ("
    " SELECT interaction_id, 0 FROM coldmail.runs WHERE interaction_id = %s"
    " UNION SELECT r.parent_id, line.depth + 1 FROM coldmail.runs AS r JOIN line"
    " ON r.interaction_id = line.interaction_id"
    " WHERE r.parent_id IS NOT NULL AND line.depth < %s) "
    f"{_FAMILY_SELECT}"
    "FROM line JOIN coldmail.runs AS r ON r.interaction_id = line.interaction_id "
    "ORDER BY line.depth"
)
_FAMILY_DOWN = (
    "WITH RECURSIVE line(interaction_id, depth) AS ("
    " SELECT interaction_id, 0 FROM coldmail.runs WHERE interaction_id = %s"
    " UNION SELECT r.parent_id, line.depth + 1 FROM coldmail.runs AS r JOIN line"
    " ON r.interaction_id = line.interaction_id"
    " WHERE r.parent_id IS NOT NULL AND line.depth < %s),"
    " top AS (SELECT line.interaction_id FROM line JOIN coldmail.runs AS r"
    " ON r.interaction_id = line.interaction_id ORDER BY line.depth DESC LIMIT 1),"
    " tree(interaction_id) AS (SELECT interaction_id FROM top"
    " UNION SELECT r.interaction_id FROM coldmail.runs AS r JOIN tree"
    " ON r.parent_id = tree.interaction_id) "
    f"{_FAMILY_SELECT}"
    "FROM tree JOIN coldmail.runs AS r ON r.interaction_id = tree.interaction_id "
    "ORDER BY r.created_at, r.interaction_id LIMIT %s"
)

Connection = AsyncConnection[DictRow]
T = TypeVar("T")

# psycopg and its pool log what they do about connections (a failed reconnection attempt,
# a discarded broken connection) as warnings. The store reports what matters to the caller
# as a StoreError; without this handler Python would print each of those records on a
# command-line user's terminal. An application that configures logging still gets them.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

NETWORK_ALLOWANCE = 2.0
"""Seconds allowed for the network on top of what the server may spend on a round trip."""
ROUND_TRIPS = 2
"""Round trips of the longest store call (a write: lock and read; write and commit)."""
_ATTEMPTS = 3
"""Tries of a round trip that cannot have committed anything, when its connection is lost."""
CLOCK_READING_SECONDS = 30.0
"""How long a reading of the server's clock stands in for it (see :class:`_ServerClock`)."""
CLOCK_READING_ROUND_TRIP = 0.005
"""The longest round trip whose reading of the server's clock is kept: a reading is late by
at most its round trip."""
MAX_CLAIMS_REMEMBERED = 10_000
"""Claims whose rows are kept for their one-round-trip complete (the oldest go first)."""


class PostgresRunStore:
    """Runs in a PostgreSQL database shared by every host. Open with :meth:`connect`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        location: str,
        signer: SnapshotSigner,
        settings: Settings,
        secrets: frozenset[str],
    ) -> None:
        self._pool = pool
        self._signer = signer
        self._secrets = secrets
        self.location = location
        """The server and database, for messages: the URL without its password."""
        self.lease_seconds = settings.lease_seconds
        self.busy_timeout = settings.busy_timeout
        self._group: GroupCommit[_Completion] = GroupCommit(self._complete_group)
        self._clock = _ServerClock()
        self._claimed: dict[str, dict[str, Any]] = {}
        """The rows this process's claims wrote, by claim token, until complete or release:
        what lets a complete write fenced in SQL without reading the row first."""
        self.pool_size = settings.pool_size
        self.pool_timeout = settings.pool_timeout
        self.statement_timeout = settings.statement_timeout
        self.answer_timeout = _answer_timeout(settings)
        """Seconds a round trip may wait for the server's answer before its connection is
        dropped (the server's own limits, plus :data:`NETWORK_ALLOWANCE`)."""
        self.call_timeout = self.pool_timeout + ROUND_TRIPS * self.answer_timeout
        """Every call ends within this many seconds (with a ``StoreError`` at worst)."""
        # Built once, not per call: both depend on the settings only.
        self._errors = _ErrorContext(location, secrets, self.busy_timeout, self.pool_timeout)
        self._begins = {durable: self._begin(durable) for durable in (False, True)}

    def __repr__(self) -> str:
        return f"PostgresRunStore({self.location!r}, pool_size={self.pool_size})"

    @classmethod
    async def connect(cls, settings: Settings) -> PostgresRunStore:
        """Connect, migrate under an advisory lock, check the key, and open the pool.

        The caller must ``close()`` the store.

        Raises:
            StoreError: the server cannot be reached, refuses us, or the database is not ours.
            ConfigurationError: no usable signing key (``COLDMAIL_SECRET_KEY`` or
                ``COLDMAIL_KEY_FILE``), or it is not the key that signed the stored runs.
        """
        url = _libpq_url(settings.db)
        secrets = _passwords(url)
        shown = _scrub(redact_url(settings.db), secrets)
        keys = KeySource(secret=settings.secret_key, file=settings.key_file)
        options = _connection_options(url, settings, secrets, shown)
        errors = _ErrorContext(shown, secrets, settings.busy_timeout, settings.pool_timeout)
        with errors.mapped(connecting=True):
            first = await AsyncConnection.connect(url, **options)
        try:
            # Opening waits for other hosts' migrations (up to its lock timeout), then runs
            # its statements: a server that stops answering meanwhile is given up on too.
            limit = _migration_lock_timeout(settings) + _answer_timeout(settings)
            watchdog = _Watchdog(first, limit)
            try:
                with errors.mapped(), watchdog:
                    await _configure(first)
                    signer = await _migrate(first, shown, keys, settings)
            except StoreError:
                if watchdog.fired:
                    raise StoreError(errors.no_answer(limit, committing=False)) from None
                raise
        finally:
            await first.close()

        async def check(conn: Connection) -> None:
            """The pool's check of an idle connection before it hands it out (no round
            trip): one the server closed is discarded, and so is every other connection
            from before, since a server restart or a failover closed them all."""
            if _closed_by_server(conn):
                await pool.drain()
                raise psycopg.OperationalError("the server closed this connection")

        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            connection_class=AsyncConnection[DictRow],
            kwargs=options,
            min_size=1,
            max_size=settings.pool_size,
            timeout=settings.pool_timeout,
            # The pool retries a failed connection with a doubling delay, and after an
            # outage its next try could come later than a caller waits: give up sooner, so
            # that a caller's wait starts a new try at once.
            reconnect_timeout=settings.pool_timeout,
            configure=_configure,
            check=check,
            name="coldmail",
            open=False,
        )
        try:
            with errors.mapped(connecting=True):
                await pool.open(wait=True, timeout=settings.pool_timeout)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, shown, signer, settings, secrets)

    async def signer(self) -> SnapshotSigner:
        return self._signer

    async def close(self) -> None:
        """Close every pooled connection (idempotent)."""
        await self._pool.close()

    # ------------------------------------------------------------------ plumbing

    def _transaction(self, *, durable: bool = True, idempotent: bool = False) -> _Transaction:
        """A pooled connection in one transaction, rolled back unless finished.

        ``idempotent``: running its one round trip twice does no harm (a lease renewal), so
        it is sent again on a fresh connection when the first one is lost.
        """
        return _Transaction(self._call(), self._begins[durable], idempotent)

    def _begin(self, durable: bool) -> tuple[str, tuple[Any, ...]]:
        """BEGIN and the transaction's settings. The values are written into the script
        (digits and ``ms``, from the settings alone): psycopg need not quote them on every
        call."""
        settings = [
            f"pg_catalog.set_config('lock_timeout', '{_milliseconds(self.busy_timeout)}', true)",
            "pg_catalog.set_config('statement_timeout', "
            f"'{_milliseconds(self.busy_timeout + self.statement_timeout)}', true)",
            "pg_catalog.set_config('idle_in_transaction_session_timeout', "
            f"'{_milliseconds(max(self.lease_seconds, 10))}', true)",
        ]
        if not durable:
            settings.append("pg_catalog.set_config('synchronous_commit', 'off', true)")
        return f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT {', '.join(settings)}", ()

    async def _read(self, send: Callable[[Connection], Awaitable[T]]) -> T:
        """``send`` on a pooled connection; it writes nothing, so it is sent again on a
        fresh connection when the first one is lost."""
        call = self._call()
        with call.errors.mapped():
            try:
                return await call.send(send, retry=True, commits=False)
            finally:
                await call.end()

    def _call(self) -> _Call:
        return _Call(
            self._pool, self._errors, self.pool_timeout, self.answer_timeout, self.call_timeout
        )

    # ------------------------------------------------------------------ writes

    async def insert_paused(self, new: NewRun) -> Run:
        """Store a freshly paused run, signed, with its 'paused' event (durable)."""
        signer = self._signer
        signature = signer.sign(new.interaction_id, new.serialization_version, new.snapshot)
        async with self._transaction() as tx:
            now = self._clock.now()
            if now is None:  # no recent reading: read the clock in a round trip of its own
                (clock,) = await tx.open("SELECT pg_catalog.clock_timestamp() AS db_now", [])
                now = _utc(clock["db_now"])
                self._clock.note(now, tx.sent)
            change = plan_insert(new, now=now, signature=signature)
            change.seal(signer, sign_row=True)
            policy = seal_policy(signer, new.interaction_id, new.notify)
            columns = [*RUN_COLUMNS, "snapshot", "policy_json", "policy_mac"]
            insert = (
                f"INSERT INTO coldmail.runs ({', '.join(columns)}) "
                f"VALUES ({', '.join('%s' for _ in columns)})"
            )
            values = [*(change.row.get(c) for c in RUN_COLUMNS), new.snapshot, *policy]
            announced = plan_notifications(
                {**change.row, "policy_json": policy[0], "policy_mac": policy[1]},
                "run.paused",
                now=now,
                signer=signer,
            )
            await tx.finish([(insert, values), *_insert_events(change), *_enqueue(announced)])
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
        ``token``: see :func:`judge_claim`. A lost reply to the commit has topic
        ``commit_unknown``: the claim may hold the run."""
        if not _storable(interaction_id):
            return Refusal(RefusalReason.NOT_FOUND)
        signer, lease = self._signer, self.lease_seconds
        async with self._transaction(durable=False) as tx:
            found = await tx.open(_LOCK_ROW_WITH_SNAPSHOT, [interaction_id])
            if not found:
                return Refusal(RefusalReason.NOT_FOUND)
            row, now = _split(found[0])
            self._clock.note(now, tx.sent)
            snapshot = row.pop("snapshot")
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
                return verdict  # rolled back: nothing written
            assert snapshot is not None
            if verdict.again:  # rolled back: nothing written
                return claimed_again(row, verdict, action, snapshot=snapshot, now=now)
            change, expires = plan_claim(row, verdict, action, now=now, lease=lease)
            change.seal(signer, sign_row=row["row_mac"] is not None)
            await tx.finish(_update(row, change))
        claim = claim_from(row, change, verdict, action, snapshot=snapshot, expires=expires)
        self._remember(claim.token, change.row)
        return claim

    def _remember(self, token: str, row: dict[str, Any]) -> None:
        """Keep the row a claim wrote, for its complete (see ``_complete_fenced``)."""
        claimed = self._claimed
        while len(claimed) >= MAX_CLAIMS_REMEMBERED:
            claimed.pop(next(iter(claimed)))
        claimed[token] = row

    async def renew(self, claim: Claim) -> datetime | None:
        """Extend the lease from the server's now; None when the claim was lost."""
        async with self._transaction(durable=False, idempotent=True) as tx:
            renewed = await tx.only(
                "UPDATE coldmail.runs SET claim_expires_at = pg_catalog.clock_timestamp() + %s "
                "WHERE interaction_id = %s AND claim_token = %s AND status = 'resuming' "
                "RETURNING claim_expires_at",
                [timedelta(seconds=self.lease_seconds), claim.interaction_id, claim.token],
            )
        return _utc(renewed[0]["claim_expires_at"]) if renewed else None

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
        completed = await self._group.commit(_Completion(claim, result, signature))
        return cast("Run | None", completed)

    async def _complete_group(self, members: Sequence[_Completion]) -> list[Outcome]:
        """Completes in one transaction (``group.py``). When the server refused it (one
        member's statements failed, a lock wait ran out), nothing was committed: each member
        is then recorded alone, so only the one at fault fails."""
        try:
            return await self._complete_together(members)
        except StoreError as exc:
            if len(members) == 1 or exc.topic == "commit_unknown":
                raise
        alone = await asyncio.gather(
            *(self._complete_together([member]) for member in members), return_exceptions=True
        )
        return [
            (None, outcome) if isinstance(outcome, BaseException) else outcome[0]
            for outcome in alone
        ]

    async def _complete_together(self, members: Sequence[_Completion]) -> list[Outcome]:
        """Write the members' results in one transaction: in one round trip when every
        member's claim was made here (its row remembered) and the server's clock was read
        lately (``_complete_fenced``), else in two (``_complete_locked``)."""
        now = self._clock.now()
        claimed = [self._claimed.pop(member.claim.token, None) for member in members]
        rows = [row for row in claimed if row is not None]
        if now is not None and len(rows) == len(members):
            # Never before a member's claim (its time read from the server; the estimate
            # may lag the server's clock by a round trip).
            now = max([now, *(parse_time(row["updated_at"]) for row in rows)])
            return await self._complete_fenced(members, rows, now)
        return await self._complete_locked(members)

    async def _complete_fenced(
        self, members: Sequence[_Completion], rows: Sequence[dict[str, Any]], now: datetime
    ) -> list[Outcome]:
        """One round trip and one WAL flush for the group: each member's row as its claim
        wrote it, changed and sealed here, is written by one statement whose UPDATE is fenced
        in SQL — only while the run is still resuming under the claim's token — and whose
        other writes (the replaced snapshot kept, the events, the notifications) hang on that
        UPDATE's row; statements in id order, so groups in other processes never deadlock.
        A member fenced out wrote nothing, and its run is read to tell a result already
        recorded from a lost claim, as ``_complete_locked`` tells them apart."""
        signer = self._signer
        outcomes: list[Outcome] = [(None, None)] * len(members)
        statements: list[tuple[str, Sequence[Any]]] = []
        written: list[tuple[int, dict[str, Any]]] = []
        for index in sorted(range(len(members)), key=lambda i: members[i].claim.interaction_id):
            claim, result, signature = members[index]
            row = rows[index]
            try:
                change = plan_complete(row, claim, result, now=now, signature=signature)
                change.seal(signer, sign_row=row["row_mac"] is not None)
                nth = result.round if isinstance(result, Paused) else 1  # the Nth review
                announced = plan_notifications(
                    change.row, event_of_result(result), now=now, signer=signer, n=nth
                )
                left = pause_left(claim, result, row, signer, now=now)
                snapshot = result.snapshot if isinstance(result, Paused) else None
                statements.append(
                    _fenced_complete(row, change, claim.token, snapshot, left, announced)
                )
                written.append((index, change.row))
            except Exception as exc:  # this member's own failure: written for no one
                outcomes[index] = (None, exc)
        if not statements:
            return outcomes
        async with self._transaction() as tx:
            results = await tx.finish(statements)
        lost: list[int] = []
        for (index, row), found in zip(written, results, strict=True):
            claim, result, _ = members[index]
            if found and found[0]["written"]:
                outcomes[index] = (completed_run(claim, result, row), None)
            else:
                lost.append(index)
        if lost:
            ids = [members[i].claim.interaction_id for i in lost]

            async def fetch(conn: Connection) -> builtins.list[DictRow]:
                cursor = await conn.execute(_SELECT_ROWS, [ids])
                return await cursor.fetchall()

            stored = {r["interaction_id"]: _normalized(r) for r in await self._read(fetch)}
            for index in lost:
                claim = members[index].claim
                outcomes[index] = (recorded(stored.get(claim.interaction_id), claim, signer), None)
        return outcomes

    async def _complete_locked(self, members: Sequence[_Completion]) -> list[Outcome]:
        """Lock the members' rows (in id order: groups in other processes never deadlock),
        check each claim still holds its run, write them all and commit: two round trips
        and one WAL flush for the group."""
        signer = self._signer
        ids = sorted({member.claim.interaction_id for member in members})
        outcomes: list[Outcome] = []
        async with self._transaction() as tx:
            found = await tx.open(_LOCK_ROWS, [ids])
            rows = {row["interaction_id"]: (row, now) for row, now in map(_split, found)}
            for _, now in rows.values():
                self._clock.note(now, tx.sent)
            statements: list[tuple[str, Sequence[Any]]] = []
            for claim, result, signature in members:
                try:
                    held = rows.get(claim.interaction_id)
                    if held is None:
                        outcomes.append((None, None))
                        continue
                    row, now = held
                    if not holds(row, claim):
                        outcomes.append((recorded(row, claim, signer), None))  # nothing written
                        continue
                    ok = intact(row, claim, signer)  # else altered since the claim
                    change = plan_complete(row, claim, result, now=now, signature=signature)
                    seal_held(change, row, claim, signer, ok=ok)  # never re-MACs an edit
                    snapshot = result.snapshot if isinstance(result, Paused) else None
                    nth = result.round if isinstance(result, Paused) else 1  # the Nth review
                    announced = (  # an altered run is announced to no one
                        plan_notifications(
                            change.row, event_of_result(result), now=now, signer=signer, n=nth
                        )
                        if ok
                        else []
                    )
                    # The member's own statements: the snapshot it replaces kept (copied
                    # before the row is written: each stored once), its row, its events,
                    # its notifications.
                    left = pause_left(claim, result, row, signer, now=now)
                    statements += [
                        *([(_KEEP_LEFT, left_values(left))] if left is not None else []),
                        *_update(row, change, snapshot=(snapshot,)),
                        *_enqueue(announced),
                    ]
                    rows[claim.interaction_id] = (change.row, now)  # as a later member sees it
                    outcomes.append((completed_run(claim, result, change.row), None))
                except Exception as exc:  # this member's own failure: written for no one
                    outcomes.append((None, exc))
            if statements:
                await tx.finish(statements)
        return outcomes

    async def release(self, claim: Claim, error: str, *, announce: bool = False) -> bool:
        """Give the run back with the error recorded; False when the claim was lost.
        ``announce``: queue a ``run.failed`` notification with it."""
        error = error.replace("\x00", "\\0")  # PostgreSQL text cannot hold NUL
        self._claimed.pop(claim.token, None)
        async with self._transaction(durable=False) as tx:
            held = await self._held_row(tx, claim)
            if held is None:
                return False
            row, now = held
            ok = intact(row, claim, self._signer)  # else altered since the claim
            change = plan_release(row, error, now=now)
            seal_held(change, row, claim, self._signer, ok=ok)  # never re-MACs an edit
            announced = (
                plan_notifications(
                    change.row,
                    "run.failed",
                    now=now,
                    signer=self._signer,
                    n=int(change.row["event_count"]),
                )
                if announce and ok
                else []
            )
            await tx.finish([*_update(row, change), *_enqueue(announced)])
        return True

    async def _held_row(self, tx: _Tx, claim: Claim) -> tuple[dict[str, Any], datetime] | None:
        """The locked row if ``claim`` still holds it (the fence), and the server's now."""
        found = await tx.open(_LOCK_ROW, [claim.interaction_id])
        if not found:
            return None
        row, now = _split(found[0])
        if row["status"] != RunStatus.RESUMING.value or row["claim_token"] != claim.token:
            return None
        return row, now

    async def purge(self, older_than: timedelta, statuses: Collection[RunStatus]) -> int:
        """Delete runs of these statuses unchanged for ``older_than`` (by the server's
        clock), and their history; rows are locked in id order, so purges never deadlock."""
        names = sorted(s.value for s in statuses)
        async with self._transaction() as tx:
            deleted = await tx.only(
                "WITH gone AS ("
                " DELETE FROM coldmail.runs WHERE interaction_id IN ("
                "  SELECT interaction_id FROM coldmail.runs"
                "  WHERE status = ANY(%s) AND updated_at < pg_catalog.clock_timestamp() - %s"
                "  ORDER BY interaction_id FOR UPDATE)"
                " RETURNING interaction_id),"
                " history AS (DELETE FROM coldmail.run_events"
                "  WHERE interaction_id IN (SELECT interaction_id FROM gone)),"
                " outbox AS (DELETE FROM coldmail.notifications"
                "  WHERE interaction_id IN (SELECT interaction_id FROM gone)),"
                " kept AS (DELETE FROM coldmail.pauses"
                "  WHERE interaction_id IN (SELECT interaction_id FROM gone))"
                " SELECT pg_catalog.count(*) AS deleted FROM gone",
                [names, older_than],
            )
        return int(deleted[0]["deleted"])

    async def trust_unsigned(self, interaction_ids: Collection[str] | None) -> builtins.list[str]:
        """Sign the unsigned snapshots of these runs (all when None); returns their ids.

        Only for an operator who has decided that whoever wrote them is trusted: signing is
        what lets Bridgic's loader (pickle) run them.
        """
        wanted = None if interaction_ids is None else set(interaction_ids)
        async with self._transaction() as tx:
            rows = await tx.open(
                "SELECT interaction_id, serialization_version, snapshot, legacy_mark "
                "FROM coldmail.runs "
                "WHERE snapshot IS NOT NULL AND signature IS NULL AND row_mac IS NULL "
                "ORDER BY created_at, interaction_id FOR UPDATE",
                [],
            )
            chosen = [
                r
                for r in rows
                if (wanted is None or r["interaction_id"] in wanted)
                # a row of this release stripped of its MACs is never signed
                and is_legacy(_normalized(r), self._signer)
            ]
            updates = [
                (
                    "UPDATE coldmail.runs SET signature = %s WHERE interaction_id = %s",
                    [
                        self._signer.sign_trusted(
                            r["interaction_id"], r["serialization_version"], bytes(r["snapshot"])
                        ),
                        r["interaction_id"],
                    ],
                )
                for r in chosen
            ]
            await tx.finish(updates)
        return [str(r["interaction_id"]) for r in chosen]

    # ------------------------------------------------------------------ the outbox

    async def claim_notifications(
        self, limit: int, lease_seconds: float
    ) -> builtins.list[OutboxClaim]:
        """Lease up to ``limit`` due notifications: rows another worker is claiming are
        skipped (``FOR UPDATE SKIP LOCKED``), never waited for, never taken twice."""
        async with self._transaction(durable=False) as tx:
            rows = await tx.only(
                "UPDATE coldmail.notifications SET lease_token = %s, "
                "lease_until = pg_catalog.clock_timestamp() + %s, attempts = attempts + 1 "
                # = ANY(ARRAY(…)): the locking subquery runs once, so no more than the limit
                # is leased (an IN (…) semi-join may be run again by the planner).
                "WHERE id = ANY(ARRAY(SELECT id FROM coldmail.notifications "
                "WHERE status = 'pending' AND next_attempt_at <= pg_catalog.clock_timestamp() "
                "AND (lease_until IS NULL OR lease_until < pg_catalog.clock_timestamp()) "
                "ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)) "
                f"RETURNING {', '.join(NOTIFICATION_COLUMNS)}",
                [uuid.uuid4().hex, timedelta(seconds=lease_seconds), limit],
            )
        return [claim_of(_normalized(row), self._signer) for row in rows]

    async def finish_notification(self, claim: OutboxClaim, outcome: OutboxOutcome) -> bool:
        """Record the attempt's outcome if the lease is still ours (the server's clock)."""
        error = bounded_error(outcome.error)
        async with self._transaction(durable=False) as tx:
            done = await tx.only(
                "UPDATE coldmail.notifications SET status = %s, "
                "next_attempt_at = pg_catalog.clock_timestamp() + %s, "
                "last_error = COALESCE(%s, last_error), "
                "delivered_at = CASE WHEN %s THEN pg_catalog.clock_timestamp() END, "
                "lease_token = NULL, lease_until = NULL "
                "WHERE id = %s AND lease_token = %s RETURNING id",
                [
                    outcome.status,
                    timedelta(seconds=outcome.retry_in),
                    error,
                    outcome.status == "delivered",
                    claim.id,
                    claim.token,
                ],
            )
        return bool(done)

    async def enqueue(self, interaction_id: str, plan: OutboxPlan) -> int:
        """Queue the rows ``plan`` makes from the run's row now, by the server's clock (see
        ``RunStore.enqueue``)."""
        if not _storable(interaction_id):
            return 0
        # Idempotent: every row is inserted with ON CONFLICT (id) DO NOTHING.
        async with self._transaction(durable=False, idempotent=True) as tx:
            found = await tx.open(_LOCK_ROW, [interaction_id])
            if not found:
                await tx.finish([])
                return 0
            row, now = _split(found[0])
            rows = plan(row, now, self._signer)
            await tx.finish(_enqueue(rows))
        return len(rows)

    async def notifications(
        self, interaction_id: str | None = None, *, limit: int = 50
    ) -> builtins.list[Delivery]:
        """Notifications newest first, of one run or all."""
        if interaction_id is not None and not _storable(interaction_id):
            return []
        where, params = (
            ("WHERE interaction_id = %s", [interaction_id]) if interaction_id else ("", [])
        )
        query = f"{_NOTIFICATION_SELECT} {where} ORDER BY created_at DESC, id LIMIT %s"

        async def fetch(conn: Connection) -> builtins.list[DictRow]:
            cursor = await conn.execute(query, [*params, limit])
            return await cursor.fetchall()

        rows = await self._read(fetch)
        return [delivery_of(_normalized(row), self._signer) for row in rows]

    async def retry_notification(self, notification_id: str) -> Delivery | None:
        """A failed notification queued again from the start of the schedule, due now."""
        if not _storable(notification_id):
            return None
        columns = ", ".join(NOTIFICATION_COLUMNS)
        async with self._transaction() as tx:
            found = await tx.only(
                "WITH retried AS (UPDATE coldmail.notifications SET status = 'pending', "
                "attempts = 0, next_attempt_at = pg_catalog.clock_timestamp(), "
                "lease_token = NULL, lease_until = NULL WHERE id = %s AND status = 'failed' "
                f"RETURNING {columns}) SELECT {columns} FROM retried UNION ALL "
                f"{_NOTIFICATION_SELECT} WHERE id = %s AND NOT EXISTS (SELECT 1 FROM retried)",
                [notification_id, notification_id],
            )
        return delivery_of(_normalized(found[0]), self._signer) if found else None

    # ------------------------------------------------------------------ reads

    async def get(self, interaction_id: str) -> ListedRun | None:
        """The run, a ``DamagedRun`` when it cannot be shown, or None."""
        if not _storable(interaction_id):
            return None

        async def fetch(conn: Connection) -> DictRow | None:
            cursor = await conn.execute(_SELECT_ROW, [interaction_id])
            return await cursor.fetchone()

        found = await self._read(fetch)
        return None if found is None else decode_row(_normalized(found), self._signer)

    async def list(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ListedRun]:
        """Runs, newest first, optionally of one status; never reads a snapshot."""
        where, params = ("WHERE status = %s", [status.value]) if status else ("", [])
        query = (
            f"SELECT {_COLUMNS} FROM coldmail.runs {where} "
            "ORDER BY created_at DESC, interaction_id DESC LIMIT %s OFFSET %s"
        )

        async def fetch(conn: Connection) -> builtins.list[DictRow]:
            cursor = await conn.execute(query, [*params, limit, offset])
            return await cursor.fetchall()

        rows = await self._read(fetch)
        return [decode_row(_normalized(row), self._signer) for row in rows]

    async def counts(self) -> dict[RunStatus, int]:
        """How many runs each status has."""

        async def fetch(conn: Connection) -> builtins.list[DictRow]:
            cursor = await conn.execute(
                "SELECT status, COUNT(*) AS n FROM coldmail.runs GROUP BY status"
            )
            return await cursor.fetchall()

        rows = await self._read(fetch)
        return status_counts((row["status"], row["n"]) for row in rows)

    async def history(self, interaction_id: str) -> builtins.list[RunEvent] | Refusal | None:
        """The run's events, oldest first; a TAMPERED refusal when they were altered.

        The row and its events are read from one snapshot (REPEATABLE READ), so an event
        written meanwhile can never look like one added behind the store's back.
        """
        if not _storable(interaction_id):
            return None

        async def fetch(conn: Connection) -> builtins.list[builtins.list[dict[str, Any]] | None]:
            try:
                return await _script(
                    conn,
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                    f"{_SELECT_ROW}; {_SELECT_EVENTS}; COMMIT",
                    [interaction_id, interaction_id],
                )
            finally:
                await _rollback_unless_idle(conn)

        results = await self._read(fetch)
        found, events = results[1] or [], results[2] or []
        if not found:
            return None
        events_found = [_normalized(event) for event in events]
        return decode_history(_normalized(found[0]), events_found, self._signer)

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
        or say why not (nothing written): the parent and its kept pause read in the first
        round trip, the fork's row (its snapshot in it) and event written with the commit."""
        if not _storable(parent_id):
            return Refusal(RefusalReason.NOT_FOUND)
        signer = self._signer
        async with self._transaction() as tx:
            found = await tx.open(_SELECT_FORKED, [round, parent_id])
            if not found:
                return Refusal(RefusalReason.NOT_FOUND)
            joined, now = _split(found[0])
            kept = {c: joined.pop(f"kept_{c}") for c in PAUSE_COLUMNS}
            plan = judge_fork(
                joined,
                kept if kept["interaction_id"] is not None else None,
                round,
                supported_versions=supported_versions,
                signer=signer,
            )
            if isinstance(plan, Refusal):
                return plan  # rolled back: nothing written
            write = plan_fork(joined, plan, new_id, link, now=now, signer=signer)
            change = write.change
            values = [
                *(change.row.get(c) for c in RUN_COLUMNS),
                write.snapshot,
                *write.policy,
                *(write.link[c] for c in FORK_COLUMNS),
            ]
            await tx.finish(
                [
                    (_INSERT_FORK, values),
                    *_insert_events(change),
                    *_enqueue(write.timers),
                ]
            )
        return run_from_row(change.row)  # just signed here

    async def family(self, interaction_id: str) -> Family | None:
        """The run's family: up the parent links to the root, then every run below the root
        (at most ``MAX_FAMILY``), read from one snapshot (REPEATABLE READ)."""
        if not _storable(interaction_id):
            return None

        async def fetch(conn: Connection) -> builtins.list[builtins.list[dict[str, Any]] | None]:
            try:
                return await _script(
                    conn,
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                    f"{_FAMILY_UP}; {_FAMILY_DOWN}; COMMIT",
                    [interaction_id, MAX_DEPTH, interaction_id, MAX_DEPTH, MAX_FAMILY],
                )
            finally:
                await _rollback_unless_idle(conn)

        results = await self._read(fetch)
        up = [_normalized(r) for r in results[1] or []]
        down = [_normalized(r) for r in results[2] or []]
        return family_of(interaction_id, up, down, self._signer)

    # ------------------------------------------------------------------ batches (issue 23)

    async def create_batch(self, new: NewBatch) -> tuple[Batch, bool]:
        """Create the batch and its leads (one transaction), held by ``new.token``; the
        run's batch for this list, untouched, when there is one. True when created.
        Batch ids are derived from the run and the list, so two hosts creating the same
        batch at once write the same rows: the second's insert does nothing."""
        signer = self._signer
        async with self._transaction() as tx:
            found = await tx.open(
                f"SELECT {_BATCH_COLUMNS}, pg_catalog.clock_timestamp() AS db_now "
                "FROM (SELECT 1) AS one LEFT JOIN coldmail.batches "
                "ON interaction_id = %s AND leads_digest = %s",
                [new.interaction_id, new.leads_digest],
            )
            row, now = _split(found[0])
            if row["batch_id"] is not None:
                return batch_of(row, signer), False
            expires = now + timedelta(seconds=self.lease_seconds)
            row = seal_batch(new_batch_row(new, now=now, expires=expires), signer)
            statements: list[tuple[str, Sequence[Any]]] = [
                (
                    f"INSERT INTO coldmail.batches ({_BATCH_COLUMNS}) "
                    f"VALUES ({', '.join('%s' for _ in BATCH_COLUMNS)}) ON CONFLICT DO NOTHING",
                    [row.get(c) for c in BATCH_COLUMNS],
                )
            ]
            leads = new_lead_rows(new, signer)
            one = "(" + ", ".join("%s" for _ in INSERTED_LEAD_COLUMNS) + ")"
            for start in range(0, len(leads), _LEADS_PER_INSERT):
                chunk = leads[start : start + _LEADS_PER_INSERT]
                statements.append(
                    (
                        f"INSERT INTO coldmail.batch_leads ({', '.join(INSERTED_LEAD_COLUMNS)}) "
                        f"VALUES {', '.join(one for _ in chunk)} ON CONFLICT DO NOTHING",
                        [lead[c] for lead in chunk for c in INSERTED_LEAD_COLUMNS],
                    )
                )
            await tx.finish(statements)
        stored = await self._fetch_all(f"{_BATCH_SELECT} WHERE batch_id = %s", [new.batch_id])
        if not stored:  # pragma: no cover - deleted at once by someone else
            raise StoreError(f"the batch {new.batch_id} vanished as it was created; try again")
        return batch_of(stored[0], signer), stored[0]["claim_token"] == new.token

    async def get_batch(self, batch_id: str) -> Batch | None:
        """The batch, or None."""
        found = await self._fetch_all(f"{_BATCH_SELECT} WHERE batch_id = %s", [batch_id])
        return batch_of(found[0], self._signer) if found else None

    async def batches(self, interaction_id: str) -> builtins.list[Batch]:
        """The run's batches, newest first."""
        rows = await self._fetch_all(
            f"{_BATCH_SELECT} WHERE interaction_id = %s ORDER BY created_at DESC, batch_id",
            [interaction_id],
        )
        return [batch_of(row, self._signer) for row in rows]

    async def _fetch_all(self, query: str, params: Sequence[Any]) -> builtins.list[dict[str, Any]]:
        async def fetch(conn: Connection) -> builtins.list[DictRow]:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

        return [_normalized(row) for row in await self._read(fetch)]

    async def take_batch(
        self, batch_id: str, action: BatchAction | None, *, token: str
    ) -> BatchClaim | BatchRefusal:
        """Hold the batch to write its sample or apply ``action`` (``batches.judge_take``)."""
        signer = self._signer
        async with self._transaction(durable=False) as tx:
            found = await tx.open(
                f"SELECT {_BATCH_COLUMNS}, snapshot, pg_catalog.clock_timestamp() AS db_now "
                "FROM coldmail.batches WHERE batch_id = %s FOR UPDATE",
                [batch_id],
            )
            if not found:
                return BatchRefusal(BatchRefusalReason.NOT_FOUND)
            row, now = _split(found[0])
            stored = row.pop("snapshot")
            verdict = judge_take(
                row,
                action,
                token=token,
                now=now,
                expires=now + timedelta(seconds=self.lease_seconds),
                signer=signer,
                snapshot=None if stored is None else bytes(stored),
            )
            if isinstance(verdict, BatchRefusal):
                return verdict
            if not verdict.again:
                await tx.finish([_batch_update(verdict.row)])
        return claim_of_plan(verdict, token, signer)

    async def renew_batch(self, claim: BatchClaim) -> bool:
        """Extend the hold's lease from the server's now; False when it was lost."""
        async with self._transaction(durable=False, idempotent=True) as tx:
            renewed = await tx.only(
                "UPDATE coldmail.batches "
                "SET claim_expires_at = pg_catalog.clock_timestamp() + %s "
                "WHERE batch_id = %s AND claim_token = %s AND status = 'sampling' "
                "RETURNING batch_id",
                [timedelta(seconds=self.lease_seconds), claim.batch_id, claim.token],
            )
        return bool(renewed)

    async def _held_batch(
        self, tx: _Tx, claim: BatchClaim
    ) -> tuple[dict[str, Any], datetime] | None:
        found = await tx.open(
            f"SELECT {_BATCH_COLUMNS}, pg_catalog.clock_timestamp() AS db_now "
            "FROM coldmail.batches WHERE batch_id = %s FOR UPDATE",
            [claim.batch_id],
        )
        if not found:
            return None
        row, now = _split(found[0])
        return (row, now) if holds_batch(row, claim) else None

    async def step_batch(
        self, claim: BatchClaim, result: BatchPaused | BatchApproved
    ) -> Batch | None:
        """Record the holder's step, fenced (durable): None when the hold was lost. A
        pause also queues its ``batch.sample_ready`` notifications, in its transaction."""
        signer = self._signer
        async with self._transaction() as tx:
            found = await tx.open(_LOCK_BATCH_WITH_RUN, [claim.batch_id])
            if not found:
                return None
            row, now = _split(found[0])
            run_row = {
                name[len(_RUN_PREFIX) :]: row.pop(name)
                for name in list(row)
                if name.startswith(_RUN_PREFIX)
            }
            written = int(row.pop("sample_written"))
            if not holds_batch(row, claim):
                return None
            new, snapshot = plan_step(row, result, now=now, signer=signer)
            statements = [_batch_update(new, snapshot=(snapshot,))]
            if isinstance(result, BatchPaused) and run_row["interaction_id"] is not None:
                run_row = _normalized(run_row)
                statements += _enqueue(
                    plan_sample_notifications(run_row, new, written, now=now, signer=signer)
                )
            await tx.finish(statements)
        return batch_of(new, signer)

    async def release_batch(self, claim: BatchClaim, error: str) -> bool:
        """Give the batch back with the error; False when the hold was lost."""
        async with self._transaction(durable=False) as tx:
            held = await self._held_batch(tx, claim)
            if held is None:
                return False
            row = plan_batch_release(held[0], error, now=held[1], signer=self._signer)
            await tx.finish([_batch_update(row)])
        return True

    async def reset_sample(self, claim: BatchClaim, before_round: int) -> int:
        """The sample's leads finished in an earlier round, pending again (fenced)."""
        signer = self._signer
        async with self._transaction() as tx:
            found = await tx.open(
                f"SELECT {_LEAD_COLUMNS} FROM coldmail.batch_leads WHERE batch_id = %s "
                "AND in_sample = 1 AND state IN ('written', 'skipped') "
                f"AND (round IS NULL OR round < %s) AND {_HELD_BY} FOR UPDATE",
                [claim.batch_id, before_round, claim.token],
            )
            changes = [reset_lead(row, signer) for row in found]
            if not changes:
                return 0
            await tx.finish(
                [
                    (
                        "UPDATE coldmail.batch_leads SET state = 'pending', line = NULL, "
                        "writer = NULL, round = NULL, error = NULL, attempts = 0, "
                        "lease_token = NULL, lease_until = NULL, written_at = NULL, mac = %s "
                        f"WHERE batch_id = %s AND position = %s AND {_HELD_BY}",
                        [c["mac"], claim.batch_id, c["position"], claim.token],
                    )
                    for c in changes
                ]
            )
        return len(changes)

    async def claim_leads(
        self,
        batch_id: str,
        limit: int,
        lease_seconds: float,
        *,
        sample: bool = False,
        token: str | None = None,
    ) -> builtins.list[LeadClaim]:
        """Lease up to ``limit`` leads to write, lowest position first: leads another worker
        is claiming are skipped (``FOR UPDATE SKIP LOCKED``), never waited for. The chosen
        positions are an ``ARRAY(…)``, evaluated once: as ``IN (SELECT … LIMIT)`` the planner
        may run the subquery again per row and lease more than ``limit`` leads."""
        signer = self._signer
        token = token or uuid.uuid4().hex
        only_sample = " AND in_sample = 1" if sample else ""
        async with self._transaction(durable=False) as tx:
            rows = await tx.only(
                "UPDATE coldmail.batch_leads SET state = 'claimed', lease_token = %s, "
                "lease_until = pg_catalog.clock_timestamp() + %s, attempts = attempts + 1 "
                "WHERE batch_id = %s AND position = ANY(ARRAY(SELECT position "
                "FROM coldmail.batch_leads WHERE batch_id = %s AND (state = 'pending' "
                "OR (state = 'claimed' AND "
                f"lease_until < pg_catalog.clock_timestamp())){only_sample} ORDER BY position "
                f"LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING {_LEAD_COLUMNS}",
                [token, timedelta(seconds=lease_seconds), batch_id, batch_id, limit],
            )
        claimed, refused = sort_claimed(rows, signer)
        if refused:
            async with self._transaction(durable=False) as tx:
                await tx.open("SELECT 1", [])
                await tx.finish(
                    [
                        (
                            "UPDATE coldmail.batch_leads SET state = 'skipped', error = %s, "
                            "lease_token = NULL, lease_until = NULL "
                            "WHERE batch_id = %s AND position = %s AND lease_token = %s",
                            [why, batch_id, position, token],
                        )
                        for position, why in refused
                    ]
                )
        return [lead_claim_of(row, token) for row in claimed]

    async def renew_leads(self, batch_id: str, token: str, lease_seconds: float) -> int:
        """Extend the lease of the leads ``token`` holds; how many it still holds."""
        async with self._transaction(durable=False, idempotent=True) as tx:
            renewed = await tx.only(
                "UPDATE coldmail.batch_leads "
                "SET lease_until = pg_catalog.clock_timestamp() + %s "
                "WHERE batch_id = %s AND lease_token = %s AND state = 'claimed' "
                "RETURNING position",
                [timedelta(seconds=lease_seconds), batch_id, token],
            )
        return len(renewed)

    async def record_lines(
        self, batch_id: str, token: str, round: int, records: Sequence[LineRecord]
    ) -> int:
        """Record each lead's result if ``token`` still holds it (fenced, durable)."""
        if not records:
            return 0
        signer = self._signer
        by_position = {r.position: r for r in records}
        async with self._transaction() as tx:
            rows = await tx.open(
                f"SELECT {_LEAD_COLUMNS} FROM coldmail.batch_leads WHERE batch_id = %s "
                "AND lease_token = %s AND state = 'claimed' AND position = ANY(%s) "
                "ORDER BY position FOR UPDATE",
                [batch_id, token, list(by_position)],
            )
            if not rows:
                return 0
            statements = []
            for found in rows:
                row = _normalized(found)
                change = recorded_lead(row, by_position[int(row["position"])], round, signer)
                statements.append(
                    (
                        _PG_RECORD_LEAD,
                        [
                            *(change[c] for c in RECORDED_COLUMNS),
                            change["state"] == "written",
                            batch_id,
                            row["position"],
                            token,
                        ],
                    )
                )
            await tx.finish(statements)
        return len(statements)

    async def batch_counts(self, batch_id: str) -> BatchCounts:
        """How many leads each state has, and the calls and tokens recorded."""
        rows = await self._fetch_all(
            "SELECT state, COUNT(*) AS n, SUM(calls) AS calls, SUM(tokens) AS tokens "
            "FROM coldmail.batch_leads WHERE batch_id = %s GROUP BY state",
            [batch_id],
        )
        return counts_of(rows)

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
        chosen = [s for s in LEAD_STATES if s in states]
        only_sample = " AND in_sample = 1" if sample else ""
        rows = await self._fetch_all(
            f"SELECT {_LEAD_COLUMNS} FROM coldmail.batch_leads WHERE batch_id = %s "
            f"AND state = ANY(%s){only_sample} AND position > %s ORDER BY position LIMIT %s",
            [batch_id, chosen, after, limit],
        )
        return [lead_row_of(row, self._signer) for row in rows]

    async def finish_batch(self, batch_id: str) -> Batch | None:
        """Mark a writing batch done when no lead is left to write; the batch as it is."""
        signer = self._signer
        async with self._transaction(durable=False) as tx:
            found = await tx.open(
                f"SELECT {_BATCH_COLUMNS}, pg_catalog.clock_timestamp() AS db_now, "
                "EXISTS (SELECT 1 FROM coldmail.batch_leads l WHERE l.batch_id = b.batch_id "
                "AND l.state IN ('pending', 'claimed')) AS open_leads "
                "FROM coldmail.batches b WHERE batch_id = %s FOR UPDATE OF b",
                [batch_id],
            )
            if not found:
                return None
            row, now = _split(found[0])
            left = row.pop("open_leads")
            if row["status"] != "writing" or left or not batch_verified(row, signer):
                return batch_of(row, signer)
            done = plan_done(row, now=now, signer=signer)
            await tx.finish([_batch_update(done)])
        return batch_of(done, signer)

    # ------------------------------------------------------------------ "due soonest"

    async def list_due_soonest(
        self, status: RunStatus | None = None, *, limit: int = 50, offset: int = 0
    ) -> builtins.list[DueRun]:
        """Runs waiting with a deadline pending, soonest first, then the others newest
        first; optionally of one status. Never reads a snapshot."""
        sql = DueSoonestSql.build(
            runs="coldmail.runs", notifications="coldmail.notifications", mark="%s", status=status
        )

        async def fetch(statement: str, params: builtins.list[Any]) -> builtins.list[Any]:
            async def send(conn: Connection) -> builtins.list[DictRow]:
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall()

            return [_normalized(row) for row in await self._read(send)]

        rows = await page_due_soonest(fetch, sql, limit=limit, offset=offset)
        return [
            DueRun(decode_row(row, self._signer), due_deadline(row, self._signer)) for row in rows
        ]


class _ServerClock:
    """The server's clock between two readings of it, so that a start and a complete need
    not spend a round trip on reading it (their timestamps are MACed, so they are chosen
    before the writes are sent).

    A reading (``clock_timestamp()``, taken by the server during a round trip this process
    sent at monotonic time ``sent``) is carried forward by this process's monotonic clock
    from when its answer was read: since the server read its clock before that, the
    estimate is never ahead of the server's clock, and behind it by at most that round trip.
    So a time taken after a reading is never earlier than the reading: a run's times keep
    their order (a complete's also never precedes its claim's, see ``_complete_together``).
    Only readings of round trips under :data:`CLOCK_READING_ROUND_TRIP` are kept, each
    stands in for :data:`CLOCK_READING_SECONDS`; this host's wall clock is never read, so
    hosts whose clocks disagree still agree on every time. Without a fresh reading, ``now``
    is None and the caller reads the server's clock in a round trip."""

    def __init__(self) -> None:
        self._reading: tuple[datetime, float] | None = None

    def note(self, server_now: datetime, sent: float) -> None:
        """A reading of the server's clock, from a round trip sent at ``sent`` whose answer
        was just read."""
        read = time.monotonic()
        if read - sent <= CLOCK_READING_ROUND_TRIP:
            self._reading = (server_now, read)

    def now(self) -> datetime | None:
        """The server's clock now (behind it by at most a short round trip), or None."""
        if self._reading is None:
            return None
        server_now, read = self._reading
        elapsed = time.monotonic() - read
        if elapsed > CLOCK_READING_SECONDS:
            return None
        return server_now + timedelta(seconds=elapsed)


class _Completion(NamedTuple):
    """One ``complete`` waiting for its group."""

    claim: Claim
    result: Paused | Finished
    signature: bytes | None


# --------------------------------------------------------------------------- transactions


class _Tx:
    """One transaction on one connection, sent in (at most) two round trips.

    The first round trip (:meth:`open`) commits nothing, so when its connection turns out
    lost it is sent again on a fresh one; the one that commits (:meth:`finish`, :meth:`only`)
    is never sent twice, unless the transaction is idempotent: a lost answer to it is a
    ``StoreError`` with the topic ``commit_unknown``.
    """

    def __init__(
        self, call: _Call, begin: tuple[str, tuple[Any, ...]], *, idempotent: bool
    ) -> None:
        self._call = call
        self._begin = begin
        self._idempotent = idempotent
        self._opened = False

    async def open(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """BEGIN, the transaction's settings and ``query``, in one round trip; its rows."""
        begin, values = self._begin
        results = await self._call.send(
            lambda conn: _script(conn, f"{begin}; {query}", [*values, *params]),
            retry=True,
            commits=False,
        )
        self._opened = True
        return results[-1] or []

    async def only(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """BEGIN, the settings, ``query`` and COMMIT, in one round trip; its rows."""
        begin, values = self._begin
        results = await self._call.send(
            lambda conn: _script(conn, f"{begin}; {query}; COMMIT", [*values, *params]),
            retry=self._idempotent,
            commits=True,
        )
        return results[-2] or []

    @property
    def sent(self) -> float:
        """When the last round trip was sent (``time.monotonic``)."""
        return self._call.sent

    async def finish(
        self, statements: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[dict[str, Any]] | None]:
        """The writes and COMMIT, in one round trip (BEGIN and the settings first when the
        transaction was not opened): the rows of each statement, in order."""
        sqls = [sql for sql, _ in statements]
        params = [v for _, values in statements for v in values]
        skip = 0
        if not self._opened:
            begin, values = self._begin
            sqls, params, skip = [begin, *sqls], [*values, *params], begin.count(";") + 1
        script = "; ".join([*sqls, "COMMIT"])
        results = await self._call.send(
            lambda conn: _script(conn, script, params), retry=False, commits=True
        )
        return results[skip:-1]


class _Transaction:
    """``async with`` one :class:`_Tx` on a pooled connection: errors mapped to a
    ``StoreError``, and whatever was not committed rolled back before the connection goes
    back to the pool (a class, not ``asynccontextmanager``: it is entered on every call)."""

    __slots__ = ("_call", "_mapped", "_tx")

    def __init__(self, call: _Call, begin: tuple[str, tuple[Any, ...]], idempotent: bool) -> None:
        self._call = call
        self._mapped = call.errors.mapped()
        self._tx = _Tx(call, begin, idempotent=idempotent)

    async def __aenter__(self) -> _Tx:
        self._mapped.__enter__()
        return self._tx

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # ``mapped`` never swallows an error: it raises it, or a StoreError in its place.
        try:
            await self._call.end()
        except BaseException as ended:  # mapped like an error of the body
            self._mapped.__exit__(type(ended), ended, ended.__traceback__)
            raise
        self._mapped.__exit__(kind, exc, tb)


class _Call:
    """One store call: the pooled connection it holds, and its deadline. Every wait in it —
    for a connection, for each answer — ends by then; a round trip that cannot have
    committed anything is sent again on a fresh connection when its connection is lost."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        errors: _ErrorContext,
        pool_timeout: float,
        answer_timeout: float,
        call_timeout: float,
    ) -> None:
        self.errors = errors
        self._pool = pool
        self._pool_timeout = pool_timeout
        self._answer_timeout = answer_timeout
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + call_timeout
        self._conn: Connection | None = None
        self.sent = 0.0
        """When the last round trip was sent (``time.monotonic``), after the pool's wait."""

    async def send(
        self, send: Callable[[Connection], Awaitable[T]], *, retry: bool, commits: bool
    ) -> T:
        """``send`` on the call's connection, within the time left for one answer.

        Raises:
            StoreError: no answer in time; or the connection was lost during a round trip
                that commits (topic ``commit_unknown``), or during any round trip once the
                retries or the time ran out.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            handed_out = self._conn is None  # the pool's check has just looked at it
            conn = await self._connection()
            in_transaction = conn.info.transaction_status != pq.TransactionStatus.IDLE
            if not handed_out and _closed_by_server(conn):  # found closed before anything
                # was sent on it
                if not in_transaction and attempt < _ATTEMPTS and self._time_left():
                    await self._replace()
                    continue
                raise StoreError(self.errors.lost_before_commit(), topic="connection_lost")
            limit = min(self._answer_timeout, max(self._deadline - self._loop.time(), 0.001))
            watchdog = _Watchdog(conn, limit)
            try:
                with watchdog:
                    self.sent = time.monotonic()
                    return await send(conn)
            except psycopg.Error as exc:
                if watchdog.fired:
                    raise StoreError(
                        self.errors.no_answer(limit, committing=commits),
                        topic="commit_unknown" if commits else None,
                    ) from None
                if not conn.closed:
                    raise  # the server answered: an error with its SQLSTATE
                if retry and attempt < _ATTEMPTS and self._time_left():
                    await self._replace()
                    continue
                if commits:
                    raise StoreError(self.errors.lost_commit(exc), topic="commit_unknown") from None
                raise StoreError(self.errors.message(exc), topic="connection_lost") from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def end(self) -> None:
        """Roll back whatever was not committed (a refusal, or an error), then give the
        connection back to the pool."""
        if self._conn is None:
            return
        if self._conn.info.transaction_status == pq.TransactionStatus.IDLE:
            await self._give_back()  # committed (or never begun): nothing to roll back
            return
        try:
            await self.send(_rollback_unless_idle, retry=False, commits=False)
        except (StoreError, psycopg.Error):
            pass  # a broken connection: the pool discards it, the server rolls back
        finally:
            await self._give_back()

    async def _connection(self) -> Connection:
        if self._conn is None:
            left = self._deadline - self._loop.time()
            if left <= 0:
                raise PoolTimeout("the call ran out of time")
            self._conn = await self._pool.getconn(timeout=min(self._pool_timeout, left))
        return self._conn

    async def _give_back(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.putconn(conn)

    async def _replace(self) -> None:
        """Give the lost connection back (the pool replaces it) and drain the pool: the
        others were likely cut off with it (a restart, a failover, a network failure)."""
        await self._give_back()
        await self._pool.drain()

    def _time_left(self) -> bool:
        return self._loop.time() < self._deadline


class _Watchdog:
    """Drops the connection if no answer came within ``limit`` seconds: its socket is shut
    down, so the round trip fails at once as if the server had closed it.

    Neither the server's timeouts (a server that stopped answering sends nothing) nor TCP's
    (a proxy in between acknowledges every packet) end such a wait; and cancelling the
    waiting task would make psycopg try to cancel the query over another connection and
    wait for that too."""

    def __init__(self, conn: Connection, limit: float) -> None:
        self._conn = conn
        self._limit = limit
        self._timer: asyncio.TimerHandle | None = None
        self.fired = False

    def __enter__(self) -> _Watchdog:
        self._timer = asyncio.get_running_loop().call_later(self._limit, self._drop)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _drop(self) -> None:
        self.fired = True
        _shut_down(self._conn)


def _shut_down(conn: Connection) -> None:
    """Shut the connection's socket down both ways (its descriptor stays open for psycopg,
    which then finds the connection closed and discards it)."""
    try:
        sock = socket.socket(fileno=conn.pgconn.socket)
    except (OSError, psycopg.Error):
        return  # already closed
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        sock.detach()  # libpq's descriptor: not ours to close


def _closed_by_server(conn: Connection) -> bool:
    """Whether the server closed this idle connection (it restarted, it timed the session
    out, the backend was killed): its socket is readable and reading it finds the end. A
    local check that costs no round trip; a connection cut silently is found by the round
    trip that uses it, and sent again on another when nothing can have been committed."""
    if conn.closed:
        return True
    pgconn = conn.pgconn
    try:
        for _ in range(4):  # a last message (why the server closes), then the end
            if not _readable(pgconn.socket):
                return False
            pgconn.consume_input()  # raises at the end of the stream
    except (psycopg.OperationalError, OSError, ValueError):
        return True
    return pgconn.status != pq.ConnStatus.OK


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows


async def _rollback_unless_idle(conn: Connection) -> None:
    """End a transaction left open by a refusal or an error, before the pool reuses ``conn``."""
    status = conn.info.transaction_status
    if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # a broken connection: the pool discards it, the server rolls back


async def _script(
    conn: Connection, script: str, params: Sequence[Any]
) -> list[list[dict[str, Any]] | None]:
    """Run several statements in one round trip; the rows of each (None: no rows)."""
    cursor = AsyncClientCursor(conn)
    try:
        await cursor.execute(script, params)
        results: list[list[dict[str, Any]] | None] = []
        while True:
            # The result's status, not ``cursor.description`` (which builds a Column object
            # per column on every call): a round trip's results are read many times a resume.
            result = cursor.pgresult
            rows = result is not None and result.status == pq.ExecStatus.TUPLES_OK
            results.append(await cursor.fetchall() if rows else None)
            if not cursor.nextset():
                return results
    finally:
        await cursor.close()


def _update(
    row: Mapping[str, Any], change: RowChange, snapshot: tuple[bytes | None, ...] = ()
) -> list[tuple[str, Sequence[Any]]]:
    """The UPDATE of the columns that changed (and the snapshot, when given), plus events."""
    changed = {
        name: change.row.get(name)
        for name in RUN_COLUMNS
        if name != "interaction_id" and change.row.get(name) != row.get(name)
    }
    if snapshot:
        changed["snapshot"] = snapshot[0]
    statements: list[tuple[str, Sequence[Any]]] = []
    if changed:
        assignments = ", ".join(f"{name} = %s" for name in changed)
        statements.append(
            (
                f"UPDATE coldmail.runs SET {assignments} WHERE interaction_id = %s",
                [*changed.values(), row["interaction_id"]],
            )
        )
    return [*statements, *_insert_events(change)]


def _enqueue(rows: list[dict[str, Any]]) -> list[tuple[str, Sequence[Any]]]:
    """The outbox rows announcing a change: one statement, none when there are none."""
    if not rows:
        return []
    statement = insert_statement("coldmail.notifications", len(rows), "%s")
    return [(statement, insert_values(rows, as_text=False))]


_EVENT_TYPES = {"seq": "integer", "at": "timestamptz", "round": "integer", "mac": "bytea"}
_NOTIFICATION_TYPES = {
    "mac": "bytea",
    "attempts": "integer",
    "next_attempt_at": "timestamptz",
    "created_at": "timestamptz",
}


def _typed_rows(columns: Sequence[str], types: Mapping[str, str], count: int) -> str:
    """``count`` rows of a VALUES list, each value cast to its column's type (in a CTE's
    ``INSERT … SELECT`` an untyped literal would be text)."""
    one = "(" + ", ".join(f"%s::{types.get(c, 'text')}" for c in columns) + ")"
    return ", ".join(one for _ in range(count))


def _fenced_complete(
    row: Mapping[str, Any],
    change: RowChange,
    token: str,
    snapshot: bytes | None,
    left: dict[str, Any] | None,
    announced: list[dict[str, Any]],
) -> tuple[str, Sequence[Any]]:
    """One member of a fenced complete: its UPDATE only where the run is still resuming
    under ``token``, and its other writes only for the row that UPDATE returned (all in one
    statement, so they see the snapshot before it: the kept pause copies the replaced one).
    Its one row says whether it was written."""
    changed = {
        name: change.row.get(name)
        for name in RUN_COLUMNS
        if name != "interaction_id" and change.row.get(name) != row.get(name)
    }
    changed["snapshot"] = snapshot
    claimed_mac = row.get("row_mac")
    new_mac = changed.pop("row_mac", claimed_mac)
    assignments = [f"{name} = %s" for name in changed]
    params: list[Any] = [*changed.values()]
    if new_mac is not None and claimed_mac is not None:
        # The new MAC covers the claimed values, not the columns left as they are, and
        # replaces only the claim's own MAC: a MAC a keyless writer removed or replaced
        # meanwhile stays wrong, as an edited column does (the run reads as tampered).
        assignments.append("row_mac = CASE WHEN row_mac = %s THEN %s ELSE row_mac END")
        params += [claimed_mac, new_mac]
    elif new_mac != claimed_mac:
        assignments.append("row_mac = %s")
        params.append(new_mac)
    parts = [
        f"WITH written AS (UPDATE coldmail.runs SET {', '.join(assignments)} "
        "WHERE interaction_id = %s AND status = 'resuming' AND claim_token = %s "
        "RETURNING interaction_id)"
    ]
    params += [row["interaction_id"], token]
    if left is not None:
        parts.append(
            f"kept AS (INSERT INTO coldmail.pauses ({', '.join(PAUSE_COLUMNS)}) "
            f"SELECT {_LEFT_VALUES}, r.snapshot FROM coldmail.runs AS r "
            "JOIN written USING (interaction_id) WHERE r.snapshot IS NOT NULL "
            "ON CONFLICT (interaction_id, round) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in PAUSE_COLUMNS[2:])
            + ")"
        )
        params += [left[c] for c in KEEP_LEFT_COLUMNS]
    columns = [*EVENT_COLUMNS, "mac"]
    if change.events:
        parts.append(
            f"events AS (INSERT INTO coldmail.run_events ({', '.join(columns)}) SELECT v.* "
            f"FROM written, (VALUES {_typed_rows(columns, _EVENT_TYPES, len(change.events))}) "
            "AS v)"
        )
        params += [e[c] for e in change.events for c in columns]
    if announced:
        parts.append(
            f"outbox AS (INSERT INTO coldmail.notifications ({', '.join(INSERTED_COLUMNS)}) "
            "SELECT v.* FROM written, "
            f"(VALUES {_typed_rows(INSERTED_COLUMNS, _NOTIFICATION_TYPES, len(announced))}) "
            "AS v ON CONFLICT (id) DO NOTHING)"
        )
        params += insert_values(announced, as_text=False)
    sql = ", ".join(parts) + " SELECT pg_catalog.count(*) AS written FROM written"
    return sql, params


def _insert_events(change: RowChange) -> list[tuple[str, Sequence[Any]]]:
    if not change.events:
        return []
    values = [v for e in change.events for v in (*(e[c] for c in EVENT_COLUMNS), e["mac"])]
    rows = ", ".join(_INSERT_EVENT_ROW for _ in change.events)
    return [(f"INSERT INTO coldmail.run_events ({_EVENT_SELECT}) VALUES {rows}", values)]


def _split(found: Mapping[str, Any]) -> tuple[dict[str, Any], datetime]:
    row = _normalized(found)
    now = row.pop("db_now")
    return row, now


def _normalized(found: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the rules expect it: timestamps in UTC (as SQLite stores them)."""
    row = dict(found)
    for name in (*_TIME_COLUMNS, "db_now"):
        value = row.get(name)
        if isinstance(value, datetime):
            row[name] = _utc(value)
    return row


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def _storable(interaction_id: str) -> bool:
    """Whether PostgreSQL could hold this id at all (its text type cannot hold NUL)."""
    return "\x00" not in interaction_id


def _milliseconds(seconds: float) -> str:
    """A duration as PostgreSQL reads it: only digits and ``ms`` (safe inside a literal)."""
    return f"{max(1, math.ceil(seconds * 1000))}ms"


def _answer_timeout(settings: Settings) -> float:
    """Seconds a round trip may wait for its answer: what the server may spend on it (the
    lock wait, then the statement; it cancels the statement past their sum), plus
    :data:`NETWORK_ALLOWANCE` for the network."""
    return settings.busy_timeout + settings.statement_timeout + NETWORK_ALLOWANCE


def _migration_lock_timeout(settings: Settings) -> float:
    """How long opening waits for the migration lock another host holds."""
    return max(settings.busy_timeout, 10)


# --------------------------------------------------------------------------- connecting


async def _configure(conn: Connection) -> None:
    """Client-side only (no SET reaches the server): BEGIN always says READ COMMITTED."""
    await conn.set_isolation_level(IsolationLevel.READ_COMMITTED)


def _libpq_url(db: str) -> str:
    """libpq does not know SQLAlchemy's ``postgresql+psycopg://`` spelling (a keyword string
    is passed on as it is)."""
    if is_libpq_keywords(db):
        return db.strip()
    return re.sub(r"^postgresql\+psycopg://", "postgresql://", db)


def _connection_options(
    url: str, settings: Settings, secrets: frozenset[str], shown: str
) -> dict[str, Any]:
    """Keyword arguments for every connection: autocommit (each transaction is explicit),
    rows as dicts, no server-side prepared statements unless asked, UTF-8 whatever the
    server's or the role's default, a connect timeout, and TCP keepalives with a user
    timeout, so that a peer that vanished is noticed (the URL may set each of the last)."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(
            f"{shown} is not a usable PostgreSQL URL: {_scrub(str(exc).strip(), secrets)}",
            topic="store_path",
        ) from None
    encoding = str(given.get("client_encoding", "UTF8"))
    if encoding.replace("-", "").replace("_", "").upper() != "UTF8":
        raise StoreError(
            f"{shown} sets client_encoding={encoding}; bridgic-coldmail talks UTF-8 with "
            "the server: remove that parameter",
            topic="store_path",
        )
    options: dict[str, Any] = {
        "autocommit": True,
        "row_factory": dict_row,
        "prepare_threshold": 5 if settings.prepare_statements else None,
        "client_encoding": "UTF8",
    }
    defaults: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(settings.pool_timeout)),
        "application_name": "bridgic-coldmail",
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": math.ceil(_answer_timeout(settings) * 1000),
    }
    options.update({key: value for key, value in defaults.items() if key not in given})
    return options


async def _migrate(
    conn: Connection, shown: str, keys: KeySource, settings: Settings
) -> SnapshotSigner:
    """Check the schema and the key, apply missing migrations; one transaction holding the
    migration advisory lock, so concurrent openers on any host apply each migration once."""
    async with conn.transaction():
        cursor = await conn.execute(
            sql.ENCODING_AND_TIMEOUTS,
            [
                _milliseconds(_migration_lock_timeout(settings)),
                _milliseconds(_migration_lock_timeout(settings) + settings.statement_timeout),
            ],
        )
        encoding = str((await cursor.fetchone() or {"encoding": "?"})["encoding"])
        if encoding != "UTF8":
            raise StoreError(
                f"{shown} uses the encoding {encoding}; bridgic-coldmail needs a UTF8 "
                "database (text in any other encoding is altered or refused): create one "
                "with CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0",
                topic="store_path",
            )
        await conn.execute(sql.TAKE_MIGRATION_LOCK, [MIGRATION_LOCK])
        return await migrate(_PostgresDialect(conn, shown), keys, create=True)


class _PostgresDialect:
    """The migration runner's steps in PostgreSQL, in the transaction holding the lock."""

    migrations = MIGRATIONS
    key_hint = "set COLDMAIL_SECRET_KEY (or COLDMAIL_KEY_FILE) to the key every other host uses"

    def __init__(self, conn: Connection, location: str) -> None:
        self._conn = conn
        self.location = location

    async def tables(self) -> set[str]:
        cursor = await self._conn.execute(sql.TABLES, [SCHEMA])
        return {row["name"] for row in await cursor.fetchall()}

    def foreign(self) -> StoreError:
        return StoreError(
            f"{self.location} has a schema '{SCHEMA}' that another application created (it "
            "has no coldmail_schema table); use another database",
            topic="store_path",
        )

    async def create_version_table(self) -> None:
        await self._conn.execute(sql.CREATE_SCHEMA)
        await self._conn.execute(sql.CREATE_VERSION_TABLE)

    async def applied(self) -> set[int]:
        cursor = await self._conn.execute(sql.APPLIED)
        return {int(row["version"]) for row in await cursor.fetchall()}

    async def fingerprint(self) -> str | None:
        cursor = await self._conn.execute(sql.FINGERPRINT)
        found = await cursor.fetchone()
        return found["value"] if found else None

    async def holds_runs(self) -> bool:
        cursor = await self._conn.execute(sql.HOLDS_RUNS)
        return await cursor.fetchone() is not None

    async def apply(self, migration: Migration) -> None:
        for statement in migration.statements:
            await self._conn.execute(statement)
        await self._conn.execute(sql.RECORD_MIGRATION, [migration.version, migration.name])

    async def upgraded(self, before: int, signer: SnapshotSigner) -> None:
        """Nothing: PostgreSQL stores began with release 0.5, so none holds a run of an
        earlier release to mark (``legacy_mark`` stays empty)."""

    async def refuse_planted(self) -> None:
        planted = await _planted_objects(self._conn)
        if planted:
            raise StoreError(
                f"{self.location} holds objects in schema '{SCHEMA}' that bridgic-coldmail "
                f"did not create ({', '.join(planted)}); a trigger or rule there could change "
                "what the store writes, so the database is refused: drop them, or restore the "
                "database",
                topic="store_path",
            )

    async def remember_fingerprint(self, fingerprint: str) -> None:
        await self._conn.execute(sql.REMEMBER_FINGERPRINT, [fingerprint])


async def _planted_objects(conn: Connection) -> list[str]:
    """What the schema holds besides :data:`EXPECTED_RELATIONS`: other relations (views,
    sequences, tables), any trigger and any rule."""
    cursor = await conn.execute(
        "SELECT c.relkind::text AS kind, c.relname AS name FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        [SCHEMA],
    )
    found = [(r["kind"], r["name"]) for r in await cursor.fetchall()]
    planted = [f"{kind} {name}" for kind, name in found if (kind, name) not in EXPECTED_RELATIONS]
    cursor = await conn.execute(
        "SELECT 'trigger ' || t.tgname AS what FROM pg_catalog.pg_trigger t "
        "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND NOT t.tgisinternal "
        "UNION ALL SELECT 'rule ' || r.rulename FROM pg_catalog.pg_rewrite r "
        "JOIN pg_catalog.pg_class c ON c.oid = r.ev_class "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r'",
        [SCHEMA, SCHEMA],
    )
    return planted + [r["what"] for r in await cursor.fetchall()]


# --------------------------------------------------------------------------- errors


def _passwords(url: str) -> frozenset[str]:
    """Every spelling of the URL's password (user-info or ``password=`` parameter, or the
    keyword string's ``password``), and of the SSL key's ``sslpassword``."""
    found: set[str] = set()
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
        found |= {str(given[key]) for key in ("password", "sslpassword") if key in given}
    except psycopg.Error:
        pass  # malformed: the patterns below still find what they can
    try:
        parts = urlsplit(url)
        if parts.password:
            found |= {parts.password, unquote(parts.password)}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "password":
                found.add(value)
    except ValueError:
        pass
    for raw in re.findall(r"[?&](?:ssl)?password=([^&#]*)", url):
        found |= {raw, unquote(raw)}
    for quoted, bare in re.findall(
        r"(?:^|\s)(?:ssl)?password\s*=\s*(?:'((?:[^'\\]|\\.)*)'?|(\S*))", url
    ):
        found |= {quoted, re.sub(r"\\(.)", r"\1", quoted), bare}
    credentials = re.match(r"^[a-z+]+://[^:/@]*:([^/]*)@", url)
    if credentials:
        found |= {credentials.group(1), unquote(credentials.group(1))}
    return frozenset(s for s in found if s)


def _scrub(text: str, secrets: frozenset[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact_url(text)


_LOCKED = "55P03"
_RETRYABLE = {"40001": "serialization failure", "40P01": "deadlock"}


class _ErrorContext:
    """Turns psycopg's errors into a ``StoreError`` that names the server, by SQLSTATE."""

    def __init__(
        self, shown: str, secrets: frozenset[str], busy_timeout: float, pool_timeout: float
    ) -> None:
        self.shown = shown
        self.secrets = secrets
        self.busy_timeout = busy_timeout
        self.pool_timeout = pool_timeout

    @contextmanager
    def mapped(self, *, connecting: bool = False) -> Iterator[None]:
        try:
            yield
        except ColdmailError:
            raise
        except PoolTimeout:
            raise StoreError(
                f"no connection to {self.shown} became free within {self.pool_timeout:g} s "
                "(every pooled connection busy, or the server unreachable); raise "
                "COLDMAIL_PG_POOL_SIZE or COLDMAIL_PG_POOL_TIMEOUT, or check the server"
            ) from None
        except psycopg.Error as exc:
            raise StoreError(self.message(exc, connecting)) from None

    def no_answer(self, limit: float, *, committing: bool) -> str:
        """A round trip whose answer did not come in time: its connection was dropped."""
        if committing:
            return (
                f"{self.shown} did not answer within {limit:g} s while committing (the "
                "server, or the network to it, stopped answering): the change may have been "
                "recorded; check the server and the network, then look before you retry"
            )
        return (
            f"{self.shown} did not answer within {limit:g} s (the server, or the network to "
            "it, stopped answering); nothing was changed: check them, then retry"
        )

    def lost_before_commit(self) -> str:
        """The connection was found closed in the middle of a transaction, before its
        COMMIT was sent: the server rolled it back."""
        return (
            f"lost the connection to {self.shown} (the server closed it) before the change "
            "was committed; nothing was changed, retry"
        )

    def lost_commit(self, exc: psycopg.Error) -> str:
        """The connection was lost after COMMIT may have reached the server."""
        reason = _scrub(" ".join(str(exc).split()), self.secrets) or type(exc).__name__
        return (
            f"lost the connection to {self.shown} while committing ({reason}): the change "
            "may have been recorded; look before you retry"
        )

    def message(self, exc: psycopg.Error, connecting: bool = False) -> str:
        shown, state = self.shown, exc.sqlstate or ""
        detail = _scrub((exc.diag.message_primary or str(exc)).strip(), self.secrets)
        if state == _LOCKED:
            return (
                f"{shown} is locked by another process for more than {self.busy_timeout:g} s; "
                "wait for it to finish and retry"
            )
        if state in _RETRYABLE:
            return (
                f"{shown} refused a change that raced with another ({_RETRYABLE[state]}); "
                "nothing was changed, retry"
            )
        if state == "53100":
            return f"the disk holding {shown} is full; free some space on the database server"
        if state == "53300":
            return (
                f"{shown} has no free connection slots ({detail}); lower "
                "COLDMAIL_PG_POOL_SIZE or raise the server's max_connections"
            )
        if state.startswith("53"):
            return f"the server of {shown} is out of resources: {detail}"
        if state == "3D000":
            return f"the database of {shown} does not exist ({detail}); create it first"
        if state.startswith("28"):
            return f"{shown} refused the login ({detail}); check the user and password"
        if state == "42501":
            return (
                f"the user of {shown} lacks a privilege ({detail}); let it create the schema "
                f"'{SCHEMA}' (GRANT CREATE ON DATABASE) or own it"
            )
        if state == "25006":
            return f"{shown} is read-only ({detail}); point at the primary server"
        if state == "57014":
            return f"a statement on {shown} was cancelled ({detail}); retry"
        if state.startswith("08") or state.startswith("57P") or not state:
            reason = _scrub(" ".join(str(exc).split()), self.secrets) or type(exc).__name__
            if connecting:
                return f"cannot connect to {shown}: {reason}; check the URL and the server"
            return f"lost the connection to {shown} ({reason}); retry"
        return f"database error in {shown}: {detail} (SQLSTATE {state})"


# --------------------------------------------------------------------------- batches (issue 23)

_BATCH_COLUMNS = ", ".join(BATCH_COLUMNS)
_BATCH_SELECT = f"SELECT {_BATCH_COLUMNS} FROM coldmail.batches"
_RUN_PREFIX = "run__"
_LOCK_BATCH_WITH_RUN = (
    f"SELECT {', '.join('b.' + c for c in BATCH_COLUMNS)}, "
    + ", ".join(f"r.{c} AS {_RUN_PREFIX}{c}" for c in (*RUN_COLUMNS, "policy_json", "policy_mac"))
    + ", (SELECT COUNT(*) FROM coldmail.batch_leads l WHERE l.batch_id = b.batch_id "
    "AND l.in_sample = 1 AND l.state = 'written') AS sample_written, "
    "pg_catalog.clock_timestamp() AS db_now FROM coldmail.batches b "
    "LEFT JOIN coldmail.runs r ON r.interaction_id = b.interaction_id "
    "WHERE b.batch_id = %s FOR UPDATE OF b"
)
"""The batch locked for its holder's step, with its run's row and policy (a sample pause
announces itself to the run's destinations) and its sample lines written."""
_LEAD_COLUMNS = ", ".join(LEAD_COLUMNS)
_LEADS_PER_INSERT = 500
"""Leads per ``INSERT`` statement when a batch is created (all in one transaction)."""
_HELD_BY = (
    "EXISTS (SELECT 1 FROM coldmail.batches b WHERE b.batch_id = batch_leads.batch_id "
    "AND b.status = 'sampling' AND b.claim_token = %s)"
)
_PG_RECORD_LEAD = (
    "UPDATE coldmail.batch_leads SET state = %s, line = %s, writer = %s, round = %s, "
    "error = %s, calls = calls + %s, tokens = tokens + %s, mac = %s, "
    "written_at = CASE WHEN %s THEN pg_catalog.clock_timestamp() END, lease_token = NULL, "
    "lease_until = NULL WHERE batch_id = %s AND position = %s AND lease_token = %s "
    "AND state = 'claimed'"
)
assert RECORDED_COLUMNS == ("state", "line", "writer", "round", "error", "calls", "tokens", "mac")
_UPDATED_BATCH_COLUMNS = [c for c in BATCH_COLUMNS if c != "batch_id"]


def _batch_update(
    row: Mapping[str, Any], snapshot: tuple[bytes | None, ...] = ()
) -> tuple[str, Sequence[Any]]:
    """The UPDATE writing every column of a batch row (and its snapshot, when given)."""
    assignments = [f"{c} = %s" for c in _UPDATED_BATCH_COLUMNS]
    values = [row.get(c) for c in _UPDATED_BATCH_COLUMNS]
    if snapshot:
        assignments.append("snapshot = %s")
        values.append(snapshot[0])
    return (
        f"UPDATE coldmail.batches SET {', '.join(assignments)} WHERE batch_id = %s",
        [*values, row["batch_id"]],
    )
