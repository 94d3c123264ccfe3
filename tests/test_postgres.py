"""What the PostgreSQL store promises beyond the conformance suite: passwords never shown,
errors mapped by SQLSTATE, the server's clock, migrations once under many openers, a key
from the environment or a file, and no session state (PgBouncer's transaction pooling).

Real PostgreSQL throughout (``tests/pg.py``); a few tests also run on SQLite to show parity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from bridgic_coldmail import Brief, EmailSequence, RunStatus
from bridgic_coldmail.errors import ConfigurationError, StoreError
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import Action, Claim, Finished, NewRun, RunStore, connect_store

from .conftest import Backend, run_cli
from .rows import age

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL tests need the postgres extra")

VERSIONS = {"1.0"}
FEEDBACK = Action.feedback("CTOs at mid-size hospitals")
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")
SEQUENCE = EmailSequence.model_validate(
    {
        "opener": {"subject": "Hello", "body": "Hi,\n\nDana", "wait_days": 0},
        "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 3},
    }
)


def _new() -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=BRIEF,
        draft=SEQUENCE,
        question="Who is this for?",
        snapshot=b"snapshot bytes " + uuid.uuid4().bytes,
        serialization_version="1.0",
    )


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A fresh PostgreSQL database (the ``backend`` fixture's PostgreSQL half)."""
    from .pg import postgres_backend

    with postgres_backend(request) as found:
        yield found


@pytest.fixture
async def pg_store(pg: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(pg.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


def _with_password(url: str, password: str, *, encode: bool = True) -> str:
    parts = urlsplit(url)
    shown = quote(password, safe="") if encode else password
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{shown}@{parts.hostname or ''}"))


# --------------------------------------------------------------------------- passwords


@pytest.mark.parametrize(
    "form", ["wrong password", "special characters", "query parameter", "malformed URL"]
)
async def test_a_password_never_appears_in_an_error_a_log_or_a_repr(
    pg: Backend, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Hunter2-" + uuid.uuid4().hex[:12]
    if form == "wrong password":
        url = _with_password(pg.db, secret)
    elif form == "special characters":
        secret = f"p@ss/w%rd {secret}"
        url = _with_password(pg.db, secret)
    elif form == "query parameter":
        parts = urlsplit(pg.db)
        url = urlunsplit(
            parts._replace(netloc=parts.username or "", query=f"{parts.query}&password={secret}")
        )
    else:  # an unencoded space: libpq's complaint quotes the password
        secret = f"{secret} x"
        url = _with_password(pg.db, secret, encode=False)
    if form != "malformed URL" and _accepts_any_password(pg.db):
        pytest.skip("the server of COLDMAIL_TEST_PG_URL accepts any password (trust auth)")
    caplog.set_level(logging.DEBUG)
    settings = Settings.resolve(env={**os.environ, **pg.env}, db=url)

    with pytest.raises(StoreError) as caught:
        await connect_store(settings)

    shown = [str(caught.value), repr(caught.value), repr(settings), caplog.text]
    for text in shown:
        assert secret not in text and quote(secret, safe="") not in text
    assert "cannot connect" in str(caught.value) or "not a usable PostgreSQL URL" in str(
        caught.value
    )


def _accepts_any_password(url: str) -> bool:
    try:
        psycopg.connect(_with_password(url, "not-the-password-" + uuid.uuid4().hex)).close()
    except psycopg.OperationalError:
        return False
    return True


async def test_the_working_password_is_not_in_the_store_repr_or_its_location(
    pg_store: RunStore, pg: Backend
) -> None:
    password = urlsplit(pg.db).password
    assert password
    assert password not in repr(pg_store) and password not in pg_store.location
    assert password not in repr(pg.settings())
    assert "***" in pg_store.location


# --------------------------------------------------------------------------- errors


async def test_a_missing_database_and_an_unreachable_server_are_clear_store_errors(
    pg: Backend,
) -> None:
    from .pg import with_database

    missing = pg.settings().with_overrides(db=with_database(pg.db, "no_such_database"))
    with pytest.raises(StoreError, match=r'cannot connect to .*"no_such_database" does not exist'):
        await connect_store(missing)

    nowhere = pg.db.split("?")[0] + "?host=/nonexistent-socket-dir&port=5432"
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect to .*nonexistent-socket-dir"):
        await connect_store(pg.settings().with_overrides(db=nowhere))
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("LockNotAvailable", "is locked by another process for more than 10 s"),
        ("SerializationFailure", "raced with another (serialization failure)"),
        ("DeadlockDetected", "raced with another (deadlock)"),
        ("DiskFull", "the disk holding postgresql://u:***@h/db is full"),
        ("TooManyConnections", "has no free connection slots"),
        ("InvalidPassword", "refused the login"),
        ("InvalidCatalogName", "does not exist"),
        ("InsufficientPrivilege", "lacks a privilege"),
        ("ReadOnlySqlTransaction", "is read-only"),
        ("AdminShutdown", "lost the connection to postgresql://u:***@h/db"),
    ],
)
def test_errors_are_mapped_by_sqlstate_not_by_their_text(error: str, expected: str) -> None:
    from bridgic_coldmail.store.postgres import _ErrorContext

    errors = _ErrorContext("postgresql://u:***@h/db", frozenset({"hunter2"}), 10, 30)
    # The text says something else entirely (and holds the password): only SQLSTATE counts.
    raised = getattr(psycopg.errors, error)("disk is full, database is locked, hunter2")
    with pytest.raises(StoreError) as caught, errors.mapped():
        raise raised
    assert expected in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_a_write_waits_for_the_lock_up_to_the_busy_timeout_then_fails_clearly(
    backend: Backend,
) -> None:
    store = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        new = await store.insert_paused(_new())
        with backend.rows.lock():
            assert await store.get(new.interaction_id) is not None  # reads go on
            started = time.monotonic()
            with pytest.raises(StoreError, match="is locked by another process for more than 1 s"):
                await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
            assert time.monotonic() - started >= 0.9
        assert isinstance(await store.claim(new.interaction_id, FEEDBACK, VERSIONS), Claim)
    finally:
        await store.close()


# --------------------------------------------------------------------------- clock


class _NoLocalClock(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, datetime)

    def __getattr__(cls, name: str) -> Any:
        return getattr(datetime, name)


class _Forbidden(metaclass=_NoLocalClock):
    """Stands in for ``datetime``: everything works but reading the local clock."""

    @staticmethod
    def now(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the PostgreSQL store read this host's clock")

    utcnow = now
    today = now


async def test_times_and_leases_come_from_the_server_clock_never_this_hosts(
    pg_store: RunStore, pg: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridgic_coldmail.store import base, postgres

    monkeypatch.setattr(postgres, "datetime", _Forbidden)
    monkeypatch.setattr(base, "datetime", _Forbidden)

    def server_now() -> Any:
        return pg.rows._execute("SELECT clock_timestamp() AS now").fetchone()["now"]

    before = server_now()
    new = await pg_store.insert_paused(_new())
    claim = await pg_store.claim(new.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(claim, Claim)
    renewed = await pg_store.renew(claim)
    done = await pg_store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
    history = await pg_store.history(new.interaction_id)
    after = server_now()

    assert done is not None and isinstance(history, list)
    assert before <= new.created_at <= done.updated_at <= after
    assert all(before <= event.at <= after for event in history)
    assert renewed is not None
    assert timedelta(seconds=29) < renewed - before < timedelta(seconds=31)
    age(pg.rows, new.interaction_id, timedelta(days=2))
    assert await pg_store.purge(timedelta(days=1), {RunStatus.COMPLETED}) == 1


# --------------------------------------------------------------------------- schema and key


async def test_hosts_opening_a_new_database_at_once_migrate_it_once(pg: Backend) -> None:
    from bridgic_coldmail.store.postgres_migrations import SCHEMA_VERSION

    stores = await asyncio.gather(*(connect_store(pg.settings()) for _ in range(6)))
    for store in stores:
        await store.close()
    assert pg.rows.schema_versions() == list(range(1, SCHEMA_VERSION + 1))
    count = pg.rows._execute("SELECT count(*) AS n FROM coldmail.coldmail_meta").fetchone()["n"]
    assert count == 1


async def test_a_coldmail_schema_of_another_application_is_refused(pg: Backend) -> None:
    pg.rows._execute("CREATE SCHEMA coldmail")
    pg.rows._execute("CREATE TABLE coldmail.runs (id integer)")
    with pytest.raises(StoreError, match="another application created"):
        await connect_store(pg.settings())


def test_migrations_can_run_inside_one_transaction() -> None:
    from bridgic_coldmail.store.postgres_migrations import MIGRATIONS

    for migration in MIGRATIONS:
        for statement in migration.statements:
            words = statement.upper().split()
            assert "CONCURRENTLY" not in words, (migration.version, statement[:60])
            assert words[0] not in ("VACUUM", "COMMIT", "BEGIN"), (migration.version, words[0])


async def test_the_key_comes_from_the_environment_or_a_file_never_beside_a_url(
    pg: Backend, tmp_path: Path
) -> None:
    bare = {k: v for k, v in os.environ.items() if k != "COLDMAIL_SECRET_KEY"}
    with pytest.raises(ConfigurationError, match="set COLDMAIL_SECRET_KEY"):
        await connect_store(Settings.resolve(env=bare, db=pg.db))

    key_file = tmp_path / "coldmail.key"
    store = await connect_store(Settings.resolve(env=bare, db=pg.db, key_file=key_file))
    await store.insert_paused(_new())
    await store.close()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = await connect_store(Settings.resolve(env=bare, db=pg.db, key_file=key_file))
    await again.close()
    with pytest.raises(ConfigurationError, match="is not the key that signed the runs"):
        await connect_store(pg.settings())  # COLDMAIL_SECRET_KEY: another key


# --------------------------------------------------------------------------- PgBouncer


@pytest.mark.parametrize("prepare", [False, True])
async def test_server_side_prepared_statements_only_when_asked(pg: Backend, prepare: bool) -> None:
    store = await connect_store(pg.settings(pool_size=1, prepare_statements=prepare))
    try:
        new = await store.insert_paused(_new())
        for _ in range(8):
            await store.get(new.interaction_id)
            await store.list()
        async with store._pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute("SELECT count(*) AS n FROM pg_prepared_statements")
            prepared = (await cursor.fetchone())["n"]
    finally:
        await store.close()
    assert (prepared > 0) is prepare


async def test_no_session_state_is_left_on_a_pooled_connection(pg: Backend) -> None:
    """What PgBouncer's transaction pooling needs: after any operation the server session is
    as it was (no setting changed, no transaction open, no advisory lock held)."""
    store = await connect_store(pg.settings(pool_size=1, lease_seconds=30))
    try:
        new = await store.insert_paused(_new())
        claim = await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
        assert isinstance(claim, Claim)
        await store.renew(claim)
        await store.release(claim, "failed")
        await store.history(new.interaction_id)
        await store.purge(timedelta(days=1), {RunStatus.COMPLETED})
        async with store._pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT name FROM pg_settings WHERE source = 'session' "
                "UNION ALL SELECT 'advisory lock' FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            changed = [row["name"] for row in await cursor.fetchall()]
            status = conn.info.transaction_status
    finally:
        await store.close()
    assert changed == [] and status == psycopg.pq.TransactionStatus.IDLE


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_purge_from_the_command_line_works_the_same_on_both_backends(
    backend: Backend, server: Any
) -> None:
    env = {**backend.env, "COLDMAIL_DB": backend.db}
    started = run_cli("start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana",
                      "--json", env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    interaction_id = started.stdout.split('"interaction_id": "')[1].split('"')[0]
    resumed = run_cli("resume", interaction_id, "--feedback", "CTOs", env=env)
    assert resumed.returncode == 0, resumed.stderr
    age(backend.rows, interaction_id, timedelta(days=40))

    purged = run_cli("purge", "--older-than", "30d", env=env)

    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("Deleted 1 run(s) (completed) from ")
    assert backend.rows.count() == 0 and backend.rows.events(interaction_id) == []
    if backend.name == "postgres":
        assert urlsplit(backend.db).password not in purged.stdout + purged.stderr


@pytest.mark.slow
async def test_many_agents_through_pgbouncer_in_transaction_pooling(
    pg: Backend, server: Any
) -> None:
    """Two agents (eight pooled connections) over PgBouncer's two server connections: every
    transaction may land on another server session, so any session state would break."""
    from bridgic_coldmail import ColdMailAgent, RunBeingResumed
    from bridgic_coldmail.models import Run

    from .pg import pgbouncer, session_server

    with pgbouncer(session_server()) as through:
        settings = pg.settings().with_overrides(db=through(pg.db), pool_size=4)
        async with (
            ColdMailAgent.open(settings=settings) as a,
            ColdMailAgent.open(settings=settings) as b,
        ):
            runs = await asyncio.gather(*(a.start(BRIEF) for _ in range(40)))
            ids = [run.interaction_id for run in runs]
            outcomes = await asyncio.gather(
                *(agent.resume(i, "CTOs") for i in ids for agent in (a, b)),
                return_exceptions=True,
            )
            histories = await asyncio.gather(*(b.history(i) for i in ids))
            shown = await asyncio.gather(*(agent.get(i) for i in ids * 3 for agent in (a, b)))
            age(pg.rows, ids[0], timedelta(days=40))
            purged = await b.purge(timedelta(days=30))
            listed = await a.list(limit=100)

    failures = [o for o in outcomes if not isinstance(o, (Run, RunBeingResumed))]
    assert failures == []
    assert server.count("draft") == 40 and server.count("refine") == 40  # one refine per run
    assert all([e.kind for e in h] == ["paused", "feedback", "completed"] for h in histories)
    assert {run.status for run in shown} == {RunStatus.COMPLETED}
    assert purged == 1
    assert len(listed) == 39 and all(
        isinstance(r, Run) and r.status is RunStatus.COMPLETED for r in listed
    )


async def _waiting_on_a_lock(pg: Backend) -> None:
    """Return once some session of this database waits for a lock (an event, not a delay)."""
    while not pg.rows._execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    ).fetchone()["n"]:
        await asyncio.sleep(0.02)


async def test_a_claim_cancelled_while_waiting_for_the_row_leaves_nothing_behind(
    pg: Backend,
) -> None:
    """A caller that goes away (a closed web request) mid-transaction: its connection goes
    back to the pool usable, and no transaction stays open holding the row."""
    store = await connect_store(pg.settings(pool_size=1, busy_timeout=5, lease_seconds=30))
    try:
        new = await store.insert_paused(_new())
        with pg.rows.lock():
            waiting = asyncio.create_task(store.claim(new.interaction_id, FEEDBACK, VERSIONS))
            await asyncio.wait_for(_waiting_on_a_lock(pg), 10)  # the claim is stuck on the row
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        claimed = await asyncio.wait_for(store.claim(new.interaction_id, FEEDBACK, VERSIONS), 2)
    finally:
        await store.close()
    assert isinstance(claimed, Claim)
    open_transactions = pg.rows._execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%%'"
    ).fetchone()["n"]
    assert open_transactions == 0


@pytest.mark.parametrize(
    ("plant", "named"),
    [
        (
            "CREATE FUNCTION coldmail.keep() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.status := OLD.status; RETURN NEW; END $$; "
            "CREATE TRIGGER keep_status BEFORE UPDATE ON coldmail.runs "
            "FOR EACH ROW EXECUTE FUNCTION coldmail.keep()",
            "trigger keep_status",
        ),
        (
            "CREATE RULE no_claims AS ON UPDATE TO coldmail.runs DO INSTEAD NOTHING",
            "rule no_claims",
        ),
        ("CREATE VIEW coldmail.all_runs AS SELECT * FROM coldmail.runs", "v all_runs"),
    ],
)
async def test_objects_planted_in_the_schema_are_refused(
    pg: Backend, plant: str, named: str
) -> None:
    """A trigger that keeps a claimed run's status would let a second resumer through."""
    store = await connect_store(pg.settings())
    await store.insert_paused(_new())
    await store.close()
    pg.rows._execute(plant)
    with pytest.raises(StoreError, match=f"did not create \\({named}\\)"):
        await connect_store(pg.settings())
