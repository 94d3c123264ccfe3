"""Review rounds in the inbox: the tabs, a new run, and the four decisions through the run
page's forms and the JSON API — each applied once, refused without a change when it does not
fit, and CSRF- and Origin-protected."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.models import Run
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.web.app import create_app

from ..rows import SqliteRows
from .test_web import BASE, FEEDBACK, HOST, PORT, csrf, settings_for, web_client

EVIL_ORIGIN = {"Origin": "https://evil.example"}


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


async def at_review(db_path: Path, brief: Brief, **options: object) -> str:
    """A run started for review and given its feedback: awaiting review at round 1."""
    async with ColdMailAgent.open(db_path, **options) as agent:  # type: ignore[arg-type]
        pending = await agent.start(brief, review=True, fields=["email", "first_name"])
        return (await agent.resume(pending.interaction_id, FEEDBACK)).interaction_id


async def stored_run(db_path: Path, interaction_id: str) -> Run:
    async with ColdMailAgent.open(db_path) as agent:
        return await agent.get(interaction_id)


def round_of(page: str) -> str:
    """The round the page's decision forms carry."""
    match = re.search(r'name="round" value="(\d+)"', page)
    assert match, "the page has no decision form"
    return match.group(1)


async def form(client: httpx.AsyncClient, interaction_id: str) -> dict[str, str]:
    """The hidden fields of the run page's decision forms (and its CSRF cookie set)."""
    page = (await client.get(f"/runs/{interaction_id}")).text
    return {"csrf_token": csrf(page), "round": round_of(page)}


# ---------------------------------------------------------------------------- the inbox


async def test_each_tab_lists_the_runs_of_its_status(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        waiting = (await agent.start(brief, review=True)).interaction_id
    reviewing, approved, rejected = [await at_review(db_path, brief) for _ in range(3)]
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(approved)
        await agent.reject(rejected, "wrong market")
    listed = {
        tab: {i for i in (waiting, reviewing, approved, rejected) if i in page.text}
        for tab in ("awaiting", "review", "completed", "rejected")
        for page in [await client.get(f"/?tab={tab}")]
    }
    assert listed == {
        "awaiting": {waiting},
        "review": {reviewing},
        "completed": {approved},
        "rejected": {rejected},
    }


async def test_the_review_tab_says_the_round(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    await at_review(db_path, brief)
    page = (await client.get("/?tab=review")).text
    assert 'class="active">Awaiting review <span class="count">(1)</span></a>' in page
    assert "<td>1 of 5</td>" in page


def visible(page: str) -> str:
    """A page's text as a reader sees it: no tags, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


async def test_the_tabs_count_their_runs(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        for _ in range(3):
            await agent.start(brief, review=True)
    reviewing, approved = [await at_review(db_path, brief) for _ in range(2)]
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(approved)
    for tab in ("awaiting", "review", "completed", "rejected"):
        text = visible((await client.get(f"/?tab={tab}")).text)
        assert "Waiting for feedback (3) Awaiting review (1) Completed (1) Rejected (0)" in text


async def test_the_list_shows_the_audience_the_reviewer_gave_not_only_the_guess(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        waiting = (await agent.start(brief, review=True)).interaction_id
        guessless = (await agent.start(brief.model_copy(update={"audience": None}))).interaction_id
    reviewing = await at_review(db_path, brief)
    long_feedback = "Ceramics program coordinators at community colleges " + "with kilns " * 170
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief, review=True)
        detailed = (await agent.resume(pending.interaction_id, long_feedback)).interaction_id
    awaiting = visible((await client.get("/")).text)
    assert "Audience" in awaiting and f"guess: {brief.audience}" in awaiting
    assert waiting in (await client.get("/")).text and guessless in (await client.get("/")).text
    review = (await client.get("/?tab=review")).text
    row = re.search(rf'<tr>\s*<td><a href="/runs/{reviewing}">.*?</tr>', review, re.S)
    assert row and FEEDBACK in row.group(0) and "guess" not in visible(row.group(0))
    detailed_row = re.search(rf'<tr>\s*<td><a href="/runs/{detailed}">.*?</tr>', review, re.S)
    assert detailed_row and "Ceramics program coordinators at community colleges" in (
        detailed_row.group(0)
    )
    assert len(detailed_row.group(0)) < 1000  # a long feedback is clipped in the list
    assert "…" in visible(detailed_row.group(0))


async def test_the_follow_up_is_shown_as_the_reply_the_export_makes_of_it(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    run = await stored_run(db_path, interaction_id)
    assert run.sequence is not None
    opener, follow_up = run.sequence.opener.subject, run.sequence.follow_up.subject
    reply = f"Subject: (sent as a reply to email 1: Re: {opener})"
    own = f"Its own subject, “{follow_up}”, is not exported"
    under_review = visible((await client.get(f"/runs/{interaction_id}")).text)
    assert reply in under_review and own in under_review
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(interaction_id)
    completed = visible((await client.get(f"/runs/{interaction_id}")).text)
    assert completed.count(reply) >= 1 and own in completed


# ---------------------------------------------------------------------------- a new run


async def test_the_new_run_form_starts_a_review_run_with_merge_fields(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path
) -> None:
    page = await client.get("/runs/new")
    created = await client.post(
        "/runs",
        data={
            "product": "Ledgerly",
            "offer": "reconciles invoices",
            "sender": "Sam Roy",
            "audience": "",
            "cta": "",
            "fields": "Email, First Name ,Company",
            "review": "on",
            "csrf_token": csrf(page.text),
        },
        headers={"Origin": BASE},
    )
    assert created.status_code == 303
    run = await stored_run(db_path, created.headers["location"].rsplit("/", 1)[1])
    assert (run.status, run.review, run.fields, run.brief.audience) == (
        RunStatus.AWAITING_FEEDBACK,
        True,
        ("email", "first_name", "company"),
        None,
    )
    assert "Merge fields available: {{email}}, {{first_name}}, {{company}}" in (
        server.requests[-1].user_text
    )


async def test_a_refused_new_run_keeps_what_was_typed(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    page = await client.get("/runs/new")
    refused = await client.post(
        "/runs",
        data={"product": "  ", "offer": "<b>saves</b> time", "sender": "Dana",
              "csrf_token": csrf(page.text)},
    )  # fmt: skip
    assert refused.status_code == 422 and "product must not be empty" in refused.text
    assert "&lt;b&gt;saves&lt;/b&gt; time</textarea>" in refused.text
    assert server.count() == 0


# ---------------------------------------------------------------------------- the run page


async def test_a_run_awaiting_review_shows_its_round_and_the_four_decisions(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert "Under review · round 1 of 5" in page
    for action in ("approve", "revise", "edit", "reject"):
        assert f'action="/runs/{interaction_id}/{action}"' in page
    assert page.count('name="round" value="1"') == 4


async def test_the_run_page_shows_the_earlier_rounds_with_who_decided(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        await agent.revise(interaction_id, "shorter", reviewer="Ann")
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert "Under review · round 2 of 5" in page
    assert re.search(r"Round 1 · Ann asked for a revision: “shorter” · \d{4}-\d\d-\d\d", page)


async def test_the_revise_form_is_gone_at_the_round_limit_with_a_note(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief, max_rounds=2)
    async with web_client(settings_for(db_path, max_rounds=2)) as client:
        first = (await client.get(f"/runs/{interaction_id}")).text
        await client.post(
            f"/runs/{interaction_id}/revise",
            data={"guidance": "shorter", "round": "1", "csrf_token": csrf(first)},
        )
        page = (await client.get(f"/runs/{interaction_id}")).text
    assert (
        'id="revise-form"' in first,
        'id="revise-form"' in page,
        "Revising is closed: this run is at round 2" in page,
    ) == (True, False, True)


# ---------------------------------------------------------------------------- each decision


async def test_approve_through_the_form_completes_with_the_sequence_under_review(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    before = await stored_run(db_path, interaction_id)
    answer = await client.post(
        f"/runs/{interaction_id}/approve",
        data={**await form(client, interaction_id), "reviewer": "Ann"},
        headers={"Origin": BASE},
    )
    assert answer.status_code == 303
    after = await stored_run(db_path, interaction_id)
    assert (after.status, after.final) == (RunStatus.COMPLETED, before.sequence)
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert "<h2>Final (approved)</h2>" in page and "Round 1 · Ann approved it" in page


async def test_revise_through_the_form_asks_the_llm_once_and_pauses_at_round_2(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    answer = await client.post(
        f"/runs/{interaction_id}/revise",
        data={**await form(client, interaction_id), "guidance": "mention the free trial"},
    )
    assert answer.status_code == 303
    run = await stored_run(db_path, interaction_id)
    assert (run.status, run.round, server.count("revise")) == (RunStatus.AWAITING_REVIEW, 2, 1)
    assert run.sequence is not None and "mention the free trial" in run.sequence.opener.subject


async def test_edit_through_the_form_puts_the_reviewers_text_under_review(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    answer = await client.post(
        f"/runs/{interaction_id}/edit",
        data={
            **await form(client, interaction_id),
            "opener_subject": "  Hello {{first_name}}  ",
            "opener_body": "Hi {{first_name|there}},\r\n\r\nMine.\r\n\r\nDana",
            "follow_up_subject": "Again",
            "follow_up_body": "Hi again",
            "follow_up_wait_days": "6",
        },
    )
    assert answer.status_code == 303
    run = await stored_run(db_path, interaction_id)
    assert run.sequence is not None and (run.round, run.sequence.model_dump()) == (
        2,
        {
            "opener": {
                "subject": "Hello {{first_name}}",
                "body": "Hi {{first_name|there}},\n\nMine.\n\nDana",
                "wait_days": 0,
            },
            "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 6},
        },
    )
    assert server.count("revise") == 0


async def test_reject_through_the_form_ends_the_run_and_shows_the_reason(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    answer = await client.post(
        f"/runs/{interaction_id}/reject",
        data={**await form(client, interaction_id), "reason": "wrong <market>", "reviewer": "Bo"},
    )
    assert answer.status_code == 303
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert "<b>Rejected at round 1:</b> wrong &lt;market&gt;" in page
    assert (await stored_run(db_path, interaction_id)).status is RunStatus.REJECTED


async def test_an_edit_that_does_not_validate_keeps_the_reviewers_text(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    before = SqliteRows(db_path).row(interaction_id)
    answer = await client.post(
        f"/runs/{interaction_id}/edit",
        data={
            **await form(client, interaction_id),
            "opener_subject": "My <subject>",
            "opener_body": "My body, kept",
            "follow_up_subject": "My follow-up",
            "follow_up_body": "Still mine",
            "follow_up_wait_days": "0",
            "reviewer": "Ann",
        },
    )
    text = answer.text
    assert answer.status_code == 422
    assert "the follow-up must wait at least one day" in text
    assert '<details class="card" id="edit" open>' in text
    assert 'value="My &lt;subject&gt;"' in text and ">\nMy body, kept</textarea>" in text
    assert ">\nStill mine</textarea>" in text and 'value="0"' in text and 'value="Ann"' in text
    assert SqliteRows(db_path).row(interaction_id) == before


async def test_a_revision_the_llm_fails_keeps_the_guidance_and_the_round(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    server.enqueue(Reply(kind="revise", status=500, content="LLM down"))
    async with web_client(settings_for(db_path), retry=NO_RETRY) as client:
        data = {**await form(client, interaction_id), "guidance": "mention the <free> trial"}
        failed = await client.post(f"/runs/{interaction_id}/revise", data=data)
    assert failed.status_code == 502 and ">mention the &lt;free&gt; trial</textarea>" in failed.text
    run = await stored_run(db_path, interaction_id)
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 1)


# ---------------------------------------------------------------------------- applied once


async def test_the_same_revise_form_submitted_twice_revises_once(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    data = {**await form(client, interaction_id), "guidance": "shorter"}
    server.enqueue(Reply(kind="revise", delay=1.0))
    first, second = await asyncio.gather(
        client.post(f"/runs/{interaction_id}/revise", data=data),
        client.post(f"/runs/{interaction_id}/revise", data=data),
    )
    assert (first.status_code, second.status_code, server.count("revise")) == (303, 303, 1)


async def test_an_approval_submitted_again_after_it_applied_shows_the_result(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    data = await form(client, interaction_id)
    answers = [await client.post(f"/runs/{interaction_id}/approve", data=data) for _ in range(2)]
    assert [a.status_code for a in answers] == [303, 303]


async def test_ten_reviewers_revising_at_once_one_is_applied_the_others_are_told(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    guidances = [f"Reviewer {n}: mention clinic {n}" for n in range(10)]
    server.enqueue(Reply(kind="revise", delay=1.0))
    app = create_app(settings_for(db_path), host=HOST, port=PORT)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)

        async def reviewer(guidance: str) -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as browser:
                data = {**await form(browser, interaction_id), "guidance": guidance}
                return await browser.post(
                    f"/runs/{interaction_id}/revise", data=data, headers={"Origin": BASE}
                )

        answers = await asyncio.gather(*(reviewer(g) for g in guidances))
    assert sorted(a.status_code for a in answers) == [303] + [409] * 9
    used = guidances[[a.status_code for a in answers].index(303)]
    for answer in answers:
        if answer.status_code == 409:
            assert "Your decision was not applied: round 1 was already decided" in answer.text
            assert f"another reviewer asked for a revision: “{used}”" in answer.text
    assert server.count("revise") == 1


async def test_decisions_racing_a_revision_are_refused_and_told_which_was_taken(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    server.enqueue(Reply(kind="revise", delay=1.0))
    app = create_app(settings_for(db_path), host=HOST, port=PORT)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as browser:
            data = await form(browser, interaction_id)
            revising = asyncio.ensure_future(
                browser.post(
                    f"/runs/{interaction_id}/revise",
                    data={**data, "guidance": "shorter", "reviewer": "Ann"},
                )
            )
            while server.count("revise") == 0:  # the revision holds the run
                await asyncio.sleep(0.02)
            others = await asyncio.gather(
                browser.post(f"/runs/{interaction_id}/approve", data=data),
                browser.post(f"/runs/{interaction_id}/reject", data={**data, "reason": "no"}),
            )
            revised = await revising
    assert [revised.status_code] + [a.status_code for a in others] == [303, 409, 409]
    for answer in others:
        assert "Ann asked for a revision: “shorter”" in answer.text
    run = await stored_run(db_path, interaction_id)
    assert (run.status, run.round, server.count("revise")) == (RunStatus.AWAITING_REVIEW, 2, 1)


async def test_a_decision_for_a_round_already_decided_changes_nothing(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    stale = await form(client, interaction_id)
    await client.post(f"/runs/{interaction_id}/revise", data={**stale, "guidance": "shorter"})
    before = SqliteRows(db_path).row(interaction_id)
    late = await client.post(f"/runs/{interaction_id}/approve", data=stale)
    assert late.status_code == 409
    assert "round 1 was already decided — another reviewer asked for a revision" in late.text
    assert SqliteRows(db_path).row(interaction_id) == before


async def test_approving_a_run_still_awaiting_feedback_is_409_and_changes_nothing(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief, review=True)).interaction_id
    page = (await client.get(f"/runs/{interaction_id}")).text
    before = SqliteRows(db_path).row(interaction_id)
    refused = await client.post(
        f"/runs/{interaction_id}/approve", data={"csrf_token": csrf(page), "round": "1"}
    )
    assert refused.status_code == 409 and "still waiting for audience feedback" in refused.text
    assert SqliteRows(db_path).row(interaction_id) == before


async def test_revising_past_the_round_limit_through_a_stale_form_is_409(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief, max_rounds=1)
    async with web_client(settings_for(db_path, max_rounds=1)) as client:
        data = {**await form(client, interaction_id), "guidance": "shorter"}
        refused = await client.post(f"/runs/{interaction_id}/revise", data=data)
    assert refused.status_code == 409 and "cannot be revised again" in refused.text
    assert server.count("revise") == 0


# ---------------------------------------------------------------------------- CSRF and Origin

FORMS = {
    "/runs": {"product": "Acme", "offer": "saves time", "sender": "Dana"},
    "approve": {},
    "revise": {"guidance": "shorter"},
    "edit": {
        "opener_subject": "S",
        "opener_body": "B",
        "follow_up_subject": "F",
        "follow_up_body": "G",
        "follow_up_wait_days": "3",
    },
    "reject": {"reason": "no"},
}


@pytest.mark.parametrize("action", list(FORMS))
@pytest.mark.parametrize("attack", ["no-token", "wrong-token", "foreign-origin"])
async def test_the_new_forms_refuse_a_missing_token_or_a_foreign_origin(
    client: httpx.AsyncClient,
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
    action: str,
    attack: str,
) -> None:
    interaction_id = await at_review(db_path, brief)
    hidden = await form(client, interaction_id)  # the browser holds a real token and cookie
    calls = server.count()
    data = dict(FORMS[action], round=hidden["round"])
    headers = {}
    if attack == "wrong-token":
        data["csrf_token"] = "forged"
    elif attack == "foreign-origin":
        data["csrf_token"] = hidden["csrf_token"]
        headers = EVIL_ORIGIN
    url = action if action.startswith("/") else f"/runs/{interaction_id}/{action}"
    before = SqliteRows(db_path).row(interaction_id)
    refused = await client.post(url, data=data, headers=headers)
    assert refused.status_code == 403
    assert SqliteRows(db_path).row(interaction_id) == before and server.count() == calls


# ---------------------------------------------------------------------------- the JSON API


async def test_each_decision_through_the_api(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    rid = await at_review(db_path, brief)
    sequence = (await client.get(f"/api/runs/{rid}")).json()["sequence"]
    sequence["opener"]["subject"] = "My subject"
    answers = [
        await client.post(f"/api/runs/{rid}/revise", json={"guidance": "shorter", "round": 1}),
        await client.post(f"/api/runs/{rid}/edit", json={"sequence": sequence, "reviewer": "Bo"}),
        await client.post(f"/api/runs/{rid}/approve", json={"round": 3}),
    ]
    assert [(a.status_code, a.json()["status"], a.json()["round"]) for a in answers] == [
        (200, "awaiting_review", 2),
        (200, "awaiting_review", 3),
        (200, "completed", 3),
    ]
    assert answers[-1].json()["final"]["opener"]["subject"] == "My subject"
    other = await at_review(db_path, brief)
    rejected = await client.post(f"/api/runs/{other}/reject", json={"reason": "wrong market"})
    assert (rejected.status_code, rejected.json()["rejection"]) == (200, "wrong market")


async def test_the_same_api_decision_twice_returns_the_stored_run(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    rid = await at_review(db_path, brief)
    body = {"guidance": "shorter", "round": 1}
    first = await client.post(f"/api/runs/{rid}/revise", json=body)
    second = await client.post(f"/api/runs/{rid}/revise", json=body)
    assert (second.status_code, second.json(), server.count("revise")) == (200, first.json(), 1)


async def test_a_different_api_decision_for_a_decided_round_is_409(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    rid = await at_review(db_path, brief)
    await client.post(f"/api/runs/{rid}/approve", json={"round": 1})
    refused = await client.post(f"/api/runs/{rid}/reject", json={"reason": "no", "round": 1})
    assert (refused.status_code, refused.json()["error"]["type"]) == (409, "RunConflict")


async def test_an_api_approval_of_a_run_awaiting_feedback_is_409_and_changes_nothing(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        rid = (await agent.start(brief, review=True)).interaction_id
    before = SqliteRows(db_path).row(rid)
    refused = await client.post(f"/api/runs/{rid}/approve", json={})
    assert refused.status_code == 409 and "still waiting" in refused.json()["error"]["message"]
    assert SqliteRows(db_path).row(rid) == before


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("revise", {}, "guidance: Field required"),
        ("revise", {"guidance": "  "}, "guidance must not be empty"),
        ("reject", {"reason": "x", "why": 1}, "why: Extra inputs are not permitted"),
        ("approve", {"round": 0}, "round: Input should be greater than or equal to 1"),
        ("approve", {"round": "1"}, "round: Input should be a valid integer"),
        ("edit", {"sequence": {"opener": {"subject": "x"}}}, "sequence.opener.body: Field"),
    ],
    ids=["no-guidance", "empty-guidance", "extra-key", "round-0", "round-text", "bad-sequence"],
)
async def test_a_malformed_api_decision_is_422(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, path: str, body: dict, message: str
) -> None:
    rid = await at_review(db_path, brief)
    refused = await client.post(f"/api/runs/{rid}/{path}", json=body)
    assert refused.status_code == 422 and message in refused.json()["error"]["message"]


async def test_an_api_decision_that_is_not_json_is_415(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    rid = await at_review(db_path, brief)
    refused = await client.post(f"/api/runs/{rid}/approve", data={"round": "1"})
    assert refused.status_code == 415


@pytest.mark.parametrize("round", ["²", "١", "１", "1²", "0x1", "-1", "1e3"])
async def test_a_round_that_is_not_ascii_digits_is_refused_on_the_page(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, round: str
) -> None:
    interaction_id = await at_review(db_path, brief)
    fields = await form(client, interaction_id)
    for action, extra in (("approve", {}), ("reject", {"reason": "no"})):
        answer = await client.post(
            f"/runs/{interaction_id}/{action}",
            data={**fields, **extra, "round": round},
            headers={"Origin": BASE},
        )
        assert answer.status_code == 422, (action, round)
        assert "the form&#39;s round is not a number; reload the run page" in answer.text
        assert answer.headers["cache-control"] == "no-store"
    run = await stored_run(db_path, interaction_id)
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 1)


@pytest.mark.parametrize("round", ["²", "١", "1", 1.0, True, [1]])
async def test_a_round_that_is_not_a_json_integer_is_refused_by_the_api(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, round: object
) -> None:
    interaction_id = await at_review(db_path, brief)
    answer = await client.post(f"/api/runs/{interaction_id}/approve", json={"round": round})
    assert answer.status_code == 422
    assert answer.json()["error"]["type"] == "InvalidInput"
    assert answer.json()["error"]["message"].startswith("invalid request: round:")
    assert (await stored_run(db_path, interaction_id)).status is RunStatus.AWAITING_REVIEW


async def test_an_edit_whose_days_are_not_ascii_digits_keeps_what_was_typed(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    fields = await form(client, interaction_id)
    typed = {
        "opener_subject": "Hello",
        "opener_body": "Hi there",
        "follow_up_subject": "Again",
        "follow_up_body": "Hi again",
        "follow_up_wait_days": "³",
    }
    answer = await client.post(
        f"/runs/{interaction_id}/edit", data={**fields, **typed}, headers={"Origin": BASE}
    )
    assert answer.status_code == 422 and "wait_days" in answer.text
    assert 'name="follow_up_wait_days" required min="1" max="90" value="³"' in answer.text
    assert (await stored_run(db_path, interaction_id)).round == 1
