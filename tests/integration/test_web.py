"""The reviewer's inbox through an in-process ASGI client, on real SQLite and the scripted LLM.

The helpers here (``web_client``, ``paused``, ``csrf``) serve the other ``test_web_*`` files.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.retry import NO_RETRY, RetryPolicy
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.web.app import create_app

from ..conftest import run_cli

FEEDBACK = "CTOs at mid-size hospitals"
HOST, PORT = "127.0.0.1", 8000
BASE = f"http://{HOST}:{PORT}"
"""Where the app under test believes it listens; the client's requests say the same."""
STRONG_TOKEN = "Vq3-hZ8_rT1mK6yW0pLx4bN9cJ2sF7dG5aE"


def settings_for(db_path: Path, **web: object) -> Settings:
    """The environment's settings (the scripted LLM) on this database, plus web settings."""
    return Settings.resolve(db=str(db_path), **web)


@asynccontextmanager
async def web_client(
    settings: Settings,
    *,
    retry: RetryPolicy | None = None,
    host: str = HOST,
    port: int = PORT,
    base_url: str = BASE,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a freshly created app, its lifespan running (the agent open)."""
    app = create_app(settings, retry=retry, host=host, port=port)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


async def paused(db_path: Path, brief: Brief) -> str:
    """Start a run with the Python API; returns its interaction id."""
    async with ColdMailAgent.open(db_path) as agent:
        return (await agent.start(brief)).interaction_id


def csrf(page: str) -> str:
    """The CSRF token of a run page's form."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the run page has no CSRF field"
    return match.group(1)


async def stored(db_path: Path, interaction_id: str) -> tuple[RunStatus, str | None]:
    """The run's status and feedback, read by another agent."""
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.get(interaction_id)
        return run.status, run.feedback


async def test_inbox_run_page_feedback_and_result(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    inbox = await client.get("/")
    assert inbox.status_code == 200
    assert f'href="/runs/{interaction_id}"' in inbox.text and "clinic managers" in inbox.text

    page = await client.get(f"/runs/{interaction_id}")
    assert "A faster way with Acme Scheduler" in page.text
    assert "Who is this sequence really for?" in page.text
    posted = await client.post(
        f"/runs/{interaction_id}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": csrf(page.text)},
        headers={"Origin": BASE},  # a browser says where the form was
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


async def test_the_inbox_pages_through_runs(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        ids = [(await agent.start(brief)).interaction_id for _ in range(21)]
    first, second = (await client.get("/")).text, (await client.get("/?page=2")).text
    on_first, on_second = {i for i in ids if i in first}, {i for i in ids if i in second}
    assert (len(on_first), len(on_second)) == (20, 1) and on_first | on_second == set(ids)
    assert 'href="/?tab=awaiting&page=2"' in first and "page=3" not in first
    assert 'href="/?tab=awaiting&page=1"' in second and "page=3" not in second


async def test_pages_have_no_inline_script_or_style_and_their_files_are_served(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/run.js" defer>']
    assert "<style" not in page and " style=" not in page
    assert '<link rel="stylesheet" href="/static/style.css">' in page
    css = await client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = await client.get("/static/run.js")
    assert js.status_code == 200 and "form[data-busy]" in js.text


async def test_everything_a_brief_or_the_llm_wrote_is_escaped(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path
) -> None:
    hostile = Brief(product="<script>alert(1)</script>", offer="<b>x</b>", sender="Eve")
    interaction_id = await paused(db_path, hostile)
    for url in ("/", f"/runs/{interaction_id}"):
        text = (await client.get(url)).text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = await client.get(f"/runs/{interaction_id}")
    server.enqueue(
        Reply(
            kind="refine",
            content='{"opener": {"subject": "<script>x()</script>", "body": "<img src=x>"}, '
            '"follow_up": {"subject": "s", "body": "b", "wait_days": 3}}',
        )
    )
    await client.post(
        f"/runs/{interaction_id}/feedback", data={"feedback": "x", "csrf_token": csrf(page.text)}
    )
    result = (await client.get(f"/runs/{interaction_id}")).text
    assert "<script>x()</script>" not in result and "<img src=x>" not in result
    assert "&lt;script&gt;x()&lt;/script&gt;" in result


async def test_feedback_without_a_valid_csrf_token_changes_nothing(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    await client.get(f"/runs/{interaction_id}")  # sets the CSRF cookie
    for data in ({"feedback": FEEDBACK}, {"feedback": FEEDBACK, "csrf_token": "forged"}):
        refused = await client.post(f"/runs/{interaction_id}/feedback", data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text
    page = await client.get(f"/runs/{interaction_id}")
    cross_site = await client.post(
        f"/runs/{interaction_id}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": csrf(page.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    assert (await stored(db_path, interaction_id))[0] is RunStatus.AWAITING_FEEDBACK
    assert server.count("refine") == 0


async def test_a_csrf_value_outside_ascii_is_refused_not_a_crash(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    await client.get(f"/runs/{interaction_id}")  # sets the CSRF cookie
    refused = await client.post(
        f"/runs/{interaction_id}/feedback", data={"feedback": FEEDBACK, "csrf_token": "jéton"}
    )
    assert refused.status_code == 403
    assert server.count("refine") == 0


async def test_submitting_the_same_form_twice_resumes_once_and_shows_the_result(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    page = await client.get(f"/runs/{interaction_id}")
    form = {"feedback": FEEDBACK, "csrf_token": csrf(page.text)}
    server.enqueue(Reply(kind="refine", delay=1.0))
    first, second = await asyncio.gather(
        client.post(f"/runs/{interaction_id}/feedback", data=form),
        client.post(f"/runs/{interaction_id}/feedback", data=form),
    )
    assert first.status_code == second.status_code == 303
    assert server.count("refine") == 1
    assert "<h2>Refined</h2>" in (await client.get(first.headers["location"])).text


async def test_ten_reviewers_with_different_feedback_one_is_used_the_others_are_told(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    app = create_app(settings_for(db_path), host=HOST, port=PORT)
    feedbacks = [f"Reviewer {n}: head nurses at clinic {n}" for n in range(10)]
    # The refinement takes a second, so the other nine arrive while the first holds the run.
    server.enqueue(Reply(kind="refine", delay=1.0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)

        async def reviewer(feedback: str) -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as browser:
                page = await browser.get(f"/runs/{interaction_id}")
                return await browser.post(
                    f"/runs/{interaction_id}/feedback",
                    data={"feedback": feedback, "csrf_token": csrf(page.text)},
                    headers={"Origin": BASE},
                )

        answers = await asyncio.gather(*(reviewer(f) for f in feedbacks))
    assert sorted(a.status_code for a in answers) == [303] + [409] * 9
    used = feedbacks[[a.status_code for a in answers].index(303)]
    for answer in answers:
        if answer.status_code == 409:
            assert "Your feedback was not used" in answer.text
            assert f"<b>Feedback:</b> {used}" in answer.text
    assert await stored(db_path, interaction_id) == (RunStatus.COMPLETED, used)
    assert server.count("refine") == 1


async def test_feedback_as_long_as_the_textarea_allows_is_accepted_with_crlf_line_breaks(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    match = re.search(r'<textarea id="feedback"[^>]* maxlength="(\d+)"', page)
    assert match
    maxlength = int(match.group(1))
    # What the reviewer typed, as the textarea counts it: a line break is one character.
    lines = "\n".join(["Clinic managers in rural towns"] * 60)
    typed = lines + "\n" + "x" * (maxlength - len(lines) - 1)
    assert len(typed) == maxlength and typed.count("\n") == 60
    posted = await client.post(
        f"/runs/{interaction_id}/feedback",
        data={"feedback": typed.replace("\n", "\r\n"), "csrf_token": csrf(page)},  # as sent
        headers={"Origin": BASE},
    )
    assert posted.status_code == 303
    assert await stored(db_path, interaction_id) == (RunStatus.COMPLETED, typed)


async def test_friendly_errors_and_nothing_lost(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    async with web_client(settings_for(db_path), retry=NO_RETRY) as client:
        missing = await client.get("/runs/0123456789abcdef0123456789abcdef")
        assert missing.status_code == 404 and "No such run" in missing.text
        malformed = await client.get("/runs/not-an-id")
        assert malformed.status_code == 422 and "not an interaction id" in malformed.text

        page = await client.get(f"/runs/{interaction_id}")
        empty = await client.post(
            f"/runs/{interaction_id}/feedback",
            data={"feedback": "   ", "csrf_token": csrf(page.text)},
        )
        assert empty.status_code == 422 and "feedback must not be empty" in empty.text

        server.enqueue(Reply(kind="refine", status=500, content="LLM down"))
        down = await client.post(
            f"/runs/{interaction_id}/feedback",
            data={"feedback": FEEDBACK, "csrf_token": csrf(page.text)},
        )
        assert down.status_code == 502 and "refinement LLM call failed" in down.text
        assert FEEDBACK in down.text  # the reviewer's text is still in the form
    assert server.count("refine") == 1  # the app's retry policy is the one given: none
    assert (await stored(db_path, interaction_id))[0] is RunStatus.AWAITING_FEEDBACK


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
    assert empty.status_code == 422 and empty.json()["error"]["type"] == "InvalidInput"

    spec = (await client.get("/openapi.json")).json()
    assert {
        "/api/runs",
        "/api/runs/{interaction_id}",
        "/api/runs/{interaction_id}/feedback",
        "/api/runs/{interaction_id}/approve",
        "/api/runs/{interaction_id}/revise",
        "/api/runs/{interaction_id}/edit",
        "/api/runs/{interaction_id}/reject",
        "/api/runs/{interaction_id}/export",
    } <= set(spec["paths"])


async def test_the_api_answers_a_run_as_exactly_its_public_dict(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        public = (await agent.get(interaction_id)).to_public_dict()
    one = (await client.get(f"/api/runs/{interaction_id}")).json()
    listed = (await client.get("/api/runs")).json()
    assert one == public and listed == [public]


async def test_the_openapi_run_model_names_exactly_the_public_dicts_keys(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        public = (await agent.get(interaction_id)).to_public_dict()
    spec = (await client.get("/openapi.json")).json()
    model = spec["components"]["schemas"]["RunOut"]
    assert (list(model["properties"]), sorted(model["required"])) == (list(public), sorted(public))


async def test_the_api_starts_a_review_run_with_merge_fields(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    created = await client.post(
        "/api/runs",
        json={"product": "Acme", "offer": "saves time", "sender": "Dana", "review": True,
              "fields": ["Email", "First Name"]},
    )  # fmt: skip
    run = created.json()
    assert (created.status_code, run["review"], run["max_rounds"], run["fields"]) == (
        201,
        True,
        5,
        ["email", "first_name"],
    )
    assert "budget" not in run["brief"] and set(run["brief"]) == set(Brief.model_fields)


async def test_the_api_refuses_merge_fields_given_as_one_string(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    refused = await client.post(
        "/api/runs",
        json={"product": "Acme", "offer": "saves time", "sender": "Dana", "fields": "Email"},
    )
    assert refused.status_code == 422 and server.count() == 0


def test_create_app_takes_settings_not_a_database_path(db_path: Path) -> None:
    with pytest.raises(TypeError, match="create_app takes Settings"):
        create_app(db_path)  # type: ignore[arg-type]


@pytest.mark.slow
def test_serve_refuses_a_public_address_without_a_token() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "8765")
    assert result.returncode == 7
    assert "refusing to listen on 0.0.0.0 without COLDMAIL_WEB_TOKEN" in result.stderr
