"""Attacks on one type for a person's answer (issue #19): feedback is a ``Decision``.

Each test sends an answer where it does not belong, smuggles one past validation, loses the
acknowledgement of its commit, or races a deadline with it — on real SQLite files and real
PostgreSQL, through the Python API, the JSON API, the run page, a one-click link and the
command line — and checks the refusal's words, the stored rows and the LLM's calls.
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

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
from bridgic_coldmail.delivery import timed_worker
from bridgic_coldmail.models import DEADLINE_ACTOR, Run
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.signing import key_file_for
from bridgic_coldmail.store import RunStore, connect_store
from bridgic_coldmail.store.outbox import TIMER_DESTINATION
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import REPO, Backend, Completed
from ..rows import SqliteRows
from .test_one_effect import CommitReplyDropper, commits_then_fails, pg, proxied
from .test_web import csrf, settings_for, web_client
from .test_web_links import ORIGIN, link_settings, link_to

__all__ = ["pg", "proxied"]  # fixtures, used by name

FEEDBACK = "CTOs at mid-size hospitals"
OTHER = "Nurses at rural clinics"


async def _two_runs(agent: ColdMailAgent, brief: Brief) -> tuple[str, str]:
    """A run at its audience question, and one at review round 1 (given ``FEEDBACK``)."""
    asking = (await agent.start(brief, review=True)).interaction_id
    reviewing = (await agent.start(brief, review=True)).interaction_id
    await agent.resume(reviewing, FEEDBACK)
    return asking, reviewing


async def _refused(attempt: Any) -> str:
    with pytest.raises(RunConflict) as refused:
        await attempt
    return str(refused.value)


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


@pytest.fixture
async def link_client(
    server: ScriptedOpenAIServer, db_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The inbox behind its token, as links are opened (they need none)."""
    async with web_client(link_settings(db_path)) as c:
        yield c


# ------------------------------------------------------- an answer where another is expected


async def test_a_decision_at_the_audience_question_and_feedback_at_a_review_are_refused_alike(
    agent: ColdMailAgent,
    client: httpx.AsyncClient,
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
) -> None:
    """``approve`` on a run awaiting feedback, other feedback on a run awaiting review: the
    Python API (named method and ``decide``), the JSON API and the run page refuse each with
    the agent's words, and nothing stored changes."""
    asking, reviewing = await _two_runs(agent, brief)
    rows = SqliteRows(db_path)
    before = {rid: (rows.row(rid), rows.events(rid)) for rid in (asking, reviewing)}
    calls = server.count()

    approvals = {
        "approve": await _refused(agent.approve(asking)),
        "decide": await _refused(agent.decide(asking, make_decision("approve"))),
    }
    api = await client.post(f"/api/runs/{asking}/approve", json={})
    assert api.status_code == 409, api.text
    approvals["api"] = api.json()["error"]["message"]
    assert set(approvals.values()) == {approvals["approve"]}
    assert "still waiting for audience feedback" in approvals["approve"]
    page = (await client.get(f"/runs/{asking}")).text
    shown = await client.post(f"/runs/{asking}/approve", data={"csrf_token": csrf(page)})
    assert shown.status_code == 409
    assert html.escape(approvals["approve"]) in shown.text

    others = {
        "resume": await _refused(agent.resume(reviewing, OTHER)),
        "decide": await _refused(
            agent.decide(reviewing, make_decision("feedback", text=OTHER, reviewer="Ann"))
        ),
    }
    api = await client.post(f"/api/runs/{reviewing}/feedback", json={"feedback": OTHER})
    assert api.status_code == 409, api.text
    others["api"] = api.json()["error"]["message"]
    assert set(others.values()) == {others["resume"]}
    assert "already took different feedback" in others["resume"]
    page = (await client.get(f"/runs/{reviewing}")).text
    shown = await client.post(
        f"/runs/{reviewing}/feedback", data={"csrf_token": csrf(page), "feedback": OTHER}
    )
    assert shown.status_code == 409 and "Your feedback was not used" in shown.text

    # The feedback the run took, sent again through decide: its stored result, nothing new.
    again = await agent.decide(reviewing, make_decision("feedback", text=f" {FEEDBACK}\n"))
    assert (again.status, again.round) == (RunStatus.AWAITING_REVIEW, 1)
    after = {rid: (rows.row(rid), rows.events(rid)) for rid in (asking, reviewing)}
    assert after == before and server.count() == calls


async def test_a_links_page_takes_only_its_own_pauses_answer(
    link_client: httpx.AsyncClient, server: ScriptedOpenAIServer, brief: Brief, db_path: Path
) -> None:
    """A decision posted to a link of an audience question, feedback posted to a link of a
    review round (each with the page's genuine form token): no such form, nothing changed."""
    async with ColdMailAgent.open(db_path, settings=link_settings(db_path)) as agent:
        asking, reviewing = await _two_runs(agent, brief)
    rows = SqliteRows(db_path)
    before = {rid: (rows.row(rid), rows.events(rid)) for rid in (asking, reviewing)}
    calls = server.count()
    for rid, kind, fields in (
        (asking, "approve", {"round": "1"}),
        (asking, "reject", {"reason": "no", "round": "0"}),
        (reviewing, "feedback", {"feedback": OTHER}),
        (reviewing, "feedback", {"feedback": FEEDBACK}),
    ):
        path = await link_to(db_path, rid)
        page = (await link_client.get(path)).text
        sent = await link_client.post(
            f"{path}/{kind}", data={"csrf_token": csrf(page), **fields}, headers=ORIGIN
        )
        assert sent.status_code == 404, (kind, sent.status_code)
    after = {rid: (rows.row(rid), rows.events(rid)) for rid in (asking, reviewing)}
    assert after == before and server.count() == calls


def test_the_command_line_refuses_them_with_the_same_words(
    server: ScriptedOpenAIServer, brief: Brief, db_path: Path, cli: Callable[..., Completed]
) -> None:
    async def made() -> tuple[str, str, str, str]:
        async with ColdMailAgent.open(db_path) as agent:
            asking, reviewing = await _two_runs(agent, brief)
            approve = await _refused(agent.approve(asking))
            other = await _refused(agent.resume(reviewing, OTHER))
            return asking, reviewing, approve, other

    asking, reviewing, approve_words, other_words = asyncio.run(made())
    rows = SqliteRows(db_path)
    before = {rid: rows.row(rid) for rid in (asking, reviewing)}
    approved = cli("approve", asking)
    assert approved.returncode == RunConflict.exit_code and approve_words in approved.stderr
    resumed = cli("resume", reviewing, "--feedback", OTHER, "--reviewer", "Ann")
    assert resumed.returncode == RunConflict.exit_code and other_words in resumed.stderr
    assert {rid: rows.row(rid) for rid in (asking, reviewing)} == before


# ----------------------------------------------------------- smuggled past validation

LOOK_ALIKES = ["deadline", "Deadline", " DEADLINE ", "dead\u200bline", "ｄｅａｄｌｉｎｅ"]
"""The deadline's reserved name, and names a person reads as it."""


def _smuggled() -> dict[str, Decision]:
    feedback = make_decision("feedback", text=FEEDBACK)
    approve = make_decision("approve")
    emails = {
        "opener": {"subject": "Hi", "body": "b", "wait_days": 0},
        "follow_up": {"subject": "Again", "body": "b", "wait_days": 3},
    }
    edit = make_decision("edit", sequence=emails)
    found: dict[str, Decision] = {
        "feedback with a round": feedback.model_copy(update={"round": 1}),
        "feedback with emails": feedback.model_copy(update={"sequence": edit.sequence}),
        "feedback without text": approve.model_copy(update={"kind": "feedback"}),
        "feedback of spaces": feedback.model_copy(update={"text": "   "}),
        "feedback not text": Decision.model_construct(
            kind="feedback", text=7, sequence=None, reviewer=None, round=None
        ),
        "feedback too long": feedback.model_copy(update={"text": "x" * 2001}),
        "an unknown kind": feedback.model_copy(update={"kind": "resume"}),
        "approve with feedback's text": approve.model_copy(update={"text": FEEDBACK}),
    }
    for name in LOOK_ALIKES:
        found[f"feedback by {name!r}"] = feedback.model_copy(update={"reviewer": name})
    return found


async def test_answers_smuggled_past_validation_are_refused_and_change_nothing(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief, db_path: Path
) -> None:
    """``model_copy``/``model_construct`` skip a Decision's rules; ``decide`` holds what it is
    handed to them again — for feedback as for the decisions — on a run at its audience
    question and one at review."""
    asking, reviewing = await _two_runs(agent, brief)
    rows = SqliteRows(db_path)
    before = {rid: (rows.row(rid), rows.events(rid)) for rid in (asking, reviewing)}
    calls = server.count()
    for case, decision in _smuggled().items():
        for rid in (asking, reviewing):
            with pytest.raises(InvalidInput):
                await agent.decide(rid, decision)
            assert (rows.row(rid), rows.events(rid)) == before[rid], case
    for name in LOOK_ALIKES:
        with pytest.raises(InvalidInput, match="the name the history gives a pause's deadline"):
            await agent.resume(asking, FEEDBACK, reviewer=name)
        with pytest.raises(InvalidInput, match="deadline"):
            await agent.fork(reviewing, round=0, feedback=OTHER, reviewer=name)
    after = {rid: (rows.row(rid), rows.events(rid)) for rid in (asking, reviewing)}
    assert after == before and server.count() == calls


@pytest.mark.parametrize("name", LOOK_ALIKES)
async def test_a_links_feedback_form_cannot_sign_as_the_deadline(
    link_client: httpx.AsyncClient,
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
    name: str,
) -> None:
    async with ColdMailAgent.open(db_path, settings=link_settings(db_path)) as agent:
        asking = (await agent.start(brief)).interaction_id
    rows = SqliteRows(db_path)
    before, calls = (rows.row(asking), rows.events(asking)), server.count()
    path = await link_to(db_path, asking)
    page = (await link_client.get(path)).text
    sent = await link_client.post(
        f"{path}/feedback",
        data={"csrf_token": csrf(page), "feedback": FEEDBACK, "reviewer": name},
        headers=ORIGIN,
    )
    assert sent.status_code == 422, sent.status_code
    assert "deadline" in html.unescape(sent.text)
    assert (rows.row(asking), rows.events(asking)) == before and server.count() == calls


# ------------------------------------------------------- the acknowledgement of a commit lost


async def _retries_get_the_recorded_feedback(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, rid: str, done: Any
) -> None:
    assert done.status is RunStatus.COMPLETED and done.feedback == FEEDBACK
    for retry in (
        make_decision("feedback", text=FEEDBACK, reviewer="Bob"),  # whoever sends it
        make_decision("feedback", text=f"  {FEEDBACK}\r\n"),
    ):
        assert await agent.decide(rid, retry) == done
    assert await agent.resume(rid, FEEDBACK) == done
    with pytest.raises(RunConflict, match="already took different feedback"):
        await agent.decide(rid, make_decision("feedback", text=OTHER))
    assert server.count("refine") == 1
    history = await agent.history(rid)
    answered = [(e.kind, e.actor) for e in history if e.kind == "feedback"]
    assert answered == [("feedback", "Ann")] and not [e for e in history if e.kind == "failed"]


async def test_feedback_through_decide_whose_commit_reply_is_lost_on_sqlite_is_applied_once(
    agent: ColdMailAgent,
    server: ScriptedOpenAIServer,
    brief: Brief,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rid = (await agent.start(brief)).interaction_id
    with commits_then_fails(monkeypatch) as forced:
        done = await agent.decide(rid, make_decision("feedback", text=FEEDBACK, reviewer="Ann"))
    assert forced == [1]  # the completion committed, then its reply was "lost"
    await _retries_get_the_recorded_feedback(agent, server, rid, done)


async def test_feedback_through_decide_whose_commit_reply_is_lost_on_postgresql_is_applied_once(
    proxied: tuple[Settings, CommitReplyDropper], server: ScriptedOpenAIServer, brief: Brief
) -> None:
    settings, proxy = proxied
    async with ColdMailAgent.open(settings=settings) as agent:
        rid = (await agent.start(brief)).interaction_id
        proxy.armed = True
        done = await agent.decide(rid, make_decision("feedback", text=FEEDBACK, reviewer="Ann"))
        assert proxy.dropped == 1  # the server committed; its reply never arrived
        await _retries_get_the_recorded_feedback(agent, server, rid, done)


# ------------------------------------------------------------------ racing the deadline

RACE_BRIEF = Brief(
    product="Acme Scheduler",
    offer="cuts patient no-shows by 30% with two-way SMS reminders",
    sender="Dana Lee",
    audience="practice managers at dental clinics",
)


@pytest.fixture
def race_settings(backend: Backend, server: ScriptedOpenAIServer) -> Settings:
    return backend.settings()


async def _fire(settings: Settings) -> None:
    """One pass of a worker that applies deadlines, on its own store."""
    store: RunStore = await connect_store(settings)
    try:
        worker, runner = timed_worker(store, settings, report=None)
        try:
            await worker.run_once()
        finally:
            await runner.aclose()
    finally:
        await store.close()


async def _at_deadline(backend: Backend, rid: str) -> None:
    """Wait until the run's deadline timer is due."""
    (timer,) = [r for r in backend.rows.notifications(rid) if r["destination"] == TIMER_DESTINATION]
    await asyncio.sleep(1.2)
    assert timer["status"] == "pending"


@pytest.mark.parametrize("worker_first", [False, True])
async def test_feedback_through_decide_racing_a_proceeding_deadline_is_taken_once(
    race_settings: Settings,
    backend: Backend,
    server: ScriptedOpenAIServer,
    worker_first: bool,
) -> None:
    """At the audience question the deadline proceeds with the brief's own audience; a
    person's feedback sent through ``decide`` at that moment: one of them answers, once."""
    async with ColdMailAgent.open(settings=race_settings) as agent:
        rid = (
            await agent.start(RACE_BRIEF, review=True, respond_within="1s", on_timeout="proceed")
        ).interaction_id
        await _at_deadline(backend, rid)
        calls = server.count("refine")
        person = agent.decide(rid, make_decision("feedback", text=FEEDBACK, reviewer="Ann"))
        firing = _fire(race_settings)
        both = (firing, person) if worker_first else (person, firing)
        results = await asyncio.gather(*both, return_exceptions=True)
        answer = results[1] if worker_first else results[0]
        await _fire(race_settings)  # a timer that found the person answering looks again
        after = await agent.get(rid)
        history = await agent.history(rid)
    answered = [(e.actor, e.detail) for e in history if e.kind == "feedback"]
    assert len(answered) == 1, answered
    assert server.count("refine") == calls + 1
    assert (after.status, after.round) == (RunStatus.AWAITING_REVIEW, 1)
    if isinstance(answer, BaseException):
        assert isinstance(answer, RunConflict) and "deadline" in str(answer), answer
        assert answered[0][0] == DEADLINE_ACTOR and after.feedback != FEEDBACK
    else:
        assert answered == [("Ann", FEEDBACK)] and after.feedback == FEEDBACK


@pytest.mark.parametrize("worker_first", [False, True])
async def test_an_approval_through_decide_racing_a_proceeding_deadline_at_review_is_taken_once(
    race_settings: Settings,
    backend: Backend,
    server: ScriptedOpenAIServer,
    worker_first: bool,
) -> None:
    async with ColdMailAgent.open(settings=race_settings) as agent:
        rid = (
            await agent.start(RACE_BRIEF, review=True, respond_within="3s", on_timeout="proceed")
        ).interaction_id
        await agent.resume(rid, FEEDBACK)  # before its deadline: round 1 gets its own
        await asyncio.sleep(3.2)
        person = agent.decide(rid, make_decision("approve", reviewer="Ann", round=1))
        firing = _fire(race_settings)
        both = (firing, person) if worker_first else (person, firing)
        results = await asyncio.gather(*both, return_exceptions=True)
        answer = results[1] if worker_first else results[0]
        await _fire(race_settings)
        after = await agent.get(rid)
        history = await agent.history(rid)
    approvals = [(e.actor, e.round) for e in history if e.kind == "approved"]
    assert len(approvals) == 1, approvals
    assert after.status is RunStatus.COMPLETED
    if isinstance(answer, BaseException):
        assert isinstance(answer, RunConflict) and "deadline" in str(answer), answer
        assert approvals == [(DEADLINE_ACTOR, 1)]
    else:  # Ann's, or the same approval the deadline recorded just before (its result)
        assert approvals in ([("Ann", 1)], [(DEADLINE_ACTOR, 1)]) and answer == after


# ------------------------------------------------------------ answers a release recorded


async def test_the_answers_release_0_5_recorded_replay_and_compare_as_they_did(
    server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    """The 0.5.0 fixture's answers (a revision by Ann at round 1, feedback on two runs), read
    back as Decisions: the same answer again is the stored result without an LLM call,
    whoever sends it; another is refused naming what was recorded; nothing stored changes."""
    fixture = REPO / "tests" / "data" / "paused-by-0.5.0.db"
    db_path = tmp_path / fixture.name
    shutil.copy(fixture, db_path)
    shutil.copy(key_file_for(fixture), key_file_for(db_path))
    os.chmod(key_file_for(db_path), 0o600)
    async with ColdMailAgent.open(db_path) as agent:
        runs = {r.status: r for r in await agent.list() if isinstance(r, Run)}
        reviewing, done = runs[RunStatus.AWAITING_REVIEW], runs[RunStatus.COMPLETED]
        rows = SqliteRows(db_path)
        ids = (reviewing.interaction_id, done.interaction_id)
        before = {rid: (rows.row(rid), rows.events(rid)) for rid in ids}
        rid = reviewing.interaction_id
        assert reviewing.round == 2
        for repeat in (
            make_decision("revise", text="shorter"),  # repeats the last: its result
            make_decision("revise", text=" shorter ", reviewer="Bob", round=1),
        ):
            assert await agent.decide(rid, repeat) == reviewing
        for other in (
            make_decision("revise", text="longer", round=1),
            make_decision("approve", round=1),
        ):
            message = await _refused(agent.decide(rid, other))
            assert "round 1" in message and "revise 'shorter'" in message, message
        for run in (reviewing, done):
            same = make_decision("feedback", text=str(run.feedback), reviewer="Bob")
            assert await agent.decide(run.interaction_id, same) == run
            message = await _refused(
                agent.decide(run.interaction_id, make_decision("feedback", text=OTHER))
            )
            assert "already took different feedback" in message
        after = {rid: (rows.row(rid), rows.events(rid)) for rid in ids}
    assert after == before and server.count() == 0


@pytest.mark.parametrize("on_timeout", ["reject", "proceed"])
async def test_feedback_on_the_run_page_after_the_deadline_answered_says_the_deadline_did(
    client: httpx.AsyncClient,
    server: ScriptedOpenAIServer,
    db_path: Path,
    on_timeout: str,
) -> None:
    """The deadline rejected the run at its audience question, or went on with the brief's
    own audience: the run page refuses a person's feedback with what the agent says (the
    deadline did it, and when) — not "refined with other feedback", which the run was not
    (rejected) or not by any person (the deadline's guess)."""
    settings = settings_for(db_path)
    async with ColdMailAgent.open(settings=settings) as agent:
        rid = (
            await agent.start(RACE_BRIEF, respond_within="1s", on_timeout=on_timeout)
        ).interaction_id
        await asyncio.sleep(1.2)
        await _fire(settings)
        words = await _refused(agent.resume(rid, FEEDBACK))
    assert "deadline passed" in words
    rows = SqliteRows(db_path)
    before, calls = (rows.row(rid), rows.events(rid)), server.count()
    page = (await client.get("/runs/new")).text  # a rejected run's page has no form left
    shown = await client.post(
        f"/runs/{rid}/feedback", data={"csrf_token": csrf(page), "feedback": FEEDBACK}
    )
    assert shown.status_code == 409
    assert words in html.unescape(shown.text), shown.text
    assert "refined with other feedback" not in shown.text
    assert (rows.row(rid), rows.events(rid)) == before and server.count() == calls
