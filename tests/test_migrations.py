"""Old databases keep working: numbered migrations, runs paused by earlier releases resume."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus, SnapshotError
from bridgic_coldmail.automa import ColdMailAutoma
from bridgic_coldmail.llm import llm_from_env
from bridgic_coldmail.migrations import SCHEMA_VERSION, V1_SCHEMA
from bridgic_coldmail.signing import key_file_for, load_signer
from bridgic_coldmail.testing import ScriptedOpenAIServer

from .conftest import REPO

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
        runs = {run.status: run for run in await agent.list()}
        paused, completed = runs[RunStatus.AWAITING_FEEDBACK], runs[RunStatus.COMPLETED]
        done = await agent.resume(paused.interaction_id, FEEDBACK)
        assert done.status is RunStatus.COMPLETED and done.final is not None
        assert await agent.resume(completed.interaction_id, str(completed.feedback)) == completed
    assert server.count("draft") == 0 and server.count("refine") == 1


async def _snapshot_from_the_automa(brief: Brief) -> tuple[str, bytes, str]:
    from bridgic.core.automa.interaction import InteractionException

    automa = ColdMailAutoma()
    automa.attach_llm(llm_from_env(10), "gpt-4o-mini", 10)
    with pytest.raises(InteractionException) as paused:
        await automa.arun(brief=brief.model_dump(mode="json"))
    pause = paused.value
    return (
        pause.interactions[0].interaction_id,
        pause.snapshot.serialized_bytes,
        pause.snapshot.serialization_version,
    )


def _make_schema_1_database(db_path: Path, runs: list[tuple[str, bytes, str, Brief]]) -> None:
    """A database exactly as bridgic-coldmail 0.1 wrote it: schema 1, unsigned snapshots."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE coldmail_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL)"
        )
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO coldmail_schema VALUES (1, 'runs table', '2026-11-01T00:00:00')")
        for interaction_id, snapshot, version, brief in runs:
            draft = (
                '{"opener":{"subject":"s","body":"b","wait_days":0},'
                '"follow_up":{"subject":"s2","body":"b2","wait_days":3}}'
            )
            conn.execute(
                "INSERT INTO runs (interaction_id, status, brief_json, draft_json, question, "
                "snapshot, serialization_version, created_at, updated_at) "
                "VALUES (?, 'awaiting_feedback', ?, ?, 'Who?', ?, ?, ?, ?)",
                (
                    interaction_id,
                    brief.model_dump_json(),
                    draft,
                    snapshot,
                    version,
                    "2026-11-01T00:00:00.000000+00:00",
                    "2026-11-01T00:00:00.000000+00:00",
                ),
            )


async def test_a_schema_1_database_is_migrated_and_its_runs_resume(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id, snapshot, version = await _snapshot_from_the_automa(brief)
    _make_schema_1_database(db_path, [(interaction_id, snapshot, version, brief)])
    assert not key_file_for(db_path).exists()

    async with ColdMailAgent.open(db_path) as agent:
        history = await agent.history(interaction_id)
        done = await agent.resume(interaction_id, FEEDBACK)
    assert [e.kind for e in history] == ["paused"]
    assert done.status is RunStatus.COMPLETED
    with sqlite3.connect(db_path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM coldmail_schema ORDER BY 1")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert key_file_for(db_path).exists()
    assert server.count("draft") == 1 and server.count("refine") == 1  # the draft ran pre-upgrade


async def test_concurrent_openers_migrate_once(db_path: Path, brief: Brief) -> None:
    _make_schema_1_database(db_path, [])

    async def open_once() -> None:
        async with ColdMailAgent.open(db_path):
            pass

    await asyncio.gather(*(open_once() for _ in range(5)))
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM coldmail_schema").fetchone()[0] == SCHEMA_VERSION


async def test_a_snapshot_of_a_moved_class_fails_saying_why_and_stays_resumable(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
    with sqlite3.connect(db_path) as conn:
        (snapshot, version) = conn.execute(
            "SELECT snapshot, serialization_version FROM runs"
        ).fetchone()
        # As if a later release had moved the automa: same length keeps msgpack valid.
        moved = snapshot.replace(b"bridgic_coldmail.automa.", b"bridgic_coldmail.atoma_.")
        signer = load_signer(db_path, may_create=False)
        conn.execute(
            "UPDATE runs SET snapshot = ?, signature = ?",
            (moved, signer.sign(pending.interaction_id, version, moved)),
        )
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotError, match=r"cannot be loaded \(ImportError: Class not found"):
            await agent.resume(pending.interaction_id, FEEDBACK)
        run = await agent.get(pending.interaction_id)
    assert run.status is RunStatus.AWAITING_FEEDBACK
    assert "ImportError" in str(run.last_error)
    assert server.count("refine") == 0
