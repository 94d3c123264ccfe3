"""First lines for every lead in the inbox and the JSON API (issue 23), through the in-process
ASGI client on real SQLite and the scripted LLM: the estimate before anything is written, the
sample with its approve and guidance forms (CSRF-checked), the rest written in the
background with its progress, and at the end the lines and the skipped leads with why."""

from __future__ import annotations

import asyncio
import collections
import re
import time
from pathlib import Path

import httpx

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, Backend
from .test_web import csrf, settings_for, web_client

FEEDBACK = "finance teams at mid-size manufacturers"


def lead_list(count: int, *, bad: int = 0) -> bytes:
    rows = ["email,first_name,company"]
    rows += [f"lead{i}@example.com,Ann{i},Acme{i}" for i in range(count)]
    rows += [f"not-an-address-{i},Bob,Bad{i}" for i in range(bad)]
    return ("\n".join(rows) + "\n").encode()


async def approved(db_path: Path | str, brief: Brief, settings: Settings | None = None) -> str:
    async with ColdMailAgent.open(db_path, settings=settings) as agent:
        run = await agent.start(brief)
        await agent.resume(run.interaction_id, FEEDBACK)
        return run.interaction_id


def line_calls(server: ScriptedOpenAIServer) -> collections.Counter[str]:
    found = (re.search(r"^- company: (\S+)$", r.user_text, re.M) for r in server.requests)
    return collections.Counter(m.group(1) for m in found if m)


async def until(client: httpx.AsyncClient, path: str, text: str) -> str:
    """The page at ``path`` once it contains ``text`` (the background writer works)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        page = (await client.get(path)).text
        if text in page:
            return page
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        await asyncio.sleep(0.1)


async def test_estimate_sample_guidance_approval_and_every_line_on_the_run_page(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    run_id = await approved(db_path, brief)
    leads = lead_list(12, bad=1)
    async with web_client(settings_for(db_path)) as client:
        page = (await client.get(f"/runs/{run_id}")).text
        assert "First lines for every lead" in page and 'id="write-sample"' not in page
        token = csrf(page)
        files = {"leads": ("leads.csv", leads, "text/csv")}

        # The estimate comes first, and writes nothing.
        shown = await client.post(
            f"/runs/{run_id}/lines",
            files=files,
            data={"csrf_token": token, "estimate": "1", "sample": "3"},
        )
        assert shown.status_code == 200 and "Estimate for leads.csv:" in shown.text
        assert "12 leads, one LLM call each" in shown.text and server.count("line") == 0
        seen = re.search(r'name="estimate_seen" value="([^"]+)"', shown.text)
        assert seen and seen.group(1).startswith("sha256:")

        # Another list than the one estimated gets its own estimate, not a sample.
        other = {"leads": ("other.csv", lead_list(3), "text/csv")}
        answer = await client.post(
            f"/runs/{run_id}/lines",
            files=other,
            data={"csrf_token": token, "estimate_seen": seen.group(1)},
        )
        assert "Estimate for other.csv:" in answer.text and "choose the file again" in answer.text
        assert server.count("line") == 0

        # The estimated list: the sample is written and waits for a person.
        started = await client.post(
            f"/runs/{run_id}/lines",
            files=files,
            data={"csrf_token": token, "sample": "3", "estimate_seen": seen.group(1)},
        )
        assert started.status_code == 303 and started.headers["location"].endswith("#lines")
        page = (await client.get(f"/runs/{run_id}")).text
        assert 'data-state="awaiting_approval"' in page and page.count("keeps your team busy") == 3
        batch_id = re.search(r'id="batch-([0-9a-f]{32})"', page).group(1)  # type: ignore[union-attr]
        assert line_calls(server) == {f"Acme{i}": 1 for i in range(3)}

        # Forms without the page's CSRF token change nothing.
        for path, data in (("approve", {}), ("guide", {"guidance": "shorter"})):
            refused = await client.post(
                f"/runs/{run_id}/lines/{batch_id}/{path}", data={**data, "csrf_token": "forged"}
            )
            assert refused.status_code == 403
        assert 'data-state="awaiting_approval"' in (await client.get(f"/runs/{run_id}")).text

        guided = await client.post(
            f"/runs/{run_id}/lines/{batch_id}/guide",
            data={"guidance": "mention the month-end close", "csrf_token": token},
        )
        assert guided.status_code == 303
        page = (await client.get(f"/runs/{run_id}")).text
        assert "round 2" in page and "mention the month-end close" in page
        assert line_calls(server) == {f"Acme{i}": 2 for i in range(3)}

        approved_now = await client.post(
            f"/runs/{run_id}/lines/{batch_id}/approve", data={"csrf_token": token}
        )
        assert approved_now.status_code == 303
        page = await until(client, f"/runs/{run_id}", 'data-state="done"')
        assert "12 lines written, 1 lead skipped" in page
        assert 'id="written-lines"' in page and "I imagine Acme11 keeps your team busy." in page
        skipped = page.split('id="skipped-leads"')[1]
        assert "not-an-address-0" in skipped and "email" in skipped.lower()
        assert 'http-equiv="refresh"' not in page and "data-refresh" not in page
    assert line_calls(server) == {
        **{f"Acme{i}": 2 for i in range(3)},
        **{f"Acme{i}": 1 for i in range(3, 12)},
    }


async def test_the_section_refuses_what_the_cli_refuses(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        waiting = (await agent.start(brief)).interaction_id
    run_id = await approved(db_path, brief)
    async with web_client(settings_for(db_path)) as client:
        assert "First lines for every lead" not in (await client.get(f"/runs/{waiting}")).text
        page = (await client.get(f"/runs/{run_id}")).text
        token = csrf(page)
        no_file = await client.post(
            f"/runs/{run_id}/lines",
            data={"csrf_token": token},
            files={"leads": ("", b"", "text/csv")},
        )
        assert no_file.status_code == 422 and "choose the lead list" in no_file.text
        files = {"leads": ("leads.csv", lead_list(4), "text/csv")}
        big = await client.post(
            f"/runs/{run_id}/lines", files=files, data={"csrf_token": token, "sample": "5000"}
        )
        assert big.status_code == 422 and "from 1 to 50" in big.text
        cross_site = await client.post(
            f"/runs/{run_id}/lines",
            files=files,
            data={"csrf_token": token, "estimate": "1"},
            headers={"Origin": "https://evil.example"},
        )
        assert cross_site.status_code == 403
        unknown = await client.post(
            f"/runs/{run_id}/lines/{'0' * 32}/approve", data={"csrf_token": token}
        )
        assert unknown.status_code == 422 and "no personalization batch" in unknown.text
        not_yet = await client.post(
            f"/runs/{waiting}/lines", files=files, data={"csrf_token": token, "estimate": "1"}
        )
        assert not_yet.status_code == 409
    assert server.count("line") == 0


async def test_the_json_api_estimates_samples_guides_approves_and_lists_the_lines(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    run_id = await approved(backend.db, brief, backend.settings())
    leads = lead_list(8, bad=1)
    csv = {"Content-Type": "text/csv"}
    async with web_client(backend.settings()) as client:
        wrong = await client.post(
            f"/api/runs/{run_id}/lines/estimate",
            content=leads,
            headers={"Content-Type": "text/plain"},
        )
        assert wrong.status_code == 415 and "text/csv" in wrong.json()["error"]["message"]
        estimate = (
            await client.post(f"/api/runs/{run_id}/lines/estimate", content=leads, headers=csv)
        ).json()
        assert estimate["leads"] == 8 and estimate["prompt_tokens"] > 0
        assert estimate["cost"] is None and server.count("line") == 0

        started = await client.post(
            f"/api/runs/{run_id}/lines?sample=2", content=leads, headers=csv
        )
        assert started.status_code == 201
        body = started.json()
        assert body["status"] == "awaiting_approval" and len(body["sample"]) == 2
        batch_id = body["batch_id"]
        listed = (await client.get(f"/api/runs/{run_id}/lines")).json()
        assert [b["batch_id"] for b in listed] == [batch_id]

        empty = await client.post(f"/api/runs/{run_id}/lines/{batch_id}/guide", json={})
        assert empty.status_code == 422
        guided = await client.post(
            f"/api/runs/{run_id}/lines/{batch_id}/guide", json={"guidance": "name their city"}
        )
        assert guided.json()["round"] == 2 and guided.json()["guidance"] == ["name their city"]

        accepted = await client.post(f"/api/runs/{run_id}/lines/{batch_id}/approve", json={})
        assert accepted.status_code == 202 and accepted.json()["sample_approved"]
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while (done := (await client.get(f"/api/runs/{run_id}/lines/{batch_id}")).json())[
            "status"
        ] != "done":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert done["counts"]["written"] == 8 and done["counts"]["skipped"] == 1
        assert [line["email"] for line in done["lines"]] == [
            f"lead{i}@example.com" for i in range(8)
        ]
        assert done["skipped"][0]["email"] == "not-an-address-0"
        page = (await client.get(f"/api/runs/{run_id}/lines/{batch_id}?after=5&limit=2")).json()
        assert [line["position"] for line in page["lines"]] == [6, 7]
        missing = await client.get(f"/api/runs/{run_id}/lines/{'f' * 32}")
        assert missing.status_code == 422 and "no personalization batch" in missing.text
    assert line_calls(server) == {
        **{f"Acme{i}": 2 for i in range(2)},
        **{f"Acme{i}": 1 for i in range(2, 8)},
    }


async def test_a_lead_list_gets_the_upload_limit_not_the_body_limit(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """A list larger than COLDMAIL_MAX_BODY_BYTES is estimated (the lead-list routes have
    COLDMAIL_MAX_UPLOAD_BYTES); one over the upload limit is refused with 413."""
    run_id = await approved(db_path, brief)
    leads = lead_list(3000)
    settings = settings_for(db_path, max_body_bytes=65_536, max_upload_bytes=200_000)
    assert 65_536 < len(leads) < 200_000
    async with web_client(settings) as client:
        path = f"/api/runs/{run_id}/lines/estimate"
        estimate = await client.post(path, content=leads, headers={"Content-Type": "text/csv"})
        assert estimate.status_code == 200 and estimate.json()["leads"] == 3000
        huge = await client.post(
            path, content=lead_list(8000), headers={"Content-Type": "text/csv"}
        )
        assert huge.status_code == 413
    assert server.count("line") == 0


async def test_a_batch_a_stopped_server_left_is_continued_from_the_page(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """Approved elsewhere (or by a server that stopped) and not written: the page says so and
    'Continue writing' writes the rest, each lead once."""
    run_id = await approved(backend.db, brief, backend.settings())
    path = tmp_path / "leads.csv"
    path.write_bytes(lead_list(6))
    async with ColdMailAgent.open(backend.db, settings=backend.settings()) as agent:
        await agent.personalize(run_id, path, sample=2)
        await agent.approve_sample(run_id, write_rest=False)
    async with web_client(backend.settings()) as client:
        page = (await client.get(f"/runs/{run_id}")).text
        assert 'data-state="stopped"' in page and "4 leads are still to write" in page
        batch_id = re.search(r'id="batch-([0-9a-f]{32})"', page).group(1)  # type: ignore[union-attr]
        forged = await client.post(
            f"/runs/{run_id}/lines/{batch_id}/continue", data={"csrf_token": "x"}
        )
        assert forged.status_code == 403
        going = await client.post(
            f"/runs/{run_id}/lines/{batch_id}/continue", data={"csrf_token": csrf(page)}
        )
        assert going.status_code == 303
        page = await until(client, f"/runs/{run_id}", 'data-state="done"')
        assert "6 lines written" in page
        again = await client.post(
            f"/runs/{run_id}/lines/{batch_id}/continue", data={"csrf_token": csrf(page)}
        )
        assert again.status_code == 409 and "nothing to continue" in again.text
    assert line_calls(server) == {f"Acme{i}": 1 for i in range(6)}
