"""One-click links in the inbox (``/l/<token>``), through an in-process ASGI client on real
SQLite and the scripted LLM: the page opens exactly its run's current pause with no login,
opening it changes nothing, its forms answer once through the agent, and every other use —
forged, edited, truncated, expired, another run, another pause, answered, replayed, wrong
Host, foreign Origin, a form from elsewhere — is refused without a word about the run.

The inbox requires ``COLDMAIL_WEB_TOKEN`` in every test here; no request sends it."""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.errors import InvalidInput
from bridgic_coldmail.models import Run, make_decision
from bridgic_coldmail.notify.links import LINK_PATH, make_form_token, make_token, read_token
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.signing import KeySource, SnapshotSigner, key_file_for, load_signer
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.web.security import CONTENT_SECURITY_POLICY

from ..conftest import PROCESS_TIMEOUT
from .test_web import BASE, FEEDBACK, STRONG_TOKEN, csrf, paused, settings_for, web_client
from .test_web_review import at_review

ORIGIN = {"Origin": BASE}
EVIL_ORIGIN = {"Origin": "https://evil.example"}
JSON = {"Accept": "application/json"}


def link_settings(db_path: Path, **more: object) -> Settings:
    """The inbox behind a token, with the public origin links are made for."""
    return settings_for(db_path, **{"web_token": STRONG_TOKEN, "public_origin": BASE, **more})


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(link_settings(db_path)) as c:
        yield c


async def link_to(db_path: Path, interaction_id: str) -> str:
    """The path (``/l/<token>``) of a link to the run's current pause, as ``agent.link``
    makes it."""
    async with ColdMailAgent.open(db_path, settings=link_settings(db_path)) as agent:
        url = await agent.link(interaction_id)
    assert url.startswith(BASE + LINK_PATH)
    return url.removeprefix(BASE)


def signer_of(db_path: Path) -> SnapshotSigner:
    """The database's signing key, to make tokens ``agent.link`` would not (expired ones)."""
    keys = KeySource(None, key_file_for(db_path))
    return load_signer(keys, may_create=False, holds_runs=True)


async def stored_run(db_path: Path, interaction_id: str) -> tuple[Run, int]:
    """The run as stored, and how many events its history holds."""
    async with ColdMailAgent.open(db_path) as agent:
        return await agent.get(interaction_id), len(await agent.history(interaction_id))


def visible(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def assert_no_run_data(answer: httpx.Response, run: Run) -> None:
    """Nothing of the run in the answer, and no way to the inbox from it."""
    text = html.unescape(answer.text)
    for secret in (run.interaction_id, run.brief.product, run.brief.offer, run.draft.opener.body):
        assert secret not in text
    if run.sequence is not None:
        assert run.sequence.opener.body not in text
    assert 'href="/"' not in answer.text and "/runs/" not in answer.text


async def answer(
    client: httpx.AsyncClient, path: str, kind: str, page: str, **fields: str
) -> httpx.Response:
    """Submit the ``kind`` form of the link page ``page`` (its form token included)."""
    data = {"csrf_token": csrf(page), **fields}
    return await client.post(f"{path}/{kind}", data=data, headers=ORIGIN)


# ---------------------------------------------------------------------------- what it shows


async def test_a_link_opens_its_pause_without_the_inbox_token_and_grants_nothing_else(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    run, _ = await stored_run(db_path, interaction_id)

    page = await client.get(path)
    assert page.status_code == 200
    text = visible(page.text)
    assert run.draft.opener.subject in text and run.question in text
    assert brief.product in text and "Audience guess: clinic managers" in text
    # The forms post back under the link; the page links to nothing but its own files.
    assert re.findall(r'action="([^"]+)"', page.text) == [f"{path}/feedback"]
    assert re.findall(r'(?:href|src)="([^"]+)"', page.text) == [
        "/static/style.css",
        "/static/run.js",
    ]
    assert "set-cookie" not in page.headers
    for header, value in {
        "cache-control": "no-store",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "referrer-policy": "no-referrer",
        "x-robots-tag": "noindex",
        "x-frame-options": "DENY",
    }.items():
        assert page.headers[header] == value
    # The same client is still a stranger to the inbox, the run page and the API.
    for elsewhere in ("/", f"/runs/{interaction_id}", "/api/runs", f"/api/runs/{interaction_id}"):
        assert (await client.get(elsewhere)).status_code == 401
    assert (await client.get("/static/style.css")).status_code == 200


async def test_a_review_link_shows_the_round_its_changes_and_the_four_decisions(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = await client.get(path)
    assert page.status_code == 200
    assert "Under review · round 1 of 5" in page.text and "Changes since the draft" in page.text
    actions = re.findall(r'action="([^"]+)"', page.text)
    assert actions == [f"{path}/{kind}" for kind in ("approve", "revise", "edit", "reject")]
    assert len(set(re.findall(r'name="csrf_token" value="([^"]+)"', page.text))) == 1


async def test_opening_a_link_again_and_again_changes_nothing(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    before = await stored_run(db_path, interaction_id)
    requests = server.count("refine") + server.count("revise")
    for _ in range(3):
        assert (await client.get(path)).status_code == 200
        assert (await client.head(path)).status_code == 200
    assert await stored_run(db_path, interaction_id) == before
    assert server.count("refine") + server.count("revise") == requests


async def test_each_opening_carries_a_fresh_form_token_bound_to_the_link(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    first, second = [csrf((await client.get(path)).text) for _ in range(2)]
    assert first != second
    # Either page's form works: two tabs of the same link do not spoil each other.
    posted = await client.post(
        f"{path}/feedback", data={"feedback": FEEDBACK, "csrf_token": first}, headers=ORIGIN
    )
    assert posted.status_code == 303


# ---------------------------------------------------------------------------- answering


async def test_feedback_through_a_link_is_applied_then_the_link_says_what_was_decided(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    posted = await answer(client, path, "feedback", page, feedback=FEEDBACK, reviewer="Ann")
    assert (posted.status_code, posted.headers["location"]) == (303, path)
    run, _ = await stored_run(db_path, interaction_id)
    assert (run.status, run.feedback) == (RunStatus.COMPLETED, FEEDBACK)
    history = (await _history(db_path, interaction_id))[-2:]
    assert [(e.kind, e.actor) for e in history] == [("feedback", "Ann"), ("completed", None)]

    shown = await client.get(path)
    assert shown.status_code == 200
    at = f"{history[0].at:%Y-%m-%d %H:%M:%S}"
    assert f"Ann answered with the audience “{FEEDBACK}”, at {at} UTC." in visible(shown.text)
    assert_no_run_data(shown, run)  # what was decided, by whom and when: only that
    assert "<form" not in shown.text
    assert server.count("refine") == 1


async def _history(db_path: Path, interaction_id: str) -> list:  # type: ignore[type-arg]
    async with ColdMailAgent.open(db_path) as agent:
        return await agent.history(interaction_id)


@pytest.mark.parametrize(
    ("kind", "fields", "status", "said"),
    [
        ("approve", {}, RunStatus.COMPLETED, "Round 1: Bo approved it"),
        ("reject", {"reason": "wrong market"}, RunStatus.REJECTED, "Round 1: Bo rejected the run"),
        ("revise", {"guidance": "shorter"}, RunStatus.AWAITING_REVIEW, "Bo asked for a revision"),
        ("edit", {}, RunStatus.AWAITING_REVIEW, "Round 1: Bo edited the emails"),
    ],
)
async def test_each_decision_through_a_link_is_applied_for_the_links_round(
    client: httpx.AsyncClient,
    db_path: Path,
    brief: Brief,
    kind: str,
    fields: dict[str, str],
    status: RunStatus,
    said: str,
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    if kind == "edit":
        fields = {
            "opener_subject": "A shorter hello",
            "opener_body": "Hi {{first_name}},\r\nshort and sweet.\r\nDana",
            "follow_up_subject": "Again",
            "follow_up_body": "Hi again {{first_name}}",
            "follow_up_wait_days": "4",
        }
    # The round the form claims does not matter: the link answers its own round.
    posted = await answer(client, path, kind, page, reviewer="Bo", round="7", **fields)
    assert (posted.status_code, posted.headers.get("location")) == (303, path), posted.text
    run, _ = await stored_run(db_path, interaction_id)
    assert run.status is status
    if kind in ("revise", "edit"):
        assert run.round == 2
    if kind == "edit":
        assert run.sequence is not None
        assert run.sequence.opener.body == "Hi {{first_name}},\nshort and sweet.\nDana"
    shown = visible((await client.get(path)).text)
    assert said in shown and "This link can change nothing more." in shown


async def test_a_decision_the_run_page_would_refuse_is_refused_the_same_way_with_the_form_kept(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    typed = {
        "opener_subject": "Hello",
        "opener_body": "Hi {{first_name}}",
        "follow_up_subject": "Again",
        "follow_up_body": "Hi {{unknown_column}}",
        "follow_up_wait_days": "0",
    }
    refused = await answer(client, path, "edit", page, **typed)
    assert refused.status_code == 422
    assert 'value="Again"' in refused.text and ">\nHi {{unknown_column}}</textarea>" in refused.text
    empty = await answer(client, path, "feedback", page, feedback="x")
    assert empty.status_code == 404  # a review link has no feedback form
    blank = await answer(client, path, "reject", page, reason="  ", reviewer="Bo")
    with pytest.raises(InvalidInput) as same_rule:  # what the run page and the API say too
        make_decision("reject", text="  ", reviewer="Bo", round=1)
    assert blank.status_code == 422 and html.escape(str(same_rule.value)) in blank.text
    assert 'value="Bo"' in blank.text
    run, _ = await stored_run(db_path, interaction_id)
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 1)
    # The refusal page is the link's page: the forms still post under the link.
    assert f'action="{path}/approve"' in refused.text and 'href="/"' not in refused.text


async def test_an_llm_failure_keeps_the_guidance_and_the_link_still_works(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    server.enqueue(Reply(kind="revise", status=500))
    async with web_client(link_settings(db_path), retry=NO_RETRY) as client:
        page = (await client.get(path)).text
        failed = await answer(client, path, "revise", page, guidance="mention the <free> trial")
        assert failed.status_code == 502
        assert ">mention the &lt;free&gt; trial</textarea>" in failed.text
        again = await answer(client, path, "revise", failed.text, guidance="shorter")
        assert again.status_code == 303
    run, _ = await stored_run(db_path, interaction_id)
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 2)


# ---------------------------------------------------------------------------- races


async def test_while_an_answer_is_being_applied_the_link_says_so_and_changes_nothing(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    server.enqueue(Reply(kind="refine", delay=1.5))
    first = asyncio.create_task(answer(client, path, "feedback", page, feedback=FEEDBACK))
    for _ in range(100):
        shown = await client.get(path)
        if "Being answered" in shown.text:
            break
        await asyncio.sleep(0.02)
    assert shown.status_code == 200 and "<form" not in shown.text
    assert "is being applied right now" in visible(shown.text)
    other = await answer(client, path, "feedback", page, feedback="clinic owners")
    assert other.status_code == 409
    assert "another reviewer" in visible(other.text)
    assert (await first).status_code == 303
    run, _ = await stored_run(db_path, interaction_id)
    assert run.feedback == FEEDBACK and server.count("refine") == 1
    assert f"answered with the audience “{FEEDBACK}”" in visible((await client.get(path)).text)


async def test_a_link_works_the_same_when_the_inbox_needs_no_token(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    async with web_client(settings_for(db_path, public_origin=BASE)) as client:
        page = await client.get(path)
        assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
        posted = await answer(client, path, "feedback", page.text, feedback=FEEDBACK)
        assert (posted.status_code, posted.headers["location"]) == (303, path)
    run, _ = await stored_run(db_path, interaction_id)
    assert run.feedback == FEEDBACK


async def test_the_same_feedback_sent_twice_at_once_is_applied_once_and_both_see_it(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    server.enqueue(Reply(kind="refine", delay=1.0))
    first, second = await asyncio.gather(
        answer(client, path, "feedback", page, feedback=FEEDBACK),
        answer(client, path, "feedback", page, feedback=FEEDBACK),
    )
    assert (first.status_code, second.status_code) == (303, 303)
    assert server.count("refine") == 1


async def test_reviewers_racing_through_one_link_one_wins_the_others_are_told_whose_won(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    guidances = [f"Reviewer {n}: mention clinic {n}" for n in range(5)]
    server.enqueue(Reply(kind="revise", delay=1.0))
    answers = await asyncio.gather(
        *(answer(client, path, "revise", page, guidance=g) for g in guidances)
    )
    assert sorted(a.status_code for a in answers) == [303] + [409] * 4
    used = guidances[[a.status_code for a in answers].index(303)]
    for refused in (a for a in answers if a.status_code == 409):
        text = visible(refused.text)
        assert "Your decision was not applied: round 1 was already decided" in text
        assert f"another reviewer asked for a revision: “{used}”" in text
        assert "<form" not in refused.text  # the link's pause is over: nothing to send again
    assert server.count("revise") == 1


async def test_a_link_racing_the_run_page_one_is_applied_the_other_is_told(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """The run page (with the inbox token) and a link answer the same pause at once."""
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    server.enqueue(Reply(kind="refine", delay=1.0))
    async with web_client(link_settings(db_path)) as client:
        inbox = {"Authorization": f"Bearer {STRONG_TOKEN}"}
        run_page = await client.get(f"/runs/{interaction_id}", headers=inbox)
        link_page = (await client.get(path)).text
        from_inbox, from_link = await asyncio.gather(
            client.post(
                f"/runs/{interaction_id}/feedback",
                data={"feedback": "hospital CTOs", "csrf_token": csrf(run_page.text)},
                headers={**inbox, **ORIGIN},
            ),
            answer(client, path, "feedback", link_page, feedback="clinic owners"),
        )
    assert sorted([from_inbox.status_code, from_link.status_code]) == [303, 409]
    run, _ = await stored_run(db_path, interaction_id)
    assert run.feedback == ("hospital CTOs" if from_inbox.status_code == 303 else "clinic owners")
    assert server.count("refine") == 1


# ---------------------------------------------------------------------------- refusals


async def _refused(
    client: httpx.AsyncClient, path: str, status: int, run: Run, *, kind: str = "approve"
) -> None:
    """GET and POST of ``path`` are refused with ``status``, as a page and as JSON, with
    nothing of ``run`` in any of them."""
    for headers in ({}, JSON):
        shown = await client.get(path, headers=headers)
        posted = await client.post(
            f"{path}/{kind}", data={"csrf_token": "x"}, headers={**ORIGIN, **headers}
        )
        for refusal in (shown, posted):
            assert refusal.status_code in (status, 403), refusal.text
            assert_no_run_data(refusal, run)
            assert path.removeprefix(LINK_PATH) not in refusal.text or len(path) < 8
            if headers:
                assert set(refusal.json()["error"]) == {"type", "message"}
            else:
                assert refusal.headers["content-type"].startswith("text/html")
                assert refusal.headers["cache-control"] == "no-store"
        assert shown.status_code == status


async def test_a_forged_link_is_refused_with_403(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    run, _ = await stored_run(db_path, interaction_id)
    other_key = SnapshotSigner(b"k" * 32, "test")
    future = datetime.now(timezone.utc) + timedelta(days=1)
    forged = make_token(other_key, interaction_id, interaction_id, future)
    await _refused(client, LINK_PATH + forged, 403, run, kind="feedback")
    refusal = await client.get(LINK_PATH + forged, headers=JSON)
    assert refusal.json()["error"]["type"] == "LinkRefused"


async def test_every_one_character_edit_of_a_link_is_refused_with_403(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    token = path.removeprefix(LINK_PATH)
    run, events = await stored_run(db_path, interaction_id)
    page = (await client.get(path)).text
    for index, character in enumerate(token):
        replacement = "A" if character != "A" else "B"
        edited = LINK_PATH + token[:index] + replacement + token[index + 1 :]
        shown = await client.get(edited)
        assert shown.status_code == 403, index
        assert_no_run_data(shown, run)
        if index % 10 == 0:  # and the form of the genuine page, sent to the edited link
            posted = await answer(client, edited, "feedback", page, feedback=FEEDBACK)
            assert posted.status_code == 403
    assert await stored_run(db_path, interaction_id) == (run, events)


async def test_every_truncated_link_is_refused(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    token = path.removeprefix(LINK_PATH)
    run, _ = await stored_run(db_path, interaction_id)
    for end in range(1, len(token)):
        shown = await client.get(LINK_PATH + token[:end])
        assert shown.status_code == 403, end
        assert_no_run_data(shown, run)
    cut = await client.get(LINK_PATH)  # nothing after /l/
    assert cut.status_code == 404 and "this link is not valid" in cut.text
    assert_no_run_data(cut, run)
    for extended in (token + "A", token + "%20", "x" * 5000, token + "/x/y"):
        assert (await client.get(LINK_PATH + extended)).status_code in (403, 404), extended
    slashed = await client.get(path + "/")  # Starlette's redirect to the address without it
    assert (slashed.status_code, slashed.headers["location"]) == (307, BASE + path)


@pytest.mark.slow  # waits for a link to expire
async def test_an_expired_link_is_refused_with_410_from_its_last_second_on(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    run, events = await stored_run(db_path, interaction_id)
    signer = signer_of(db_path)
    now = datetime.now(timezone.utc)
    expired = LINK_PATH + make_token(signer, interaction_id, interaction_id, now)
    await _refused(client, expired, 410, run, kind="feedback")
    form = make_form_token(signer, expired.removeprefix(LINK_PATH))
    posted = await client.post(
        f"{expired}/feedback", data={"feedback": FEEDBACK, "csrf_token": form}, headers=ORIGIN
    )
    assert posted.status_code == 410 and "expired" in posted.text
    # A link that works now stops working at its time, with nothing else changed.
    soon = now.replace(microsecond=0) + timedelta(seconds=3)
    short = LINK_PATH + make_token(signer, interaction_id, interaction_id, soon)
    assert (await client.get(short)).status_code == 200
    await asyncio.sleep((soon - datetime.now(timezone.utc)).total_seconds() + 0.05)
    late = await client.get(short, headers=JSON)
    assert late.status_code == 410 and late.json()["error"]["type"] == "LinkExpired"
    assert await stored_run(db_path, interaction_id) == (run, events)


async def test_a_link_to_a_run_no_longer_stored_is_refused_with_404(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    run, _ = await stored_run(db_path, interaction_id)
    signer = signer_of(db_path)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    unknown = make_token(signer, "f" * 32, "f" * 32, future)
    await _refused(client, LINK_PATH + unknown, 404, run, kind="feedback")
    posted = await client.post(
        f"{LINK_PATH}{unknown}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": make_form_token(signer, unknown)},
        headers={**ORIGIN, **JSON},
    )
    assert posted.status_code == 404 and posted.json()["error"]["type"] == "LinkRunGone"
    path = await link_to(db_path, interaction_id)
    async with ColdMailAgent.open(db_path) as agent:
        await agent.purge(timedelta(0), ["awaiting_feedback"])
    gone = await client.get(path)
    assert gone.status_code == 404 and str(db_path) not in gone.text
    assert_no_run_data(gone, run)


async def test_a_link_acts_on_its_own_run_only(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    first, second = await paused(db_path, brief), await paused(db_path, brief)
    first_path, second_path = await link_to(db_path, first), await link_to(db_path, second)
    before = await stored_run(db_path, second)
    first_page = (await client.get(first_path)).text
    assert second not in first_page
    # The first page's form, sent to the second link: its form token is bound to the first.
    crossed = await answer(client, second_path, "feedback", first_page, feedback=FEEDBACK)
    assert crossed.status_code == 403 and "form" in crossed.text
    # The second run's id in the first link's payload, under the first link's signature.
    first_token, second_token = (p.removeprefix(LINK_PATH) for p in (first_path, second_path))
    spliced = second_token.split(".")[0] + "." + first_token.split(".")[1]
    assert (await client.get(LINK_PATH + spliced)).status_code == 403
    assert await stored_run(db_path, second) == before
    assert server.count("refine") == 0


async def test_a_link_to_an_earlier_pause_shows_its_answer_and_acts_no_more(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief, review=True)).interaction_id
    audience = await link_to(db_path, interaction_id)
    audience_page = (await client.get(audience)).text
    async with ColdMailAgent.open(db_path) as agent:
        await agent.resume(interaction_id, FEEDBACK, reviewer="Ann")
    round_one = await link_to(db_path, interaction_id)
    round_one_page = (await client.get(round_one)).text
    async with ColdMailAgent.open(db_path) as agent:
        await agent.revise(interaction_id, "shorter", reviewer="Bo")
    run, events = await stored_run(db_path, interaction_id)
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 2)

    shown = visible((await client.get(audience)).text)
    assert f"Ann answered with the audience “{FEEDBACK}”" in shown
    shown = visible((await client.get(round_one)).text)
    assert "Round 1: Bo asked for a revision: “shorter”" in shown
    for path, page, kind, fields in (
        (audience, audience_page, "feedback", {"feedback": "someone else"}),
        (round_one, round_one_page, "approve", {}),
    ):
        refused = await answer(client, path, kind, page, **fields)
        assert refused.status_code == 410
        assert_no_run_data(refused, run)
    # An audience link has no decision forms, whatever the run is at now.
    misused = await answer(client, audience, "approve", audience_page)
    assert misused.status_code == 404
    assert await stored_run(db_path, interaction_id) == (run, events)
    assert server.count("revise") == 1


async def test_a_retried_form_gets_the_recorded_result_and_another_answer_410(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    assert (await answer(client, path, "approve", page, reviewer="Bo")).status_code == 303
    after = await stored_run(db_path, interaction_id)
    # The same form again (its answer lost), by anyone: the recorded result, applied once.
    for reviewer in ("Bo", "", "Cy"):
        retried = await answer(client, path, "approve", page, reviewer=reviewer)
        assert (retried.status_code, retried.headers["location"]) == (303, path)
    for kind, fields in (("reject", {"reason": "changed mind"}), ("revise", {"guidance": "x"})):
        replayed = await client.post(
            f"{path}/{kind}", data={"csrf_token": csrf(page), **fields}, headers={**ORIGIN, **JSON}
        )
        assert replayed.status_code == 410
        assert replayed.json()["error"]["type"] == "LinkAnswered"
        assert interaction_id not in replayed.text
    assert await stored_run(db_path, interaction_id) == after
    assert "Round 1: Bo approved it" in visible((await client.get(path)).text)


async def test_a_retried_edit_gets_the_recorded_result_however_its_lines_break(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    typed = {
        "opener_subject": "A shorter hello",
        "opener_body": "Hi {{first_name}},\r\nshort and sweet.\r\nDana",
        "follow_up_subject": "Again",
        "follow_up_body": "Hi again {{first_name}}",
        "follow_up_wait_days": "4",
    }
    assert (await answer(client, path, "edit", page, **typed)).status_code == 303
    after = await stored_run(db_path, interaction_id)
    as_lf = {**typed, "opener_body": typed["opener_body"].replace("\r\n", "\n")}
    for retried_fields in (typed, as_lf, {**typed, "follow_up_wait_days": " 4 "}):
        retried = await answer(client, path, "edit", page, **retried_fields)
        assert (retried.status_code, retried.headers["location"]) == (303, path)
    for different in ({**typed, "follow_up_wait_days": "5"}, {**typed, "opener_subject": "Hi"}):
        assert (await answer(client, path, "edit", page, **different)).status_code == 410
    assert await stored_run(db_path, interaction_id) == after


async def test_a_retry_long_after_still_gets_the_recorded_result(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """Feedback and a round-1 revision, each retried once the run went on and finished."""
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief, review=True)).interaction_id
    audience = await link_to(db_path, interaction_id)
    audience_page = (await client.get(audience)).text
    given = await answer(client, audience, "feedback", audience_page, feedback=FEEDBACK)
    assert given.status_code == 303
    round_one = await link_to(db_path, interaction_id)
    round_one_page = (await client.get(round_one)).text
    revised = await answer(client, round_one, "revise", round_one_page, guidance="shorter")
    assert revised.status_code == 303
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(interaction_id, reviewer="Di")
    done = await stored_run(db_path, interaction_id)
    assert done[0].status is RunStatus.COMPLETED

    for path, page, kind, fields in (
        (audience, audience_page, "feedback", {"feedback": f"  {FEEDBACK}  "}),
        (round_one, round_one_page, "revise", {"guidance": "shorter", "reviewer": "Eve"}),
    ):
        retried = await answer(client, path, kind, page, **fields)
        assert (retried.status_code, retried.headers["location"]) == (303, path)
    for path, page, kind, fields in (
        (audience, audience_page, "feedback", {"feedback": "someone else"}),
        (round_one, round_one_page, "revise", {"guidance": "longer"}),
        (round_one, round_one_page, "approve", {}),
    ):
        assert (await answer(client, path, kind, page, **fields)).status_code == 410
    assert await stored_run(db_path, interaction_id) == done
    assert (server.count("refine"), server.count("revise")) == (1, 1)


async def test_a_form_without_the_pages_form_token_is_refused_with_403(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    token = path.removeprefix(LINK_PATH)
    good = csrf((await client.get(path)).text)
    nonce = good.split(".")[0]
    for form_token in (
        None,
        "",
        "x",
        good[:-1],
        good + "A",
        nonce + "." + make_form_token(SnapshotSigner(b"k" * 32, "t"), token).split(".")[1],
        "é" * 20,
        good.replace(".", ".."),
        "A" * 5000,
    ):
        data = {"feedback": FEEDBACK} | (
            {"csrf_token": form_token} if form_token is not None else {}
        )
        refused = await client.post(f"{path}/feedback", data=data, headers=ORIGIN)
        assert refused.status_code == 403, form_token
    # The inbox's CSRF cookie scheme does not stand in for it either.
    cookie = "a" * 43
    client.cookies.set("coldmail_csrf", cookie)
    refused = await client.post(
        f"{path}/feedback", data={"feedback": FEEDBACK, "csrf_token": cookie}, headers=ORIGIN
    )
    assert refused.status_code == 403
    assert server.count("refine") == 0


async def test_a_foreign_host_gets_421_and_a_foreign_origin_403_with_nothing_changed(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    run, events = await stored_run(db_path, interaction_id)
    page = (await client.get(path)).text
    data = {"feedback": FEEDBACK, "csrf_token": csrf(page)}
    for host in ("evil.example", "evil.example:8000"):
        misdirected = await client.get(path, headers={"Host": host})
        assert misdirected.status_code == 421
        assert_no_run_data(misdirected, run)
        posted = await client.post(f"{path}/feedback", data=data, headers={"Host": host, **ORIGIN})
        assert posted.status_code == 421
    for origin in ("https://evil.example", "http://127.0.0.1:8001", "nullx"):
        foreign = await client.post(f"{path}/feedback", data=data, headers={"Origin": origin})
        assert foreign.status_code == 403, origin
        assert_no_run_data(foreign, run)
    # "null" is what a browser sends from a no-referrer page: only the form token vouches.
    other = await link_to(db_path, await paused(db_path, brief))
    for form_token in ("", csrf((await client.get(other)).text)):
        opaque = await client.post(
            f"{path}/feedback",
            data={"feedback": FEEDBACK, "csrf_token": form_token},
            headers={"Origin": "null"},
        )
        assert opaque.status_code == 403
        assert_no_run_data(opaque, run)
    # ... and nowhere but under a link's path.
    inbox = {"Authorization": f"Bearer {STRONG_TOKEN}", "Origin": "null"}
    refused = await client.post("/runs", data={"product": "x"}, headers=inbox)
    assert refused.status_code == 403
    assert await stored_run(db_path, interaction_id) == (run, events)
    assert server.count("refine") == 0


async def test_a_form_from_a_no_referrer_page_says_origin_null_and_is_applied(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    data = {"feedback": FEEDBACK, "csrf_token": csrf(page)}
    posted = await client.post(f"{path}/feedback", data=data, headers={"Origin": "null"})
    assert (posted.status_code, posted.headers["location"]) == (303, path)
    run, _ = await stored_run(db_path, interaction_id)
    assert run.feedback == FEEDBACK


async def test_an_unknown_form_is_404_and_a_file_upload_is_refused(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    page = (await client.get(path)).text
    for kind in ("export", "feedback/again", "FEEDBACK", "%2e%2e"):
        refused = await client.post(
            f"{path}/{kind}", data={"csrf_token": csrf(page)}, headers=ORIGIN
        )
        assert refused.status_code in (404, 405), kind
    uploaded = await client.post(
        f"{path}/feedback",
        data={"feedback": FEEDBACK, "csrf_token": csrf(page)},
        files={"leads": ("leads.csv", b"email\na@example.com\n")},
        headers=ORIGIN,
    )
    assert uploaded.status_code == 400
    run, _ = await stored_run(db_path, interaction_id)
    assert run.status is RunStatus.AWAITING_FEEDBACK


async def test_the_way_in_without_the_inbox_token_leads_nowhere_else(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    """Paths under /l/ skip the inbox token; none of them reaches another page or the API
    (routes are matched on the path as sent: dot segments are not resolved)."""
    interaction_id = await paused(db_path, brief)
    run, _ = await stored_run(db_path, interaction_id)
    for path in (
        f"/l/%2e%2e/runs/{interaction_id}",
        "/l/%2e%2e/api/runs",
        f"/l/..%2Fruns%2F{interaction_id}",
        "/l/%2e%2e/",
        "/l/%2e%2e/static/../runs",
    ):
        for method in ("GET", "POST"):
            answered = await client.request(method, path, headers=ORIGIN)
            assert answered.status_code in (403, 404, 405, 307), (method, path)
            assert_no_run_data(answered, run)
            if answered.status_code == 307:  # a trailing slash dropped: still under /l/
                assert answered.headers["location"].startswith(BASE + LINK_PATH)
    assert (await client.get("/l")).status_code == 401  # not a link's path: the inbox's


async def test_json_is_answered_only_to_a_client_that_prefers_it(
    client: httpx.AsyncClient,
) -> None:
    forged = LINK_PATH + "abc.def"
    for accept, is_json in (
        ("application/json", True),
        ("application/json, text/html;q=0.5", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("text/html;q=0.2, application/json;q=0.1", False),
        ("application/json;q=nan", False),
        ("application/json;q=2", False),
        ("*/*", False),
        ("", False),
    ):
        refused = await client.get(forged, headers={"Accept": accept})
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith(
            "application/json" if is_json else "text/html"
        ), accept


# ---------------------------------------------------------------------------- logs


async def test_an_unexpected_error_on_a_link_is_logged_without_its_token(
    client: httpx.AsyncClient,
    db_path: Path,
    brief: Brief,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    interaction_id = await paused(db_path, brief)
    path = await link_to(db_path, interaction_id)
    token = path.removeprefix(LINK_PATH)

    async def broken(self: ColdMailAgent, token: str, **_: object) -> None:
        raise RuntimeError(f"cannot open {LINK_PATH}{token}")  # a message that quotes it

    monkeypatch.setattr(ColdMailAgent, "open_link", broken)
    with caplog.at_level(logging.ERROR):
        failed = await client.get(path)
    assert failed.status_code == 500 and token not in failed.text
    logged = "\n".join(
        logging.Formatter().format(record) for record in caplog.records
    )  # message and traceback
    assert "unexpected error answering GET /l/[redacted]" in logged
    assert "RuntimeError: cannot open" in logged
    assert token not in logged and token.split(".")[1] not in logged


def test_the_log_filter_redacts_tokens_in_uvicorns_access_lines_and_tracebacks() -> None:
    from uvicorn.logging import AccessFormatter

    from bridgic_coldmail.web.logs import RedactLinkTokens

    token = "WyJhIiwiYiIsMSxudWxsXQ.abcdefghijklmnopqrstuvwxyz0123456789_-ABCDE"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/l/{token}/approve?x=1", "1.1", 303),
        None,
    )
    assert RedactLinkTokens().filter(record) is True
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == '127.0.0.1:5000 - "POST /l/[redacted]/approve?x=1 HTTP/1.1" 303 See Other'
    try:
        raise ValueError(f"scope {{'path': '/l/{token}', 'raw_path': b'/l/{token}'}}")
    except ValueError:
        import sys

        failure = logging.LogRecord(
            "uvicorn.error", 40, __file__, 1, "%s", ({"path": f"/l/{token}"},), sys.exc_info()
        )
    RedactLinkTokens().filter(failure)
    text = logging.Formatter().format(failure)
    assert token not in text and token.split(".")[1] not in text
    assert text.startswith("{'path': '/l/[redacted]'}\nTraceback")
    assert text.endswith(
        "ValueError: scope {'path': '/l/[redacted]', 'raw_path': b'/l/[redacted]'}"
    )


# ---------------------------------------------------------------------------- the API and CLI


async def test_a_link_is_made_for_the_current_pause_with_the_settings_lifetime(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    settings = link_settings(db_path, link_ttl=3600)
    async with ColdMailAgent.open(db_path, settings=settings) as agent:
        run = await agent.start(brief, review=True)
        before = datetime.now(timezone.utc)
        audience = await agent.link(run.interaction_id)
        await agent.resume(run.interaction_id, FEEDBACK)
        review = await agent.link(run.interaction_id)
        stored = await agent.get(run.interaction_id)
    signer = signer_of(db_path)
    first = read_token(signer, audience.removeprefix(BASE + LINK_PATH))
    second = read_token(signer, review.removeprefix(BASE + LINK_PATH))
    assert (first.run_id, first.pause_id, first.round) == (
        run.interaction_id,
        run.interaction_id,
        None,
    )
    assert (second.pause_id, second.round) == (stored.pause_id, 1)
    assert second.pause_id != first.pause_id
    lifetime = first.expires_at - before
    assert timedelta(seconds=3598) <= lifetime <= timedelta(seconds=3601)


async def test_a_link_needs_the_public_origin_and_a_run_that_waits(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    from bridgic_coldmail.errors import ConfigurationError, InvalidInput, RunConflict, RunNotFound

    async with ColdMailAgent.open(db_path) as agent:  # no COLDMAIL_PUBLIC_ORIGIN
        run = await agent.start(brief)
        with pytest.raises(ConfigurationError, match="COLDMAIL_PUBLIC_ORIGIN"):
            await agent.link(run.interaction_id)
    async with ColdMailAgent.open(db_path, settings=link_settings(db_path)) as agent:
        now = datetime.now(timezone.utc)
        for bad in (
            now - timedelta(seconds=1),
            now.replace(tzinfo=None) + timedelta(days=1),
            now + timedelta(days=367),
        ):
            with pytest.raises(InvalidInput, match="expires_at"):
                await agent.link(run.interaction_id, expires_at=bad)
        with pytest.raises(RunNotFound):
            await agent.link("0" * 32)
        await agent.resume(run.interaction_id, FEEDBACK)
        with pytest.raises(RunConflict, match="waits for nobody"):
            await agent.link(run.interaction_id)


def test_coldmail_link_prints_a_link_that_opens_the_pause(
    cli: object, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    import json

    from bridgic_coldmail import SyncColdMailAgent

    run_cli = cli  # the in-process runner
    with SyncColdMailAgent.open(db_path) as agent:
        interaction_id = agent.start(brief).interaction_id
    missing = run_cli("link", interaction_id)  # type: ignore[operator]
    assert missing.returncode == 7 and "COLDMAIL_PUBLIC_ORIGIN" in missing.stderr
    env = {"COLDMAIL_PUBLIC_ORIGIN": "https://review.example.com", "COLDMAIL_LINK_TTL": "7200"}
    printed = run_cli("link", interaction_id, env=env)  # type: ignore[operator]
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.splitlines()[0]
    assert url.startswith("https://review.example.com/l/")
    assert "send it only to the reviewer" in printed.stdout
    as_json = json.loads(run_cli("link", interaction_id, "--json", env=env).stdout)  # type: ignore[operator]
    assert set(as_json) == {"interaction_id", "link", "expires_at"}
    expires = datetime.fromisoformat(as_json["expires_at"]) - datetime.now(timezone.utc)
    assert timedelta(seconds=7190) <= expires <= timedelta(seconds=7200)
    with SyncColdMailAgent.open(db_path) as agent:
        opened = agent.open_link(url.removeprefix("https://review.example.com/l/"))
        assert opened.is_open and opened.run.interaction_id == interaction_id
        agent.resume(interaction_id, FEEDBACK)
    done = run_cli("link", interaction_id, env=env)  # type: ignore[operator]
    assert done.returncode == 4 and "waits for nobody" in done.stderr
    assert "coldmail show" in done.stderr
    unknown = run_cli("link", "0" * 32, env=env)  # type: ignore[operator]
    assert unknown.returncode == 3


def test_coldmail_link_takes_its_lifetime_and_origin_and_refuses_bad_ones(
    cli: object, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    import json

    from bridgic_coldmail import SyncColdMailAgent

    run_cli = cli
    with SyncColdMailAgent.open(db_path) as agent:
        interaction_id = agent.start(brief).interaction_id
    missing = run_cli("link", interaction_id)  # type: ignore[operator]
    assert "--origin https://" in missing.stderr and "COLDMAIL_PUBLIC_ORIGIN" in missing.stderr
    made = run_cli(  # type: ignore[operator]
        "link",
        interaction_id,
        "--expires-in",
        "36h",
        "--origin",
        "https://Review.Example:8443/",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    printed = json.loads(made.stdout)
    assert printed["link"].startswith("https://review.example:8443/l/")
    lifetime = datetime.fromisoformat(printed["expires_at"]) - datetime.now(timezone.utc)
    assert timedelta(hours=36) - timedelta(seconds=10) <= lifetime <= timedelta(hours=36)
    claim = read_token(signer_of(db_path), printed["link"].rsplit("/", 1)[1])
    assert abs(claim.expires_at - datetime.fromisoformat(printed["expires_at"])) < timedelta(
        seconds=1
    )
    # The command line's --origin wins over the setting.
    env = {"COLDMAIL_PUBLIC_ORIGIN": "https://other.example"}
    chosen = run_cli("link", interaction_id, "--origin", "http://127.0.0.1:8000", env=env)  # type: ignore[operator]
    assert chosen.stdout.startswith("http://127.0.0.1:8000/l/")
    for bad, says in (
        (["--expires-in", "0s"], "no time at all"),
        (["--expires-in", "367d"], "longer than a link may work"),
        (["--expires-in=-1h"], "not an age"),
        (["--expires-in", "soon"], "not an age"),
        (["--origin", "review.example.com"], "--origin 'review.example.com' is not valid"),
        (["--origin", "https://x.example/path"], "expected scheme://host[:port]"),
        (["--origin", "javascript:alert(1)"], "is not valid"),
    ):
        refused = run_cli("link", interaction_id, *bad, env=env)  # type: ignore[operator]
        assert refused.returncode == 2 and says in refused.stderr, (bad, refused.stderr)
        assert refused.stdout == ""


async def test_a_link_made_by_one_process_opens_in_another_on_both_backends(
    server: ScriptedOpenAIServer, backend: object, brief: Brief
) -> None:
    from ..conftest import Backend

    assert isinstance(backend, Backend)
    settings = backend.settings(public_origin=BASE)
    async with ColdMailAgent.open(settings=settings, missing="create") as maker:
        run = await maker.start(brief, review=True)
        url = await maker.link(run.interaction_id)
    token = url.removeprefix(BASE + LINK_PATH)
    async with ColdMailAgent.open(settings=backend.settings()) as opener:
        opened = await opener.open_link(token)
        assert opened.is_open and opened.run.interaction_id == run.interaction_id
        checked = await opener.open_link(token, form_token=opened.form_token)
        assert checked.is_open
        from bridgic_coldmail.errors import LinkRefused

        with pytest.raises(LinkRefused):
            last = opened.form_token[-1]
            edited = opened.form_token[:-1] + ("B" if last == "A" else "A")
            await opener.open_link(token, form_token=edited)
        await opener.resume(run.interaction_id, FEEDBACK)
        assert not (await opener.open_link(token)).is_open


# ---------------------------------------------------------------------------- real HTTP


@dataclass
class LinkServer:
    """``coldmail serve --access-log`` in a child process on a loopback port, behind a token."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> str:
        """Stop the server; its log (standard output and error) as text."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        return self.log.read_text(errors="replace")


@contextmanager
def serving(tmp_path: Path, *options: str) -> Iterator[LinkServer]:
    """``coldmail serve --access-log`` (and ``options``) on a free loopback port, behind the
    inbox token, with its own address as the public origin; stopped on leaving."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "COLDMAIL_WEB_TOKEN": STRONG_TOKEN, "COLDMAIL_PUBLIC_ORIGIN": url}
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "bridgic_coldmail", "serve", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--access-log", *options], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    running = LinkServer(url, log, process)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/static/style.css", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(running.stop()) from None
                time.sleep(0.1)
        yield running
    finally:
        running.stop()


@pytest.fixture
def link_server(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> Iterator[LinkServer]:
    with serving(tmp_path) as running:
        yield running


@pytest.mark.slow  # coldmail serve in a child process
async def test_over_real_http_a_link_answers_once_and_its_token_is_never_logged(
    link_server: LinkServer, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    url = link_server.url
    interaction_id = await paused(db_path, brief)
    async with ColdMailAgent.open(
        db_path, settings=link_settings(db_path, public_origin=url)
    ) as agent:
        link = await agent.link(interaction_id)
    assert link.startswith(url + LINK_PATH)
    path = link.removeprefix(url)
    token = path.removeprefix(LINK_PATH)
    signer = signer_of(db_path)
    soon = datetime.now(timezone.utc) + timedelta(days=1)
    expired = LINK_PATH + make_token(
        signer, interaction_id, interaction_id, soon - timedelta(days=2)
    )
    unknown = LINK_PATH + make_token(signer, "0" * 32, "0" * 32, soon)
    edited = path[:-1] + ("B" if path[-1] == "A" else "A")
    run, _ = await stored_run(db_path, interaction_id)

    async with httpx.AsyncClient(base_url=url, timeout=PROCESS_TIMEOUT) as client:  # no token
        assert (await client.get("/")).status_code == 401
        page = await client.get(path)
        assert page.status_code == 200 and run.question in visible(page.text)
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        data = {"feedback": FEEDBACK, "reviewer": "Ann", "csrf_token": csrf(page.text)}
        posted = await client.post(f"{path}/feedback", data=data, headers={"Origin": "null"})
        assert (posted.status_code, posted.headers["location"]) == (303, path)
        retried = await client.post(f"{path}/feedback", data=data, headers={"Origin": url})
        assert (retried.status_code, retried.headers["location"]) == (303, path)
        shown = visible((await client.get(path)).text)
        assert f"Ann answered with the audience “{FEEDBACK}”" in shown
        other = {**data, "feedback": "someone else"}
        late = await client.post(f"{path}/feedback", data=other, headers={"Origin": url})
        assert late.status_code == 410 and "already answered" in visible(late.text)
        for refused, status, says in (
            (edited, 403, "open the newest message about the run"),
            (expired, 410, "this link has expired; open the newest message"),
            (unknown, 404, "no longer stored"),
        ):
            answer_page = await client.get(refused)
            assert answer_page.status_code == status
            assert says in visible(answer_page.text)
            assert answer_page.headers["referrer-policy"] == "no-referrer"
            assert_no_run_data(answer_page, run)
    assert server.count("refine") == 1

    log = link_server.stop()
    assert f'"GET {LINK_PATH}[redacted] HTTP/1.1" 200' in log
    assert f'"POST {LINK_PATH}[redacted]/feedback HTTP/1.1" 303' in log
    assert f'"GET {LINK_PATH}[redacted] HTTP/1.1" 410' in log
    for secret in (token, token.split(".")[1], edited.rsplit(".", 1)[1]):
        assert secret not in log


@pytest.mark.slow
async def test_every_worker_process_keeps_link_tokens_out_of_its_access_log(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    """``serve --workers 2``: each process the supervisor starts redacts its own lines."""
    interaction_id = await paused(db_path, brief)
    with serving(tmp_path, "--workers", "2") as running:
        settings = link_settings(db_path, public_origin=running.url)
        async with ColdMailAgent.open(db_path, settings=settings) as agent:
            link = await agent.link(interaction_id)
        token = link.rsplit("/", 1)[1]
        async with httpx.AsyncClient(timeout=PROCESS_TIMEOUT) as client:  # both workers serve
            for _ in range(12):
                opened = await client.get(link, headers={"Connection": "close"})
                assert opened.status_code == 200
        log = running.stop()
    assert log.count(f'"GET {LINK_PATH}[redacted] HTTP/1.1" 200') == 12
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2
    assert token not in log and token.split(".")[1] not in log


# ---------------------------------------------------------------------------- a real browser


@pytest.mark.browser
@pytest.mark.slow
async def test_a_reviewer_opens_a_link_in_a_real_browser_answers_and_sees_the_result(
    link_server: LinkServer, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    from ..browser.test_browser import CHROMIUM, FLAGS, _need_chromium

    _need_chromium()
    from playwright.async_api import Request as BrowserRequest
    from playwright.async_api import async_playwright

    url = link_server.url
    interaction_id = await paused(db_path, brief)
    async with ColdMailAgent.open(
        db_path, settings=link_settings(db_path, public_origin=url)
    ) as agent:
        link = await agent.link(interaction_id)
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def record(request: BrowserRequest) -> None:
        seen.append((request.method, request.url, await request.all_headers()))

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.on("request", record)
            await page.goto(link)
            header = await page.eval_on_selector(
                "header", "e => getComputedStyle(e).backgroundColor"
            )
            assert header == "rgb(29, 36, 51)"  # the stylesheet applies
            await page.fill("textarea#feedback", FEEDBACK)
            await page.fill("#feedback-form input[name=reviewer]", "Ann")
            async with page.expect_navigation():
                await page.click("#feedback-form button[type=submit]")
            await page.wait_for_selector("#answered", timeout=30_000)
            said = await page.inner_text("#answered")
            assert f"Ann answered with the audience “{FEEDBACK}”" in said
            assert page.url == link  # back on the link, which now says what was decided
            assert await page.query_selector("form") is None
        finally:
            await browser.close()
    assert not [text for text in console if "Content Security Policy" in text], console
    run, _ = await stored_run(db_path, interaction_id)
    assert (run.status, run.feedback) == (RunStatus.COMPLETED, FEEDBACK)
    # No request the page made (its files, its form) carried the link in a Referer.
    assert any(method == "POST" for method, _, _ in seen)
    token = link.removeprefix(url + LINK_PATH)
    for method, address, headers in seen:
        assert headers.get("referer", "") == "", (method, address)  # Playwright shows ""
        if not address.startswith(link):
            assert token not in str(headers), (method, address)
    posted = next(headers for method, _, headers in seen if method == "POST")
    assert posted.get("origin") == "null"  # what no-referrer makes a browser send
    assert token not in link_server.stop()
