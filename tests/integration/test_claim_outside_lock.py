"""An SQLite claim decides on a committed read without holding the write lock, then writes
only if the row and the schema are still what it read (``sqlite._update_if_unchanged``):
whatever changes in between, the claim is decided again, never granted twice."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from bridgic_coldmail import Brief, EmailSequence, make_decision
from bridgic_coldmail.errors import StoreError
from bridgic_coldmail.store import Claim, NewRun, Refusal, RefusalReason
from bridgic_coldmail.store import sqlite as sqlite_store
from bridgic_coldmail.store.sqlite import SqliteRunStore

VERSIONS = {"1.0"}
SEQUENCE = EmailSequence.model_validate(
    {
        "opener": {"subject": "Hello", "body": "Hi,\n\nbody\n\nDana", "wait_days": 0},
        "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 3},
    }
)


def _new() -> NewRun:
    return NewRun(
        interaction_id=uuid.uuid4().hex,
        brief=Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee"),
        draft=SEQUENCE,
        question="Who is this for?",
        snapshot=b"snapshot " + uuid.uuid4().bytes,
        serialization_version="1.0",
    )


def _meanwhile(monkeypatch: pytest.MonkeyPatch, act: Any) -> list[Any]:
    """Run ``act`` (in a thread of its own, to its end) right after the claim's first
    decision and before its write: the moment another process could step in."""
    judge = sqlite_store.judge_claim
    outcomes: list[Any] = []
    started = threading.Event()

    def judge_then_interleave(*args: Any, **kwargs: Any) -> Any:
        verdict = judge(*args, **kwargs)
        if not started.is_set():  # once: the step taken meanwhile decides unhindered
            started.set()
            thread = threading.Thread(target=lambda: outcomes.append(act()))
            thread.start()
            thread.join(timeout=60)
            assert outcomes, "the step taken meanwhile did not finish"
        return verdict

    monkeypatch.setattr(sqlite_store, "judge_claim", judge_then_interleave)
    return outcomes


async def test_a_claim_taken_meanwhile_by_another_process_is_not_granted_twice(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SqliteRunStore.connect(db_path, busy_timeout=1, lease_seconds=30)
    try:
        paused = await store.insert_paused(_new())

        async def other_claims() -> Any:
            other = await SqliteRunStore.connect(db_path, busy_timeout=1, lease_seconds=30)
            try:
                return await other.claim(
                    paused.interaction_id, make_decision("feedback", text="B"), VERSIONS
                )
            finally:
                await other.close()

        meanwhile = _meanwhile(monkeypatch, lambda: asyncio.run(other_claims()))
        mine = await store.claim(
            paused.interaction_id, make_decision("feedback", text="A"), VERSIONS
        )
    finally:
        await store.close()
    (theirs,) = meanwhile
    assert isinstance(theirs, Claim)  # it did not wait for this claim's decision
    assert isinstance(mine, Refusal) and mine.reason is RefusalReason.HELD
    rows = sqlite3.connect(db_path)
    token, feedback, events = rows.execute(
        "SELECT claim_token, feedback, event_count FROM runs WHERE interaction_id = ?",
        (paused.interaction_id,),
    ).fetchone()
    rows.close()
    assert (token, feedback, events) == (theirs.token, "B", 2)


async def test_a_row_altered_meanwhile_is_refused_not_overwritten(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone without the key rewrites the feedback between the read and the write: the
    claim does not sign the altered row, it reads it again and refuses it as tampered."""
    store = await SqliteRunStore.connect(db_path, busy_timeout=1, lease_seconds=30)
    try:
        paused = await store.insert_paused(_new())

        def alter() -> None:
            rows = sqlite3.connect(db_path, isolation_level=None)
            rows.execute(
                "UPDATE runs SET question = 'altered' WHERE interaction_id = ?",
                (paused.interaction_id,),
            )
            rows.close()

        _meanwhile(monkeypatch, alter)
        outcome = await store.claim(
            paused.interaction_id, make_decision("feedback", text="A"), VERSIONS
        )
    finally:
        await store.close()
    assert isinstance(outcome, Refusal) and outcome.reason is RefusalReason.TAMPERED


async def test_a_trigger_planted_meanwhile_is_found_before_anything_is_written(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SqliteRunStore.connect(db_path, busy_timeout=1, lease_seconds=30)
    try:
        paused = await store.insert_paused(_new())

        def plant() -> None:
            rows = sqlite3.connect(db_path, isolation_level=None)
            rows.execute(
                "CREATE TRIGGER undo AFTER UPDATE ON runs BEGIN "
                "UPDATE runs SET status = 'awaiting_feedback'; END"
            )
            rows.close()

        _meanwhile(monkeypatch, plant)
        with pytest.raises(StoreError, match="schema objects bridgic-coldmail did not create"):
            await store.claim(paused.interaction_id, make_decision("feedback", text="A"), VERSIONS)
    finally:
        await store.close()
    rows = sqlite3.connect(db_path)
    status, events = rows.execute(
        "SELECT status, event_count FROM runs WHERE interaction_id = ?",
        (paused.interaction_id,),
    ).fetchone()
    rows.close()
    assert (status, events) == ("awaiting_feedback", 1)
