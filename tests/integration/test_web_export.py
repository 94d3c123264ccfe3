"""Lint and export in the inbox: the run page's checks, a lead list uploaded on a completed
run's page (or to the API) and the export downloaded, the upload's own body limit, and no
copy of the list left on the server."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bridgic_coldmail import Brief, ColdMailAgent, EmailSequence, EmailStep
from bridgic_coldmail.errors import ConfigurationError
from bridgic_coldmail.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_UPLOAD_BYTES, Settings
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer
from bridgic_coldmail.web.uploads import export_too_large
from bridgic_coldmail.web.views import MAX_VARIANTS_TEXT

from .test_web import BASE, FEEDBACK, csrf, settings_for, web_client
from .test_web_errors import bad_input_row
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
    # The CAN-SPAM findings are about every email's footer, not the follow-up's.
    assert page.count("<b>The footer of every email</b>") == 2 and "Email 2 footer" not in page


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


def leave_out_of(page: str) -> str:
    """The export form's acknowledgement of the left-out rows the page listed."""
    match = re.search(r'name="leave_out" value="([^"]*)"', page)
    assert match, "the page has no export form"
    return match.group(1)


def visible(page: str) -> str:
    """A page's text as a reader sees it (each element's text apart)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


LEFT_OUT = (
    b"Email,First Name\nann@example.com,Ann\nnot-an-email,Bob\n"
    b"ann@example.com,Ann again\ncid@example.com,Cid\n"
)
"""Two leads that can be sent (rows 2 and 5) and two that cannot (rows 3 and 4)."""


async def test_leads_left_out_are_listed_with_why_before_the_download(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    shown = await upload(client, interaction_id, LEFT_OUT)
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
    text = visible(shown.text)
    assert "2 leads can be exported; 2 cannot be sent and will be left out:" in text
    assert "3 not-an-email" in text and "4 ann@example.com" in text and "duplicate" in text
    assert "Nothing was downloaded yet" in text
    assert list(temp_dir.iterdir()) == []
    downloaded = await upload(client, interaction_id, LEFT_OUT, leave_out=leave_out_of(shown.text))
    rows = list(csv.DictReader(io.StringIO(downloaded.text)))
    assert [r["Email"] for r in rows] == ["ann@example.com", "cid@example.com"]
    assert downloaded.headers["x-coldmail-rows-skipped"] == "2"
    assert list(temp_dir.iterdir()) == []


async def test_a_download_needs_the_left_out_rows_of_this_list_to_have_been_shown(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    shown = await upload(client, interaction_id, LEFT_OUT)
    other = LEFT_OUT + b"also-not-an-email,Dee\n"
    answer = await upload(client, interaction_id, other, leave_out=leave_out_of(shown.text))
    assert answer.headers["content-type"].startswith("text/html")
    assert "6 also-not-an-email" in visible(answer.text)
    assert leave_out_of(answer.text) != leave_out_of(shown.text)
    forged = await upload(client, interaction_id, LEFT_OUT, leave_out="x" * 64)
    assert forged.headers["content-type"].startswith("text/html")


async def test_a_list_without_left_out_leads_downloads_at_once_and_a_check_only_reports(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    checked = await upload(client, interaction_id, lead_list(5), check="1")
    assert checked.status_code == 200 and checked.headers["content-type"].startswith("text/html")
    assert "All 5 leads can be exported." in visible(checked.text)
    assert re.search(r'id="export-report"[^>]* data-leave-out="[0-9a-f]{64}"', checked.text)
    refused = await upload(client, interaction_id, b"Email\nnot-an-email\n", check="1")
    assert refused.status_code == 422 and "Nothing was exported" in refused.text
    downloaded = await upload(client, interaction_id, lead_list(5))
    assert downloaded.headers["content-type"] == "text/csv; charset=utf-8"


async def test_many_left_out_leads_are_all_named(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    bad = "".join(f"bad{n},Name\n" for n in range(300)).encode()
    shown = visible((await upload(client, interaction_id, lead_list(2) + bad)).text)
    assert "2 leads can be exported; 300 cannot be sent and will be left out:" in shown
    # Rows 4 to 103 in the table, with the address and why; the 200 others by number.
    assert "103 bad99 'bad99' is not a valid email address" in shown and "bad100" not in shown
    assert "The other 200 rows left out: 104, 105," in shown and ", 302, 303." in shown


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


# ---------------------------------------------------------------------------- the export's limit


def test_the_export_limit_follows_the_upload_limit_unless_it_is_set() -> None:
    assert Settings.resolve(env={}).export_limit == 16 * DEFAULT_MAX_UPLOAD_BYTES
    one_mib = {"COLDMAIL_MAX_UPLOAD_BYTES": str(2**20)}
    assert Settings.resolve(env=one_mib).export_limit == 16 * 2**20
    set_alone = {**one_mib, "COLDMAIL_MAX_EXPORT_BYTES": "2048"}
    assert Settings.resolve(env=set_alone).export_limit == 2048
    for wrong in ("1023", "lots", "-5", str(2**50)):
        with pytest.raises(ConfigurationError, match="COLDMAIL_MAX_EXPORT_BYTES="):
            Settings.resolve(env={"COLDMAIL_MAX_EXPORT_BYTES": wrong})


async def test_an_export_over_its_limit_is_refused_by_the_page_and_the_api_leaving_nothing(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    leads = lead_list(60)
    async with web_client(settings_for(db_path)) as client:
        size = len((await upload(client, interaction_id, leads)).content)
    message = (
        f"the export is larger than {size - 1} bytes, the limit (COLDMAIL_MAX_EXPORT_BYTES); "
        "nothing was exported: export the leads in smaller lists, or raise the limit"
    )
    async with web_client(settings_for(db_path, max_export_bytes=size - 1)) as client:
        page = await upload(client, interaction_id, leads)
        api = await client.post(
            f"/api/runs/{interaction_id}/export",
            content=leads,
            headers={"Content-Type": "text/csv"},
        )
        checked = await upload(client, interaction_id, leads, check="1")
    assert page.status_code == 422 and html.escape(message, quote=False) in page.text
    assert api.status_code == 422
    assert api.json()["error"] == {"type": "InvalidInput", "message": message}
    assert checked.status_code == 422
    async with web_client(settings_for(db_path, max_export_bytes=size)) as client:
        exact = await upload(client, interaction_id, leads)
    assert exact.status_code == 200 and len(exact.content) == size
    assert list(temp_dir.iterdir()) == []


HANG_GUARD = 120.0
"""Seconds a request to the served app may take: a guard, not a timing assertion."""


def test_the_bad_input_row_for_an_export_over_its_limit_is_the_message() -> None:
    _, error, message = bad_input_row("an export over `COLDMAIL_MAX_EXPORT_BYTES` (web export)")
    assert error == "HTTP 422 `InvalidInput`"
    assert message.strip("`") == export_too_large(Settings.resolve(env={}).export_limit)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _held_exports(pid: int) -> list[int]:
    """The sizes of the deleted export files the server process still holds open."""
    sizes = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            if "coldmail-export-" in target and target.endswith("(deleted)"):
                sizes.append(os.stat(fd).st_size)
        except OSError:
            continue  # closed meanwhile
    return sizes


@pytest.mark.slow  # a reader paced by the clock
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see open files")
async def test_a_slow_reader_holds_at_most_the_limit_and_nothing_once_it_is_gone(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    watched = tmp_path / "serve-tmp"
    watched.mkdir()
    leads = lead_list(60_000)
    limit = 24 * 2**20
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(watched), "COLDMAIL_MAX_EXPORT_BYTES": str(limit)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the server did not start"
                time.sleep(0.1)
        over = await asyncio.to_thread(_post_export, port, interaction_id, lead_list(100_000))
        assert over.startswith(b"HTTP/1.1 422") and b"COLDMAIL_MAX_EXPORT_BYTES" in over
        assert list(watched.iterdir()) == []
        # A reader that takes the headers and one chunk, then stalls.
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", port))
        reader.sendall(_export_request(port, interaction_id, leads))
        head = reader.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        held: list[int] = []
        for _ in range(300):
            held = _held_exports(proc.pid)
            if held:
                break
            await asyncio.sleep(0.1)
        assert held and all(size <= limit for size in held)
        assert list(watched.iterdir()) == []  # the folder went before the answer started
        reader.close()
        for _ in range(300):
            if not _held_exports(proc.pid):
                break
            await asyncio.sleep(0.1)
        assert _held_exports(proc.pid) == [], "the export stayed open after the reader left"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _export_request(port: int, interaction_id: str, leads: bytes) -> bytes:
    head = (
        f"POST /api/runs/{interaction_id}/export HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {len(leads)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + leads


def _post_export(port: int, interaction_id: str, leads: bytes) -> bytes:
    """The whole answer to an API export, read at once."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as conn:
        conn.sendall(_export_request(port, interaction_id, leads))
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


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


# ---------------------------------------------------------------------------- sending tools


async def test_the_export_form_offers_every_sending_tool_and_shapes_the_file(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    select = page.split('id="profile"')[1].split("</select>")[0]
    assert re.findall(r'<option value="([a-z]+)"', select) == [
        "generic", "smartlead", "instantly", "lemlist", "apollo"
    ]  # fmt: skip
    answer = await upload(client, interaction_id, lead_list(3), profile="apollo")
    assert answer.status_code == 200, answer.text
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(rows[0])[:2] == ["First Name", "Contact Email"]
    assert [r["Contact Email"] for r in rows] == [f"lead{n}@example.com" for n in range(3)]
    assert list(temp_dir.iterdir()) == []  # the template was written and removed with the rest


async def test_an_unknown_sending_tool_in_the_form_is_refused_and_the_choice_kept(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    refused = await upload(client, interaction_id, lead_list(2), profile="hubspot")
    assert refused.status_code == 422
    assert "unknown sending tool &#39;hubspot&#39;; choose one from the list" in refused.text
    kept = await upload(client, interaction_id, lead_list(2), profile="lemlist", check="1")
    assert kept.status_code == 200 and '<option value="lemlist" selected>' in kept.text


async def test_the_api_export_takes_a_sending_tool(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)
    path = f"/api/runs/{interaction_id}/export"
    headers = {"Content-Type": "text/csv"}
    answer = await client.post(f"{path}?profile=smartlead", content=lead_list(2), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.text.splitlines()[0] == ("email,first_name,step1_subject,step1_body,step2_body")
    refused = await client.post(f"{path}?profile=hubspot", content=lead_list(2), headers=headers)
    assert refused.status_code == 422 and "profile" in refused.text


# ---------------------------------------------------------------------------- A/B and rules


async def test_the_api_exports_approved_runs_as_variants_with_the_same_split_each_time(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    first, second = await completed(db_path, brief), await completed(db_path, brief)
    path = f"/api/runs/{first}/export?format=json&variant={second}"
    headers = {"Content-Type": "text/csv"}
    answer = await client.post(path, content=lead_list(40), headers=headers)
    assert answer.status_code == 200, answer.text
    labels = [row["variant"] for row in answer.json()]
    assert set(labels) == {"A", "B"} and len(labels) == 40
    again = await client.post(path, content=lead_list(40), headers=headers)
    assert [row["variant"] for row in again.json()] == labels


async def test_the_api_refuses_a_variant_that_is_not_approved_unknown_or_named_twice(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    first, pending = await completed(db_path, brief), await at_review(db_path, brief)
    headers = {"Content-Type": "text/csv"}

    async def export(query: str) -> httpx.Response:
        return await client.post(
            f"/api/runs/{first}/export?{query}", content=lead_list(2), headers=headers
        )

    not_final = await export(f"variant={pending}")
    assert not_final.status_code == 409
    assert "awaiting review at round 1" in not_final.json()["error"]["message"]
    unknown = await export(f"variant={'0' * 32}")
    assert unknown.status_code == 404
    twice = await export(f"variant={first}")
    assert twice.status_code == 422
    assert "named twice among the variants" in twice.json()["error"]["message"]


async def test_the_api_turns_off_the_rules_it_is_given_and_refuses_unknown_ones(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)  # the brief has no address nor opt-out
    path = f"/api/runs/{interaction_id}/export?strict=true"
    headers = {"Content-Type": "text/csv"}
    refused = await client.post(path, content=lead_list(2), headers=headers)
    assert refused.status_code == 422
    assert "2 lint issue(s): sequence footer: no postal" in refused.json()["error"]["message"]
    rules = "&disabled_rule=can-spam-address&disabled_rule=can-spam-opt-out"
    answer = await client.post(path + rules, content=lead_list(2), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-coldmail-lint-warnings"] == "0"
    unknown = await client.post(
        path + "&disabled_rule=can-spam", content=lead_list(2), headers=headers
    )
    assert unknown.status_code == 422
    assert "unknown check rule(s) 'can-spam'" in unknown.json()["error"]["message"]


async def test_the_export_form_exports_approved_runs_as_variants(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    first, second = await completed(db_path, brief), await completed(db_path, brief)
    page = (await client.get(f"/runs/{first}")).text
    assert 'id="variants"' in page
    answer = await upload(client, first, lead_list(30), variants=f" {second.upper()} ")
    assert answer.status_code == 200, answer.text
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert {row["variant"] for row in rows} == {"A", "B"} and len(rows) == 30


@pytest.mark.parametrize(
    ("variants", "status", "message"),
    [
        ("not-a-run", 422, "is not an interaction id"),
        ("0" * 32, 404, "no run with interaction id"),
        ("PENDING", 409, "is awaiting review at round 1; approve it before exporting"),
        ("FIRST", 422, "is named twice among the variants"),
        (" ".join(f"{n:032x}" for n in range(1, 27)), 422, "at most 26 variants"),
        ("a" * 1081, 422, "the variants field is 1081 characters; name at most 25 other runs"),
    ],
)
async def test_a_variant_the_form_cannot_use_is_refused_on_the_page_keeping_what_was_typed(
    client: httpx.AsyncClient,
    db_path: Path,
    brief: Brief,
    temp_dir: Path,
    variants: str,
    status: int,
    message: str,
) -> None:
    assert MAX_VARIANTS_TEXT == 1080  # the longest field case below is one character past it
    first, pending = await completed(db_path, brief), await at_review(db_path, brief)
    typed = variants.replace("PENDING", pending).replace("FIRST", first)
    refused = await upload(client, first, lead_list(2), variants=typed, profile="lemlist")
    assert refused.status_code == status
    shown = html.unescape(refused.text)
    assert message in shown and "The lead list itself cannot be used" not in shown
    assert f'value="{html.escape(typed[:MAX_VARIANTS_TEXT])}"' in refused.text  # kept to correct
    assert '<option value="lemlist" selected>' in refused.text
    assert list(temp_dir.iterdir()) == []


async def test_the_form_turns_off_the_checks_ticked_and_shows_the_settings_default(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    interaction_id = await completed(db_path, brief)  # the brief has no address nor opt-out
    settings = settings_for(db_path, disabled_rules=("can-spam-address",))
    async with web_client(settings) as client:
        page = (await client.get(f"/runs/{interaction_id}")).text
        ticked = re.findall(r'name="disabled_rule" value="([a-z-]+)" checked', page)
        assert ticked == ["can-spam-address"]
        offered = re.findall(r'name="disabled_rule" value="([a-z-]+)"', page)
        assert "can-spam-opt-out" in offered and "unknown-field" not in offered
        strict = {"strict": "on", "rules": "shown"}
        refused = await upload(client, interaction_id, lead_list(2), **strict)
        assert refused.status_code == 422  # nothing ticked: CAN-SPAM's two rules apply
        assert "2 lint issue(s)" in html.unescape(refused.text)
        both = ["can-spam-address", "can-spam-opt-out"]
        answer = await client.post(
            f"/runs/{interaction_id}/export",
            data={"csrf_token": csrf(page), **strict, "disabled_rule": both},
            files={"leads": ("leads.csv", lead_list(2), "text/csv")},
            headers={"Origin": BASE},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-coldmail-lint-warnings"] == "0"
        unknown = await upload(client, interaction_id, lead_list(2), disabled_rule="can-spam")
        assert unknown.status_code == 422
        assert "unknown check rule(s) &#39;can-spam&#39;" in unknown.text


# ---------------------------------------------------------------------------- the template


async def test_the_api_serves_a_tools_template_for_the_file_it_names(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    path = f"/api/runs/{interaction_id}/export?profile=smartlead"
    headers = {"Content-Type": "text/csv"}
    template = await client.post(f"{path}&part=template", content=lead_list(2), headers=headers)
    assert template.status_code == 200, template.text
    assert template.headers["content-type"] == "text/plain; charset=utf-8"
    disposition = template.headers["content-disposition"]
    assert disposition == f'attachment; filename="coldmail-{interaction_id}.smartlead.txt"'
    assert template.text.startswith(f"Smartlead: how to send coldmail-{interaction_id}.csv\n")
    assert template.headers["x-coldmail-rows-written"] == "2"
    the_file = await client.post(path, content=lead_list(2), headers=headers)
    assert the_file.headers["content-disposition"].endswith(f'"coldmail-{interaction_id}.csv"')
    assert the_file.text.startswith("email,first_name,")
    assert list(temp_dir.iterdir()) == []


async def test_the_generic_file_has_no_template_to_serve(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    refused = await client.post(
        f"/api/runs/{interaction_id}/export?part=template",
        content=lead_list(2),
        headers={"Content-Type": "text/csv"},
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == (
        "the generic file has no template; choose a sending tool (profile=smartlead, "
        "instantly, lemlist or apollo)"
    )
    assert list(temp_dir.iterdir()) == []


async def test_the_run_page_shows_the_tools_template_with_the_checked_list(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    checked = await upload(client, interaction_id, lead_list(2), profile="instantly", check="1")
    assert checked.status_code == 200, checked.text
    shown = checked.text.split('id="export-template"')[1].split("</details>")[0]
    assert "The paste-ready template for Instantly:" in shown
    assert f"Instantly: how to send coldmail-{interaction_id}.csv" in html.unescape(shown)
    generic = await upload(client, interaction_id, lead_list(2), check="1")
    assert 'id="export-template"' not in generic.text
    hostile = b"Email,First Name,<img src=x onerror=alert(1)>\nann@example.com,Ann,x\n"
    escaped = await upload(client, interaction_id, hostile, profile="lemlist", check="1")
    assert escaped.status_code == 200, escaped.text
    assert 'id="export-template"' in escaped.text and "<img src=x" not in escaped.text
    assert list(temp_dir.iterdir()) == []


async def test_the_checked_list_shows_the_findings_per_lead_and_the_split_per_variant(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    greeting = EmailSequence(
        opener=EmailStep(
            subject="{{first_name|}} and Acme", body="Hi {{first_name|}},\n\nDana", wait_days=0
        ),
        follow_up=EmailStep(subject="Again", body="Hi again,\n\nDana", wait_days=3),
    )
    interaction_id = await at_review(db_path, brief)
    other = await completed(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        await agent.edit(interaction_id, greeting)
        await agent.approve(interaction_id)
    names = ["Ann", "", "B" * 70, "", "Cid"]
    rows = "".join(f"l{n}@example.com,{name}\n" for n, name in enumerate(names))
    listed = f"Email,First Name\n{rows}".encode()
    checked = await upload(client, interaction_id, listed, check="1")
    assert checked.status_code == 200, checked.text
    report = checked.text.split('id="export-report"')[1]
    listed_findings = report.split('id="lead-findings"')[1].split("</ul>")[0]
    findings = " ".join(re.sub(r"<[^>]+>", "", listed_findings).split())
    assert "Email 1 body: 2 leads (rows 3, 5): " in findings
    assert "[empty-greeting]" in findings
    assert "Email 1 subject: 1 lead (row 4): " in findings
    assert "[lead-subject-too-long]" in findings
    assert 'id="variant-split"' not in report
    split_up = await upload(client, interaction_id, lead_list(30), variants=other, check="1")
    assert "<b>The file</b> (warning)" in split_up.text  # variant-delays-differ, 3 and 4 days
    split = split_up.text.split('id="variant-split"')[1].split("</p>")[0]
    counts = {label: int(n) for label, n in re.findall(r"<b>([AB])</b>: (\d+)", split)}
    assert set(counts) == {"A", "B"} and sum(counts.values()) == 30
    alone = await upload(client, other, lead_list(2), check="1")
    assert 'id="lead-findings"' not in alone.text and 'id="variant-split"' not in alone.text


# ---------------------------------------------------------------------------- the footer


async def test_the_new_run_form_takes_the_postal_address_and_opt_out_the_export_appends(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer, db_path: Path
) -> None:
    page = await client.get("/runs/new")
    assert 'id="postal_address"' in page.text and 'id="opt_out"' in page.text
    address, opt_out = "Acme Inc., 1 Main St, Springfield, IL 62701", "Reply 'stop' to opt out."
    created = await client.post(
        "/runs",
        data={"product": "Ledgerly", "offer": "reconciles invoices", "sender": "Sam Roy",
              "postal_address": f" {address} ", "opt_out": opt_out, "fields": "Email",
              "csrf_token": csrf(page.text)},
        headers={"Origin": BASE},
    )  # fmt: skip
    assert created.status_code == 303, created.text
    interaction_id = created.headers["location"].rsplit("/", 1)[1]
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.resume(interaction_id, FEEDBACK)
    assert (run.brief.postal_address, run.brief.opt_out) == (address, opt_out)
    assert address not in server.requests[0].user_text  # the LLM never sees it
    shown = (await client.get(f"/runs/{interaction_id}")).text
    assert "[can-spam-address]</span>" not in shown and "[can-spam-opt-out]</span>" not in shown
    exported = await upload(client, interaction_id, b"Email\nann@example.com\n", format="json")
    row = exported.json()[0]
    assert row["step1_body"].endswith(f"\n\n{address}\n{opt_out}")
    assert row["step2_body"].endswith(f"\n\n{address}\n{opt_out}")


async def test_a_footer_text_the_form_cannot_use_is_refused_keeping_what_was_typed(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    page = await client.get("/runs/new")
    refused = await client.post(
        "/runs",
        data={"product": "Ledgerly", "offer": "reconciles invoices", "sender": "Sam Roy",
              "postal_address": "{{address}}", "opt_out": "x" * 301,
              "csrf_token": csrf(page.text)},
    )  # fmt: skip
    assert refused.status_code == 422
    message = html.unescape(refused.text)
    assert "postal_address contains { or }, which sending tools read as their own" in message
    assert 'value="{{address}}"' in refused.text and server.count() == 0


async def test_the_api_takes_the_footer_in_the_brief_and_refuses_a_bad_one(
    client: httpx.AsyncClient, server: ScriptedOpenAIServer
) -> None:
    brief = {"product": "Acme", "offer": "saves time", "sender": "Dana"}
    footer = {"postal_address": "1 Main St, Springfield, IL", "opt_out": "Reply 'stop'."}
    created = await client.post("/api/runs", json=brief | footer)
    assert created.status_code == 201, created.text
    assert {k: created.json()["brief"][k] for k in footer} == footer
    refused = await client.post("/api/runs", json=brief | {"opt_out": "Reply {{stop}}"})
    assert refused.status_code == 422
    assert "opt_out contains { or }" in refused.json()["error"]["message"]


async def test_a_form_with_more_fields_than_the_export_form_has_is_refused_clearly(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, temp_dir: Path
) -> None:
    interaction_id = await completed(db_path, brief)
    page = (await client.get(f"/runs/{interaction_id}")).text
    answer = await client.post(
        f"/runs/{interaction_id}/export",
        data={"csrf_token": csrf(page), "disabled_rule": ["capitals"] * 500},
        files={"leads": ("leads.csv", lead_list(2), "text/csv")},
        headers={"Origin": BASE},
    )
    assert answer.status_code == 400, answer.text
    assert "Too many fields" in html.unescape(answer.text)
    assert list(temp_dir.iterdir()) == []
