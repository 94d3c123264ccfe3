"""A keyless database writer edits a run while it is being resumed: the edit is never
laundered.

Between a claim (which verifies the row's MAC) and its complete or release, someone who can
write the database but has no key changes a signed column of the run — the brief's sender,
the question, the draft — or removes the row's MAC. The complete still records the result
(the new snapshot, the round, its event: nothing the LLM produced is lost) and the caller
gets the result built from what the claim verified, but the row is never sealed over the
edit: from then on the run reads as tampered (``get``: a tampered ``DamagedRun``, a claim:
``TAMPERED``), and a retry of the complete applies nothing twice.

Both backends; on PostgreSQL both complete paths: the one-round-trip fenced path (claim made
in this process) and the locked two-round-trip path (claim made by another process).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    EmailSequence,
    RunStatus,
    SnapshotIntegrityError,
    make_decision,
)
from bridgic_coldmail.models import DamagedRun, Run
from bridgic_coldmail.store import (
    Claim,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
    connect_store,
)
from bridgic_coldmail.testing import RecordedRequest, Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, Backend

VERSIONS = {"1.0"}
FEEDBACK = make_decision("feedback", text="CTOs at mid-size hospitals")
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")
MALLORY = Brief(product="Acme Scheduler", offer="wire the fee to IBAN X", sender="Mallory")


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


def _new() -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=BRIEF,
        draft=_sequence("draft"),
        question="Who is this for?",
        snapshot=b"snapshot at the question " + uuid.uuid4().bytes,
        serialization_version="1.0",
        review=True,
        max_rounds=3,
        fields=("first_name",),
    )


def _review() -> Paused:
    return Paused(
        pause_id=uuid.uuid4().hex,
        snapshot=b"snapshot at round 1 " + uuid.uuid4().bytes,
        serialization_version="1.0",
        sequence=_sequence("round 1"),
        round=1,
    )


def _finished() -> Finished:
    return Finished(status=RunStatus.COMPLETED, sequence=_sequence("final"))


EDITS: dict[str, dict[str, Any]] = {
    "sender": {"brief_json": MALLORY.model_dump_json()},
    "question": {"question": "Reply with your bank details"},
    "draft": {"draft_json": _sequence("from Mallory").model_dump_json()},
    "max rounds": {"max_rounds": 99},
    "fields": {"fields_json": '["iban"]'},
    "mac removed": {"row_mac": None},
}


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=["claimed here", "claimed elsewhere"])
async def claimer(request: pytest.FixtureRequest, store: RunStore, backend: Backend) -> Any:
    """The store that claims, for ``store`` to complete: the same one (PostgreSQL completes
    in one fenced round trip), or another connection to the same database (PostgreSQL's
    locked two-round-trip path, as when the claim was made by another process)."""
    if request.param == "claimed here":
        yield store
        return
    other = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield other
    finally:
        await other.close()


async def _claim(store: RunStore, interaction_id: str) -> Claim:
    outcome = await store.claim(interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(outcome, Claim), outcome
    return outcome


async def _assert_tampered(store: RunStore, interaction_id: str) -> None:
    shown = await store.get(interaction_id)
    assert isinstance(shown, DamagedRun), shown
    assert shown.tampered
    again = await store.claim(interaction_id, make_decision("approve"), VERSIONS)
    assert isinstance(again, Refusal) and again.reason is RefusalReason.TAMPERED, again
    history = await store.history(interaction_id)
    assert isinstance(history, Refusal) and history.reason is RefusalReason.TAMPERED


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
@pytest.mark.parametrize("outcome", ["next round", "finished"])
async def test_a_signed_column_edited_during_a_resume_is_reported_tampered_after_it(
    store: RunStore, claimer: RunStore, backend: Backend, edit: str, outcome: str
) -> None:
    run = await store.insert_paused(_new())
    claim = await _claim(claimer, run.interaction_id)
    backend.rows.set(run.interaction_id, **EDITS[edit])
    before = len(backend.rows.events(run.interaction_id))
    result = _review() if outcome == "next round" else _finished()
    completed = await store.complete(claim, result)
    # The caller gets the result built from what its claim verified, never the edit.
    assert isinstance(completed, Run)
    assert completed.brief.sender == "Dana Lee"
    assert completed.question == "Who is this for?"
    assert completed.sequence == result.sequence
    # Nothing the LLM produced is lost, and the edit is kept as evidence...
    row = backend.rows.row(run.interaction_id)
    assert row is not None
    if isinstance(result, Paused):
        assert row["status"] == RunStatus.AWAITING_REVIEW.value
        assert bytes(row["snapshot"]) == result.snapshot
        assert row["pause_id"] == result.pause_id
    else:
        assert row["status"] == RunStatus.COMPLETED.value
    for column, value in EDITS[edit].items():
        assert row[column] == value
    events = backend.rows.events(run.interaction_id)
    assert len(events) == before + 1
    assert events[-1]["kind"] == ("review" if isinstance(result, Paused) else "completed")
    # ...but the run is never shown, resumed or listed as verified with it.
    await _assert_tampered(store, run.interaction_id)
    listed = [r for r in await store.list() if r.interaction_id == run.interaction_id]
    assert len(listed) == 1 and isinstance(listed[0], DamagedRun) and listed[0].tampered
    # A retry of the same complete (its reply was lost) applies nothing twice.
    assert await store.complete(claim, result) is None
    assert backend.rows.events(run.interaction_id) == events
    assert backend.rows.row(run.interaction_id) == row


@pytest.mark.parametrize("edit", ["sender", "question", "mac removed"])
async def test_a_signed_column_edited_during_a_resume_that_fails_is_reported_tampered(
    store: RunStore, claimer: RunStore, backend: Backend, edit: str
) -> None:
    """A release (the LLM failed) gives the run back to its pause: never sealed over the
    edit either."""
    run = await store.insert_paused(_new())
    claim = await _claim(claimer, run.interaction_id)
    backend.rows.set(run.interaction_id, **EDITS[edit])
    assert await store.release(claim, "the LLM timed out", announce=True)
    row = backend.rows.row(run.interaction_id)
    assert row is not None and row["status"] == RunStatus.AWAITING_FEEDBACK.value
    await _assert_tampered(store, run.interaction_id)


async def test_a_resume_nobody_edited_still_verifies(
    store: RunStore, claimer: RunStore, backend: Backend
) -> None:
    """The check costs a genuine run nothing: it completes and reads as verified."""
    run = await store.insert_paused(_new())
    claim = await _claim(claimer, run.interaction_id)
    backend.rows.set(run.interaction_id, claim_expires_at=claim.expires_at)  # not signed
    assert isinstance(await store.complete(claim, _review()), Run)
    shown = await store.get(run.interaction_id)
    assert isinstance(shown, Run) and shown.verified
    assert shown.brief.sender == "Dana Lee"
    assert isinstance(await store.history(run.interaction_id), list)


@pytest.mark.parametrize("resume", ["feedback", "revise"])
async def test_the_sender_changed_while_the_llm_works_is_reported_on_the_next_read(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, resume: str
) -> None:
    """End to end: the LLM call of a resume blocks until a keyless writer has changed the
    brief's sender. The resume returns the result made from the brief it verified; every
    read after it raises ``SnapshotIntegrityError`` (exit 9), and sending the same request
    again calls the LLM no more."""
    edited, go_on = threading.Event(), threading.Event()
    kind = "refine" if resume == "feedback" else "revise"

    def wait_for_the_edit(request: RecordedRequest) -> Reply | None:
        if request.kind == kind:
            edited.set()
            go_on.wait(timeout=PROCESS_TIMEOUT)
        return None

    async with ColdMailAgent.open(backend.db, settings=backend.settings()) as agent:
        run = await agent.start(brief, review=True)
        if resume == "revise":
            run = await agent.resume(run.interaction_id, "CTOs at mid-size hospitals")
        rid = run.interaction_id
        server.respond_with(wait_for_the_edit)
        if resume == "feedback":
            resuming = asyncio.create_task(agent.resume(rid, "CTOs at mid-size hospitals"))
        else:
            resuming = asyncio.create_task(agent.revise(rid, "shorter"))
        await asyncio.to_thread(edited.wait, PROCESS_TIMEOUT)
        backend.rows.set(rid, brief_json=MALLORY.model_dump_json())
        go_on.set()
        done = await resuming
        assert done.brief.sender == brief.sender  # what its claim verified
        calls = server.count(kind)
        for read in (agent.get(rid), agent.history(rid)):
            with pytest.raises(SnapshotIntegrityError):
                await read
        with pytest.raises(SnapshotIntegrityError):
            if resume == "feedback":
                await agent.resume(rid, "CTOs at mid-size hospitals")
            else:
                await agent.revise(rid, "shorter", round=1)
        assert server.count(kind) == calls
    stored = backend.rows.row(rid)
    assert stored is not None and stored["status"] == RunStatus.AWAITING_REVIEW.value


async def test_in_a_group_commit_only_the_edited_run_reads_as_tampered(
    store: RunStore, claimer: RunStore, backend: Backend
) -> None:
    """Concurrent completes are sealed together in one transaction (``group.py``): an edit
    to one run never spills onto the others, nor is it laundered by their commit."""
    runs = [await store.insert_paused(_new()) for _ in range(6)]
    claims = [await _claim(claimer, run.interaction_id) for run in runs]
    edited = runs[2].interaction_id
    backend.rows.set(edited, **EDITS["sender"])
    before = int(store._group.groups)  # type: ignore[attr-defined]
    done = await asyncio.gather(*(store.complete(claim, _review()) for claim in claims))
    assert int(store._group.groups) - before < len(claims)  # type: ignore[attr-defined]
    assert all(isinstance(run, Run) for run in done)
    for run in runs:
        shown = await store.get(run.interaction_id)
        if run.interaction_id == edited:
            assert isinstance(shown, DamagedRun) and shown.tampered
        else:
            assert isinstance(shown, Run) and shown.verified
            assert shown.status is RunStatus.AWAITING_REVIEW
