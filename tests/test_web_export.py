"""Lint and export in the inbox: the run page's checks, a lead list uploaded on a completed
run's page (or to the API) and the export downloaded, the upload's own body limit, and no
copy of the list left on the server."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.settings import DEFAULT_MAX_BODY_BYTES
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from .test_web import BASE, FEEDBACK, csrf, settings_for, web_client
from .test_web_review import at_review

SHOUTING = json.dumps(
    {
        "opener": {"subject": "URGENT: act now", "body": "Hi {{first_name|there}}, act now."},
        "follow_up": {"subject": "Again", "body": "Hi again", "wait_days": 3},
    }
)


@pytest.fixture
async def client(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


@pytest.fixture(autouse=True)
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The server's temporary directory, watched: an upload must leave nothing in it."""
    folder = tmp_path / "server-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


async def completed(db_path: Path, brief: Brief) -> str:
    """A run reviewed and approved, with the merge fields email and first_name."""
    interaction_id = await at_review(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(interaction_id)
    return interaction_id


def lead_list(count: int, *, formula_at: int | None = None) -> bytes:
    """A CSV of ``count`` leads; the lead at ``formula_at`` has a formula as its first name."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["Email", "First Name"])
    for n in range(count):
        name = '=HYPERLINK("http://evil.example","x")' if n == formula_at else f"Name{n}"
        writer.writerow([f"lead{n}@example.com", name])
    return out.getvalue().encode()


async def upload(
    client: httpx.AsyncClient,
    interaction_id: str,
    content: bytes,
    *,
    name: str = "leads.csv",
    **fields: str,
) -> httpx.Response:
    page = (await client.get(f"/runs/{interaction_id}")).text
    return await client.post(
        f"/runs/{interaction_id}/export",
        data={"csrf_token": csrf(page), **fields},
        files={"leads": (name, content, "text/csv")},
        headers={"Origin": BASE},
    )


# ---------------------------------------------------------------------------- lint


async def test_the_run_page_shows_the_lint_warnings_of_the_sequence_under_review(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    server.enqueue(Reply(kind="refine", content=SHOUTING))
    interaction_id = await at_review(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert re.findall(r"\[([a-z-]+)\]</span>", page) == [
        "capitals", "spam-phrase", "spam-phrase", "can-spam-address", "can-spam-opt-out"
    ]  # fmt: skip


async def test_a_sequence_without_warnings_says_so(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    footer = {"postal_address": "1 Main St, Springfield, IL", "opt_out": "Reply 'stop'."}
    interaction_id = await at_review(db_path, brief.model_copy(update=footer))
    page = (await client.get(f"/runs/{interaction_id}")).text
    assert "Checks before sending: no warnings." in page


# ---------------------------------------------------------------------------- the page's export


async def test_the_export_form_is_on_a_completed_runs_page_only(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    reviewing = await at_review(db_path, brief)
    done = await completed(db_path, brief)
    pages = [(await client.get(f"/runs/{i}")).text for i in (reviewing, done)]
    assert ['id="export-form"' in page for page in pages] == [False, True]


async def test_the_export_downloads_one_row_per_lead_with_formulas_neutralised(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    answer = await upload(client, interaction_id, lead_list(25, formula_at=3))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="coldmail-{interaction_id}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [row["Email"] for row in rows] == [f"lead{n}@example.com" for n in range(25)]
    assert rows[3]["First Name"] == '\'=HYPERLINK("http://evil.example","x")'
    assert rows[0]["step1_body"].startswith("Hi Name0,")
    assert answer.headers["x-coldmail-rows-written"] == "25"


async def test_the_export_can_be_json(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    answer = await upload(client, interaction_id, lead_list(3), format="json")
    exported = answer.json()
    assert answer.headers["content-type"] == "application/json"
    assert [(r["Email"], r["step2_delay_days"]) for r in exported] == [
        (f"lead{n}@example.com", 4) for n in range(3)
    ]


async def test_rows_that_cannot_be_sent_are_left_out_and_counted(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    content = b"Email,First Name\nann@example.com,Ann\nnot-an-email,Bob\n"
    answer = await upload(client, interaction_id, content)
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert ([r["Email"] for r in rows], answer.headers["x-coldmail-rows-skipped"]) == (
        ["ann@example.com"],
        "1",
    )


async def test_when_nothing_can_be_exported_the_page_lists_the_rows_and_why(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    content = b"Email,First Name\nnot-an-email,Ann\nann@example.com,{{x}}\n"
    answer = await upload(client, interaction_id, content, name="../my <leads>.csv")
    text = answer.text
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("text/html")
    assert "none of the leads in &#39;my &lt;leads&gt;.csv&#39; could be exported" in text
    assert "<tr><td>2</td><td>not-an-email</td>" in text and "<tr><td>3</td>" in text
    assert str(temp_dir) not in text and "Nothing was exported" in text


async def test_a_strict_export_refuses_the_whole_list_for_one_bad_row(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    content = lead_list(3) + b"not-an-email,Bob\n"
    answer = await upload(client, interaction_id, content, strict="on")
    assert answer.status_code == 422 and "export refused (strict)" in answer.text
    assert 'name="strict" value="on" checked' in answer.text


async def test_a_list_the_export_cannot_read_is_explained_on_the_page(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    answer = await upload(client, interaction_id, b"name,company\nAnn,Acme\n")
    assert answer.status_code == 422 and "has no email column" in answer.text
    assert "The lead list itself cannot be used" in answer.text


async def test_an_export_without_a_file_is_422(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    answer = await client.post(
        f"/runs/{interaction_id}/export",
        data={"csrf_token": csrf(page)},
        files={"other": ("x.txt", b"x", "text/plain")},
    )
    assert answer.status_code == 422 and "choose the lead list" in answer.text


async def test_an_export_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    await client.get(f"/runs/{interaction_id}")
    answer = await client.post(
        f"/runs/{interaction_id}/export",
        data={"csrf_token": "forged"},
        files={"leads": ("leads.csv", lead_list(2), "text/csv")},
    )
    assert answer.status_code == 403


async def test_no_copy_of_the_lead_list_stays_on_the_server(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    good = await upload(client, interaction_id, lead_list(5))
    bad = await upload(client, interaction_id, b"Email\nnot-an-email\n")
    assert (good.status_code, bad.status_code, list(temp_dir.iterdir())) == (200, 422, [])


# ---------------------------------------------------------------------------- the upload limit


async def test_a_lead_list_larger_than_an_ordinary_body_is_accepted(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    content = lead_list(3000)
    assert len(content) > DEFAULT_MAX_BODY_BYTES
    answer = await upload(client, interaction_id, content)
    assert answer.headers["x-coldmail-rows-written"] == "3000"


async def test_an_upload_declared_over_its_limit_is_refused_before_it_is_read(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"Email\n"

    async with web_client(settings_for(db_path, max_upload_bytes=4096)) as client:
        refused = await client.post(
            f"/api/runs/{interaction_id}/export",
            content=body(),
            headers={"Content-Type": "text/csv", "Content-Length": "4097"},
        )
    assert (refused.status_code, refused.json()["error"]["message"], read) == (
        413,
        "the request body is larger than 4096 bytes, the limit (COLDMAIL_MAX_UPLOAD_BYTES); "
        "send less",
        [],
    )


async def test_a_streamed_upload_is_cut_off_at_its_limit(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    chunk = lead_list(100)
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):
            sent.append(len(chunk))
            yield chunk

    async with web_client(settings_for(db_path, max_upload_bytes=64 * 1024)) as client:
        refused = await client.post(
            f"/api/runs/{interaction_id}/export",
            content=endless(),
            headers={"Content-Type": "text/csv"},
        )
    assert refused.status_code == 413 and refused.json()["error"]["type"] == "PayloadTooLarge"
    assert sum(sent) <= 64 * 1024 + 2 * len(chunk) and list(temp_dir.iterdir()) == []


async def test_a_form_upload_over_its_limit_gets_the_html_page(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    async with web_client(settings_for(db_path, max_upload_bytes=4096)) as client:
        refused = await upload(client, interaction_id, lead_list(500))
    assert refused.status_code == 413 and "Too large" in refused.text
    assert "COLDMAIL_MAX_UPLOAD_BYTES" in refused.text


async def test_the_upload_limit_is_only_for_the_export(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    async with web_client(settings_for(db_path, max_upload_bytes=8 * 2**20)) as client:
        refused = await client.post(
            "/api/runs",
            content=b"{}" + b" " * DEFAULT_MAX_BODY_BYTES,
            headers={"Content-Type": "application/json"},
        )
    assert refused.status_code == 413 and "COLDMAIL_MAX_BODY_BYTES" in refused.text


# ---------------------------------------------------------------------------- the API's export


async def test_the_api_exports_a_csv_body(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    answer = await client.post(
        f"/api/runs/{interaction_id}/export?format=json",
        content=lead_list(4, formula_at=1),
        headers={"Content-Type": "text/csv"},
    )
    exported = answer.json()
    assert answer.status_code == 200 and len(exported) == 4
    assert exported[1]["First Name"].startswith("=HYPERLINK")  # JSON keeps the exact text


async def test_the_api_export_of_a_run_not_yet_approved_is_409(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    refused = await client.post(
        f"/api/runs/{interaction_id}/export",
        content=lead_list(2),
        headers={"Content-Type": "text/csv"},
    )
    assert refused.status_code == 409
    assert "awaiting review at round 1; approve it" in refused.json()["error"]["message"]


async def test_the_api_export_names_no_server_path_when_nothing_can_be_exported(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    refused = await client.post(
        f"/api/runs/{interaction_id}/export",
        content=b"Email,First Name\nnot-an-email,Ann\n",
        headers={"Content-Type": "text/csv"},
    )
    error = refused.json()["error"]
    assert (refused.status_code, error["type"]) == (422, "InvalidInput")
    assert "in the uploaded lead list could be exported" in error["message"]
    assert str(temp_dir) not in refused.text


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", None])
async def test_the_api_export_takes_only_text_csv(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, content_type: str | None
) -> None:
    interaction_id = await completed(db_path, brief)
    headers = {"Content-Type": content_type} if content_type else {}
    refused = await client.post(
        f"/api/runs/{interaction_id}/export", content=lead_list(2), headers=headers
    )
    assert refused.status_code == 415 and "text/csv" in refused.json()["error"]["message"]


async def test_a_feedback_only_run_is_exportable_too(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start(brief, fields=["email"])
        await agent.resume(run.interaction_id, FEEDBACK)
    answer = await upload(client, run.interaction_id, lead_list(2))
    assert answer.status_code == 200 and answer.headers["x-coldmail-rows-written"] == "2"


async def test_an_empty_api_upload_is_called_the_uploaded_lead_list(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    refused = await client.post(
        f"/api/runs/{interaction_id}/export", content=b"", headers={"Content-Type": "text/csv"}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["message"].startswith("the uploaded lead list is empty")
