"""The inbox's "due soonest" order, on both backends: runs waiting at a pause whose deadline is
pending come first, soonest deadline first; the others follow, newest first.

A pause's deadline row stays pending after the pause was answered (the worker finds it not
needed when it falls due), so these tests answer pauses and check that the stale row never
puts a run twice in the list nor sorts it by a pause it no longer waits at.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.delivery import timed_worker
from bridgic_coldmail.models import RunStatus
from bridgic_coldmail.notify.schedule import RetrySchedule
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import connect_store
from bridgic_coldmail.store.outbox import TIMER_DESTINATION, DueRun
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Backend

BRIEF = Brief(
    product="Acme Scheduler",
    offer="cuts patient no-shows by 30% with two-way SMS reminders",
    sender="Dana Lee",
    audience="practice managers at dental clinics",
)
WAITING = RunStatus.AWAITING_FEEDBACK


@pytest.fixture
def settings(backend: Backend, server: ScriptedOpenAIServer) -> Settings:
    return backend.settings()


@pytest.fixture
async def agent(settings: Settings) -> AsyncIterator[ColdMailAgent]:
    async with ColdMailAgent.open(settings=settings) as opened:
        yield opened


def _ids(listed: list[DueRun]) -> list[str]:
    return [item.run.interaction_id for item in listed]


async def _pages(agent: ColdMailAgent, status: RunStatus | None, size: int) -> list[DueRun]:
    """Every run of the order, read ``size`` at a time."""
    found: list[DueRun] = []
    while True:
        page = await agent.list_due_soonest(status, limit=size, offset=len(found))
        found += page
        if len(page) < size:
            return found


def _deadline_rows(backend: Backend, run_id: str) -> list[dict[str, object]]:
    return [
        row
        for row in backend.rows.notifications(run_id)
        if row["destination"] == TIMER_DESTINATION and row["event"] == "run.deadline"
    ]


async def test_runs_with_a_deadline_come_first_soonest_first_then_the_others_newest_first(
    agent: ColdMailAgent, backend: Backend
) -> None:
    late = await agent.start(BRIEF, respond_within="3h")
    none_old = await agent.start(BRIEF)
    soon = await agent.start(BRIEF, respond_within="10m", on_timeout="reject")
    none_new = await agent.start(BRIEF, remind_every="1h")  # reminders, no deadline
    middle = await agent.start(BRIEF, respond_within="1h", on_timeout="proceed")

    listed = await agent.list_due_soonest(WAITING)

    assert _ids(listed) == [
        soon.interaction_id,
        middle.interaction_id,
        late.interaction_id,
        none_new.interaction_id,
        none_old.interaction_id,
    ]
    deadlines = [item.deadline for item in listed]
    assert [d.wait.on_timeout if d else None for d in deadlines] == [
        "reject",
        "proceed",
        "wait",
        None,
        None,
    ]
    now = datetime.now(timezone.utc)
    soon_deadline = deadlines[0]
    assert soon_deadline is not None
    assert 9 * 60 < (soon_deadline.due_at - now).total_seconds() <= 10 * 60
    assert soon_deadline.pause_id == soon.pause_id
    # Every page size gives the same order, across the line between the two parts.
    for size in (1, 2, 3, 4, 5, 6):
        assert _ids(await _pages(agent, WAITING, size)) == _ids(listed)
    # Past the end: nothing, not the second part again.
    assert await agent.list_due_soonest(WAITING, limit=5, offset=5) == []
    assert _ids(await agent.list_due_soonest(WAITING, limit=2, offset=4)) == [
        none_old.interaction_id
    ]


async def test_an_answered_pause_leaves_its_deadline_row_pending_but_never_sorts_the_run_by_it(
    agent: ColdMailAgent, backend: Backend
) -> None:
    reviewed = await agent.start(BRIEF, review=True, respond_within="2h")
    done = await agent.start(BRIEF, respond_within="5m")
    other = await agent.start(BRIEF, review=True, respond_within="90m")
    reviewed = await agent.resume(reviewed.interaction_id, "clinic owners")
    done = await agent.resume(done.interaction_id, "clinic owners")
    other = await agent.resume(other.interaction_id, "dentists")
    assert reviewed.status is RunStatus.AWAITING_REVIEW and done.status is RunStatus.COMPLETED
    # The answered pauses' deadlines are still pending rows (the worker settles them later).
    stale = [r for r in _deadline_rows(backend, done.interaction_id) if r["status"] == "pending"]
    assert len(stale) == 1
    assert len(_deadline_rows(backend, reviewed.interaction_id)) == 2

    in_review = await agent.list_due_soonest(RunStatus.AWAITING_REVIEW)
    assert _ids(in_review) == [other.interaction_id, reviewed.interaction_id]
    for item in in_review:
        assert item.deadline is not None
        assert item.deadline.pause_id == item.run.pause_id
        assert item.deadline.round == 1
    assert await agent.list_due_soonest(WAITING) == []
    completed = await agent.list_due_soonest(RunStatus.COMPLETED)
    assert _ids(completed) == [done.interaction_id]
    assert completed[0].deadline is None
    # All statuses: the two with a deadline first, each once, then the completed run.
    everything = await agent.list_due_soonest(None)
    assert _ids(everything) == [
        other.interaction_id,
        reviewed.interaction_id,
        done.interaction_id,
    ]


async def test_a_deadline_that_fired_and_kept_waiting_moves_its_run_after_the_timed_ones(
    agent: ColdMailAgent, backend: Backend, settings: Settings
) -> None:
    fired = await agent.start(BRIEF, respond_within="1s")
    timed = await agent.start(BRIEF, respond_within="1d")
    assert _ids(await agent.list_due_soonest(WAITING)) == [
        fired.interaction_id,
        timed.interaction_id,
    ]
    await asyncio.sleep(1.3)
    store = await connect_store(settings)
    worker, runner = timed_worker(store, settings, report=None)
    worker.schedule = RetrySchedule(delays=(0.2,), jitter=0)
    try:
        await worker.run_once()
    finally:
        await runner.aclose()
        await store.close()
    (row,) = _deadline_rows(backend, fired.interaction_id)
    assert row["status"] == "delivered"
    listed = await agent.list_due_soonest(WAITING)
    assert _ids(listed) == [timed.interaction_id, fired.interaction_id]
    assert listed[1].deadline is None


async def test_a_deadline_row_edited_outside_bridgic_coldmail_is_not_shown_as_a_deadline(
    agent: ColdMailAgent, backend: Backend
) -> None:
    run = await agent.start(BRIEF, respond_within="1h", on_timeout="reject")
    (row,) = _deadline_rows(backend, run.interaction_id)
    backend.rows.set_notification(
        str(row["id"]), record_json=str(row["record_json"]).replace('"reject"', '"proceed"')
    )
    (listed,) = await agent.list_due_soonest(WAITING)
    assert listed.run.interaction_id == run.interaction_id
    assert listed.deadline is None
    # A row that is not JSON at all does not fail the list either.
    backend.rows.set_notification(str(row["id"]), record_json="{not json")
    (listed,) = await agent.list_due_soonest(WAITING)
    assert listed.deadline is None


async def test_bad_paging_is_refused_as_the_list_refuses_it(agent: ColdMailAgent) -> None:
    from bridgic_coldmail.errors import InvalidInput

    with pytest.raises(InvalidInput):
        await agent.list_due_soonest(WAITING, limit=0)
    with pytest.raises(InvalidInput):
        await agent.list_due_soonest(WAITING, offset=-1)
    with pytest.raises(InvalidInput):
        await agent.list_due_soonest("nonsense")
