"""A claimed run is decoded once (``rules.claim_from``, ``rules.completed_run``): what
``claim`` and ``complete`` hand back, copied from the verified run, is exactly what reading
the stored row gives — for every kind of step, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from bridgic_coldmail import Brief, Decision, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.models import Run
from bridgic_coldmail.store import Claim, Finished, NewRun, Paused, RunStore, connect_store

from ..conftest import Backend

VERSIONS = {"1.0"}
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


async def _claim_as_stored(store: RunStore, interaction_id: str, action: Decision) -> Claim:
    claim = await store.claim(interaction_id, action, VERSIONS)
    assert isinstance(claim, Claim), claim
    stored = await store.get(interaction_id)
    assert isinstance(stored, Run) and stored.status is RunStatus.RESUMING
    assert claim.run == stored.model_copy(update={"status": claim.run.status})
    return claim


async def _complete_as_stored(store: RunStore, claim: Claim, result: Paused | Finished) -> Run:
    done = await store.complete(claim, result)
    assert done is not None
    assert done == await store.get(claim.interaction_id)
    return done


@pytest.mark.parametrize("ending", ["approve", "reject"])
async def test_claims_and_completes_return_the_stored_run(store: RunStore, ending: str) -> None:
    rid = uuid.uuid4().hex
    await store.insert_paused(
        NewRun(
            interaction_id=rid,
            brief=BRIEF,
            draft=_sequence("draft"),
            question="Who is this for?",
            snapshot=b"s0",
            serialization_version="1.0",
            review=True,
            max_rounds=3,
            fields=("first_name",),
        )
    )
    claim = await _claim_as_stored(store, rid, make_decision("feedback", text="CTOs at clinics"))
    paused = await _complete_as_stored(store, claim, Paused("p1", b"s1", "1.0", _sequence("r1"), 1))
    assert paused.status is RunStatus.AWAITING_REVIEW and paused.feedback == "CTOs at clinics"
    claim = await _claim_as_stored(
        store, rid, make_decision("revise", text="shorter", reviewer="Ann")
    )
    await _complete_as_stored(store, claim, Paused("p2", b"s2", "1.0", _sequence("r2"), 2))
    decision = (
        make_decision("approve", reviewer="Bo")
        if ending == "approve"
        else make_decision("reject", text="off brand")
    )
    claim = await _claim_as_stored(store, rid, decision)
    result = (
        Finished(RunStatus.COMPLETED, _sequence("r2"))
        if ending == "approve"
        else Finished(RunStatus.REJECTED, _sequence("r2"), "off brand")
    )
    done = await _complete_as_stored(store, claim, result)
    assert done.status is result.status and done.final == (
        result.sequence if ending == "approve" else None
    )
