"""The notifications outbox, on both backends (the ``backend`` fixture, as in
``test_store_conformance.py``): written in the same transaction as the state change it
announces, never queued twice, MACed, claimed with a lease that two workers never share,
finished only by the lease's holder.

Below the store's API the tests act only through ``tests/rows.py``: as a database writer, a
crash or the passing of time would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import pytest

from bridgic_coldmail import Brief, Decision, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.errors import StoreError
from bridgic_coldmail.notify.policy import NotifyPolicy
from bridgic_coldmail.store import (
    Claim,
    Finished,
    NewRun,
    Paused,
    RunStore,
    SqliteRunStore,
    connect_store,
)
from bridgic_coldmail.store import outbox as outbox_module
from bridgic_coldmail.store.outbox import OutboxOutcome

from ..conftest import Backend

VERSIONS = {"1.0"}
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")
HOOK = "https://hooks.example.com/coldmail?token=s3cret-token"
MAIL = "reviewer@example.com"
POLICY = NotifyPolicy((MAIL, HOOK))


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


def _new(policy: NotifyPolicy | None = POLICY, *, review: bool = True) -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=BRIEF,
        draft=_sequence("draft"),
        question="Who is this for?",
        snapshot=b"snapshot bytes " + uuid.uuid4().bytes,
        serialization_version="1.0",
        review=review,
        max_rounds=3 if review else None,
        notify=policy,
    )


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


async def _claim(store: RunStore, interaction_id: str, action: Decision) -> Claim:
    outcome = await store.claim(interaction_id, action, VERSIONS)
    assert isinstance(outcome, Claim), outcome
    return outcome


def _review(round: int) -> Paused:
    return Paused(
        pause_id=uuid.uuid4().hex,
        snapshot=b"review snapshot " + uuid.uuid4().bytes,
        serialization_version="1.0",
        sequence=_sequence(f"round {round}"),
        round=round,
    )


# --------------------------------------------------------------------------- enqueueing


async def test_a_pause_queues_one_notification_per_destination(
    store: RunStore, backend: Backend
) -> None:
    run = await store.insert_paused(_new())
    rows = backend.rows.notifications(run.interaction_id)
    assert sorted(r["destination"] for r in rows) == sorted([MAIL, HOOK])
    assert {r["event"] for r in rows} == {"run.paused"}
    assert {r["status"] for r in rows} == {"pending"}
    assert all(r["attempts"] == 0 and r["mac"] for r in rows)
    record = json.loads(rows[0]["record_json"])
    assert record["run"]["interaction_id"] == run.interaction_id
    assert record["pause_id"] == run.interaction_id
    # The listing shows where each went without the webhook's token.
    listed = await store.notifications(run.interaction_id)
    assert len(listed) == 2 and all(d.verified for d in listed)
    shown = json.dumps([d.to_public_dict() for d in listed])
    assert "s3cret-token" not in shown and "hooks.example.com" in shown


async def test_a_run_that_notifies_nobody_writes_no_outbox_row(
    store: RunStore, backend: Backend
) -> None:
    run = await store.insert_paused(_new(None))
    claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
    await store.complete(claim, _review(1))
    assert backend.rows.notifications() == []
    assert backend.rows.row(run.interaction_id)["policy_json"] is None


async def test_the_outbox_row_and_the_state_change_commit_together(
    store: RunStore, backend: Backend
) -> None:
    """A failing outbox insert takes the pause with it, and a failing pause its outbox rows:
    one transaction."""
    new = _new()

    def broken(rows: list[dict[str, object]], *, as_text: bool) -> list[object]:
        return [None] * (len(rows) * len(outbox_module.INSERTED_COLUMNS))  # NOT NULL fails

    target = (
        "bridgic_coldmail.store.sqlite"
        if backend.name == "sqlite"
        else ("bridgic_coldmail.store.postgres")
    )
    with mock.patch(f"{target}.insert_values", broken), pytest.raises(StoreError):
        await store.insert_paused(new)
    assert backend.rows.row(new.interaction_id) is None
    assert backend.rows.notifications() == []

    run = await store.insert_paused(new)
    claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
    with mock.patch(f"{target}.insert_values", broken), pytest.raises(StoreError):
        await store.complete(claim, _review(1))
    assert backend.rows.row(run.interaction_id)["status"] == RunStatus.RESUMING.value
    assert {r["event"] for r in backend.rows.notifications(run.interaction_id)} == {"run.paused"}


async def test_each_state_change_announces_its_event_once(
    store: RunStore, backend: Backend
) -> None:
    run = await store.insert_paused(_new())
    run_id = run.interaction_id
    claim = await _claim(store, run_id, make_decision("feedback", text="CTOs"))
    review = _review(1)
    await store.complete(claim, review)
    await store.complete(claim, review)  # a retry after a lost reply: recorded, not repeated

    # A failed revision: run.failed; an interrupted one (announce=False): nothing.
    failing = await _claim(store, run_id, make_decision("revise", text="shorter"))
    assert await store.release(failing, "the LLM gave up", announce=True)
    interrupted = await _claim(store, run_id, make_decision("revise", text="shorter"))
    assert await store.release(interrupted, "interrupted")

    done = await _claim(store, run_id, make_decision("approve"))
    await store.complete(done, Finished(RunStatus.COMPLETED, review.sequence))

    events = [(r["event"], r["destination"]) for r in backend.rows.notifications(run_id)]
    assert sorted(events) == sorted(
        (event, dest)
        for event in ("run.paused", "run.review", "run.failed", "run.completed")
        for dest in (MAIL, HOOK)
    )
    review_rows = [r for r in backend.rows.notifications(run_id) if r["event"] == "run.review"]
    assert {json.loads(r["record_json"])["pause_id"] for r in review_rows} == {review.pause_id}
    failed = [r for r in backend.rows.notifications(run_id) if r["event"] == "run.failed"]
    assert json.loads(failed[0]["record_json"])["run"]["last_error"] == "the LLM gave up"


async def test_a_rejection_announces_run_rejected(store: RunStore, backend: Backend) -> None:
    run = await store.insert_paused(_new(NotifyPolicy((MAIL,))))
    claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
    await store.complete(claim, _review(1))
    claim = await _claim(store, run.interaction_id, make_decision("reject", text="off brand"))
    await store.complete(claim, Finished(RunStatus.REJECTED, _sequence("x"), "off brand"))
    events = [r["event"] for r in backend.rows.notifications(run.interaction_id)]
    assert events.count("run.rejected") == 1


async def test_events_left_out_of_the_policy_are_not_queued(
    store: RunStore, backend: Backend
) -> None:
    run = await store.insert_paused(_new(NotifyPolicy((MAIL,), ("run.review",))))
    assert backend.rows.notifications() == []
    claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
    await store.complete(claim, _review(1))
    assert [r["event"] for r in backend.rows.notifications()] == ["run.review"]


async def test_an_altered_policy_notifies_nobody_and_the_run_goes_on(
    store: RunStore, backend: Backend
) -> None:
    """A database writer pointing a run's messages at their own server gets nothing sent."""
    run = await store.insert_paused(_new(NotifyPolicy((MAIL,))))
    evil = NotifyPolicy(("https://attacker.example/steal",)).to_json()
    backend.rows.set(run.interaction_id, policy_json=evil)
    claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
    assert await store.complete(claim, _review(1)) is not None
    assert [r["event"] for r in backend.rows.notifications()] == ["run.paused"]


async def test_a_double_enqueue_is_impossible(store: RunStore, backend: Backend) -> None:
    """The id is derived from run, pause, event, number and destination, and is the primary
    key: a change replayed (the run's row restored from a backup taken while it was held,
    then completed again) queues nothing twice, and the change itself still commits."""
    run = await store.insert_paused(_new())
    claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
    held = backend.rows.row(run.interaction_id)
    assert held is not None
    review = _review(1)
    await store.complete(claim, review)
    assert len(backend.rows.notifications()) == 4
    restored = {k: v for k, v in held.items() if k != "interaction_id"}
    backend.rows.set(run.interaction_id, **restored)
    for event in backend.rows.events(run.interaction_id)[held["event_count"] :]:
        backend.rows.delete_event(run.interaction_id, event["seq"])
    assert await store.complete(claim, review) is not None
    assert len(backend.rows.notifications()) == 4


# --------------------------------------------------------------------------- claiming


async def test_claimed_notifications_are_leased_and_fenced(
    store: RunStore, backend: Backend
) -> None:
    run = await store.insert_paused(_new())
    first = await store.claim_notifications(10, 60)
    assert len(first) == 2 and all(c.attempts == 1 and c.notification for c in first)
    assert {c.notification.destination.value for c in first} == {MAIL, HOOK}
    assert await store.claim_notifications(10, 60) == []  # leased

    # The lease ran out (the worker died): another worker takes them, the first is fenced.
    for claim in first:
        backend.rows.set_notification(claim.id, lease_until=_ago(1))
    second = await store.claim_notifications(10, 60)
    assert sorted(c.id for c in second) == sorted(c.id for c in first)
    assert all(c.attempts == 2 for c in second)
    assert not await store.finish_notification(first[0], OutboxOutcome.delivered())
    assert await store.finish_notification(second[0], OutboxOutcome.delivered())
    assert await store.finish_notification(
        second[1], OutboxOutcome.retry("HTTP 503 from the receiver", 3600)
    )
    assert await store.claim_notifications(10, 60) == []  # one delivered, one not due yet

    listed = {d.id: d for d in await store.notifications(run.interaction_id)}
    assert listed[second[0].id].status == "delivered"
    assert listed[second[0].id].delivered_at is not None
    waiting = listed[second[1].id]
    assert waiting.status == "pending" and waiting.attempts == 2
    assert waiting.last_error == "HTTP 503 from the receiver"
    assert waiting.next_attempt_at is not None
    assert waiting.next_attempt_at > datetime.now(timezone.utc) + timedelta(minutes=50)


async def test_a_failed_notification_is_kept_and_can_be_queued_again(
    store: RunStore, backend: Backend
) -> None:
    await store.insert_paused(_new(NotifyPolicy((HOOK,))))
    (claim,) = await store.claim_notifications(10, 60)
    assert await store.finish_notification(claim, OutboxOutcome.failed("410 Gone " + "x" * 900))
    assert await store.claim_notifications(10, 60) == []
    (failed,) = await store.notifications()
    assert failed.status == "failed" and failed.next_attempt_at is None
    assert failed.last_error is not None and len(failed.last_error) <= 500

    again = await store.retry_notification(claim.id)
    assert again is not None and again.status == "pending" and again.attempts == 0
    (claimed,) = await store.claim_notifications(10, 60)
    assert claimed.id == claim.id and claimed.attempts == 1
    # Only a failed one is re-queued: a pending (leased) one is returned unchanged.
    unchanged = await store.retry_notification(claim.id)
    assert unchanged is not None and unchanged.status == "pending"
    assert await store.claim_notifications(10, 60) == []
    assert await store.retry_notification("no-such-notification") is None


async def test_two_workers_never_claim_the_same_notification(backend: Backend) -> None:
    """Workers on separate connections (SQLite: two stores on one file; PostgreSQL: two
    pools) racing for 40 notifications each get a disjoint share."""
    settings = backend.settings(busy_timeout=5, lease_seconds=30)
    one, two = await connect_store(settings), await connect_store(settings)
    try:
        for _ in range(20):
            await one.insert_paused(_new())
        claimed: list[list[str]] = [[], []]

        async def worker(store: RunStore, mine: list[str]) -> None:
            while True:
                batch = await store.claim_notifications(3, 60)
                if not batch:
                    return
                mine.extend(c.id for c in batch)
                await asyncio.sleep(0)

        await asyncio.gather(worker(one, claimed[0]), worker(two, claimed[1]))
        every = claimed[0] + claimed[1]
        assert len(every) == 40 and len(set(every)) == 40
    finally:
        await one.close()
        await two.close()


async def test_a_claim_leases_no_more_than_its_limit(store: RunStore, backend: Backend) -> None:
    """The limit bounds the lease, not only the rows returned: PostgreSQL may run an
    ``IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` subquery more than once and lease more
    rows than it returns, which then sit leased until their lease ends."""
    for _ in range(6):
        await store.insert_paused(_new())  # 12 due notifications
    claimed: set[str] = set()
    for limit in (1, 2, 5):
        taken = await store.claim_notifications(limit, 60)
        assert len(taken) == limit
        claimed |= {c.id for c in taken}
        leased = {r["id"] for r in backend.rows.notifications() if r["lease_token"] is not None}
        assert leased == claimed


async def test_an_altered_notification_is_never_delivered(
    store: RunStore, backend: Backend
) -> None:
    run = await store.insert_paused(_new(NotifyPolicy((MAIL,))))
    (row,) = backend.rows.notifications()
    backend.rows.set_notification(row["id"], destination="attacker@example.net")
    (claim,) = await store.claim_notifications(10, 60)
    assert claim.notification is None and "outside bridgic-coldmail" in (claim.problem or "")
    (listed,) = await store.notifications(run.interaction_id)
    assert not listed.verified


async def test_purging_a_run_deletes_its_notifications(store: RunStore, backend: Backend) -> None:
    run = await store.insert_paused(_new())
    kept = await store.insert_paused(_new())
    old = datetime.now(timezone.utc) - timedelta(days=40)
    backend.rows.set(run.interaction_id, created_at=old, updated_at=old)
    assert await store.purge(timedelta(days=30), {RunStatus.AWAITING_FEEDBACK}) == 1
    assert {r["interaction_id"] for r in backend.rows.notifications()} == {kept.interaction_id}


def _ago(minutes: int) -> datetime:
    return datetime.now(timezone.utc) - timedelta(minutes=minutes)


async def test_the_outbox_costs_one_statement_in_the_transaction_and_none_without_it(
    db_path: Path,
) -> None:
    """Issue 20's budget: a pause or an outcome that notifies costs one statement more (a
    multi-row INSERT of all its destinations), and one that notifies nobody costs nothing.
    Counted with SQLite's own statement trace."""
    store = await SqliteRunStore.connect(db_path)
    statements: list[str] = []
    try:
        await store._conn.set_trace_callback(statements.append)  # observing, not changing

        async def cost(policy: NotifyPolicy | None) -> tuple[int, int]:
            statements.clear()
            run = await store.insert_paused(_new(policy))
            inserted = len(statements)
            claim = await _claim(store, run.interaction_id, make_decision("feedback", text="CTOs"))
            statements.clear()
            await store.complete(claim, _review(1))
            return inserted, len(statements)

        await cost(None)  # the first call also lists the schema's objects once
        quiet = await cost(None)
        loud = await cost(NotifyPolicy(tuple(f"r{i}@example.com" for i in range(20))))
    finally:
        await store.close()
    assert loud == (quiet[0] + 1, quiet[1] + 1)
    assert sum("INSERT INTO notifications" in s for s in statements) == 1
