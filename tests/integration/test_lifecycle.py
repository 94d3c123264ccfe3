"""Lifecycle rules: not found, idempotent and conflicting resumes, failures that lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    ConfigurationError,
    InvalidInput,
    LlmError,
    RunConflict,
    RunNotFound,
    RunStatus,
    SnapshotError,
)
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..rows import SqliteRows, signer_for, write_as_owner

FEEDBACK = "CTOs at mid-size hospitals"


def _row(db_path: Path, interaction_id: str) -> dict[str, object]:
    row = SqliteRows(db_path).row(interaction_id)
    assert row is not None
    return row


async def test_unknown_interaction_id_is_not_found(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, db_path: Path
) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    with pytest.raises(RunNotFound, match=f"no run with interaction id {unknown} in {db_path}"):
        await agent.resume(unknown, FEEDBACK)
    with pytest.raises(RunNotFound):
        await agent.get(unknown)
    assert isinstance(RunNotFound(unknown, "x"), KeyError)
    assert server.count() == 0


async def test_completed_run_with_same_feedback_returns_stored_result_without_llm(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    pending = await agent.start(brief)
    done = await agent.resume(pending.interaction_id, FEEDBACK)
    again = await agent.resume(pending.interaction_id, f"  {FEEDBACK}\n")
    assert again == done
    assert server.count("refine") == 1


async def test_completed_run_needs_no_llm_settings_to_return_its_result(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
        done = await agent.resume(pending.interaction_id, FEEDBACK)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_API_BASE")
    monkeypatch.setenv("COLDMAIL_LLM", "openai")  # so the local model is not chosen instead
    async with ColdMailAgent.open(db_path) as agent:
        assert await agent.resume(pending.interaction_id, FEEDBACK) == done
        assert len(await agent.list(status="completed")) == 1  # listing needs no LLM either


async def test_completed_run_with_different_feedback_is_a_conflict(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    pending = await agent.start(brief)
    await agent.resume(pending.interaction_id, FEEDBACK)
    before = _row(db_path, pending.interaction_id)
    with pytest.raises(RunConflict, match="already took different feedback"):
        await agent.resume(pending.interaction_id, "Nurses")
    assert _row(db_path, pending.interaction_id) == before
    assert server.count("refine") == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(kind="refine", status=400, content="invalid request"), "refinement LLM call failed"),
        (Reply(kind="refine", content='{"opener": {"subject": "Hi"}}'), "did not validate"),
        (Reply(kind="refine", content="Sure! Here is your email: ..."), "Invalid JSON"),
        (
            Reply(
                kind="refine",
                content='{"opener": {"subject": "a", "body": "b"},'
                ' "follow_up": {"subject": "c", "body": "d", "wait_days": 0}}',
            ),
            "follow_up.wait_days: Input should be greater than or equal to 1",
        ),
        (Reply(kind="refine", delay=2.0), "did not answer the refinement request within 0.5 s"),
    ],
    ids=["http-error", "missing-fields", "not-json", "bad-days", "timeout"],
)
async def test_failed_refine_loses_nothing_and_a_later_resume_succeeds(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, reply: Reply, expected: str
) -> None:
    async with ColdMailAgent.open(db_path, llm_timeout=0.5, retry=NO_RETRY) as agent:
        pending = await agent.start(brief)
        before = _row(db_path, pending.interaction_id)
        server.enqueue(reply)
        with pytest.raises(LlmError, match=expected):
            await agent.resume(pending.interaction_id, FEEDBACK)

        after = _row(db_path, pending.interaction_id)
        assert after["status"] == "awaiting_feedback"
        assert expected in str(after["last_error"])
        assert after["feedback"] == FEEDBACK  # the feedback given is kept
        assert after["snapshot"] == before["snapshot"]
        assert after["claim_token"] is None
        run = await agent.get(pending.interaction_id)
        assert run.last_error == after["last_error"]

    async with ColdMailAgent.open(db_path, llm_timeout=5) as agent:
        done = await agent.resume(pending.interaction_id, "Nurses who run night shifts")
    assert done.status is RunStatus.COMPLETED
    assert done.last_error is None
    assert done.final is not None and "Nurses who run night shifts" in done.final.opener.subject
    assert server.count("draft") == 1


@pytest.mark.parametrize("feedback", ["", "   \n\t", "x" * 2001])
async def test_bad_feedback_is_refused_before_anything_changes(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, db_path: Path, brief: Brief, feedback: str
) -> None:
    pending = await agent.start(brief)
    before = _row(db_path, pending.interaction_id)
    with pytest.raises(InvalidInput, match="feedback"):
        await agent.resume(pending.interaction_id, feedback)
    assert _row(db_path, pending.interaction_id) == before
    assert server.count("refine") == 0


async def test_draft_failure_stores_nothing(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    server.enqueue(Reply(kind="draft", status=400, content="bad request"))
    with pytest.raises(LlmError, match="the draft LLM call failed"):
        await agent.start(brief)
    assert await agent.list() == []


async def test_missing_llm_settings_are_reported_before_the_run_is_touched(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
    before = _row(db_path, pending.interaction_id)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_API_BASE")
    monkeypatch.setenv("COLDMAIL_LLM", "openai")
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(ConfigurationError, match="set OPENAI_API_KEY"):
            await agent.resume(pending.interaction_id, FEEDBACK)
        with pytest.raises(ConfigurationError, match="OPENAI_API_BASE"):
            await agent.start(brief)
    assert _row(db_path, pending.interaction_id) == before


async def test_an_object_that_is_not_a_bridgic_llm_is_refused(db_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="BaseLlm and implements StructuredOutput"):
        async with ColdMailAgent.open(db_path, llm=object()):  # type: ignore[arg-type]
            pass


async def test_unknown_serialization_version_is_refused_naming_both(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    pending = await agent.start(brief)
    # As a newer release (holding the key) would have stored it.
    rows = SqliteRows(db_path)
    write_as_owner(rows, signer_for(db_path), pending.interaction_id, serialization_version="9.9")
    before = _row(db_path, pending.interaction_id)
    with pytest.raises(SnapshotError, match=r"format '9\.9', but this release reads only 1\.0"):
        await agent.resume(pending.interaction_id, FEEDBACK)
    assert _row(db_path, pending.interaction_id) == before  # refused before anything changed
    assert server.count("refine") == 0


async def test_api_key_never_reaches_the_database(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = "sk-SENTINEL-7f3a9c-never-store-me"
    monkeypatch.setenv("OPENAI_API_KEY", sentinel)
    files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]

    def leaked() -> list[str]:
        return [p.name for p in files if p.exists() and sentinel.encode() in p.read_bytes()]

    async with ColdMailAgent.open(db_path) as agent:
        first = await agent.start(brief)
        second = await agent.start(brief)
        server.enqueue(Reply(kind="refine", status=400, content="fail once"))
        with pytest.raises(LlmError):
            await agent.resume(first.interaction_id, FEEDBACK)
        await agent.resume(first.interaction_id, FEEDBACK)
        assert Path(f"{db_path}-wal").exists()
        assert leaked() == []  # while open: the WAL holds every recent write
    assert leaked() == []
    assert second.status is RunStatus.AWAITING_FEEDBACK
    # The key was really in use: the server saw it.
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {sentinel}"}
