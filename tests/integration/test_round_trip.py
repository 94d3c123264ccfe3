"""Start → pause in SQLite → resume with feedback → refined sequence, through the real client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus, SyncColdMailAgent
from bridgic_coldmail.llm.prompts import AUDIENCE_QUESTION
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..rows import SqliteRows

FEEDBACK = "CTOs at mid-size hospitals who own the patient-messaging budget"


async def test_round_trip(agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief) -> None:
    pending = await agent.start(brief)
    assert pending.status is RunStatus.AWAITING_FEEDBACK
    assert len(pending.interaction_id) == 32
    assert pending.question == AUDIENCE_QUESTION
    assert pending.draft.opener.subject == "A faster way with Acme Scheduler"
    assert pending.final is None

    done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED
    assert done.draft == pending.draft
    assert done.feedback == FEEDBACK
    assert done.final is not None
    assert FEEDBACK in done.final.opener.subject
    assert [r.kind for r in server.requests] == ["draft", "refine"]


async def test_resume_in_a_fresh_agent_after_the_first_is_gone(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as first:
        interaction_id = (await first.start(brief)).interaction_id
    async with ColdMailAgent.open(db_path) as second:
        done = await second.resume(interaction_id, FEEDBACK)
    assert done.final is not None
    assert server.count("draft") == 1
    assert server.count("refine") == 1


async def test_refine_prompt_holds_the_brief_the_draft_and_the_feedback_verbatim(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    feedback = '  Heads of IT at 200–800 bed hospitals; they hate "AI" buzzwords.\nNo emojis!  '
    pending = await agent.start(brief)
    await agent.resume(pending.interaction_id, feedback)
    refine = [r for r in server.requests if r.kind == "refine"]
    assert len(refine) == 1
    text = refine[0].user_text
    assert f"<<<\n{feedback.strip()}\n>>>" in text
    assert brief.offer in text and brief.sender in text
    assert pending.draft.opener.subject in text and pending.draft.follow_up.body in text


async def test_llm_is_asked_for_json_schema_structured_output(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    await agent.start(brief)
    body = server.requests[0].body
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "EmailSequenceAnswer"
    assert set(response_format["json_schema"]["schema"]["properties"]) == {"opener", "follow_up"}
    assert body["model"] == "gpt-4o-mini"


async def test_model_name_comes_from_the_environment(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_MODEL_NAME", "llama3.1:8b")
    async with ColdMailAgent.open(db_path) as agent:
        await agent.start(brief)
    assert server.requests[0].body["model"] == "llama3.1:8b"


async def test_the_row_holds_snapshot_version_status_json_and_timestamps(
    agent: ColdMailAgent, db_path: Path, brief: Brief
) -> None:
    pending = await agent.start(brief)
    rows = SqliteRows(db_path)
    row = rows.row(pending.interaction_id)
    assert row is not None
    assert row["status"] == "awaiting_feedback"
    assert row["serialization_version"] == "1.0"
    assert len(row["snapshot"]) > 500
    assert json.loads(row["brief_json"])["product"] == "Acme Scheduler"
    assert json.loads(row["draft_json"]) == pending.draft.model_dump(mode="json")
    assert row["created_at"] == row["updated_at"]

    await agent.resume(pending.interaction_id, FEEDBACK)
    row = rows.row(pending.interaction_id)
    assert row is not None
    assert row["status"] == "completed"
    assert row["feedback"] == FEEDBACK
    assert json.loads(row["sequence_json"])["opener"]["wait_days"] == 0
    assert row["snapshot"] is None  # the snapshot has done its job
    assert row["completed_at"] >= row["created_at"]


async def test_get_and_list(agent: ColdMailAgent, brief: Brief) -> None:
    first = await agent.start(brief)
    second = await agent.start(brief)
    await agent.resume(first.interaction_id, FEEDBACK)

    assert (await agent.get(second.interaction_id)).status is RunStatus.AWAITING_FEEDBACK
    assert [r.interaction_id for r in await agent.list()] == [
        second.interaction_id,
        first.interaction_id,
    ]
    assert [r.interaction_id for r in await agent.list(status="awaiting_feedback")] == [
        second.interaction_id
    ]
    completed = await agent.list(status=RunStatus.COMPLETED)
    assert [r.interaction_id for r in completed] == [first.interaction_id]
    assert completed[0].final is not None
    assert [r.interaction_id for r in await agent.list(limit=1, offset=1)] == [first.interaction_id]


async def test_draft_worker_output_is_in_the_snapshot_not_recomputed(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    # A resume that re-ran the draft would send a second draft request (and get this
    # unusable scripted reply); Bridgic must skip the finished worker instead.
    pending = await agent.start(brief)
    server.enqueue(Reply(kind="draft", content="this must never be requested"))
    await agent.resume(pending.interaction_id, FEEDBACK)
    assert server.count("draft") == 1


def test_sync_twin(server: ScriptedOpenAIServer, db_path: Path, brief: Brief) -> None:
    with SyncColdMailAgent.open(db_path) as agent:
        pending = agent.start(brief)
        assert agent.get(pending.interaction_id).status is RunStatus.AWAITING_FEEDBACK
        done = agent.resume(pending.interaction_id, FEEDBACK)
        assert [r.status for r in agent.list()] == [RunStatus.COMPLETED]
    assert done.final is not None
    assert server.count() == 2
