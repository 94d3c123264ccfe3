"""Personalization batches in the store (issue 23), once per backend: creation, claims with
leases shared by racing workers, lines recorded fenced by the lease, the sample's hold, and
rows altered below the store. Talks to the store through its methods, and below it only
through ``tests/rows.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from bridgic_coldmail.store import RunStore, connect_store
from bridgic_coldmail.store.batches import (
    MAX_ATTEMPTS,
    BatchAction,
    BatchApproved,
    BatchClaim,
    BatchLead,
    BatchPaused,
    BatchRefusal,
    BatchRefusalReason,
    LineRecord,
    NewBatch,
)

from ..conftest import Backend

WRITER = "written by the LLM"


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


def _new(count: int = 20, *, sample: int = 5, problems: int = 0, run: str = "") -> NewBatch:
    leads = [
        BatchLead(i + 2, f"lead{i}@example.com", {"email": f"lead{i}@example.com", "name": f"N{i}"})
        for i in range(count)
    ]
    leads[1:1] = [
        BatchLead(900 + i, f"bad{i}", {}, problem="the address is not valid")
        for i in range(problems)
    ]
    return NewBatch(
        batch_id=uuid.uuid4().hex,
        interaction_id=run or uuid.uuid4().hex,
        leads_digest="sha256:" + uuid.uuid4().hex,
        settings={"sample": sample},
        sample_size=sample,
        leads=leads,
        token=uuid.uuid4().hex,
    )


def _line(position: int) -> str:
    return f"A line for lead {position} that reads well."


async def test_a_batch_is_created_once_per_run_and_list(store: RunStore) -> None:
    new = _new(problems=2)
    batch, created = await store.create_batch(new)
    assert created and batch.status == "sampling" and batch.verified
    assert batch.lead_count == 22 and batch.held_until is not None
    again = NewBatch(**{**new.__dict__, "batch_id": uuid.uuid4().hex, "token": "other"})
    same, created_again = await store.create_batch(again)
    assert not created_again and same.batch_id == new.batch_id
    counts = await store.batch_counts(new.batch_id)
    assert (counts.pending, counts.skipped, counts.total) == (20, 2, 22)
    skipped = await store.batch_leads(new.batch_id, states=["skipped"])
    assert [s.error for s in skipped] == ["the address is not valid"] * 2
    sample = await store.batch_leads(new.batch_id, sample=True)
    assert [s.email for s in sample] == [f"lead{i}@example.com" for i in range(5)]
    assert [b.batch_id for b in await store.batches(new.interaction_id)] == [new.batch_id]


async def test_two_workers_racing_each_lead_is_claimed_and_written_once(
    backend: Backend, store: RunStore
) -> None:
    new = _new(200, sample=0)
    await store.create_batch(new)
    other = await connect_store(backend.settings(lease_seconds=30))
    written: list[int] = []

    async def worker(on: RunStore) -> None:
        while claims := await on.claim_leads(new.batch_id, 7, 30):
            assert len(claims) <= 7
            records = [LineRecord(c.position, _line(c.position), WRITER, calls=1) for c in claims]
            done = await on.record_lines(new.batch_id, claims[0].token, 1, records)
            assert done == len(claims)
            written.extend(c.position for c in claims)

    try:
        await asyncio.gather(*(worker(s) for s in (store, other, store, other)))
    finally:
        await other.close()
    assert sorted(written) == list(range(200))
    counts = await store.batch_counts(new.batch_id)
    assert (counts.written, counts.open, counts.calls) == (200, 0, 200)
    rows = await store.batch_leads(new.batch_id)
    assert all(r.verified and r.line == _line(r.position) for r in rows)


async def test_a_lapsed_lease_comes_back_and_the_old_holder_records_nothing(
    backend: Backend, store: RunStore
) -> None:
    new = _new(3, sample=0)
    await store.create_batch(new)
    first = await store.claim_leads(new.batch_id, 3, 30)
    assert [c.position for c in first] == [0, 1, 2]
    assert await store.claim_leads(new.batch_id, 3, 30) == []  # held: nobody else gets them
    done = await store.record_lines(
        new.batch_id, first[0].token, 1, [LineRecord(0, _line(0), WRITER)]
    )
    assert done == 1
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    for position in (1, 2):
        backend.rows.set_batch_lead(new.batch_id, position, lease_until=past)  # a killed worker
    second = await store.claim_leads(new.batch_id, 10, 30)
    assert [c.position for c in second] == [1, 2]  # the written lead never comes back
    late = [LineRecord(p, "A late line from a worker that lost.", WRITER) for p in (1, 2)]
    assert await store.record_lines(new.batch_id, first[0].token, 1, late) == 0
    assert await store.renew_leads(new.batch_id, first[0].token, 30) == 0
    assert await store.renew_leads(new.batch_id, second[0].token, 30) == 2
    records = [LineRecord(p, _line(p), WRITER) for p in (1, 2)]
    assert await store.record_lines(new.batch_id, second[0].token, 1, records) == 2
    lines = {r.position: r.line for r in await store.batch_leads(new.batch_id)}
    assert lines == {p: _line(p) for p in range(3)}


async def test_leases_taken_under_one_token_are_renewed_and_recorded_together(
    backend: Backend, store: RunStore
) -> None:
    """A worker leasing in groups gives its own token each time: one renewal and one
    recording cover every group; a lead of it whose lease ran out and that another worker
    took is fenced out of that recording all the same."""
    new = _new(6, sample=0)
    await store.create_batch(new)
    mine = uuid.uuid4().hex
    first = await store.claim_leads(new.batch_id, 2, 30, token=mine)
    second = await store.claim_leads(new.batch_id, 2, 30, token=mine)
    assert [c.position for c in first + second] == [0, 1, 2, 3]
    assert {c.token for c in first + second} == {mine}
    assert await store.renew_leads(new.batch_id, mine, 30) == 4
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    backend.rows.set_batch_lead(new.batch_id, 3, lease_until=past)
    other = await store.claim_leads(new.batch_id, 1, 30)
    assert [c.position for c in other] == [3] and other[0].token != mine
    records = [LineRecord(p, _line(p), WRITER) for p in range(4)]
    assert await store.record_lines(new.batch_id, mine, 1, records) == 3  # not lead 3
    assert await store.renew_leads(new.batch_id, mine, 30) == 0
    assert await store.record_lines(new.batch_id, other[0].token, 1, records[3:]) == 1
    rows = await store.batch_leads(new.batch_id)
    assert [r.state for r in rows] == ["written"] * 4 + ["pending"] * 2
    assert all(r.verified for r in rows)


async def test_failures_go_back_to_pending_until_the_attempts_run_out(
    backend: Backend, store: RunStore
) -> None:
    new = _new(1, sample=0)
    await store.create_batch(new)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        (claim,) = await store.claim_leads(new.batch_id, 5, 30)
        assert claim.attempts == attempt
        failed = LineRecord(0, None, WRITER, error="timed out", retry_later=True, calls=1)
        assert await store.record_lines(new.batch_id, claim.token, 1, [failed]) == 1
    (lead,) = await store.batch_leads(new.batch_id)
    assert lead.state == "skipped" and lead.error == "timed out" and lead.calls == MAX_ATTEMPTS
    assert await store.claim_leads(new.batch_id, 5, 30) == []


async def test_a_lead_whose_worker_died_every_time_is_skipped(
    backend: Backend, store: RunStore
) -> None:
    new = _new(1, sample=0)
    await store.create_batch(new)
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    for _ in range(MAX_ATTEMPTS):
        assert len(await store.claim_leads(new.batch_id, 5, 30)) == 1
        backend.rows.set_batch_lead(new.batch_id, 0, lease_until=past)
    assert await store.claim_leads(new.batch_id, 5, 30) == []
    (lead,) = await store.batch_leads(new.batch_id)
    assert lead.state == "skipped" and "never finished" in (lead.error or "")


async def test_a_planted_line_or_lead_is_never_used(backend: Backend, store: RunStore) -> None:
    new = _new(3, sample=0)
    await store.create_batch(new)
    claims = await store.claim_leads(new.batch_id, 1, 30)
    assert len(claims) == 1
    await store.record_lines(new.batch_id, claims[0].token, 1, [LineRecord(0, _line(0), WRITER)])
    # A database writer plants a line on a written lead, and columns on a pending one.
    backend.rows.set_batch_lead(new.batch_id, 0, line="Congrats on your $50M raise, Acme!")
    backend.rows.set_batch_lead(new.batch_id, 1, lead_json='{"note": "won the Nobel prize"}')
    backend.rows.set_batch_lead(
        new.batch_id, 2, state="written", line="Planted without a MAC at all."
    )
    rows = await store.batch_leads(new.batch_id)
    assert [(r.verified, r.line) for r in rows] == [(False, None)] * 3
    claimed = await store.claim_leads(new.batch_id, 5, 30)
    assert claimed == []  # the altered pending lead is skipped, never written from
    (altered,) = await store.batch_leads(new.batch_id, states=["skipped"])
    assert altered.position == 1 and "outside bridgic-coldmail" in (altered.error or "")


async def test_the_sample_hold_pause_answer_and_approval(backend: Backend, store: RunStore) -> None:
    new = _new(10)
    batch, _ = await store.create_batch(new)
    # The creator holds it; another process is told it is held.
    held = await store.take_batch(new.batch_id, None, token="someone else")
    assert isinstance(held, BatchRefusal) and held.reason is BatchRefusalReason.HELD
    mine = await store.take_batch(new.batch_id, None, token=new.token)
    assert isinstance(mine, BatchClaim) and mine.action is None  # the same token: again
    snapshot = b"automa snapshot " + uuid.uuid4().bytes
    paused = await store.step_batch(
        mine, BatchPaused("pause-1", snapshot, "1.0", round=1, guidance=())
    )
    assert paused is not None and paused.status == "awaiting_approval" and paused.verified
    assert await store.step_batch(mine, BatchApproved()) is None  # the hold ended
    # A run of personalize cannot take it: it waits for a person.
    waits = await store.take_batch(new.batch_id, None, token="t2")
    assert isinstance(waits, BatchRefusal) and waits.reason is BatchRefusalReason.NEEDS_ANSWER
    guide = BatchAction("guide", "mention their city")
    answer = await store.take_batch(new.batch_id, guide, token="t3")
    assert isinstance(answer, BatchClaim) and answer.snapshot == snapshot
    assert answer.action == guide
    # Released (the step failed): paused again, the snapshot kept.
    assert await store.release_batch(answer, "the LLM failed")
    again = await store.get_batch(new.batch_id)
    assert again is not None and again.status == "awaiting_approval"
    assert again.last_error == "the LLM failed"
    approve = await store.take_batch(new.batch_id, BatchAction("approve"), token="t4")
    assert isinstance(approve, BatchClaim)
    approved = await store.step_batch(approve, BatchApproved())
    assert approved is not None and approved.status == "writing" and approved.sample_approved
    late = await store.take_batch(new.batch_id, BatchAction("approve"), token="t5")
    assert isinstance(late, BatchRefusal) and late.reason is BatchRefusalReason.NOT_PAUSED
    assert (await store.finish_batch(new.batch_id)).status == "writing"  # type: ignore[union-attr]


async def test_an_abandoned_hold_is_taken_over_with_the_answer_it_was_applying(
    backend: Backend, store: RunStore
) -> None:
    new = _new(4)
    await store.create_batch(new)
    mine = await store.take_batch(new.batch_id, None, token=new.token)
    assert isinstance(mine, BatchClaim)
    await store.step_batch(mine, BatchPaused("pause-1", b"snap", "1.0", 1, ()))
    guide = BatchAction("guide", "shorter")
    taken = await store.take_batch(new.batch_id, guide, token="dies")
    assert isinstance(taken, BatchClaim)
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    backend.rows.set_batch(new.batch_id, claim_expires_at=past)  # its process was killed
    resumed = await store.take_batch(new.batch_id, None, token="next")
    assert isinstance(resumed, BatchClaim) and resumed.action == guide
    assert resumed.snapshot == b"snap"


async def test_an_approval_or_snapshot_planted_below_the_store_is_refused(
    backend: Backend, store: RunStore
) -> None:
    new = _new(4)
    await store.create_batch(new)
    mine = await store.take_batch(new.batch_id, None, token=new.token)
    assert isinstance(mine, BatchClaim)
    await store.step_batch(mine, BatchPaused("pause-1", b"snap", "1.0", 1, ()))
    backend.rows.set_batch(new.batch_id, snapshot=b"a pickle that runs code")
    refused = await store.take_batch(new.batch_id, BatchAction("approve"), token="t")
    assert isinstance(refused, BatchRefusal) and refused.reason is BatchRefusalReason.TAMPERED
    backend.rows.set_batch(new.batch_id, status="writing", sample_approved=1)
    found = await store.get_batch(new.batch_id)
    assert found is not None and not found.verified


async def test_a_rewritten_sample_keeps_lines_of_the_current_round(
    backend: Backend, store: RunStore
) -> None:
    new = _new(8, sample=3)
    await store.create_batch(new)
    hold = await store.take_batch(new.batch_id, None, token=new.token)
    assert isinstance(hold, BatchClaim)
    claims = await store.claim_leads(new.batch_id, 10, 30, sample=True)
    assert [c.position for c in claims] == [0, 1, 2]
    first = [LineRecord(c.position, _line(c.position), WRITER) for c in claims[:2]]
    first.append(LineRecord(2, None, WRITER, error="every line was refused"))
    await store.record_lines(new.batch_id, claims[0].token, 1, first)
    assert await store.reset_sample(hold, before_round=2) == 3
    assert await store.reset_sample(hold, before_round=2) == 0
    claims = await store.claim_leads(new.batch_id, 10, 30, sample=True)
    await store.record_lines(
        new.batch_id, claims[0].token, 2, [LineRecord(0, _line(0), WRITER, calls=1)]
    )
    assert await store.reset_sample(hold, before_round=2) == 0  # round 2's line is kept
    other = BatchClaim(hold.batch, "not the holder", hold.expires, None)
    assert await store.reset_sample(other, before_round=3) == 0  # fenced
