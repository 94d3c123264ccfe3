"""The reviewer's inbox through an in-process ASGI client, on real SQLite and the scripted LLM."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.web.app import create_app

from .conftest import run_cli

FEEDBACK = "CTOs at mid-size hospitals"


async def _client(db_path: Path, token: str = "") -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db_path, token=token)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(db_path):
        yield c


async def _paused(db_path: Path, brief: Brief) -> str:
    async with ColdMailAgent.open(db_path) as agent:
        return (await agent.start(brief)).interaction_id


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the run page has no CSRF field"
    return match.group(1)


async def _status(db_path: Path, interaction_id: str) -> RunStatus:
    async with ColdMailAgent.open(db_path) as agent:
        return (await agent.get(interaction_id)).status


async def test_inbox_run_page_feedback_and_result(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await _paused(db_path, brief)
    inbox = await client.get("/")
    assert inbox.status_code == 200
    assert f'href="/runs/{interaction_id}"' in inbox.text and "clinic managers" in inbox.text

    page = await client.get(f"/runs/{interaction_id}")
    assert "A faster way with Acme Scheduler" in page.text
    assert "Who is this sequence really for?" in page.text
    posted = await client.post(
        f"/runs/{interaction_id}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": _csrf(page.text)},
    )
    assert posted.status_code == 303 and posted.headers["location"] == f"/runs/{interaction_id}"
    result = await client.get(f"/runs/{interaction_id}")
    assert "<h2>Refined</h2>" in result.text
    assert "<ins>" in result.text and "&lt;ins&gt;" not in result.text  # changes are marked
    assert "History" in result.text and "completed" in result.text
    completed = await client.get("/?tab=completed")
    assert interaction_id in completed.text
    assert interaction_id not in (await client.get("/")).text
    assert server.count("refine") == 1


async def test_everything_a_brief_or_the_llm_wrote_is_escaped(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path
) -> None:
    hostile = Brief(product="<script>alert(1)</script>", offer="<b>x</b>", sender="Eve")
    interaction_id = await _paused(db_path, hostile)
    for url in ("/", f"/runs/{interaction_id}"):
        text = (await client.get(url)).text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = await client.get(f"/runs/{interaction_id}")
    server.enqueue(
        Reply(
            kind="refine",
            content='{"opener": {"subject": "<script>x()</script>", "body": "<img src=x>", '
            '"wait_days": 0}, "follow_up": {"subject": "s", "body": "b", "wait_days": 3}}',
        )
    )
    await client.post(
        f"/runs/{interaction_id}/feedback", data={"feedback": "x", "csrf_token": _csrf(page.text)}
    )
    result = (await client.get(f"/runs/{interaction_id}")).text
    assert "<script>x()</script>" not in result and "<img src=x>" not in result
    assert "&lt;script&gt;x()&lt;/script&gt;" in result


async def test_feedback_without_a_valid_csrf_token_changes_nothing(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await _paused(db_path, brief)
    await client.get(f"/runs/{interaction_id}")  # sets the CSRF cookie
    for data in ({"feedback": FEEDBACK}, {"feedback": FEEDBACK, "csrf_token": "forged"}):
        refused = await client.post(f"/runs/{interaction_id}/feedback", data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text
    page = await client.get(f"/runs/{interaction_id}")
    cross_site = await client.post(
        f"/runs/{interaction_id}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": _csrf(page.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    assert await _status(db_path, interaction_id) is RunStatus.AWAITING_FEEDBACK
    assert server.count("refine") == 0


async def test_submitting_the_same_form_twice_resumes_once_and_shows_the_result(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await _paused(db_path, brief)
    page = await client.get(f"/runs/{interaction_id}")
    form = {"feedback": FEEDBACK, "csrf_token": _csrf(page.text)}
    server.enqueue(Reply(kind="refine", delay=1.0))
    first, second = await asyncio.gather(
        client.post(f"/runs/{interaction_id}/feedback", data=form),
        client.post(f"/runs/{interaction_id}/feedback", data=form),
    )
    assert first.status_code == second.status_code == 303
    assert server.count("refine") == 1
    assert "<h2>Refined</h2>" in (await client.get(first.headers["location"])).text


async def test_friendly_errors_and_nothing_lost(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await _paused(db_path, brief)
    app = create_app(db_path, token="")
    async with app.router.lifespan_context(app):
        app.state.agent.retry = NO_RETRY
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            missing = await client.get("/runs/0123456789abcdef0123456789abcdef")
            assert missing.status_code == 404 and "No such run" in missing.text
            malformed = await client.get("/runs/not-an-id")
            assert malformed.status_code == 422 and "not an interaction id" in malformed.text

            page = await client.get(f"/runs/{interaction_id}")
            empty = await client.post(
                f"/runs/{interaction_id}/feedback",
                data={"feedback": "   ", "csrf_token": _csrf(page.text)},
            )
            assert empty.status_code == 422 and "feedback must not be empty" in empty.text

            server.enqueue(Reply(kind="refine", status=500, content="LLM down"))
            down = await client.post(
                f"/runs/{interaction_id}/feedback",
                data={"feedback": FEEDBACK, "csrf_token": _csrf(page.text)},
            )
            assert down.status_code == 502 and "refinement LLM call failed" in down.text
            assert FEEDBACK in down.text  # the reviewer's text is still in the form
    assert await _status(db_path, interaction_id) is RunStatus.AWAITING_FEEDBACK


async def test_json_api_mirrors_the_python_api(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    created = await client.post(
        "/api/runs", json={"product": "Acme", "offer": "saves time", "sender": "Dana"}
    )
    assert created.status_code == 201
    run = created.json()
    assert run["status"] == "awaiting_feedback" and run["final"] is None
    interaction_id = run["interaction_id"]

    assert (await client.get(f"/api/runs/{interaction_id}")).json()["draft"] == run["draft"]
    listed = (await client.get("/api/runs", params={"status": "awaiting_feedback"})).json()
    assert [r["interaction_id"] for r in listed] == [interaction_id]

    done = await client.post(f"/api/runs/{interaction_id}/feedback", json={"feedback": FEEDBACK})
    assert done.status_code == 200 and done.json()["status"] == "completed"
    again = await client.post(f"/api/runs/{interaction_id}/feedback", json={"feedback": "Nurses"})
    assert again.status_code == 409 and again.json()["error"]["type"] == "RunConflict"
    unknown = await client.get("/api/runs/0123456789abcdef0123456789abcdef")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "RunNotFound"
    empty = await client.post(f"/api/runs/{interaction_id}/feedback", json={"feedback": ""})
    assert empty.status_code == 422
    form_post = await client.post(
        f"/api/runs/{interaction_id}/feedback", content="feedback=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert form_post.status_code in (415, 422)

    spec = (await client.get("/openapi.json")).json()
    assert {
        "/api/runs",
        "/api/runs/{interaction_id}",
        "/api/runs/{interaction_id}/feedback",
    } <= set(spec["paths"])


async def test_a_token_guards_every_request(server: ScriptedOpenAIServer, db_path: Path) -> None:
    token = "t" * 40
    async for client in _client(db_path, token=token):
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/api/runs")).status_code == 401
        assert (await client.get("/openapi.json")).status_code == 401
        wrong = await client.get("/api/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/api/runs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        exchanged = await client.get(f"/?token={token}")
        assert exchanged.status_code == 303 and "token=" not in exchanged.headers["location"]
        assert (await client.get("/")).status_code == 200  # the cookie now carries it


def test_serve_refuses_a_public_address_without_a_token() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "8765")
    assert result.returncode == 7
    assert "refusing to listen on 0.0.0.0 without COLDMAIL_WEB_TOKEN" in result.stderr
