"""One conformance suite for every store backend (SQLite and PostgreSQL).

Each test runs once per backend (the ``backend`` fixture). It talks to the store through the
``RunStore`` protocol, and below it only through ``tests/rows.py`` — as an attacker, a crash
or the passing of time would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bridgic_coldmail import Brief, Decision, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.errors import ConfigurationError, StoreError
from bridgic_coldmail.models import DamagedRun, Run
from bridgic_coldmail.store import (
    AlreadyDone,
    Claim,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
    connect_store,
)

from ..conftest import Backend
from ..rows import age, as_legacy, expire_lease

VERSIONS = {"1.0"}
FEEDBACK = make_decision("feedback", text="CTOs at mid-size hospitals")
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


def _new(review: bool = False, interaction_id: str | None = None) -> NewRun:
    return NewRun(
        interaction_id=interaction_id or uuid.uuid4().hex,
        brief=BRIEF,
        draft=_sequence("draft"),
        question="Who is this for?",
        snapshot=b"snapshot bytes " + uuid.uuid4().bytes,
        serialization_version="1.0",
        review=review,
        max_rounds=3 if review else None,
        fields=("first_name", "company") if review else (),
    )


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


async def _claim(store: RunStore, interaction_id: str, action: Decision = FEEDBACK) -> Claim:
    outcome = await store.claim(interaction_id, action, VERSIONS)
    assert isinstance(outcome, Claim), outcome
    return outcome


# --------------------------------------------------------------------------- round trip


async def test_round_trip_of_a_paused_run(store: RunStore) -> None:
    new = _new(review=True)
    inserted = await store.insert_paused(new)
    got = await store.get(new.interaction_id)
    assert got == inserted
    assert isinstance(got, Run)
    assert (got.status, got.brief, got.draft, got.review, got.max_rounds, got.fields) == (
        RunStatus.AWAITING_FEEDBACK,
        BRIEF,
        new.draft,
        True,
        3,
        ("first_name", "company"),
    )
    assert got.verified and got.pause_id == new.interaction_id
    claim = await _claim(store, new.interaction_id)
    assert claim.snapshot == new.snapshot and claim.pause_id == new.interaction_id


async def test_not_found(store: RunStore) -> None:
    missing = uuid.uuid4().hex
    assert await store.get(missing) is None
    assert await store.history(missing) is None
    refused = await store.claim(missing, FEEDBACK, VERSIONS)
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.NOT_FOUND


async def test_list_is_newest_first_with_paging_and_filter(
    store: RunStore, backend: Backend
) -> None:
    ids = []
    for index in range(5):
        new = await store.insert_paused(_new())
        age(backend.rows, new.interaction_id, timedelta(minutes=10 - index))
        ids.append(new.interaction_id)
    claim = await _claim(store, ids[0])
    await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("final")))

    listed = [r.interaction_id for r in await store.list()]
    assert listed == list(reversed(ids))
    page = [r.interaction_id for r in await store.list(limit=2, offset=1)]
    assert page == [ids[3], ids[2]]
    done = await store.list(RunStatus.COMPLETED)
    assert [r.interaction_id for r in done] == [ids[0]]
    assert len(await store.list(RunStatus.AWAITING_FEEDBACK)) == 4


async def test_counts_are_per_status_and_cover_every_run(store: RunStore) -> None:
    assert await store.counts() == {}
    ids = [(await store.insert_paused(_new())).interaction_id for _ in range(3)]
    await store.complete(await _claim(store, ids[0]), Finished(RunStatus.COMPLETED, _sequence("f")))
    await _claim(store, ids[1])  # held: resuming
    assert await store.counts() == {
        RunStatus.AWAITING_FEEDBACK: 1,
        RunStatus.RESUMING: 1,
        RunStatus.COMPLETED: 1,
    }


async def test_history_records_each_step_with_its_round_and_actor(store: RunStore) -> None:
    new = await store.insert_paused(_new(review=True))
    rid = new.interaction_id
    claim = await _claim(store, rid)
    await store.complete(claim, Paused("p2", b"round 1 bytes", "1.0", _sequence("r1"), 1))
    revise = make_decision("revise", text="shorter", reviewer="Ann")
    claim = await _claim(store, rid, revise)
    paused = await store.complete(claim, Paused("p3", b"round 2 bytes", "1.0", _sequence("r2"), 2))
    assert paused is not None and paused.round == 2 and paused.pause_id == "p3"
    claim = await _claim(store, rid, make_decision("approve", reviewer="Bo"))
    done = await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("r2")))
    assert done is not None and done.final == _sequence("r2")

    history = await store.history(rid)
    assert isinstance(history, list)
    assert [(e.kind, e.round, e.actor, e.detail) for e in history] == [
        ("paused", None, None, None),
        ("feedback", None, None, "CTOs at mid-size hospitals"),
        ("review", 1, None, None),
        ("revised", 1, "Ann", "shorter"),
        ("review", 2, None, None),
        ("approved", 2, "Bo", None),
        ("completed", 2, None, "CTOs at mid-size hospitals"),
    ]
    assert history[4].sequence == _sequence("r2")
    assert all(e.verified for e in history)


async def test_purge_deletes_old_runs_of_the_named_statuses_with_their_history(
    store: RunStore, backend: Backend
) -> None:
    old_done, old_waiting, fresh_done = [await store.insert_paused(_new()) for _ in range(3)]
    for run in (old_done, fresh_done):
        claim = await _claim(store, run.interaction_id)
        await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("f")))
    for run in (old_done, old_waiting):
        age(backend.rows, run.interaction_id, timedelta(days=40))

    assert await store.purge(timedelta(days=30), {RunStatus.COMPLETED}) == 1
    assert await store.get(old_done.interaction_id) is None
    assert backend.rows.events(old_done.interaction_id) == []
    assert isinstance(await store.get(old_waiting.interaction_id), Run)
    assert await store.purge(timedelta(days=30), {RunStatus.AWAITING_FEEDBACK}) == 1
    assert [r.interaction_id for r in await store.list()] == [fresh_done.interaction_id]


# --------------------------------------------------------------------------- schema and key


async def test_migration_from_empty_records_every_version(backend: Backend) -> None:
    store = await connect_store(backend.settings())
    await store.close()
    versions = backend.rows.schema_versions()
    if backend.name == "sqlite":
        from bridgic_coldmail.store.sqlite_sql import MIGRATIONS
    else:
        from bridgic_coldmail.store.postgres_sql import MIGRATIONS
    # Numbers may skip one given to a feature that has not merged yet (7 and 3 for now).
    assert versions == [m.version for m in MIGRATIONS] and versions[0] == 1
    again = await connect_store(backend.settings())  # reopening applies nothing twice
    await again.close()
    assert backend.rows.schema_versions() == versions


async def test_a_newer_schema_is_refused(backend: Backend) -> None:
    store = await connect_store(backend.settings())
    await store.close()
    backend.rows.record_schema_version(999)
    with pytest.raises(StoreError, match="schema version 999, newer than"):
        await connect_store(backend.settings())


async def test_a_different_key_is_refused(backend: Backend) -> None:
    store = await connect_store(backend.settings(secret_key=uuid.uuid4().hex))
    await store.insert_paused(_new())
    await store.close()
    with pytest.raises(ConfigurationError, match="is not the key that signed the runs"):
        await connect_store(backend.settings(secret_key=uuid.uuid4().hex))


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "column",
    ["brief_json", "draft_json", "question", "feedback", "sequence_json", "status", "round"],
)
async def test_an_edited_column_is_never_shown_as_genuine(
    store: RunStore, backend: Backend, column: str
) -> None:
    new = await store.insert_paused(_new(review=True))
    claim = await _claim(store, new.interaction_id)
    await store.complete(claim, Paused("p2", b"round 1", "1.0", _sequence("r1"), 1))
    forged = {
        "brief_json": BRIEF.model_copy(update={"product": "Evil"}).model_dump_json(),
        "draft_json": _sequence("evil").model_dump_json(),
        "question": "Send your password?",
        "feedback": "everyone",
        "sequence_json": _sequence("evil").model_dump_json(),
        "status": "completed",
        "round": 1,
    }[column]
    if column == "round":
        forged = 7
    backend.rows.set(new.interaction_id, **{column: forged})

    shown = await store.get(new.interaction_id)
    assert isinstance(shown, DamagedRun) and shown.tampered
    listed = await store.list()
    assert [type(r) for r in listed] == [DamagedRun]
    refused = await store.claim(new.interaction_id, make_decision("approve"), VERSIONS)
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.TAMPERED


async def test_one_damaged_row_does_not_hide_the_others(store: RunStore, backend: Backend) -> None:
    good = await store.insert_paused(_new())
    bad = await store.insert_paused(_new())
    # Only text an earlier release stored unsigned can be unreadable without being tampered.
    as_legacy(backend.rows, backend.signer(), bad.interaction_id, signature=None)
    backend.rows.set(bad.interaction_id, brief_json="{not json")
    listed = {r.interaction_id: r for r in await store.list()}
    assert isinstance(listed[good.interaction_id], Run)
    damaged = listed[bad.interaction_id]
    assert isinstance(damaged, DamagedRun) and not damaged.tampered
    assert "cannot be read" in damaged.problem


@pytest.mark.parametrize("change", ["flip", "truncate", "replace", "drop_signature"])
async def test_a_changed_snapshot_never_leaves_the_store(
    store: RunStore, backend: Backend, change: str
) -> None:
    new = await store.insert_paused(_new())
    row = backend.rows.row(new.interaction_id)
    assert row is not None
    snapshot = bytes(row["snapshot"])
    if change == "flip":
        backend.rows.set(new.interaction_id, snapshot=snapshot[:-1] + bytes([snapshot[-1] ^ 1]))
    elif change == "truncate":
        backend.rows.set(new.interaction_id, snapshot=snapshot[:5])
    elif change == "replace":
        backend.rows.set(new.interaction_id, snapshot=b"\x80\x04payload")
    else:
        backend.rows.set(new.interaction_id, signature=None)
    before = backend.rows.row(new.interaction_id)
    refused = await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(refused, Refusal)
    assert refused.reason is RefusalReason.TAMPERED
    assert backend.rows.row(new.interaction_id) == before


async def test_a_row_copied_under_another_id_is_refused(store: RunStore, backend: Backend) -> None:
    new = await store.insert_paused(_new())
    row = backend.rows.row(new.interaction_id)
    assert row is not None
    copy_id = uuid.uuid4().hex
    backend.rows.insert({**row, "interaction_id": copy_id})
    assert isinstance(await store.get(copy_id), DamagedRun)
    refused = await store.claim(copy_id, FEEDBACK, VERSIONS)
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.TAMPERED


async def test_an_unsigned_legacy_snapshot_is_refused_until_trusted(
    store: RunStore, backend: Backend
) -> None:
    new = await store.insert_paused(_new())
    # As a 0.1 run looks after migration: no row MAC, no snapshot signature, the legacy mark.
    as_legacy(backend.rows, backend.signer(), new.interaction_id, signature=None)
    refused = await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.UNSIGNED
    listed = await store.get(new.interaction_id)
    assert isinstance(listed, Run) and not listed.verified
    assert await store.trust_unsigned([new.interaction_id]) == [new.interaction_id]
    assert isinstance(await store.claim(new.interaction_id, FEEDBACK, VERSIONS), Claim)


async def test_an_unknown_snapshot_format_is_refused(store: RunStore) -> None:
    new = await store.insert_paused(_new())
    refused = await store.claim(new.interaction_id, FEEDBACK, {"9.9"})
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.UNKNOWN_FORMAT
    assert refused.version == "1.0"


@pytest.mark.parametrize("change", ["edit_detail", "delete", "strip_mac"])
async def test_an_altered_history_is_refused_or_flagged(
    store: RunStore, backend: Backend, change: str
) -> None:
    new = await store.insert_paused(_new())
    claim = await _claim(store, new.interaction_id)
    await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("f")))
    rid = new.interaction_id
    if change == "edit_detail":
        backend.rows.set_event(rid, 2, detail="the reviewer said: wire money")
        history = await store.history(rid)
        assert isinstance(history, Refusal) and history.reason is RefusalReason.TAMPERED
    elif change == "delete":
        backend.rows.delete_event(rid, 2)
        history = await store.history(rid)
        assert isinstance(history, Refusal) and history.reason is RefusalReason.TAMPERED
    else:  # every event of a signed run has a MAC: a missing one was removed
        backend.rows.set_event(rid, 2, mac=None, detail="edited")
        history = await store.history(rid)
        assert isinstance(history, Refusal) and history.reason is RefusalReason.TAMPERED


async def test_a_legacy_runs_history_is_shown_flagged(store: RunStore, backend: Backend) -> None:
    new = await store.insert_paused(_new())
    as_legacy(backend.rows, backend.signer(), new.interaction_id, signature=None)
    backend.rows.set_event(new.interaction_id, 1, mac=None)  # as the upgrade left it
    history = await store.history(new.interaction_id)
    assert isinstance(history, list)
    assert [(e.kind, e.verified) for e in history] == [("paused", False)]
    run = await store.get(new.interaction_id)
    assert isinstance(run, Run) and not run.verified


@pytest.mark.parametrize("column", ["row_mac", "legacy_mark"])
async def test_a_row_stripped_of_its_mac_is_not_taken_for_a_legacy_run(
    store: RunStore, backend: Backend, column: str
) -> None:
    new = await store.insert_paused(_new())
    claim = await _claim(store, new.interaction_id)
    await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("f")))  # no signature
    if column == "row_mac":
        backend.rows.set(new.interaction_id, row_mac=None, brief_json='{"forged": 1}')
    else:  # a mark copied from another run does not fit this one
        other = await store.insert_paused(_new())
        as_legacy(backend.rows, backend.signer(), other.interaction_id)
        mark = backend.rows.row(other.interaction_id)["legacy_mark"]  # type: ignore[index]
        backend.rows.set(new.interaction_id, row_mac=None, legacy_mark=mark)
    shown = await store.get(new.interaction_id)
    assert isinstance(shown, DamagedRun) and shown.tampered


@pytest.mark.parametrize(
    "evil_id",
    ["'; DROP TABLE runs; --", "x' OR '1'='1", "0" * 31 + "'", "%", "\x00", "a" * 10_000],
)
async def test_injection_shaped_ids_find_nothing_and_change_nothing(
    store: RunStore, backend: Backend, evil_id: str
) -> None:
    await store.insert_paused(_new())
    assert await store.get(evil_id) is None
    refused = await store.claim(evil_id, FEEDBACK, VERSIONS)
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.NOT_FOUND
    assert backend.rows.count() == 1


# --------------------------------------------------------------------------- claims


async def test_concurrent_claimers_on_separate_connections_have_one_winner(
    backend: Backend,
) -> None:
    stores = [
        await connect_store(backend.settings(busy_timeout=5, lease_seconds=30)) for _ in range(8)
    ]
    try:
        new = await stores[0].insert_paused(_new())
        outcomes = await asyncio.gather(
            *(s.claim(new.interaction_id, FEEDBACK, VERSIONS) for s in stores)
        )
    finally:
        for s in stores:
            await s.close()
    winners = [o for o in outcomes if isinstance(o, Claim)]
    refusals = [o for o in outcomes if isinstance(o, Refusal)]
    assert len(winners) == 1
    assert [r.reason for r in refusals] == [RefusalReason.HELD] * 7


async def test_an_expired_lease_can_be_taken_over_and_the_old_holder_is_fenced_out(
    store: RunStore, backend: Backend
) -> None:
    new = await store.insert_paused(_new())
    first = await _claim(store, new.interaction_id)
    held = await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(held, Refusal) and held.reason is RefusalReason.HELD

    expire_lease(backend.rows, new.interaction_id)
    second = await _claim(store, new.interaction_id)
    assert second.token != first.token

    assert await store.renew(first) is None
    assert await store.complete(first, Finished(RunStatus.COMPLETED, _sequence("late"))) is None
    assert await store.release(first, "too late") is False
    done = await store.complete(second, Finished(RunStatus.COMPLETED, _sequence("winner")))
    assert done is not None and done.final == _sequence("winner")
    stored = await store.get(new.interaction_id)
    assert isinstance(stored, Run) and stored.final == _sequence("winner")


async def test_completing_again_returns_what_was_recorded_and_writes_nothing(
    store: RunStore, backend: Backend
) -> None:
    """``complete`` is idempotent: called again for a claim whose completion committed (its
    reply lost), it returns the recorded run and changes nothing; a claim taken over whose
    action another claimer recorded gets that run too; a different action gets None."""
    new = await store.insert_paused(_new(review=True))
    rid = new.interaction_id
    await store.complete(await _claim(store, rid), Paused("p2", b"r1", "1.0", _sequence("r1"), 1))
    claim = await _claim(store, rid, make_decision("revise", text="shorter"))
    result = Paused("p3", b"r2", "1.0", _sequence("r2"), 2)
    first = await store.complete(claim, result)
    row, events = backend.rows.row(rid), backend.rows.events(rid)
    again = await store.complete(claim, result)
    assert first is not None and again is not None and again.round == 2
    assert (again.sequence, again.pause_id) == (first.sequence, first.pause_id)
    assert (backend.rows.row(rid), backend.rows.events(rid)) == (row, events)

    taken_over = await _claim(store, rid, make_decision("approve"))
    expire_lease(backend.rows, rid)
    winner = await _claim(store, rid, make_decision("approve", reviewer="Bo"))
    done = await store.complete(winner, Finished(RunStatus.COMPLETED, _sequence("r2")))
    late = await store.complete(taken_over, Finished(RunStatus.COMPLETED, _sequence("r2")))
    assert done is not None and late is not None and late.final == done.final

    other = await store.insert_paused(_new(review=True))
    oid = other.interaction_id
    await store.complete(await _claim(store, oid), Paused("q2", b"r1", "1.0", _sequence("r1"), 1))
    loser = await _claim(store, oid, make_decision("reject", text="no"))
    expire_lease(backend.rows, oid)
    await store.complete(
        await _claim(store, oid, make_decision("approve")),
        Finished(RunStatus.COMPLETED, _sequence("r1")),
    )
    assert await store.complete(loser, Finished(RunStatus.REJECTED, _sequence("r1"), "no")) is None


async def test_renewing_extends_the_lease(store: RunStore, backend: Backend) -> None:
    new = await store.insert_paused(_new())
    claim = await _claim(store, new.interaction_id)
    renewed = await store.renew(claim)
    assert renewed is not None and renewed >= claim.expires_at


async def test_release_on_failure_gives_the_run_back_with_the_error(
    store: RunStore, backend: Backend
) -> None:
    new = await store.insert_paused(_new())
    claim = await _claim(store, new.interaction_id)
    assert await store.release(claim, "the LLM timed out") is True
    back = await store.get(new.interaction_id)
    assert isinstance(back, Run)
    assert (back.status, back.last_error, back.feedback) == (
        RunStatus.AWAITING_FEEDBACK,
        "the LLM timed out",
        FEEDBACK.text,  # kept, as it is in the history: nothing the person gave is lost
    )
    history = await store.history(new.interaction_id)
    assert isinstance(history, list)
    assert [e.kind for e in history] == ["paused", "feedback", "failed"]
    assert isinstance(await store.claim(new.interaction_id, FEEDBACK, VERSIONS), Claim)


async def test_the_same_feedback_again_returns_the_result_and_other_feedback_conflicts(
    store: RunStore,
) -> None:
    new = await store.insert_paused(_new())
    claim = await _claim(store, new.interaction_id)
    await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("f")))
    again = await store.claim(new.interaction_id, FEEDBACK, VERSIONS)
    assert isinstance(again, AlreadyDone) and again.run.final == _sequence("f")
    other = await store.claim(
        new.interaction_id, make_decision("feedback", text="Nurses"), VERSIONS
    )
    assert isinstance(other, Refusal) and other.reason is RefusalReason.CONFLICT


async def test_decisions_that_do_not_fit_the_state_change_nothing(
    store: RunStore, backend: Backend
) -> None:
    new = await store.insert_paused(_new(review=True))
    before = backend.rows.row(new.interaction_id)
    early = await store.claim(new.interaction_id, make_decision("approve"), VERSIONS)
    assert isinstance(early, Refusal) and early.reason is RefusalReason.WRONG_STATE
    assert backend.rows.row(new.interaction_id) == before

    claim = await _claim(store, new.interaction_id)
    await store.complete(claim, Paused("p2", b"r1", "1.0", _sequence("r1"), 1))
    future = await store.claim(new.interaction_id, make_decision("approve", round=2), VERSIONS)
    assert isinstance(future, Refusal) and future.reason is RefusalReason.WRONG_STATE


async def test_revising_stops_at_the_round_limit(store: RunStore) -> None:
    new = await store.insert_paused(_new(review=True))  # max_rounds=3
    claim = await _claim(store, new.interaction_id)
    await store.complete(claim, Paused("p1", b"r1", "1.0", _sequence("r1"), 1))
    for round_number in (2, 3):
        claim = await _claim(
            store, new.interaction_id, make_decision("revise", text=f"v{round_number}")
        )
        result = Paused(
            f"p{round_number}", b"r", "1.0", _sequence(f"r{round_number}"), round_number
        )
        await store.complete(claim, result)
    limit = await store.claim(new.interaction_id, make_decision("revise", text="again"), VERSIONS)
    assert isinstance(limit, Refusal) and limit.reason is RefusalReason.ROUND_LIMIT
    assert isinstance(
        await store.claim(new.interaction_id, make_decision("approve"), VERSIONS), Claim
    )
