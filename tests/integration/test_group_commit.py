"""Group commit of concurrent completes, on both backends (``store/group.py``).

The completes that arrive while one commits are recorded in one transaction. What must not
change: each result is on disk before its caller hears of it, a member whose own statements
fail fails alone, a transaction that fails records nothing for anyone, and doing a complete
again after any failure records it once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from bridgic_coldmail import Brief, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.errors import StoreError
from bridgic_coldmail.models import Run
from bridgic_coldmail.notify.policy import NotifyPolicy
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import (
    Claim,
    Finished,
    NewRun,
    Paused,
    RunStore,
    connect_store,
)
from bridgic_coldmail.store import sqlite as sqlite_store

from ..conftest import Backend

VERSIONS = {"1.0"}
MAIL = "reviewer@example.com"
FEEDBACK = make_decision("feedback", text="CTOs at mid-size hospitals")
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


def _new(review: bool) -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=BRIEF,
        draft=_sequence("draft"),
        question="Who is this for?",
        snapshot=b"snapshot bytes " + uuid.uuid4().bytes,
        serialization_version="1.0",
        review=review,
        max_rounds=3 if review else None,
    )


def _result(claim: Claim, index: int) -> Paused | Finished:
    """Every other run pauses for review (a new snapshot), the others finish."""
    if index % 2:
        return Paused(
            f"pause-{claim.interaction_id}",
            b"r1 " + uuid.uuid4().bytes,
            "1.0",
            _sequence(f"r{index}"),
            1,
        )
    return Finished(RunStatus.COMPLETED, _sequence(f"f{index}"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


async def _claimed(store: RunStore, count: int) -> list[Claim]:
    claims = []
    for index in range(count):
        paused = await store.insert_paused(_new(review=bool(index % 2)))
        claim = await store.claim(paused.interaction_id, FEEDBACK, VERSIONS)
        assert isinstance(claim, Claim), claim
        claims.append(claim)
    return claims


def _groups(store: RunStore) -> int:
    return int(store._group.groups)  # type: ignore[attr-defined]


def _expected_status(result: Paused | Finished) -> str:
    return "awaiting_review" if isinstance(result, Paused) else "completed"


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_completes_share_commits_and_each_is_on_disk_before_it_returns(
    store: RunStore, backend: Backend
) -> None:
    """60 completes at once, in groups: each caller, the moment it hears back, finds its
    result committed (read through another connection), with exactly one new event."""
    claims = await _claimed(store, 60)
    results = [_result(claim, i) for i, claim in enumerate(claims)]
    before = _groups(store)
    seen: dict[str, dict[str, Any]] = {}

    async def complete(claim: Claim, result: Paused | Finished) -> Run | None:
        run = await store.complete(claim, result)
        row = backend.rows.row(claim.interaction_id)  # at once, before anything else runs
        assert row is not None
        seen[claim.interaction_id] = row
        return run

    runs = await asyncio.gather(*(complete(c, r) for c, r in zip(claims, results, strict=True)))
    groups = _groups(store) - before

    assert 1 <= groups < len(claims) / 2  # grouped: far fewer transactions than completes
    for claim, result, run in zip(claims, results, runs, strict=True):
        assert isinstance(run, Run) and run.interaction_id == claim.interaction_id
        assert run.status.value == _expected_status(result)
        assert run.sequence == result.sequence
        row = seen[claim.interaction_id]
        assert row["status"] == _expected_status(result)
        assert row["claim_token"] is None and row["event_count"] == 3
        if isinstance(result, Paused):
            assert bytes(row["snapshot"]) == result.snapshot
        history = await store.history(claim.interaction_id)
        assert isinstance(history, list)
        assert [e.kind for e in history][-1] == (
            "review" if isinstance(result, Paused) else "completed"
        )


async def test_a_lone_complete_is_a_group_of_one(store: RunStore) -> None:
    (claim,) = await _claimed(store, 1)
    before = _groups(store)
    done = await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("f")))
    assert done is not None and done.status is RunStatus.COMPLETED
    assert _groups(store) - before == 1


async def test_no_member_hears_back_while_the_commit_cannot_happen(
    backend: Backend,
) -> None:
    """Another writer holds the lock: the group waits (no caller is told anything); once it
    lets go, every member is recorded."""
    store = await connect_store(backend.settings(busy_timeout=10, lease_seconds=30))
    try:
        claims = await _claimed(store, 8)
        results = [_result(claim, i) for i, claim in enumerate(claims)]
        with backend.rows.lock():
            tasks = [
                asyncio.ensure_future(store.complete(c, r))
                for c, r in zip(claims, results, strict=True)
            ]
            await asyncio.sleep(0.8)
            assert not any(task.done() for task in tasks)
            for claim in claims:
                assert backend.rows.row(claim.interaction_id)["status"] == "resuming"  # type: ignore[index]
        runs = await asyncio.gather(*tasks)
    finally:
        await store.close()
    for run, result in zip(runs, results, strict=True):
        assert run is not None and run.status.value == _expected_status(result)


async def test_a_group_that_cannot_commit_records_nothing_and_a_retry_records_it_once(
    backend: Backend,
) -> None:
    """The lock is held past the busy timeout: every member gets the store's error, none is
    recorded; completing again records each once."""
    store = await connect_store(backend.settings(busy_timeout=0.3, lease_seconds=30))
    try:
        claims = await _claimed(store, 6)
        results = [_result(claim, i) for i, claim in enumerate(claims)]
        with backend.rows.lock():
            failed = await asyncio.gather(
                *(store.complete(c, r) for c, r in zip(claims, results, strict=True)),
                return_exceptions=True,
            )
            for claim in claims:
                row = backend.rows.row(claim.interaction_id)
                assert row is not None and row["status"] == "resuming"
                assert row["claim_token"] == claim.token and row["event_count"] == 2
        assert all(isinstance(f, StoreError) and "locked" in str(f) for f in failed), failed
        again = await asyncio.gather(
            *(store.complete(c, r) for c, r in zip(claims, results, strict=True))
        )
        twice = await asyncio.gather(
            *(store.complete(c, r) for c, r in zip(claims, results, strict=True))
        )
    finally:
        await store.close()
    for claim, result, run, repeat in zip(claims, results, again, twice, strict=True):
        assert run is not None and run.status.value == _expected_status(result)
        assert repeat is not None and repeat.status == run.status  # recorded, not redone
        assert backend.rows.row(claim.interaction_id)["event_count"] == 3  # type: ignore[index]


# --------------------------------------------------------------------------- a member fails


async def test_a_member_whose_write_fails_fails_alone(store: RunStore, backend: Backend) -> None:
    """One run's history already holds the event number its complete writes next (a row
    planted there: a real constraint violation, in the database): that complete fails with
    the store's error and writes nothing, the others of its group are recorded; once the
    planted row is gone, completing it again works."""
    claims = await _claimed(store, 10)
    results = [_result(claim, i) for i, claim in enumerate(claims)]
    bad = claims[4]
    backend.rows.execute(  # its next event: seq 3 (paused, feedback, then the result)
        "INSERT INTO run_events (interaction_id, seq, at, kind) VALUES (?, ?, ?, ?)",
        bad.interaction_id,
        3,
        "2026-01-01T00:00:00.000000+00:00",
        "paused",
    )
    before = _groups(store)
    outcomes = await asyncio.gather(
        *(store.complete(c, r) for c, r in zip(claims, results, strict=True)),
        return_exceptions=True,
    )
    assert _groups(store) - before == 1  # all ten were one group
    for claim, result, outcome in zip(claims, results, outcomes, strict=True):
        row = backend.rows.row(claim.interaction_id)
        assert row is not None
        if claim is bad:
            assert isinstance(outcome, StoreError), outcome
            assert row["status"] == "resuming" and row["claim_token"] == bad.token
            assert row["event_count"] == 2  # its UPDATE was undone with its INSERT
        else:
            assert isinstance(outcome, Run), outcome
            assert row["status"] == _expected_status(result) and row["event_count"] == 3
    backend.rows.delete_event(bad.interaction_id, 3)
    retried = await store.complete(bad, results[4])
    assert retried is not None and retried.status.value == _expected_status(results[4])


async def test_a_member_whose_notifications_cannot_be_queued_writes_neither_them_nor_its_row(
    store: RunStore, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each complete queues its notifications (the outbox) in the group's transaction, among
    its own writes (SQLite: in its savepoint; PostgreSQL: the refused group is recorded member
    by member). For one run, the database refuses a statement sent right after its outbox
    INSERT (its row's UPDATE done before): that complete fails and leaves its row as claimed
    and no notification of its own, while the others of its group write their rows and
    their notifications."""
    claims = []
    for index in range(6):
        paused = await store.insert_paused(
            dataclasses.replace(_new(review=bool(index % 2)), notify=NotifyPolicy((MAIL,)))
        )
        claim = await store.claim(paused.interaction_id, FEEDBACK, VERSIONS)
        assert isinstance(claim, Claim), claim
        claims.append(claim)
    results = [_result(claim, i) for i, claim in enumerate(claims)]
    bad = claims[2]

    def for_bad(rows: list[dict[str, Any]]) -> bool:
        return any(r["interaction_id"] == bad.interaction_id for r in rows)

    if backend.name == "sqlite":
        enqueue = sqlite_store._enqueue

        def failing_enqueue(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
            enqueue(db, rows)
            if for_bad(rows):
                db.execute("SELECT * FROM no_such_table")  # refused by SQLite

        monkeypatch.setattr(sqlite_store, "_enqueue", failing_enqueue)
    else:
        from bridgic_coldmail.store import postgres as postgres_store

        statements = postgres_store._enqueue

        def failing_statements(rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
            refused = [("SELECT 1 / 0", [])] if for_bad(rows) else []
            return [*statements(rows), *refused]  # refused by the server

        fenced = postgres_store._fenced_complete

        def failing_fenced(*args: Any) -> tuple[str, Any]:
            sql, params = fenced(*args)  # the complete of a claim made here: one statement
            return (f"{sql}; SELECT 1 / 0" if for_bad(args[-1]) else sql), params

        monkeypatch.setattr(postgres_store, "_enqueue", failing_statements)
        monkeypatch.setattr(postgres_store, "_fenced_complete", failing_fenced)
    before = _groups(store)
    outcomes = await asyncio.gather(
        *(store.complete(c, r) for c, r in zip(claims, results, strict=True)),
        return_exceptions=True,
    )
    monkeypatch.undo()
    assert _groups(store) - before == 1  # all six were one group
    for claim, result, outcome in zip(claims, results, outcomes, strict=True):
        row = backend.rows.row(claim.interaction_id)
        assert row is not None
        events = [n["event"] for n in backend.rows.notifications(claim.interaction_id)]
        if claim is bad:
            assert isinstance(outcome, StoreError), outcome
            assert row["status"] == "resuming" and row["claim_token"] == bad.token
            assert row["event_count"] == 2  # its UPDATE was undone with its notification
            assert events == ["run.paused"]  # nothing of its own
        else:
            assert isinstance(outcome, Run), outcome
            assert row["status"] == _expected_status(result) and row["event_count"] == 3
            announced = "run.review" if isinstance(result, Paused) else "run.completed"
            assert events == ["run.paused", announced]
    retried = await store.complete(bad, results[2])
    assert retried is not None and retried.status is RunStatus.COMPLETED
    events = [n["event"] for n in backend.rows.notifications(bad.interaction_id)]
    assert events == ["run.paused", "run.completed"]


async def test_a_member_whose_failure_undoes_the_transaction_does_not_undo_the_others(
    db_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite rolls a whole transaction back by itself on some errors (a full disk, an I/O
    error): the members written before the failing one lost their writes too, so the group
    is written again without it — and nobody is told a result that was rolled back."""
    store = await connect_store(Settings.resolve(db=str(db_path), busy_timeout=1))
    try:
        claims = await _claimed(store, 6)
        bad = claims[3]
        update = sqlite_store._update

        def failing_update(db: sqlite3.Connection, change: Any, **kwargs: Any) -> None:
            update(db, change, **kwargs)
            if change.row["interaction_id"] == bad.interaction_id:
                db.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL mid-statement
                raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(sqlite_store, "_update", failing_update)
        results = [_result(claim, i) for i, claim in enumerate(claims)]
        outcomes = await asyncio.gather(
            *(store.complete(c, r) for c, r in zip(claims, results, strict=True)),
            return_exceptions=True,
        )
        monkeypatch.undo()
        rows = sqlite3.connect(db_path)
        rows.row_factory = sqlite3.Row
        for claim, result, outcome in zip(claims, results, outcomes, strict=True):
            row = rows.execute(
                "SELECT status, event_count FROM runs WHERE interaction_id = ?",
                (claim.interaction_id,),
            ).fetchone()
            if claim is bad:
                assert isinstance(outcome, StoreError) and "disk holding" in str(outcome)
                assert tuple(row) == ("resuming", 2)
            else:
                assert isinstance(outcome, Run), outcome
                assert tuple(row) == (_expected_status(result), 3)
        rows.close()
        again = await store.complete(bad, results[3])
        assert again is not None and again.status.value == _expected_status(results[3])
    finally:
        await store.close()


# --------------------------------------------------------------------------- PostgreSQL faults


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Backend]:
    from ..pg import postgres_backend

    with postgres_backend(request) as found:
        yield found


@pytest.fixture
def proxy() -> Iterator[Any]:
    from ..pg import FaultyProxy, session_server, upstream_of

    with FaultyProxy(upstream_of(session_server())) as found:
        yield found


@pytest.mark.parametrize("fault", ["cut", "lose_reply"])
async def test_a_group_commit_whose_answer_is_lost_is_reconciled_by_completing_again(
    pg: Backend, proxy: Any, fault: str
) -> None:
    """The connection drops on the group's COMMIT (before it reached the server, or after,
    with the answer lost): every member is told the outcome is unknown, none is told done;
    completing again records each run once (or returns what was recorded)."""
    settings = pg.settings(busy_timeout=1, lease_seconds=30).with_overrides(db=proxy.url(pg.db))
    store = await connect_store(settings)
    try:
        claims = await _claimed(store, 8)
        results = [_result(claim, i) for i, claim in enumerate(claims)]
        proxy.trap(b"; COMMIT", fault)
        outcomes = await asyncio.gather(
            *(store.complete(c, r) for c, r in zip(claims, results, strict=True)),
            return_exceptions=True,
        )
        assert proxy.sprung
        # At least the group that hit the trap failed as a whole; any later group was fine.
        unknown = [o for o in outcomes if isinstance(o, StoreError)]
        assert unknown and all(o.topic == "commit_unknown" for o in unknown), outcomes
        assert all(isinstance(o, (Run, StoreError)) for o in outcomes), outcomes
        for claim, outcome in zip(claims, outcomes, strict=True):
            status = pg.rows.row(claim.interaction_id)["status"]  # type: ignore[index]
            if isinstance(outcome, StoreError):
                assert status == (
                    "resuming" if fault == "cut" else outcome_status(claims, results, claim)
                )
        again = await asyncio.gather(
            *(store.complete(c, r) for c, r in zip(claims, results, strict=True))
        )
    finally:
        await store.close()
    for claim, result, run in zip(claims, results, again, strict=True):
        assert run is not None and run.status.value == _expected_status(result)
        row = pg.rows.row(claim.interaction_id)
        assert row is not None and row["event_count"] == 3  # one effect
        assert [e["seq"] for e in pg.rows.events(claim.interaction_id)] == [1, 2, 3]


def outcome_status(claims: list[Claim], results: list[Paused | Finished], claim: Claim) -> str:
    return _expected_status(results[claims.index(claim)])


async def test_a_group_the_server_refuses_is_recorded_member_by_member(
    pg: Backend,
) -> None:
    """PostgreSQL aborts the whole transaction when one statement fails: nothing was
    committed, so each member is recorded alone and only the one at fault fails. (The
    SQLite half of this is ``test_a_member_whose_write_fails_fails_alone``.)"""
    store = await connect_store(pg.settings(busy_timeout=1, lease_seconds=30))
    try:
        claims = await _claimed(store, 6)
        results = [_result(claim, i) for i, claim in enumerate(claims)]
        bad = claims[2]
        pg.rows.execute(  # its next event number (3), taken: a unique violation
            "INSERT INTO run_events (interaction_id, seq, at, kind) VALUES (?, ?, ?, ?)",
            bad.interaction_id,
            3,
            "2026-01-01T00:00:00.000000+00:00",
            "paused",
        )
        outcomes = await asyncio.gather(
            *(store.complete(c, r) for c, r in zip(claims, results, strict=True)),
            return_exceptions=True,
        )
    finally:
        await store.close()
    for claim, outcome in zip(claims, outcomes, strict=True):
        if claim is bad:
            assert isinstance(outcome, StoreError) and outcome.topic != "commit_unknown"
            assert "SQLSTATE 23505" in str(outcome)  # unique violation, named
        else:
            assert isinstance(outcome, Run), outcome
