"""A person's answer is one type from the edge to the store (issue #19).

The audience feedback is a :class:`Decision` of kind ``feedback``, as the review decisions
are, and every way in — ``resume``, ``decide``, the command line, the JSON API, the run
page — hands it to ``decide``: so each refuses the same feedback with the same words, takes
it with the same result, and the store records it in the form every release wrote.
"""

from __future__ import annotations

import asyncio
import html
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    Decision,
    InvalidInput,
    RunConflict,
    RunStatus,
    make_decision,
)
from bridgic_coldmail.models import validate_feedback
from bridgic_coldmail.signing import json_text
from bridgic_coldmail.store.protocol import decision_from_data, decision_json
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import REPO, Completed
from ..rows import SqliteRows
from .test_web import csrf, settings_for, web_client

FEEDBACK = "CTOs at mid-size hospitals"
BAD_FEEDBACK = {
    "whitespace": "  \t ",
    "too-long": "x" * 2001,
    "escape": "CTOs\x1b[2J at clinics",
    "line-separator": "CTOs\u2028at clinics",
    "zero-width-only": "\u200b\u200d",
}


def _words(feedback: str) -> str:
    """What ``validate_feedback`` says about it: the words every way in must use."""
    with pytest.raises(InvalidInput) as refused:
        validate_feedback(feedback)
    return str(refused.value)


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


@pytest.mark.parametrize("case", BAD_FEEDBACK)
async def test_feedback_is_refused_with_the_same_words_by_python_the_api_and_the_run_page(
    agent: ColdMailAgent,
    client: httpx.AsyncClient,
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
    case: str,
) -> None:
    feedback = BAD_FEEDBACK[case]
    words = _words(feedback)
    run_id = (await agent.start(brief)).interaction_id
    before, calls = SqliteRows(db_path).row(run_id), server.count()

    refusals: dict[str, str] = {}
    for way, attempt in {
        "resume": lambda: agent.resume(run_id, feedback),
        "decide": lambda: agent.decide(
            run_id,
            Decision.model_construct(
                kind="feedback", text=feedback, sequence=None, reviewer=None, round=None
            ),
        ),
    }.items():
        with pytest.raises(InvalidInput) as refused:
            await attempt()
        refusals[way] = str(refused.value)
    with pytest.raises(InvalidInput) as built:
        make_decision("feedback", text=feedback)
    refusals["make_decision"] = str(built.value)
    api = await client.post(f"/api/runs/{run_id}/feedback", json={"feedback": feedback})
    assert api.status_code == 422, api.text
    refusals["api"] = api.json()["error"]["message"]
    page = (await client.get(f"/runs/{run_id}")).text
    form = {"csrf_token": csrf(page), "feedback": feedback}
    shown = await client.post(f"/runs/{run_id}/feedback", data=form)
    assert shown.status_code == 422
    assert html.escape(words) in shown.text
    assert refusals == dict.fromkeys(refusals, words)
    assert SqliteRows(db_path).row(run_id) == before and server.count() == calls


async def _started(brief: Brief) -> str:
    async with ColdMailAgent.open() as agent:
        return (await agent.start(brief)).interaction_id


@pytest.mark.parametrize("case", ["whitespace", "too-long", "escape"])
def test_the_command_line_refuses_feedback_with_the_same_words(
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
    cli: Callable[..., Completed],
    case: str,
) -> None:
    run_id = asyncio.run(_started(brief))
    before = SqliteRows(db_path).row(run_id)
    refused = cli("resume", run_id, "--feedback", BAD_FEEDBACK[case])
    assert refused.returncode == InvalidInput.exit_code, refused
    assert _words(BAD_FEEDBACK[case]) in refused.stderr, refused.stderr
    assert SqliteRows(db_path).row(run_id) == before


async def test_decide_takes_feedback_as_resume_does(agent: ColdMailAgent, brief: Brief) -> None:
    by_resume = await agent.start(brief, review=True)
    by_decide = await agent.start(brief, review=True)
    resumed = await agent.resume(by_resume.interaction_id, FEEDBACK, reviewer="Ann")
    decided = await agent.decide(
        by_decide.interaction_id, make_decision("feedback", text=FEEDBACK, reviewer="Ann")
    )
    assert (decided.status, decided.round, decided.feedback) == (
        resumed.status,
        resumed.round,
        resumed.feedback,
    )
    assert decided.status is RunStatus.AWAITING_REVIEW

    def answers(history: list) -> list[tuple[str, str | None, str | None]]:
        return [(e.kind, e.actor, e.detail) for e in history if e.kind == "feedback"]

    assert answers(await agent.history(by_decide.interaction_id)) == answers(
        await agent.history(by_resume.interaction_id)
    )
    # The same feedback again is the stored result; other feedback, the same conflict.
    again = await agent.decide(by_decide.interaction_id, make_decision("feedback", text=FEEDBACK))
    assert again.updated_at == decided.updated_at
    conflicts = []
    for run_id, attempt in (
        (by_resume.interaction_id, agent.resume(by_resume.interaction_id, "Nurses")),
        (
            by_decide.interaction_id,
            agent.decide(by_decide.interaction_id, make_decision("feedback", text="Nurses")),
        ),
    ):
        with pytest.raises(RunConflict) as refused:
            await attempt
        conflicts.append(str(refused.value).replace(run_id, "RUN"))
    assert conflicts[0] == conflicts[1] and "already took different feedback" in conflicts[0]


def test_feedback_answers_the_audience_question_and_carries_no_round_or_emails() -> None:
    with pytest.raises(InvalidInput, match="feedback answers the audience question"):
        make_decision("feedback", text=FEEDBACK, round=1)
    with pytest.raises(InvalidInput, match="feedback takes no emails"):
        make_decision(
            "feedback",
            text=FEEDBACK,
            sequence={
                "opener": {"subject": "Hi", "body": "b", "wait_days": 0},
                "follow_up": {"subject": "Again", "body": "b", "wait_days": 3},
            },
        )
    assert make_decision("feedback", text=f"  {FEEDBACK}\r\n").text == FEEDBACK
    assert make_decision("feedback", text=FEEDBACK).event_kind == "feedback"


def test_the_stored_form_of_an_answer_is_the_one_every_release_wrote() -> None:
    """``pending_json`` and ``decided_json`` are MACed as text: the same bytes, and every
    answer a fixture holds reads back and writes out unchanged."""
    assert decision_json(make_decision("feedback", text="CTOs", reviewer="Ann")) == (
        '{"kind":"feedback","reviewer":"Ann","round":null,"sequence":null,"text":"CTOs"}'
    )
    assert decision_json(make_decision("revise", text="shorter", round=1)) == (
        '{"kind":"revise","reviewer":null,"round":1,"sequence":null,"text":"shorter"}'
    )
    seen = 0
    for fixture in sorted((REPO / "tests" / "data").glob("paused-by-*.db")):
        with closing(sqlite3.connect(f"file:{fixture}?immutable=1", uri=True)) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "decided_json" not in columns:
                continue
            for pending, decided in db.execute("SELECT pending_json, decided_json FROM runs"):
                items = ([json.loads(pending)] if pending else []) + json.loads(decided or "[]")
                for item in items:
                    assert decision_json(decision_from_data(item)) == json_text(item)
                    seen += 1
    assert seen, "no fixture holds a recorded decision"
