"""Kept pauses and forks, on every store backend (SQLite and PostgreSQL).

The store keeps every pause's signed snapshot in the pause's own transaction and forks a new
run from any of them; these tests reach below the store only through ``tests/rows.py``, as a
database writer without the key would: editing bytes and MACs, moving kept snapshots between
runs and rounds, deleting them, purging parents.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, EmailSequence, RunStatus
from bridgic_coldmail.models import Run
from bridgic_coldmail.store import (
    Action,
    Claim,
    Finished,
    NewRun,
    Paused,
    Refusal,
    RefusalReason,
    RunStore,
    connect_store,
)
from bridgic_coldmail.store.forks import ForkLink
from bridgic_coldmail.store.sqlite import SqliteRunStore

from ..conftest import Backend
from ..rows import SqliteRows, age

VERSIONS = {"1.0"}
FEEDBACK = Action.feedback("CTOs at mid-size hospitals")
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")


def _sequence(tag: str) -> EmailSequence:
    return EmailSequence.model_validate(
        {
            "opener": {"subject": f"Opener {tag}", "body": f"Hi,\n\n{tag}\n\nDana", "wait_days": 0},
            "follow_up": {"subject": f"Again {tag}", "body": "Hi again", "wait_days": 3},
        }
    )


def _new(review: bool = True) -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=BRIEF,
        draft=_sequence("draft"),
        question="Who is this for?",
        snapshot=b"snapshot at the question " + uuid.uuid4().bytes,
        serialization_version="1.0",
        review=review,
        max_rounds=3 if review else None,
        fields=("first_name",) if review else (),
    )


def _review(round: int) -> Paused:
    return Paused(
        pause_id=uuid.uuid4().hex,
        snapshot=f"snapshot at round {round} ".encode() + uuid.uuid4().bytes,
        serialization_version="1.0",
        sequence=_sequence(f"round {round}"),
        round=round,
    )


def _link(parent: str, round: int = 0, text: str = "CFOs at banks") -> ForkLink:
    return ForkLink(parent, round, "feedback" if round == 0 else "revise", text)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    opened = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        yield opened
    finally:
        await opened.close()


async def _claim(store: RunStore, interaction_id: str, action: Action = FEEDBACK) -> Claim:
    outcome = await store.claim(interaction_id, action, VERSIONS)
    assert isinstance(outcome, Claim), outcome
    return outcome


async def _to_round_2_then_done(store: RunStore) -> tuple[str, Paused, Paused]:
    """A run paused at the question, at round 1, at round 2, then approved."""
    run = await store.insert_paused(_new())
    first, second = _review(1), _review(2)
    await store.complete(await _claim(store, run.interaction_id), first)
    revise = Action("revise", text="shorter", round=1)
    await store.complete(await _claim(store, run.interaction_id, revise), second)
    approve = Action("approve", round=2)
    done = await store.complete(
        await _claim(store, run.interaction_id, approve),
        Finished(RunStatus.COMPLETED, second.sequence),
    )
    assert done is not None and done.status is RunStatus.COMPLETED
    return run.interaction_id, first, second


async def _fork(store: RunStore, parent: str, round: int = 0, **link: str) -> Run | Refusal:
    return await store.fork(parent, round, uuid.uuid4().hex, _link(parent, round, **link), VERSIONS)


def _refused(outcome: Run | Refusal, reason: RefusalReason) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    assert outcome.reason is reason, outcome
    return outcome


# --------------------------------------------------------------------------- kept pauses


async def test_every_pause_keeps_its_snapshot_and_an_outcome_keeps_none(
    store: RunStore, backend: Backend
) -> None:
    new = _new()
    await store.insert_paused(new)
    interaction_id = new.interaction_id
    kept = backend.rows.pauses(interaction_id)
    assert [(p["round"], bytes(p["snapshot"]), p["pause_id"]) for p in kept] == [
        (0, new.snapshot, interaction_id)
    ]
    first = _review(1)
    await store.complete(await _claim(store, interaction_id), first)
    approve = Action("approve", round=1)
    await store.complete(
        await _claim(store, interaction_id, approve), Finished(RunStatus.COMPLETED, first.sequence)
    )
    kept = backend.rows.pauses(interaction_id)
    assert [(p["round"], bytes(p["snapshot"]), p["pause_id"]) for p in kept] == [
        (0, new.snapshot, interaction_id),
        (1, first.snapshot, first.pause_id),
    ]
    assert all(p["mac"] is not None for p in kept)
    assert backend.rows.row(interaction_id)["snapshot"] is None  # the run's own: gone


async def test_a_fork_of_the_question_is_a_new_run_paused_there_with_the_kept_snapshot(
    store: RunStore, backend: Backend
) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    before = backend.rows.row(parent)
    fork = await _fork(store, parent)
    assert isinstance(fork, Run)
    assert fork.interaction_id != parent
    assert (fork.status, fork.round, fork.feedback, fork.sequence) == (
        RunStatus.AWAITING_FEEDBACK,
        None,
        None,
        None,
    )
    assert (fork.brief, fork.draft, fork.fields, fork.review) == (
        BRIEF,
        _sequence("draft"),
        ("first_name",),
        True,
    )
    assert await store.get(fork.interaction_id) == fork
    # Bridgic's interaction id of the pause is the parent's: the snapshot answers to it.
    claim = await _claim(store, fork.interaction_id, Action.feedback("CFOs at banks"))
    assert claim.pause_id == parent
    assert claim.snapshot == bytes(backend.rows.pauses(parent)[0]["snapshot"])
    assert backend.rows.row(parent) == before  # the parent is untouched
    history = await store.history(fork.interaction_id)
    assert isinstance(history, list)
    assert [(e.kind, e.detail) for e in history] == [
        ("paused", f"forked from run {parent} at the audience question"),
        ("feedback", "CFOs at banks"),
    ]


async def test_a_fork_of_review_round_n_starts_there_with_the_decisions_before_it(
    store: RunStore, backend: Backend
) -> None:
    parent, first, second = await _to_round_2_then_done(store)
    fork = await _fork(store, parent, 2, text="funnier")
    assert isinstance(fork, Run)
    assert (fork.status, fork.round, fork.sequence, fork.feedback) == (
        RunStatus.AWAITING_REVIEW,
        2,
        second.sequence,
        FEEDBACK.text,
    )
    claim = await _claim(store, fork.interaction_id, Action("revise", text="funnier", round=2))
    assert (claim.pause_id, claim.snapshot) == (second.pause_id, second.snapshot)
    # Round 1's decision came with it: repeating it is the stored result, not a new revision.
    fork_at_1 = await _fork(store, parent, 1, text="formal")
    assert isinstance(fork_at_1, Run) and fork_at_1.round == 1
    claim = await _claim(store, fork_at_1.interaction_id, Action("revise", text="formal", round=1))
    assert claim.snapshot == first.snapshot


async def test_a_fork_keeps_its_own_first_pause_so_it_can_be_forked_again(
    store: RunStore, backend: Backend
) -> None:
    parent, _, second = await _to_round_2_then_done(store)
    fork = await _fork(store, parent, 2)
    assert isinstance(fork, Run)
    again = await _fork(store, fork.interaction_id, 2)
    assert isinstance(again, Run)
    claim = await _claim(store, again.interaction_id, Action("revise", text="x", round=2))
    assert claim.snapshot == second.snapshot
    family = await store.family(again.interaction_id)
    assert family is not None
    assert [m.interaction_id for m in family.members] == [
        parent,
        fork.interaction_id,
        again.interaction_id,
    ]
    assert family.parent_id == fork.interaction_id


async def test_concurrent_forks_of_one_pause_are_distinct_runs(store: RunStore) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    forks = await asyncio.gather(*(_fork(store, parent, 1, text=f"v{i}") for i in range(6)))
    ids = {f.interaction_id for f in forks if isinstance(f, Run)}
    assert len(ids) == 6
    family = await store.family(parent)
    assert family is not None and len(family.forks_of(parent)) == 6
    assert {m.link.text for m in family.members if m.link} == {f"v{i}" for i in range(6)}


async def test_a_fork_while_the_parent_is_being_resumed_leaves_the_claim_alone(
    store: RunStore,
) -> None:
    parent = await store.insert_paused(_new())
    claim = await _claim(store, parent.interaction_id)
    fork = await _fork(store, parent.interaction_id)
    assert isinstance(fork, Run) and fork.status is RunStatus.AWAITING_FEEDBACK
    done = await store.complete(claim, _review(1))
    assert done is not None and done.round == 1  # the claim was not disturbed


# --------------------------------------------------------------------------- refusals


async def test_a_round_the_run_never_reached_is_refused(store: RunStore) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    _refused(await _fork(store, parent, 3), RefusalReason.NO_ROUND)
    plain = await store.insert_paused(_new(review=False))
    _refused(await _fork(store, plain.interaction_id, 1), RefusalReason.NO_ROUND)
    at_question = await store.insert_paused(_new())
    _refused(await _fork(store, at_question.interaction_id, 1), RefusalReason.NO_ROUND)


async def test_an_unknown_or_purged_parent_is_not_found_and_its_forks_say_so(
    store: RunStore, backend: Backend
) -> None:
    _refused(await _fork(store, uuid.uuid4().hex), RefusalReason.NOT_FOUND)
    parent, _, _ = await _to_round_2_then_done(store)
    fork = await _fork(store, parent, 1)
    assert isinstance(fork, Run)
    age(backend.rows, parent, timedelta(days=40))
    assert await store.purge(timedelta(days=30), {RunStatus.COMPLETED}) == 1
    assert backend.rows.pauses(parent) == []  # the kept snapshots went with their run
    _refused(await _fork(store, parent, 1), RefusalReason.NOT_FOUND)
    family = await store.family(fork.interaction_id)
    assert family is not None and family.parent_gone == parent
    assert [m.interaction_id for m in family.members] == [fork.interaction_id]
    assert await store.get(fork.interaction_id) == fork  # intact
    assert len(backend.rows.pauses(fork.interaction_id)) == 1


@pytest.mark.parametrize(
    "column, value",
    [
        ("snapshot", b"code an attacker wrote"),
        ("mac", b"\x00" * 32),
        ("mac", None),
        ("pause_id", "0" * 32),
        ("serialization_version", "1.0 "),
        ("sequence_json", None),
    ],
)
async def test_an_altered_kept_pause_is_refused_as_tampered(
    store: RunStore, backend: Backend, column: str, value: object
) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    backend.rows.set_pause(parent, 1, **{column: value})
    refused = _refused(await _fork(store, parent, 1), RefusalReason.TAMPERED)
    assert refused.problem is not None and "round 1" in refused.problem
    assert await store.family(parent) is not None
    assert len((await store.family(parent)).members) == 1  # type: ignore[union-attr]


async def test_kept_snapshots_moved_between_rounds_or_runs_are_refused(
    store: RunStore, backend: Backend
) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    other, _, _ = await _to_round_2_then_done(store)
    round_1 = backend.rows.pauses(parent)[1]
    theirs = backend.rows.pauses(other)[1]
    # Round 1's bytes and MAC put at round 2 of the same run:
    moved = {k: round_1[k] for k in ("pause_id", "sequence_json", "mac", "snapshot")}
    backend.rows.set_pause(parent, 2, **moved)
    _refused(await _fork(store, parent, 2), RefusalReason.TAMPERED)
    # Another run's round 1, MAC and all, in place of this run's:
    swapped = {k: theirs[k] for k in ("pause_id", "sequence_json", "mac", "snapshot")}
    backend.rows.set_pause(parent, 1, **swapped)
    _refused(await _fork(store, parent, 1), RefusalReason.TAMPERED)


async def test_a_tampered_parent_row_is_refused_before_its_snapshot_is_looked_at(
    store: RunStore, backend: Backend
) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    backend.rows.set(
        parent, brief_json=BRIEF.model_copy(update={"sender": "Mallory"}).model_dump_json()
    )
    _refused(await _fork(store, parent), RefusalReason.TAMPERED)


async def test_a_pause_not_kept_is_refused_but_the_current_one_forks_from_the_run(
    store: RunStore, backend: Backend
) -> None:
    """A run stored before kept pauses existed: only the pause it waits at can be forked."""
    run = await store.insert_paused(_new())
    first = _review(1)
    await store.complete(await _claim(store, run.interaction_id), first)
    backend.rows.delete_pauses(run.interaction_id)
    refused = _refused(await _fork(store, run.interaction_id, 0), RefusalReason.NOT_KEPT)
    assert refused.problem is None
    fork = await _fork(store, run.interaction_id, 1)
    assert isinstance(fork, Run) and fork.sequence == first.sequence
    claim = await _claim(store, fork.interaction_id, Action("revise", text="x", round=1))
    assert (claim.snapshot, claim.pause_id) == (first.snapshot, first.pause_id)
    # ...and its snapshot is checked with the run's own signature.
    backend.rows.set(run.interaction_id, snapshot=b"not the one signed")
    _refused(await _fork(store, run.interaction_id, 1), RefusalReason.TAMPERED)


async def test_an_altered_fork_link_is_shown_as_altered_never_trusted(
    store: RunStore, backend: Backend
) -> None:
    parent, _, _ = await _to_round_2_then_done(store)
    fork = await _fork(store, parent, 1, text="formal")
    other = await store.insert_paused(_new())
    assert isinstance(fork, Run)
    text = backend.rows.row(fork.interaction_id)["fork_json"]
    backend.rows.set(fork.interaction_id, fork_json=text.replace("formal", "casual"))
    family = await store.family(parent)
    assert family is not None
    member = family.member(fork.interaction_id)
    assert member is not None and member.altered and member.link is None
    # A run made to claim a parent it was not forked from, with a copied link and MAC:
    backend.rows.set(
        other.interaction_id,
        parent_id=parent,
        fork_json=text,
        fork_mac=backend.rows.row(fork.interaction_id)["fork_mac"],
    )
    family = await store.family(parent)
    assert family is not None
    stray = family.member(other.interaction_id)
    assert stray is not None and stray.altered
    assert other.interaction_id not in await _variants_of(store, parent)


async def _variants_of(store: RunStore, interaction_id: str) -> list[str]:
    family = await store.family(interaction_id)
    assert family is not None
    return [m.interaction_id for m in family.members if m.link is not None and not m.altered]


# --------------------------------------------------------------------------- migration, cost


async def test_a_database_of_schema_6_migrates_and_its_runs_fork_from_their_current_pause(
    db_path: Path,
) -> None:
    store = await SqliteRunStore.connect(db_path)
    try:
        waiting = await store.insert_paused(_new())
        moved_on = await store.insert_paused(_new())
        first = _review(1)
        await store.complete(await _claim(store, moved_on.interaction_id), first)
    finally:
        await store.close()
    rows = SqliteRows(db_path)
    for statement in (
        # Schema 8 (issue 23's batches) came after 7: back to 6 means without it too.
        "DROP TABLE batch_leads",
        "DROP TABLE batches",
        "DELETE FROM coldmail_schema WHERE version = 8",
        "DROP TABLE pauses",
        "DROP INDEX runs_by_parent",
        "ALTER TABLE runs DROP COLUMN parent_id",
        "ALTER TABLE runs DROP COLUMN fork_json",
        "ALTER TABLE runs DROP COLUMN fork_mac",
        "DELETE FROM coldmail_schema WHERE version = 7",
    ):
        rows.execute(statement)
    assert rows.schema_versions()[-1] == 6
    store = await SqliteRunStore.connect(db_path)
    try:
        assert 7 in rows.schema_versions()
        assert isinstance(await _fork(store, waiting.interaction_id), Run)
        assert isinstance(await _fork(store, moved_on.interaction_id, 1), Run)
        _refused(await _fork(store, moved_on.interaction_id, 0), RefusalReason.NOT_KEPT)
    finally:
        await store.close()


async def test_a_pause_costs_one_statement_more_and_an_outcome_none(db_path: Path) -> None:
    """Issue 20's budget: the kept snapshot is one INSERT in the pause's own transaction."""
    store = await SqliteRunStore.connect(db_path)
    statements: list[str] = []
    try:
        await store._conn.set_trace_callback(statements.append)  # observing, not changing
        run = await store.insert_paused(_new())
        assert sum("INTO pauses" in s for s in statements) == 1
        claim = await _claim(store, run.interaction_id)
        statements.clear()
        await store.complete(claim, _review(1))
        assert sum("INTO pauses" in s for s in statements) == 1
        claim = await _claim(store, run.interaction_id, Action("approve", round=1))
        statements.clear()
        await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("final")))
        assert sum("pauses" in s for s in statements) == 0
        statements.clear()
        assert isinstance(await _fork(store, run.interaction_id, 1), Run)
        writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
        assert len(writes) == 3, writes  # the run, its event, its kept pause
    finally:
        await store.close()
