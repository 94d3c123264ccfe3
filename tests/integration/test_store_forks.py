"""Kept pauses and forks, on every store backend (SQLite and PostgreSQL).

The store keeps every pause's signed snapshot, each once (the current one in the run's row,
the earlier ones moved to ``pauses`` by the complete that replaced them), and forks a new
run from any of them; these tests reach below the store only through ``tests/rows.py``, as a
database writer without the key would: editing bytes and MACs, moving kept snapshots between
runs and rounds, deleting them, purging parents.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, Decision, EmailSequence, RunStatus, make_decision
from bridgic_coldmail.models import Run
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
from bridgic_coldmail.store.forks import PAUSE_COLUMNS, ForkLink, kept_pause
from bridgic_coldmail.store.sqlite import SqliteRunStore

from ..conftest import Backend
from ..rows import SqliteRows, age

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


async def _claim(store: RunStore, interaction_id: str, action: Decision = FEEDBACK) -> Claim:
    outcome = await store.claim(interaction_id, action, VERSIONS)
    assert isinstance(outcome, Claim), outcome
    return outcome


async def _to_round_2_then_done(store: RunStore) -> tuple[str, Paused, Paused]:
    """A run paused at the question, at round 1, at round 2, then approved."""
    run = await store.insert_paused(_new())
    first, second = _review(1), _review(2)
    await store.complete(await _claim(store, run.interaction_id), first)
    revise = make_decision("revise", text="shorter", round=1)
    await store.complete(await _claim(store, run.interaction_id, revise), second)
    approve = make_decision("approve", round=2)
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


def _kept(backend: Backend, interaction_id: str) -> list[tuple[int, bytes, str]]:
    return [
        (p["round"], bytes(p["snapshot"]), p["pause_id"])
        for p in backend.rows.pauses(interaction_id)
    ]


def _own(backend: Backend, interaction_id: str) -> bytes | None:
    stored = backend.rows.row(interaction_id)["snapshot"]  # type: ignore[index]
    return None if stored is None else bytes(stored)


async def test_every_pause_keeps_its_snapshot_once_and_an_outcome_keeps_none(
    store: RunStore, backend: Backend
) -> None:
    """The pause a run waits at is its own snapshot; the complete that replaces or clears
    it moves it to the kept pauses: at no time is one snapshot stored twice (issue 20)."""
    new = _new()
    await store.insert_paused(new)
    interaction_id = new.interaction_id
    assert (_kept(backend, interaction_id), _own(backend, interaction_id)) == ([], new.snapshot)
    first = _review(1)
    await store.complete(await _claim(store, interaction_id), first)
    assert _kept(backend, interaction_id) == [(0, new.snapshot, interaction_id)]
    assert _own(backend, interaction_id) == first.snapshot
    approve = make_decision("approve", round=1)
    await store.complete(
        await _claim(store, interaction_id, approve), Finished(RunStatus.COMPLETED, first.sequence)
    )
    assert _kept(backend, interaction_id) == [
        (0, new.snapshot, interaction_id),
        (1, first.snapshot, first.pause_id),
    ]
    assert all(p["mac"] is not None for p in backend.rows.pauses(interaction_id))
    assert _own(backend, interaction_id) is None  # the run's own: moved, not copied


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
    claim = await _claim(
        store, fork.interaction_id, make_decision("feedback", text="CFOs at banks")
    )
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
    claim = await _claim(
        store, fork.interaction_id, make_decision("revise", text="funnier", round=2)
    )
    assert (claim.pause_id, claim.snapshot) == (second.pause_id, second.snapshot)
    # Round 1's decision came with it: repeating it is the stored result, not a new revision.
    fork_at_1 = await _fork(store, parent, 1, text="formal")
    assert isinstance(fork_at_1, Run) and fork_at_1.round == 1
    claim = await _claim(
        store, fork_at_1.interaction_id, make_decision("revise", text="formal", round=1)
    )
    assert claim.snapshot == first.snapshot


async def test_a_fork_keeps_its_own_first_pause_so_it_can_be_forked_again(
    store: RunStore, backend: Backend
) -> None:
    parent, _, second = await _to_round_2_then_done(store)
    fork = await _fork(store, parent, 2)
    assert isinstance(fork, Run)
    again = await _fork(store, fork.interaction_id, 2)
    assert isinstance(again, Run)
    claim = await _claim(store, again.interaction_id, make_decision("revise", text="x", round=2))
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
    assert _kept(backend, fork.interaction_id) == []  # the pause it waits at is its own
    assert _own(backend, fork.interaction_id) is not None


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
    claim = await _claim(store, fork.interaction_id, make_decision("revise", text="x", round=1))
    assert (claim.snapshot, claim.pause_id) == (first.snapshot, first.pause_id)
    # ...and its snapshot is checked with the run's own signature.
    backend.rows.set(run.interaction_id, snapshot=b"not the one signed")
    _refused(await _fork(store, run.interaction_id, 1), RefusalReason.TAMPERED)


async def test_the_pause_a_run_waits_at_is_checked_with_the_runs_own_signature(
    store: RunStore, backend: Backend
) -> None:
    """The current pause is not in ``pauses``: its snapshot is the run's, and another run's
    snapshot put there, with that run's signature, is refused as a resume would refuse it."""
    run = await store.insert_paused(_new())
    other = await store.insert_paused(_new())
    theirs = backend.rows.row(other.interaction_id)
    assert theirs is not None
    backend.rows.set(run.interaction_id, snapshot=theirs["snapshot"])
    _refused(await _fork(store, run.interaction_id), RefusalReason.TAMPERED)
    backend.rows.set(run.interaction_id, signature=theirs["signature"])
    _refused(await _fork(store, run.interaction_id), RefusalReason.TAMPERED)


async def test_a_snapshot_altered_during_its_resume_is_kept_only_as_altered(
    store: RunStore, backend: Backend
) -> None:
    """The complete copies the replaced snapshot inside the database, under a MAC of the
    bytes its claim verified: bytes a keyless writer put in the row meanwhile are kept,
    but never pass for the pause's own."""
    run = await store.insert_paused(_new())
    claim = await _claim(store, run.interaction_id)
    backend.rows.set(run.interaction_id, snapshot=b"code an attacker wrote")
    first = _review(1)
    assert await store.complete(claim, first) is not None
    assert _kept(backend, run.interaction_id) == [
        (0, b"code an attacker wrote", run.interaction_id)
    ]
    refused = _refused(await _fork(store, run.interaction_id, 0), RefusalReason.TAMPERED)
    assert refused.problem is not None and "round 0" in refused.problem
    assert isinstance(await _fork(store, run.interaction_id, 1), Run)  # its new pause: intact


async def test_a_database_that_kept_the_current_pause_twice_forks_and_migrates_to_once(
    store: RunStore, backend: Backend
) -> None:
    """Stores written before issue 20 kept the pause a run waits at in ``pauses`` too: such
    a copy is still read (and checked), and the migration drops it, keeping every other."""
    new = _new()
    waiting = await store.insert_paused(new)
    at_question = _new()
    moved_on = await store.insert_paused(at_question)
    first = _review(1)
    await store.complete(await _claim(store, moved_on.interaction_id), first)
    signer = backend.signer()
    now = datetime.now(timezone.utc)
    sequence_json = backend.rows.row(moved_on.interaction_id)["sequence_json"]  # type: ignore[index]
    for interaction_id, round, pause_id, snapshot, sequence in (
        (waiting.interaction_id, 0, waiting.interaction_id, new.snapshot, None),
        (moved_on.interaction_id, 1, first.pause_id, first.snapshot, sequence_json),
    ):
        copy = kept_pause(
            signer,
            interaction_id,
            round,
            pause_id=pause_id,
            serialization_version="1.0",
            snapshot=snapshot,
            sequence_json=sequence,
            now=now,
        )
        backend.rows.execute(
            f"INSERT INTO pauses ({', '.join(PAUSE_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in PAUSE_COLUMNS)})",
            *(copy[c] for c in PAUSE_COLUMNS),
        )
    assert len(backend.rows.pauses(moved_on.interaction_id)) == 2
    assert isinstance(await _fork(store, waiting.interaction_id), Run)
    assert isinstance(await _fork(store, moved_on.interaction_id, 1), Run)
    version = {"sqlite": 9, "postgres": 5}[backend.name]
    backend.rows.execute("DELETE FROM coldmail_schema WHERE version = ?", version)
    again = await connect_store(backend.settings(busy_timeout=1, lease_seconds=30))
    try:
        assert version in backend.rows.schema_versions()
        assert _kept(backend, waiting.interaction_id) == []
        assert _kept(backend, moved_on.interaction_id) == [
            (0, at_question.snapshot, moved_on.interaction_id)
        ]
        for parent, round in ((waiting, 0), (moved_on, 0), (moved_on, 1)):
            assert isinstance(await _fork(again, parent.interaction_id, round), Run)
    finally:
        await again.close()


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
        "DELETE FROM coldmail_schema WHERE version = 9",
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


async def test_a_complete_costs_one_statement_more_and_a_start_or_fork_none(
    db_path: Path,
) -> None:
    """Issue 20's budget: keeping the snapshot a complete replaces is one ``INSERT …
    SELECT`` in the complete's own transaction (its bytes copied inside the database)."""
    store = await SqliteRunStore.connect(db_path)
    statements: list[str] = []
    try:
        await store._conn.set_trace_callback(statements.append)  # observing, not changing
        run = await store.insert_paused(_new())
        assert sum("pauses" in s for s in statements) == 0
        claim = await _claim(store, run.interaction_id)
        statements.clear()
        await store.complete(claim, _review(1))
        moved = [s for s in statements if "INTO pauses" in s]
        assert len(moved) == 1 and "SELECT" in moved[0] and "FROM runs" in moved[0], moved
        claim = await _claim(store, run.interaction_id, make_decision("approve", round=1))
        statements.clear()
        await store.complete(claim, Finished(RunStatus.COMPLETED, _sequence("final")))
        assert sum("INTO pauses" in s for s in statements) == 1
        statements.clear()
        assert isinstance(await _fork(store, run.interaction_id, 1), Run)
        writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
        assert len(writes) == 2, writes  # the run (its snapshot in it) and its event
    finally:
        await store.close()
