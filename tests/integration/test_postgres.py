"""What the PostgreSQL store promises beyond the conformance suite: passwords never shown,
errors mapped by SQLSTATE, the server's clock, migrations once under many openers, a key
from the environment or a file, and no session state (PgBouncer's transaction pooling).

Real PostgreSQL throughout (``tests/pg.py``); a few tests also run on SQLite to show parity.
"""

from __future__ import annotations

import asyncio
import dataclasses
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

from bridgic_coldmail import Brief, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.errors import ConfigurationError, StoreError
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import (
    Claim,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RunStore,
    connect_store,
)

from ..conftest import Backend, run_cli
from ..rows import age, expire_lease

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL tests need the postgres extra")

VERSIONS = {"1.0"}
FEEDBACK = make_decision("feedback", text="CTOs at mid-size hospitals")
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
    from ..pg import postgres_backend

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
    from testbed.pg import with_database

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
    from bridgic_coldmail.store import codec, postgres, rules

    for module in (postgres, codec, rules):
        monkeypatch.setattr(module, "datetime", _Forbidden)

    def server_now() -> Any:
        return pg.rows._execute("SELECT clock_timestamp() AS now").fetchone()["now"]

    before = server_now()
    new = await pg_store.insert_paused(_new())
    claim = await pg_store.claim(new.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(claim, Claim)
    renewed = await pg_store.renew(claim)
    done = await pg_store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
    history = await pg_store.history(new.interaction_id)
    # A start and a complete after a reading of the server's clock (the claim's) carry it
    # forward instead of reading it again (issue 20): still the server's time.
    second = await pg_store.insert_paused(_new())
    again = await pg_store.claim(second.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(again, Claim)
    third = await pg_store.insert_paused(_new())
    finished = await pg_store.complete(again, Finished(RunStatus.COMPLETED, SEQUENCE))
    after = server_now()

    assert done is not None and isinstance(history, list) and finished is not None
    assert before <= new.created_at <= done.updated_at <= second.created_at
    assert second.created_at <= again.run.updated_at <= third.created_at
    assert third.created_at <= finished.updated_at <= after
    assert all(before <= event.at <= after for event in history)
    assert renewed is not None
    assert timedelta(seconds=29) < renewed - before < timedelta(seconds=31)
    age(pg.rows, new.interaction_id, timedelta(days=2))
    assert await pg_store.purge(timedelta(days=1), {RunStatus.COMPLETED}) == 1


# --------------------------------------------------------------------------- schema and key


async def test_hosts_opening_a_new_database_at_once_migrate_it_once(pg: Backend) -> None:
    from bridgic_coldmail.store.postgres_sql import MIGRATIONS

    stores = await asyncio.gather(*(connect_store(pg.settings()) for _ in range(6)))
    for store in stores:
        await store.close()
    assert pg.rows.schema_versions() == [m.version for m in MIGRATIONS]
    count = pg.rows._execute("SELECT count(*) AS n FROM coldmail.coldmail_meta").fetchone()["n"]
    assert count == 1


async def test_a_coldmail_schema_of_another_application_is_refused(pg: Backend) -> None:
    pg.rows._execute("CREATE SCHEMA coldmail")
    pg.rows._execute("CREATE TABLE coldmail.runs (id integer)")
    with pytest.raises(StoreError, match="another application created"):
        await connect_store(pg.settings())


def test_migrations_can_run_inside_one_transaction() -> None:
    from bridgic_coldmail.store.postgres_sql import MIGRATIONS

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

    from ..pg import pgbouncer, session_server

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


async def test_planted_objects_are_refused_before_the_key_fingerprint_is_written(
    pg: Backend,
) -> None:
    """As in SQLite: nothing more is written through a planted trigger; the refusal names it."""
    store = await connect_store(pg.settings())
    await store.close()
    pg.rows._execute("DELETE FROM coldmail.coldmail_meta WHERE key = 'key_fingerprint'")
    pg.rows._execute(
        "CREATE FUNCTION coldmail.stop() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'planted'; END $$; "
        "CREATE TRIGGER no_meta BEFORE INSERT ON coldmail.coldmail_meta "
        "FOR EACH ROW EXECUTE FUNCTION coldmail.stop()"
    )
    with pytest.raises(StoreError, match="did not create \\(trigger no_meta\\)"):
        await connect_store(pg.settings())


# --------------------------------------------------------------------------- after faults


@pytest.fixture(scope="module")
def restartable() -> Iterator[Any]:
    """A cluster of this module's own, which its tests restart and stop."""
    from ..pg import private_server

    with private_server() as found:
        yield found


@pytest.fixture
def own(restartable: Any) -> Iterator[Backend]:
    """A fresh database on the cluster the test may restart."""
    from ..pg import SECRET_KEY, PostgresRows

    with restartable.database() as url:
        rows = PostgresRows(url)
        try:
            yield Backend(
                "postgres", url, rows, {"COLDMAIL_DB": url, "COLDMAIL_SECRET_KEY": SECRET_KEY}
            )
        finally:
            rows.close()


async def _fill_the_pool(store: RunStore, connections: int) -> None:
    """Make the pool open ``connections`` connections (held at once, then given back)."""
    pool = store._pool  # type: ignore[attr-defined]
    held = [await pool.getconn() for _ in range(connections)]
    for conn in held:
        await pool.putconn(conn)
    assert pool.get_stats()["pool_size"] >= connections


@pytest.mark.slow  # restarts the server
async def test_every_call_after_a_server_restart_succeeds(own: Backend, restartable: Any) -> None:
    """Each pooled connection died with the restart: none of them may fail a call."""
    store = await connect_store(own.settings(pool_size=4, busy_timeout=1, lease_seconds=30))
    try:
        paused = await store.insert_paused(_new())
        await _fill_the_pool(store, 4)
        await asyncio.to_thread(restartable.cluster.restart)

        assert await store.get(paused.interaction_id) is not None
        claim = await store.claim(paused.interaction_id, FEEDBACK, VERSIONS)
        assert isinstance(claim, Claim)
        await _fill_the_pool(store, 4)
        await asyncio.to_thread(restartable.cluster.restart)

        shown = await asyncio.gather(*(store.list() for _ in range(6)))  # at once
        assert await store.renew(claim) is not None
        await asyncio.to_thread(restartable.cluster.restart)
        done = await store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
        await asyncio.to_thread(restartable.cluster.restart)
        history = await store.history(paused.interaction_id)
        await asyncio.to_thread(restartable.cluster.restart)
        assert await store.purge(timedelta(days=1), {RunStatus.COMPLETED}) == 0
        await asyncio.to_thread(restartable.cluster.restart)
        another = await store.insert_paused(_new())
    finally:
        await store.close()
    assert all(len(found) == 1 for found in shown)
    assert done is not None and done.status is RunStatus.COMPLETED
    assert isinstance(history, list) and [e.kind for e in history][-1] == "completed"
    assert own.rows.count() == 2 and another.interaction_id in own.rows.ids()


@pytest.mark.slow  # a real outage of seconds
async def test_the_first_call_after_a_long_outage_succeeds(own: Backend, restartable: Any) -> None:
    """Calls during the outage fail (the pool timeout is 2 s) and make the pool retry its
    connections with a doubling delay; once the server is back, a call must not wait for
    the next of those tries and time out."""
    store = await connect_store(own.settings(pool_size=2, pool_timeout=2))
    try:
        paused = await store.insert_paused(_new())
        await _fill_the_pool(store, 2)
        restartable.cluster.pg_ctl("stop", "-m", "fast")
        try:
            for _ in range(5):  # about ten seconds of calls that fail
                with pytest.raises(StoreError, match="no connection .* within 2 s"):
                    await store.get(paused.interaction_id)
        finally:
            restartable.cluster.start_again()
        shown = await store.get(paused.interaction_id)
    finally:
        await store.close()
    assert shown is not None


@pytest.mark.slow  # restarts the server
async def test_a_resume_whose_llm_call_spans_a_restart_keeps_its_one_refinement(
    own: Backend, restartable: Any, server: Any
) -> None:
    from bridgic_coldmail import ColdMailAgent
    from bridgic_coldmail.testing import Reply

    settings = own.settings(busy_timeout=1, lease_seconds=30)
    async with ColdMailAgent.open(settings=settings) as agent:
        run = await agent.start(BRIEF)
        server.enqueue(Reply(kind="refine", delay=2))
        resuming = asyncio.create_task(agent.resume(run.interaction_id, "CTOs"))
        while server.count("refine") == 0:  # the LLM call is under way
            await asyncio.sleep(0.02)
        await asyncio.to_thread(restartable.cluster.restart)
        resumed = await asyncio.wait_for(resuming, 60)

    assert resumed.status is RunStatus.COMPLETED and resumed.sequence is not None
    assert server.count("refine") == 1
    assert own.rows.row(run.interaction_id)["status"] == "completed"


@pytest.mark.slow  # a real outage, a child process
def test_the_command_line_rides_out_a_server_outage_without_extra_lines(
    own: Backend, restartable: Any, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is down while the LLM works (a lease renewal and the pool's reconnection
    attempts fail meanwhile): the resume still records its result, and the terminal shows
    only the command's own output — none of the pool's log lines."""
    import subprocess
    import sys

    from bridgic_coldmail.testing import Reply

    from ..conftest import REPO, start_run_with_cli, wait_for_request

    env = {**own.env, "COLDMAIL_BUSY_TIMEOUT": "0.5", "COLDMAIL_LEASE_SECONDS": "1.5"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    interaction_id = start_run_with_cli()
    server.enqueue(Reply(kind="refine", delay=4))
    command = [str(Path(sys.executable).parent / "coldmail"), "resume", interaction_id,
               "--feedback", "CTOs", "--json"]  # fmt: skip
    child = subprocess.Popen(
        command, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_request(server, "refine")
        restartable.cluster.pg_ctl("stop", "-m", "fast")
        try:
            time.sleep(1.5)  # a renewal (every 0.5 s) and the pool's reconnections fail
        finally:
            restartable.cluster.start_again()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert err == ""
    assert '"status": "completed"' in out
    assert server.count("refine") == 1


@pytest.fixture
def proxy() -> Iterator[Any]:
    """A loopback TCP proxy in front of the session's server, to misbehave on request."""
    from ..pg import FaultyProxy, session_server, upstream_of

    with FaultyProxy(upstream_of(session_server())) as found:
        yield found


def _through(pg: Backend, proxy: Any, **overrides: object) -> Settings:
    """Settings that reach the test's database through the proxy."""
    return pg.settings(**overrides).with_overrides(db=proxy.url(pg.db))


# Seconds: small limits, so that a stalled server is given up on quickly.
QUICK = {"busy_timeout": 0.5, "lease_seconds": 30, "statement_timeout": 1, "pool_timeout": 2}
"""A round trip is given busy_timeout + statement_timeout + 2 s: 3.5 s."""


async def _claimed(store: RunStore) -> Claim:
    paused = await store.insert_paused(_new())
    claim = await store.claim(paused.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(claim, Claim)
    return claim


@pytest.mark.slow  # waits out each call's bound
@pytest.mark.parametrize("call", ["get", "list", "history", "claim", "renew", "complete", "purge"])
async def test_a_server_that_stops_answering_fails_each_call_within_its_bound(
    pg: Backend, proxy: Any, call: str
) -> None:
    store = await connect_store(_through(pg, proxy, **QUICK))
    try:
        claim = await _claimed(store)
        other = await store.insert_paused(_new())
        calls = {
            "get": lambda: store.get(other.interaction_id),
            "list": lambda: store.list(),
            "history": lambda: store.history(other.interaction_id),
            "claim": lambda: store.claim(other.interaction_id, FEEDBACK, VERSIONS),
            "renew": lambda: store.renew(claim),
            "complete": lambda: store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE)),
            "purge": lambda: store.purge(timedelta(days=1), {RunStatus.COMPLETED}),
        }
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            await asyncio.wait_for(calls[call](), 60)  # the guard of this test: not a bound
        took = time.monotonic() - started
        proxy.flow()
        assert await store.get(other.interaction_id) is not None  # usable again
    finally:
        await store.close()
    assert "did not answer within 3.5 s" in str(caught.value)
    assert took < 3.5 + 2  # the bound, plus this machine's scheduling


@pytest.mark.slow  # waits out the connect bound
async def test_opening_a_store_through_a_stalled_server_fails_within_its_bound(
    pg: Backend, proxy: Any
) -> None:
    """Connecting is bounded by the connect timeout (the pool timeout here: 2 s); migrating
    by its wait for other hosts' migrations (at least 10 s) plus one answer's time."""
    await (await connect_store(_through(pg, proxy, **QUICK))).close()  # schema made
    for stalled_at, bound in ((None, 2), (b"pg_advisory_xact_lock", 10 + 3.5)):
        if stalled_at is None:
            proxy.stall()
        else:
            proxy.trap(stalled_at, "stall")
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot connect|did not answer"):
            await asyncio.wait_for(connect_store(_through(pg, proxy, **QUICK)), 60)
        assert time.monotonic() - started < bound + 2
        proxy.flow()


async def test_connections_talk_utf8_and_notice_a_vanished_peer_unless_the_url_says_otherwise(
    pg: Backend, proxy: Any
) -> None:
    """TCP keepalives and a user timeout (the time one answer may take, in ms) on every
    connection, and UTF-8; a value given in the URL wins."""
    url = proxy.url(pg.db) + "?keepalives_idle=7"
    store = await connect_store(pg.settings(**QUICK).with_overrides(db=url))
    try:
        async with store._pool.connection() as conn:  # type: ignore[attr-defined]
            options = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
            encoding = conn.info.parameter_status("client_encoding")
    finally:
        await store.close()
    assert options["keepalives"] == "1" and options["keepalives_idle"] == "7"
    assert options["tcp_user_timeout"] == "3500"  # busy 0.5 + statement 1 + network 2 s
    assert encoding == "UTF8"


@pytest.mark.parametrize("call", ["get", "claim", "renew", "history"])
async def test_a_connection_lost_before_a_statement_ran_is_retried_on_a_fresh_one(
    pg: Backend, proxy: Any, call: str
) -> None:
    """Nothing can have been committed: the store retries on another connection."""
    store = await connect_store(_through(pg, proxy, busy_timeout=1, lease_seconds=30))
    try:
        claim = await _claimed(store)
        other = await store.insert_paused(_new())
        markers = {
            "get": (b"FROM coldmail.runs WHERE", lambda: store.get(other.interaction_id)),
            "claim": (
                b"FOR UPDATE",
                lambda: store.claim(other.interaction_id, FEEDBACK, VERSIONS),
            ),
            "renew": (b"SET claim_expires_at", lambda: store.renew(claim)),
            "history": (b"REPEATABLE READ", lambda: store.history(other.interaction_id)),
        }
        marker, action = markers[call]
        proxy.trap(marker, "cut")
        result = await action()
    finally:
        await store.close()
    assert proxy.sprung
    assert result is not None and not isinstance(result, Refusal)
    if call == "claim":
        assert pg.rows.row(other.interaction_id)["status"] == "resuming"


@pytest.mark.parametrize("fault", ["cut", "lose_reply"])
async def test_a_commit_whose_outcome_is_unknown_says_so(
    pg: Backend, proxy: Any, fault: str
) -> None:
    """The COMMIT was sent (or not) and no answer came: the change may have been recorded.
    The error says so, with the topic ``commit_unknown`` the agent reconciles on."""
    store = await connect_store(_through(pg, proxy, busy_timeout=1, lease_seconds=30))
    try:
        claim = await _claimed(store)
        proxy.trap(b"; COMMIT", fault)  # the round trip that commits
        with pytest.raises(StoreError) as caught:
            await store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
    finally:
        await store.close()
    assert proxy.sprung
    assert caught.value.topic == "commit_unknown"
    assert "may have been recorded" in str(caught.value)
    recorded = pg.rows.row(claim.interaction_id)["status"]
    assert recorded == ("completed" if fault == "lose_reply" else "resuming")


async def test_a_connection_lost_between_the_two_round_trips_of_a_write_changes_nothing(
    pg: Backend, proxy: Any
) -> None:
    """The server went away after locking the row and before COMMIT was sent: the
    transaction died with the connection, and the error says nothing was changed (not
    "may have been recorded"); doing it again then works. (The claim was made by another
    process, so this one's complete locks and reads the row first: two round trips.)"""
    store = await connect_store(_through(pg, proxy, busy_timeout=1, lease_seconds=30))
    elsewhere = await connect_store(pg.settings(busy_timeout=1, lease_seconds=30))
    try:
        claim = await _claimed(elsewhere)
        proxy.trap(b"FOR UPDATE", "close_after_reply")
        with pytest.raises(StoreError) as caught:
            await store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
        assert pg.rows.row(claim.interaction_id)["status"] == "resuming"
        again = await store.complete(claim, Finished(RunStatus.COMPLETED, SEQUENCE))
    finally:
        await store.close()
        await elsewhere.close()
    assert proxy.sprung
    assert caught.value.topic == "connection_lost"
    assert "nothing was changed, retry" in str(caught.value)
    assert again is not None and again.status is RunStatus.COMPLETED


async def test_a_complete_of_a_claim_made_here_is_one_round_trip_fenced_in_sql(
    pg: Backend, proxy: Any
) -> None:
    """Issue 20: the complete of a claim this process made reads nothing first (no locking
    SELECT is sent: a trap on one never springs), writes only while the claim holds the run,
    and its times are the server's; once the lease was taken over, it writes nothing."""
    store = await connect_store(_through(pg, proxy, busy_timeout=1, lease_seconds=30))
    try:
        new = dataclasses.replace(_new(), review=True, max_rounds=3)
        await store.insert_paused(new)
        claim = await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
        assert isinstance(claim, Claim)
        proxy.trap(b"FOR UPDATE", "cut")
        review = Paused(uuid.uuid4().hex, b"snapshot at round 1", "1.0", SEQUENCE, round=1)
        done = await store.complete(claim, review)
        assert not proxy.sprung  # no row read before the write
        server_now = pg.rows._execute("SELECT clock_timestamp() AS now").fetchone()["now"]
        assert done is not None and done.status is RunStatus.AWAITING_REVIEW
        assert claim.run.updated_at <= done.updated_at <= server_now
        assert await store.get(claim.interaction_id) == done
        history = await store.history(claim.interaction_id)
        assert isinstance(history, list)
        assert [e.kind for e in history] == ["paused", "feedback", "review"]
        assert [p["round"] for p in pg.rows.pauses(claim.interaction_id)] == [0]
        # A stale lease: another resumer took the run over; this claim's complete is refused.
        # (The trap, still set, cuts the next claim's locking read, which is sent again.)
        second = await store.claim(
            claim.interaction_id, make_decision("approve", round=1), VERSIONS
        )
        assert isinstance(second, Claim)
        expire_lease(pg.rows, claim.interaction_id)
        reject = make_decision("reject", text="no", round=1)
        taken = await store.claim(claim.interaction_id, reject, VERSIONS)
        assert isinstance(taken, Claim)
        assert await store.complete(second, Finished(RunStatus.COMPLETED, SEQUENCE)) is None
        assert pg.rows.row(claim.interaction_id)["claim_token"] == taken.token
        assert [p["round"] for p in pg.rows.pauses(claim.interaction_id)] == [0]
    finally:
        await store.close()


# --------------------------------------------------------------------------- what the database is


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
async def test_a_database_not_in_utf8_is_refused_before_anything_is_written(
    encoding: str,
) -> None:
    """SQL_ASCII stores bytes unchecked (text read back differs: a false tampering alarm);
    LATIN1 cannot hold an em dash (the draft would be lost when it is stored)."""
    from ..pg import SECRET_KEY, PostgresRows, session_server

    options = f"WITH ENCODING '{encoding}' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
    with session_server().database(options) as url:
        settings = Settings.resolve(env={**os.environ, "COLDMAIL_SECRET_KEY": SECRET_KEY}, db=url)
        with pytest.raises(StoreError) as caught:
            await connect_store(settings)
        rows = PostgresRows(url)
        try:
            schema = rows._execute(
                "SELECT count(*) AS n FROM pg_namespace WHERE nspname = 'coldmail'"
            ).fetchone()["n"]
        finally:
            rows.close()
    assert f"encoding {encoding}" in str(caught.value) and "UTF8" in str(caught.value)
    assert schema == 0


async def test_text_outside_latin1_round_trips_whatever_the_client_encoding_default(
    pg: Backend,
) -> None:
    """A database (or role) may set client_encoding to LATIN1 by default: the store always
    talks UTF-8, so an em dash, an emoji and CJK text are stored and read back exactly."""
    database = urlsplit(pg.db).path.lstrip("/")
    pg.rows._execute(f"ALTER DATABASE \"{database}\" SET client_encoding TO 'LATIN1'")
    text = "Acme — 予約 ✉️ naïve"
    store = await connect_store(pg.settings())
    try:
        new = _new()
        new = NewRun(**{**new.__dict__, "brief": Brief(product=text, offer="x", sender="Dana")})
        await store.insert_paused(new)
        shown = await store.get(new.interaction_id)
    finally:
        await store.close()
    assert shown is not None and shown.brief.product == text  # type: ignore[union-attr]


# --------------------------------------------------------------------------- libpq keyword strings


def _keywords(url: str, **extra: str) -> str:
    """The database of ``url`` as a libpq keyword string, values quoted as libpq wants."""
    given = {**psycopg.conninfo.conninfo_to_dict(url), **extra}
    return " ".join(
        f"{key}='{str(value).replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"
        for key, value in given.items()
    )


async def test_a_libpq_keyword_string_is_a_postgresql_database(
    pg: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    keywords = _keywords(pg.db)
    password = urlsplit(pg.db).password
    assert password and f"password='{password}'" in keywords

    settings = pg.settings().with_overrides(db=keywords)
    store = await connect_store(settings)
    try:
        paused = await store.insert_paused(_new())
        shown = [repr(settings), repr(store), store.location]
    finally:
        await store.close()
    assert settings.is_postgres
    assert pg.rows.row(paused.interaction_id) is not None  # stored on the server
    assert list(tmp_path.iterdir()) == []  # and no file made of the string
    assert all(password not in text for text in shown)


@pytest.mark.parametrize(
    "keywords",
    [
        "host=/nonexistent-socket-dir dbname=runs password='Hunter2 secret",  # unclosed quote
        "host=/nonexistent-socket-dir dbname=runs password=Hunter2-secret",  # no server there
        "dbname=runs password=Hunter2-secret no_such_keyword=1",
    ],
)
def test_a_keyword_string_that_cannot_be_used_is_refused_without_showing_its_password(
    keywords: str, tmp_path: Path, server: Any
) -> None:
    import subprocess
    import sys

    from ..pg import SECRET_KEY

    env = {**os.environ, "COLDMAIL_DB": keywords, "COLDMAIL_SECRET_KEY": SECRET_KEY,
           "COLDMAIL_PG_POOL_TIMEOUT": "2"}  # fmt: skip
    coldmail = str(Path(sys.executable).parent / "coldmail")
    for command in (
        ["list"],
        ["start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana"],
    ):
        result = subprocess.run(
            [coldmail, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode in (7, 8), result.stderr
        assert "Hunter2" not in result.stdout + result.stderr
        assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert list(tmp_path.iterdir()) == []  # no SQLite file named after the password
