"""History (every feedback with the moment it arrived) and retention (purge)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, LlmError, RunStatus
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import Completed
from ..rows import SqliteRows, age

Cli = Callable[..., Completed]


async def test_history_records_each_feedback_when_it_arrived(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    before = datetime.now(timezone.utc)
    async with ColdMailAgent.open(db_path, retry=NO_RETRY) as agent:
        pending = await agent.start(brief)
        server.enqueue(Reply(kind="refine", status=400, content="invalid request"))
        with pytest.raises(LlmError):
            await agent.resume(pending.interaction_id, "Nurses")
        await agent.resume(pending.interaction_id, "CTOs")
        history = await agent.history(pending.interaction_id)
    after = datetime.now(timezone.utc)

    assert [(e.kind, e.detail) for e in history] == [
        ("paused", None),
        ("feedback", "Nurses"),
        ("failed", history[2].detail),
        ("feedback", "CTOs"),
        ("completed", "CTOs"),
    ]
    assert "refinement LLM call failed" in str(history[2].detail)
    moments = [e.at for e in history]
    assert moments == sorted(moments)
    assert all(before <= m <= after for m in moments)  # real moments, not import time


def test_show_prints_the_history(server: ScriptedOpenAIServer, db_path: Path, cli: Cli) -> None:
    started = cli("start", "--product", "A", "--offer", "B", "--sender", "C", "--json")
    interaction_id = json.loads(started.stdout)["interaction_id"]
    assert cli("resume", interaction_id, "--feedback", "CTOs").returncode == 0
    text = cli("show", interaction_id).stdout
    history = text[text.index("HISTORY") :].splitlines()
    assert [line.split("UTC  ")[1] for line in history[1:]] == [
        "paused for feedback",
        "feedback received: CTOs",
        "completed",
    ]


def _age(db_path: Path, interaction_id: str, days: int) -> None:
    age(SqliteRows(db_path), interaction_id, timedelta(days=days))


async def test_purge_deletes_old_completed_runs_and_never_awaiting_ones_unasked(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        old_done = (await agent.start(brief)).interaction_id
        await agent.resume(old_done, "CTOs")
        new_done = (await agent.start(brief)).interaction_id
        await agent.resume(new_done, "CTOs")
        old_waiting = (await agent.start(brief)).interaction_id
        _age(db_path, old_done, 40)
        _age(db_path, old_waiting, 40)

        assert await agent.purge(timedelta(days=30)) == 1
        remaining = {r.interaction_id for r in await agent.list()}
        assert remaining == {new_done, old_waiting}
        assert SqliteRows(db_path).events(old_done) == []  # no orphaned history

        assert await agent.purge(timedelta(days=30), [RunStatus.AWAITING_FEEDBACK]) == 1
        assert {r.interaction_id for r in await agent.list()} == {new_done}
        with pytest.raises(InvalidInput, match="unknown status 'done'"):
            await agent.purge(timedelta(days=1), ["done"])


def test_purge_on_the_command_line(server: ScriptedOpenAIServer, db_path: Path, cli: Cli) -> None:
    started = cli("start", "--product", "A", "--offer", "B", "--sender", "C", "--json")
    interaction_id = json.loads(started.stdout)["interaction_id"]
    _age(db_path, interaction_id, 60)
    kept = cli("purge", "--older-than", "30d")
    assert kept.returncode == 0
    assert kept.stdout.strip() == f"Deleted 0 run(s) (completed) from {db_path}."
    result = cli("purge", "--older-than", "30d", "--status", "awaiting_feedback", "--json")
    assert json.loads(result.stdout) == {"deleted": 1, "statuses": ["awaiting_feedback"]}
    bad = cli("purge", "--older-than", "a month")
    assert bad.returncode == 2 and "is not an age; use e.g. 30d" in bad.stderr
