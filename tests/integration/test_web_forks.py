"""The family on the inbox's run page and in the JSON API, and forking through the API."""

from __future__ import annotations

import html
from pathlib import Path

import httpx

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..rows import SqliteRows
from .test_web import client  # noqa: F401  (the fixture)

FEEDBACK = "CTOs at mid-size hospitals"


async def _family(db_path: Path, brief: Brief) -> tuple[str, str, str]:
    """A review run at round 1, a fork of its question, and a fork of its round 1."""
    async with ColdMailAgent.open(db_path) as agent:
        parent = await agent.start(brief, review=True)
        await agent.resume(parent.interaction_id, FEEDBACK)
        by_feedback = await agent.fork(parent.interaction_id, feedback="CFOs at <b>banks</b>")
        by_guidance = await agent.fork(parent.interaction_id, round=1, guidance="more formal")
        return parent.interaction_id, by_feedback.interaction_id, by_guidance.interaction_id


async def test_the_run_page_shows_the_family_side_by_side(
    client: httpx.AsyncClient,  # noqa: F811
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
) -> None:
    parent, by_feedback, by_guidance = await _family(db_path, brief)
    page = (await client.get(f"/runs/{by_guidance}")).text
    section = page.split('id="family"', 1)[1].split("<h2", 1)[0]
    assert f'href="/runs/{parent}"' in section and f'href="/runs/{by_feedback}"' in section
    assert "(this run)" in section and f'href="/runs/{by_guidance}"' not in section
    assert "guidance: more formal" in section and "awaiting review at round 2" in section
    # What a fork tried is text, never markup.
    assert "<b>banks</b>" not in section
    assert html.escape("feedback: CFOs at <b>banks</b>") in section
    alone = (await client.get("/runs/new")).status_code  # a page without a run: no section
    assert alone == 200
    async with ColdMailAgent.open(db_path) as agent:
        lone = (await agent.start(brief)).interaction_id
    assert 'id="family"' not in (await client.get(f"/runs/{lone}")).text


async def test_the_json_api_gives_the_family_and_forks(
    client: httpx.AsyncClient,  # noqa: F811
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
) -> None:
    parent, by_feedback, by_guidance = await _family(db_path, brief)
    family = (await client.get(f"/api/runs/{parent}/family")).json()
    assert [m["interaction_id"] for m in family["members"]] == [parent, by_feedback, by_guidance]
    assert family["forks"] == [by_feedback, by_guidance]
    assert family["members"][2]["fork"]["text"] == "more formal"
    assert family["variants"] == []  # none approved yet
    forked = await client.post(f"/api/runs/{parent}/fork", json={"feedback": "CMOs at retailers"})
    assert forked.status_code == 200, forked.text
    assert forked.json()["feedback"] == "CMOs at retailers"
    rows = SqliteRows(db_path)
    before = rows.count()
    for body, status in (
        ({"round": 1, "feedback": "x"}, 422),
        ({"guidance": "x"}, 422),
        ({"feedback": ""}, 422),
        ({"round": 7, "guidance": "x"}, 409),
        ({"feedback": "x", "extra": 1}, 422),
    ):
        refused = await client.post(f"/api/runs/{parent}/fork", json=body)
        assert refused.status_code == status, (body, refused.text)
    assert (
        await client.post(f"/api/runs/{'0' * 32}/fork", json={"feedback": "x"})
    ).status_code == 404
    assert (await client.get(f"/api/runs/{'0' * 32}/family")).status_code == 404
    assert rows.count() == before


async def test_the_run_page_forks_a_pause_and_refuses_what_the_api_refuses(
    client: httpx.AsyncClient,  # noqa: F811
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
) -> None:
    from .test_web import csrf

    async with ColdMailAgent.open(db_path) as agent:
        parent = await agent.start(brief, review=True)
        await agent.resume(parent.interaction_id, FEEDBACK)
    run_id = parent.interaction_id
    page = (await client.get(f"/runs/{run_id}")).text
    assert 'id="fork"' in page and "review round 1 (new guidance)" in page
    token = csrf(page)
    rows = SqliteRows(db_path)
    before = rows.count()

    # Refused: no form token, a foreign origin, a round the run never reached, blank text,
    # control characters. Nothing is stored, and what was typed is kept.
    assert (
        await client.post(f"/runs/{run_id}/fork", data={"round": "0", "text": "CFOs"})
    ).status_code == 403
    for data, status, said in (
        ({"round": "7", "text": "shorter"}, 409, "No fork was made"),
        ({"round": "0", "text": "   "}, 422, "No fork was made"),
        ({"round": "0", "text": "CFOs\x1b[31m"}, 422, "No fork was made"),
        ({"round": "one", "text": "shorter"}, 422, "No fork was made"),
    ):
        refused = await client.post(f"/runs/{run_id}/fork", data={**data, "csrf_token": token})
        assert refused.status_code == status, (data, refused.text[:300])
        assert said in refused.text
        if data["text"].strip() and "\x1b" not in data["text"]:
            assert html.escape(data["text"]) in refused.text.split('id="fork"', 1)[1]
    assert rows.count() == before

    # A fork of review round 1 with new guidance: a new run, and its page.
    made = await client.post(
        f"/runs/{run_id}/fork", data={"round": "1", "text": "more formal", "csrf_token": token}
    )
    assert made.status_code == 303
    new_id = made.headers["location"].rsplit("/", 1)[1]
    assert new_id != run_id and rows.count() == before + 1
    family = (await client.get(f"/api/runs/{run_id}/family")).json()
    assert family["forks"] == [new_id]
    assert family["members"][1]["fork"]["text"] == "more formal"


async def test_a_fork_form_sent_twice_makes_one_fork(
    client: httpx.AsyncClient,  # noqa: F811
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
) -> None:
    """A double click (both at once) and a resent form (one after the other) carry the form's
    own key: one fork, one LLM step, and every answer opens that fork. A new page's form is
    another fork."""
    import asyncio
    import re

    from .test_web import csrf

    async with ColdMailAgent.open(db_path) as agent:
        parent = await agent.start(brief)
        await agent.resume(parent.interaction_id, FEEDBACK)
    run_id = parent.interaction_id
    page = (await client.get(f"/runs/{run_id}")).text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
    assert fields.get("fork_key"), "the fork form carries a key of its own"
    data = {"round": "0", "text": "CFOs at regional banks", "csrf_token": csrf(page)}
    data["fork_key"] = fields["fork_key"]
    rows = SqliteRows(db_path)
    before, refined = rows.count(), server.count("refine")
    server.enqueue(Reply(delay=1.0, kind="refine"))  # the second arrives mid-step
    both = await asyncio.gather(*(client.post(f"/runs/{run_id}/fork", data=data) for _ in "ab"))
    again = await client.post(f"/runs/{run_id}/fork", data=data)
    for answer in (*both, again):
        assert answer.status_code == 303, answer.text[:300]
    opened = {a.headers["location"] for a in (*both, again)}
    assert len(opened) == 1 and rows.count() == before + 1
    assert server.count("refine") == refined + 1
    family = (await client.get(f"/api/runs/{run_id}/family")).json()
    assert len(family["forks"]) == 1
    # The same key with other text is not that fork: refused, nothing made.
    other = await client.post(f"/runs/{run_id}/fork", data={**data, "text": "CMOs at retailers"})
    assert other.status_code == 422 and "No fork was made" in other.text
    # A page opened again has a new key: a deliberate second fork.
    fresh = (await client.get(f"/runs/{run_id}")).text
    key = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', fresh))["fork_key"]
    assert key != data["fork_key"]
    second = await client.post(f"/runs/{run_id}/fork", data={**data, "fork_key": key})
    assert second.status_code == 303 and second.headers["location"] not in opened
    assert rows.count() == before + 2


async def test_the_api_fork_retried_with_its_key_returns_the_fork_it_made(
    client: httpx.AsyncClient,  # noqa: F811
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        parent = await agent.start(brief)
    url = f"/api/runs/{parent.interaction_id}/fork"
    body = {"feedback": "CFOs at regional banks", "key": "retry-me-0001"}
    first = await client.post(url, json=body)
    second = await client.post(url, json=body)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json() == second.json()
    assert server.count("refine") == 1
    for bad in ({**body, "feedback": "CMOs"}, {**body, "key": "no spaces allowed"}):
        refused = await client.post(url, json=bad)
        assert refused.status_code == 422, refused.text
    without = await client.post(url, json={"feedback": "CFOs at regional banks"})
    assert without.json()["interaction_id"] != first.json()["interaction_id"]
