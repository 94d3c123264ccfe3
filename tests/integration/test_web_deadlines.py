"""Deadlines and deliveries in the inbox and the JSON API (#21), through an in-process ASGI
client on real SQLite, the scripted LLM and the real worker: the run page shows the wait and
every delivery (a URL's secrets never), a failed delivery is retried from the page under the
same CSRF and Origin rules as every form, the new-run form and the API take the same wait
policy as the CLI (and refuse bad input before any LLM call, nothing stored), and the inbox
sorts by the soonest deadline."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.delivery import timed_worker
from bridgic_coldmail.notify.schedule import RetrySchedule
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import connect_store
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..notify_servers import WEBHOOK_SECRET, free_port
from .test_web import BASE, csrf, settings_for, web_client

ORIGIN = {"Origin": BASE}
TOKEN = "tok3n-SECRET-path-9f8e7d"
QUERY_SECRET = "q-SECRET-4c5d6e"
BIDI = "\u202e\u2066"


def dead_hook() -> str:
    """A webhook URL with secrets in its path and query, on a port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/hooks/{TOKEN}?key={QUERY_SECRET}"


def deadline_settings(db_path: Path) -> Settings:
    return settings_for(db_path, webhook_secret=WEBHOOK_SECRET, notify_timeout=2)


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(deadline_settings(db_path)) as c:
        yield c


def visible(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def assert_no_secret(text: str) -> None:
    for secret in (TOKEN, QUERY_SECRET, "/hooks/"):
        assert secret not in text


async def work_once(db_path: Path) -> None:
    """One pass of ``coldmail worker --once`` that never retries a failed delivery."""
    settings = deadline_settings(db_path)
    store = await connect_store(settings)
    worker, runner = timed_worker(store, settings, report=None)
    worker.schedule = RetrySchedule(delays=(), jitter=0)
    try:
        await worker.run_once()
    finally:
        await runner.aclose()
        await store.close()


async def deliveries(db_path: Path, run_id: str) -> dict[str, Any]:
    async with ColdMailAgent.open(db_path, settings=deadline_settings(db_path)) as agent:
        return {d.id: d for d in await agent.notifications(run_id)}


async def failed_run(db_path: Path, brief: Brief) -> tuple[str, str]:
    """A run whose webhook delivery failed for good; its id and the delivery's."""
    async with ColdMailAgent.open(db_path, settings=deadline_settings(db_path)) as agent:
        run = await agent.start(
            brief, notify=[dead_hook()], respond_within="2h", remind_every="30m",
            on_timeout="reject",
        )  # fmt: skip
    await work_once(db_path)
    found = await deliveries(db_path, run.interaction_id)
    (failed,) = [d for d in found.values() if d.status == "failed"]
    assert failed.event == "run.paused" and failed.timer is None
    return run.interaction_id, failed.id


# ---------------------------------------------------------------------------- the run page


async def test_the_run_page_shows_the_wait_and_every_delivery_never_a_urls_secret(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    run_id, failed_id = await failed_run(db_path, brief)
    page = await client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert_no_secret(page.text)
    wait = visible(
        re.search(r'<div class="card notice" id="wait">.*?</div>\s*</div>', page.text, re.S).group()
    )  # type: ignore[union-attr]  # noqa: E501
    assert "Deadline:" in wait and "then reject the run" in wait
    assert "Next reminder:" in wait and "0 reminders sent at this pause" in wait
    rows = re.findall(
        r'<tr class="delivery[^"]*" id="delivery-([^"]+)">(.*?)</tr>', page.text, re.S
    )
    shown = {row_id: visible(cells) for row_id, cells in rows}
    assert set(shown) == set(await deliveries(db_path, run_id))
    assert "run.paused" in shown[failed_id] and "failed" in shown[failed_id]
    assert "http://127.0.0.1" in shown[failed_id] and "Retry" in shown[failed_id]
    timers = [text for text in shown.values() if text.startswith(("deadline", "reminder"))]
    assert sorted(t.split(" timer ")[0] for t in timers) == [
        "deadline, then reject the run",
        "reminder 1",
    ]
    assert all(" timer due " in t and "Retry" not in t for t in timers)
    # The JSON API: the wait, and the deliveries, without the secrets either.
    one = (await client.get(f"/api/runs/{run_id}")).json()
    assert one["wait"]["on_timeout"] == "reject" and one["wait"]["reminders_sent"] == 0
    assert one["wait"]["deadline"] and one["wait"]["next_reminder"]
    listed = await client.get(f"/api/runs/{run_id}/notifications")
    assert listed.status_code == 200 and len(listed.json()) == 3
    assert {d["timer"]["kind"] for d in listed.json() if d["timer"]} == {"deadline", "reminder"}
    for answer in (one, listed.json()):
        assert_no_secret(str(answer))


async def test_a_run_without_timers_has_no_wait_in_its_json_nor_on_its_page(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start(brief)
    assert "wait" not in (await client.get(f"/api/runs/{run.interaction_id}")).json()
    page = await client.get(f"/runs/{run.interaction_id}")
    assert 'id="wait"' not in page.text and 'id="notifications"' not in page.text


async def test_a_failed_delivery_is_retried_from_the_page_once_and_only_with_the_pages_token(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    run_id, failed_id = await failed_run(db_path, brief)
    page = await client.get(f"/runs/{run_id}")
    path = f"/runs/{run_id}/notifications/{failed_id}/retry"
    assert f'action="{path}"' in page.text
    token = csrf(page.text)
    # No form token, another one, a foreign Origin: refused, nothing changed.
    for data, headers in (
        ({}, ORIGIN),
        ({"csrf_token": "x" * 43}, ORIGIN),
        ({"csrf_token": token}, {"Origin": "https://evil.example"}),
        ({"csrf_token": token}, {"Origin": "null"}),
    ):
        refused = await client.post(path, data=data, headers=headers)
        assert refused.status_code == 403, (data, headers)
        assert (await deliveries(db_path, run_id))[failed_id].status == "failed"
    retried = await client.post(path, data={"csrf_token": token}, headers=ORIGIN)
    assert (retried.status_code, retried.headers["location"]) == (303, f"/runs/{run_id}")
    again = (await deliveries(db_path, run_id))[failed_id]
    assert (again.status, again.attempts) == ("pending", 0)
    # A second click: the page says it is queued already, and nothing changes.
    twice = await client.post(path, data={"csrf_token": token}, headers=ORIGIN)
    assert twice.status_code == 200
    assert "already queued (pending); nothing was changed" in visible(twice.text)
    assert (await deliveries(db_path, run_id))[failed_id] == again
    # Delivered: the same. (The dead receiver fails it again; mark it delivered instead.)
    from ..rows import SqliteRows

    SqliteRows(db_path).set_notification(failed_id, status="delivered")
    done = await client.post(path, data={"csrf_token": token}, headers=ORIGIN)
    assert "already delivered; nothing was changed" in visible(done.text)
    assert (await deliveries(db_path, run_id))[failed_id].status == "delivered"


async def test_retrying_another_runs_or_a_hostile_notification_id_changes_nothing(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    run_id, failed_id = await failed_run(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        other = await agent.start(brief)
    page = await client.get(f"/runs/{other.interaction_id}")
    token = csrf(page.text)
    for notification_id in (failed_id, "nope", "x" * 64, "%E2%80%AEevil"):
        answer = await client.post(
            f"/runs/{other.interaction_id}/notifications/{notification_id}/retry",
            data={"csrf_token": token},
            headers=ORIGIN,
        )
        assert answer.status_code == 404, notification_id
        assert "no such notification" in visible(answer.text)
    assert (await deliveries(db_path, run_id))[failed_id].status == "failed"


# ---------------------------------------------------------------------------- starting


def form_fields(**wait: str) -> dict[str, str]:
    return {
        "product": "Acme Scheduler",
        "offer": "cuts no-shows by 30%",
        "sender": "Dana Lee",
        **wait,
    }


async def test_the_new_run_form_starts_a_run_with_destinations_and_a_deadline(
    client: httpx.AsyncClient, db_path: Path, server: ScriptedOpenAIServer
) -> None:
    form = await client.get("/runs/new")
    for name in ("notify", "respond_within", "remind_every", "on_timeout", "escalate_to"):
        assert f'name="{name}"' in form.text
    hooks = [dead_hook(), dead_hook()]
    data = form_fields(
        notify=f"{hooks[0]}\r\n  {hooks[1]} ,\n",
        respond_within=" 36h ",
        remind_every="1h30m",
        on_timeout="proceed",
        escalate_to=dead_hook(),
        csrf_token=csrf(form.text),
    )
    started = await client.post("/runs", data=data, headers=ORIGIN)
    assert started.status_code == 303
    run_id = started.headers["location"].rsplit("/", 1)[1]
    async with ColdMailAgent.open(db_path) as agent:
        found = await agent.notifications(run_id)
    assert sorted(d.event for d in found) == [
        "run.deadline",
        "run.paused",
        "run.paused",
        "run.reminder",
    ]  # noqa: E501
    one = (await client.get(f"/api/runs/{run_id}")).json()
    assert one["wait"]["on_timeout"] == "proceed"
    page = await client.get(f"/runs/{run_id}")
    assert "then go on without an answer" in visible(page.text)
    assert_no_secret(page.text)


HOSTILE = [
    ({"respond_within": "3 days"}, "--respond-within is a duration such as 90s"),
    ({"respond_within": "9" * 10_000}, "--respond-within is a duration such as 90s"),
    ({"respond_within": "0s"}, "must be from 1 second to 365 days"),
    ({"remind_every": "1h\x00\x1b[31m"}, "--remind-every is a duration"),
    ({"respond_within": "1h", "remind_every": "2h"}, "must be shorter than"),
    ({"on_timeout": "approve"}, "the deadline's outcome is one of wait, proceed, reject"),
    ({"on_timeout": "reject"}, "needs a deadline"),
    ({"escalate_to": "boss@example.com"}, "needs a deadline"),
    ({"notify": "not an address"}, "contains spaces or control characters"),
    ({"notify": f"ann{BIDI}@example.com"}, "is not a plain email address"),
    ({"notify": "a@example.com\x07"}, "contains spaces or control characters"),
    ({"notify": "x" * 50_000}, "give at most 20 destinations"),
    ({"notify": ",".join(f"p{i}@example.com" for i in range(21))}, "21 destinations"),
    ({"notify": f"https://hooks.example/{TOKEN}#frag"}, "has a #fragment"),
    ({"notify": "reviewer@example.com"}, "set COLDMAIL_SMTP_URL"),
]


@pytest.mark.parametrize(("typed", "says"), HOSTILE)
async def test_bad_wait_input_in_the_form_is_refused_before_any_llm_call_with_what_was_typed(
    client: httpx.AsyncClient,
    db_path: Path,
    server: ScriptedOpenAIServer,
    typed: dict[str, str],
    says: str,
) -> None:
    form = await client.get("/runs/new")
    data = form_fields(**typed, csrf_token=csrf(form.text))
    answer = await client.post("/runs", data=data, headers=ORIGIN)
    assert answer.status_code in (422, 503), answer.text[:300]
    error = re.search(r'<div class="card error">(.*?)</div>', answer.text, re.S)
    assert error is not None
    message = html.unescape(error.group(1))
    assert says in message and "\n" not in message
    assert len(message) < 400
    assert not {"\x00", "\x1b", "\x07", "\u202e"} & set(message)
    assert TOKEN not in message
    for name, value in typed.items():  # kept as typed (escaped), to correct
        if len(value) < 1000 and name != "on_timeout":
            assert html.escape(value.replace("\r\n", "\n"), quote=True) in answer.text
    assert server.count() == 0
    async with ColdMailAgent.open(db_path) as agent:
        assert await agent.list() == []


@pytest.mark.parametrize(("typed", "says"), HOSTILE)
async def test_the_api_refuses_the_same_wait_input_before_any_llm_call(
    client: httpx.AsyncClient,
    db_path: Path,
    server: ScriptedOpenAIServer,
    typed: dict[str, str],
    says: str,
) -> None:
    body: dict[str, Any] = form_fields()
    for name, value in typed.items():
        body[name] = [p for p in re.split(r"[,\n]", value) if p] if name in (
            "notify", "escalate_to"
        ) else value  # fmt: skip
    answer = await client.post("/api/runs", json=body)
    assert answer.status_code in (422, 503)
    message = answer.json()["error"]["message"]
    if "give at most 20 destinations" not in says:  # the form's own limit
        assert says in message or "at most 20" in message
    assert TOKEN not in message
    assert server.count() == 0


async def test_the_api_starts_a_run_with_a_wait_policy_and_refuses_non_durations(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    for bad in (True, [], {"s": 1}, 10**400, -(10**400)):  # the ints: a 500 before
        refused = await client.post("/api/runs", json={**form_fields(), "respond_within": bad})
        assert refused.status_code == 422, bad
    assert server.count() == 0
    created = await client.post(
        "/api/runs", json={**form_fields(), "respond_within": 7200, "remind_every": "1h",
                           "on_timeout": "wait"},
    )  # fmt: skip
    assert created.status_code == 201
    one = (await client.get(f"/api/runs/{created.json()['interaction_id']}")).json()
    assert one["wait"]["on_timeout"] == "wait" and one["wait"]["next_reminder"]


# ---------------------------------------------------------------------------- due soonest


async def test_the_inbox_sorts_by_the_soonest_deadline(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        late = await agent.start(brief.model_copy(update={"product": "Late"}), respond_within="3d")
        none = await agent.start(brief.model_copy(update={"product": "Untimed"}))
        soon = await agent.start(
            brief.model_copy(update={"product": "Soon"}), respond_within="1h", on_timeout="reject"
        )
    newest = visible((await client.get("/")).text)
    assert newest.index("Soon") < newest.index("Untimed") < newest.index("Late")
    assert 'href="/?tab=awaiting&sort=due"' in (await client.get("/")).text
    due = await client.get("/?sort=due")
    text = visible(due.text)
    assert text.index("Soon") < text.index("Late") < text.index("Untimed")
    assert "then reject the run" in text and "Deadline" in text
    assert all(run.interaction_id in due.text for run in (late, none, soon))
    # Unknown sorts and tabs fall back to the defaults.
    odd = visible((await client.get("/?sort=%E2%80%AEdue")).text)
    assert odd.index("Soon") < odd.index("Untimed") < odd.index("Late")


# ---------------------------------------------------------------------------- a real browser


@pytest.mark.browser
@pytest.mark.slow
async def test_a_reviewer_answers_from_a_received_email_in_a_real_browser_and_the_run_page_shows_it(  # noqa: E501
    server: ScriptedOpenAIServer,
    db_path: Path,
    brief: Brief,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``coldmail serve`` (its worker inside) sends the pause's email to a real SMTP server
    on loopback; the link taken out of that email opens in Chromium, the feedback is
    submitted there, and the run page shows the next pause's deadline and the email sent."""
    from playwright.async_api import async_playwright

    from ..browser.test_browser import CHROMIUM, FLAGS, _need_chromium
    from ..notify_servers import LOOPBACK, MailHandler, smtp_server
    from .test_web import FEEDBACK, STRONG_TOKEN
    from .test_web_links import serving

    _need_chromium()
    handler = MailHandler()
    with smtp_server(handler) as smtp:
        monkeypatch.setenv("COLDMAIL_SMTP_URL", f"smtp://{LOOPBACK}:{smtp.port}")
        monkeypatch.setenv("COLDMAIL_MAIL_FROM", "Coldmail <coldmail@example.com>")
        with serving(tmp_path) as web:
            async with ColdMailAgent.open(db_path, settings=settings_for(db_path)) as agent:
                run = await agent.start(
                    brief, review=True, notify=["reviewer@example.com"], respond_within="2d",
                    on_timeout="reject",
                )  # fmt: skip
            for _ in range(600):  # the server's worker delivers it within seconds
                if handler.delivered:
                    break
                await asyncio.sleep(0.05)
            (mail,) = handler.delivered
            assert mail.rcpt_tos == ["reviewer@example.com"]
            body = mail.message.get_body(("plain",))
            assert body is not None
            links = re.findall(re.escape(web.url) + r"/l/[A-Za-z0-9._~-]+", body.get_content())
            assert links, body.get_content()
            link = links[0]

            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                try:
                    page = await browser.new_page()
                    await page.goto(link)
                    await page.fill("textarea#feedback", FEEDBACK)
                    await page.fill("#feedback-form input[name=reviewer]", "Ann")
                    async with page.expect_navigation():
                        await page.click("#feedback-form button[type=submit]")
                    await page.wait_for_selector("#answered", timeout=30_000)
                    said = await page.inner_text("#answered")
                    assert f"Ann answered with the audience “{FEEDBACK}”" in said
                    # The inbox, with its token: the run page.
                    inbox = await browser.new_context(
                        extra_http_headers={"Authorization": f"Bearer {STRONG_TOKEN}"}
                    )
                    run_page = await inbox.new_page()
                    await run_page.goto(f"{web.url}/runs/{run.interaction_id}")
                    wait = await run_page.inner_text("#wait")
                    assert "Deadline:" in wait and "then reject the run" in wait
                    rows = await run_page.inner_text("table.deliveries")
                    assert re.search(r"run\.paused\s+reviewer@example\.com\s+delivered", rows)
                    assert "deadline, then reject the run" in rows
                finally:
                    await browser.close()
    async with ColdMailAgent.open(db_path, settings=settings_for(db_path)) as agent:
        answered = await agent.get(run.interaction_id)
    assert (answered.feedback, answered.round) == (FEEDBACK, 1)
