"""Old databases keep working: numbered migrations, runs paused by earlier releases resume."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus, SnapshotError
from bridgic_coldmail.errors import SnapshotIntegrityError
from bridgic_coldmail.models import Run
from bridgic_coldmail.signing import key_file_for
from bridgic_coldmail.store.sqlite_sql import MIGRATIONS
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import REPO
from ..rows import SqliteRows, signer_for, write_as_owner
from .test_integrity import _schema_1_database

FEEDBACK = "CTOs at mid-size hospitals"
FIXTURES = sorted((REPO / "tests" / "data").glob("paused-by-*.db"))


def test_there_is_a_fixture_for_the_current_release() -> None:
    from bridgic_coldmail import __version__

    assert REPO / "tests" / "data" / f"paused-by-{__version__}.db" in FIXTURES


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
async def test_runs_paused_by_an_earlier_release_resume(
    fixture: Path, server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    db_path = tmp_path / fixture.name
    shutil.copy(fixture, db_path)
    shutil.copy(key_file_for(fixture), key_file_for(db_path))
    os.chmod(key_file_for(db_path), 0o600)

    async with ColdMailAgent.open(db_path) as agent:
        runs = {run.status: run for run in await agent.list() if isinstance(run, Run)}
        paused, completed = runs[RunStatus.AWAITING_FEEDBACK], runs[RunStatus.COMPLETED]
        done = await agent.resume(paused.interaction_id, FEEDBACK)
        assert done.status is RunStatus.COMPLETED and done.final is not None
        assert await agent.resume(completed.interaction_id, str(completed.feedback)) == completed
        reviewing = runs.get(RunStatus.AWAITING_REVIEW)
        if reviewing is not None:  # fixtures from 0.5 on hold a run paused at review
            approved = await agent.approve(reviewing.interaction_id)
            assert approved.status is RunStatus.COMPLETED
            assert approved.final == reviewing.sequence
    assert server.count("draft") == 0 and server.count("refine") == 1


async def test_a_schema_1_database_is_migrated_and_nothing_in_it_is_signed(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    legacy = "d" * 32
    _schema_1_database(db_path, [(legacy, b"0.1 snapshot bytes")], brief)
    assert not key_file_for(db_path).exists()

    async with ColdMailAgent.open(db_path) as agent:
        history = await agent.history(legacy)
        with pytest.raises(SnapshotIntegrityError, match="has no signature"):
            await agent.resume(legacy, FEEDBACK)
    assert [(e.kind, e.verified) for e in history] == [("paused", False)]
    rows = SqliteRows(db_path)
    assert rows.schema_versions() == [m.version for m in MIGRATIONS]
    assert key_file_for(db_path).exists()
    row = rows.row(legacy)
    assert row is not None and row["signature"] is None and row["row_mac"] is None
    assert server.count() == 0


async def test_concurrent_openers_migrate_once(db_path: Path, brief: Brief) -> None:
    _schema_1_database(db_path, [], brief)

    async def open_once() -> None:
        async with ColdMailAgent.open(db_path):
            pass

    await asyncio.gather(*(open_once() for _ in range(5)))
    assert SqliteRows(db_path).schema_versions() == [m.version for m in MIGRATIONS]


async def test_a_snapshot_of_a_moved_class_fails_saying_why_and_stays_resumable(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
    rows = SqliteRows(db_path)
    row = rows.row(pending.interaction_id)
    assert row is not None
    # As if a later release had moved the automa: same length keeps msgpack valid.
    moved = bytes(row["snapshot"]).replace(b"bridgic_coldmail.automa.", b"bridgic_coldmail.atoma_.")
    write_as_owner(rows, signer_for(db_path), pending.interaction_id, snapshot=moved)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotError, match=r"cannot be loaded \(ImportError: Class not found"):
            await agent.resume(pending.interaction_id, FEEDBACK)
        run = await agent.get(pending.interaction_id)
    assert run.status is RunStatus.AWAITING_FEEDBACK
    assert "ImportError" in str(run.last_error)
    assert server.count("refine") == 0
