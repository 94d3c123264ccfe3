"""A reviewer in a real browser: Debian's Chromium driven by Playwright (no browser download).

Feedback: opens the inbox, opens a run, types feedback, submits, sees the form say the model is
working (the page's script), then the refined sequence, and saves a screenshot
(``SAVE_SCREENSHOT_TO``). Review: opens a run awaiting review, asks for one revision, sees
round 2, approves it and sees the final sequence. The stylesheet applies and the
Content-Security-Policy blocks nothing. Needs ``/usr/bin/chromium`` (``apt-get install
chromium``), which CI installs.

The server is ``coldmail serve --port N`` in a child process, on a free port.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import REPO, find_chromium

pytestmark = pytest.mark.browser
CHROMIUM = find_chromium() or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SUBMIT_AND_LOOK = """() => {
  const form = document.getElementById("feedback-form");
  const button = form.querySelector("button[type=submit]");
  button.click();
  return {busy: form.classList.contains("busy"), disabled: button.disabled};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def web_server(server: ScriptedOpenAIServer, db_path: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "serve", "--port", str(port)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    error = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(error) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed")


async def test_reviewer_gives_feedback_in_a_real_browser(
    web_server: str, server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    _need_chromium()
    from playwright.async_api import async_playwright

    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief)).interaction_id

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(web_server + "/")
        header = await page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
        assert header == "rgb(29, 36, 51)"  # /static/style.css applies
        await page.click(f'a[href="/runs/{interaction_id}"]')
        await page.wait_for_selector("textarea#feedback")
        await page.fill("textarea#feedback", "CTOs at mid-size hospitals")
        # The submit handler (/static/run.js) runs inside click(), before the page navigates:
        # look from the page itself, as Playwright's own waits would wait out the navigation.
        working = await page.evaluate(SUBMIT_AND_LOOK)
        assert working == {"busy": True, "disabled": True}
        await page.wait_for_selector("text=Refined", timeout=30_000)
        assert await page.is_visible("text=Acme Scheduler for CTOs at mid-size hospitals")
        shot = tmp_path / "run-page.png"
        await page.screenshot(path=str(shot), full_page=True)
        await browser.close()
    assert not [text for text in console if "Content Security Policy" in text]
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("SAVE_SCREENSHOT_TO")
    if keep:
        shutil.copy(shot, keep)
    assert server.count("refine") == 1


async def test_reviewer_revises_once_and_approves_in_a_real_browser(
    web_server: str, server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    _need_chromium()
    from playwright.async_api import async_playwright

    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief, review=True)
        interaction_id = pending.interaction_id
        await agent.resume(interaction_id, "CTOs at mid-size hospitals")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(web_server + "/?tab=review")
        await page.click(f'a[href="/runs/{interaction_id}"]')
        await page.wait_for_selector("text=Under review · round 1 of 5")
        await page.fill("textarea#guidance", "mention the free trial")
        await page.click("#revise-form button[type=submit]")
        await page.wait_for_selector("text=Under review · round 2 of 5", timeout=30_000)
        revised = "Acme Scheduler, revised: mention the free trial"
        assert await page.is_visible(f"#under-review + p + .grid >> text={revised}")
        assert await page.is_visible("text=Round 1 · A reviewer asked for a revision")
        await page.fill("#approve-form input.reviewer", "Ann")
        # The page's script copies the name into the other decision forms.
        assert await page.input_value("#reject-form input.reviewer") == "Ann"
        await page.click("#approve-form button[type=submit]")
        await page.wait_for_selector("text=Final (approved)", timeout=30_000)
        assert await page.is_visible(f"text={revised}")
        assert await page.is_visible("text=Round 2 · Ann approved it")
        assert await page.is_visible("#export-form")
        await browser.close()
    assert not [text for text in console if "Content Security Policy" in text]
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.get(interaction_id)
    assert (run.status, run.round, server.count("revise")) == (RunStatus.COMPLETED, 2, 1)


async def test_reviewer_sees_the_leads_left_out_before_downloading_in_a_real_browser(
    web_server: str, server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    _need_chromium()
    from playwright.async_api import async_playwright

    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief, review=True, fields=["email", "first_name"])
        interaction_id = pending.interaction_id
        await agent.resume(interaction_id, "CTOs at mid-size hospitals")
        await agent.approve(interaction_id)
    with_bad_rows = tmp_path / "leads.csv"
    with_bad_rows.write_text(
        "Email,First Name\nann@example.com,Ann\nnot-an-email,Bob\n"
        "cid@example.com,Cid\nann@example.com,Ann again\ndee@example.com,Dee\n"
    )
    clean = tmp_path / "clean.csv"
    clean.write_text("Email,First Name\neve@example.com,Eve\nfay@example.com,Fay\n")
    unusable = tmp_path / "names.csv"
    unusable.write_text("Name\nAnn\n")
    url = f"{web_server}/runs/{interaction_id}"

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(
            viewport={"width": 1200, "height": 900}, accept_downloads=True
        )
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(url)
        button = "#export-form button[type=submit]"

        # Two leads cannot be sent: they are listed on this page, and nothing downloads yet.
        await page.set_input_files("#leads", str(with_bad_rows))
        await page.click(button)
        report = await page.wait_for_selector("#export-report", timeout=30_000)
        text = " ".join((await report.inner_text()).split())
        assert "3 leads can be exported; 2 cannot be sent and will be left out:" in text
        assert "3 not-an-email" in text and "5 ann@example.com" in text
        assert page.url == url  # the same page: the file is still chosen
        assert await page.inner_text(button) == "Download the 3 leads"
        async with page.expect_download() as started:
            await page.click(button)
        download = await started.value
        saved = Path(await download.path())
        rows = list(csv.DictReader(io.StringIO(saved.read_text())))
        assert [r["Email"] for r in rows] == [
            "ann@example.com",
            "cid@example.com",
            "dee@example.com",
        ]
        assert "without the leads listed here" in await page.inner_text("#export-report")

        # Other variants or checks make another export: the report for this one is forgotten.
        await page.set_input_files("#leads", str(with_bad_rows))
        await page.click(button)
        await page.wait_for_selector("#export-report", timeout=30_000)
        await page.fill("#variants", "0123")
        assert await page.query_selector("#export-report") is None
        assert await page.inner_text(button) == "Export"
        await page.fill("#variants", "")
        await page.click(button)
        await page.wait_for_selector("#export-report", timeout=30_000)
        await page.click("#rules summary")
        await page.check("input[name=disabled_rule][value=can-spam-opt-out]")
        assert await page.query_selector("#export-report") is None

        # Another file forgets the report; with nothing left out the download starts at once.
        await page.set_input_files("#leads", str(clean))
        assert await page.query_selector("#export-report") is None
        assert await page.inner_text(button) == "Export"
        async with page.expect_download() as started:
            await page.click(button)
        rows = list(
            csv.DictReader(io.StringIO(Path(await (await started.value).path()).read_text()))
        )
        assert [r["Email"] for r in rows] == ["eve@example.com", "fay@example.com"]
        assert "All 2 leads can be exported." in await page.inner_text("#export-report")

        # A list the export cannot use: the reason, on the same page, and no download.
        await page.set_input_files("#leads", str(unusable))
        await page.click(button)
        await page.wait_for_selector("#export-problem", timeout=30_000)
        assert "has no email column" in await page.inner_text("#export-result")
        assert page.url == url
        await browser.close()
    assert not [text for text in console if "Content Security Policy" in text]


async def test_reviewer_writes_a_first_line_for_every_lead_in_a_real_browser(
    web_server: str, server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    """On an approved run's page: the estimate, then the sample, approved; the page shows
    the rest being written and then every line, and the lead without one with why."""
    _need_chromium()
    from playwright.async_api import async_playwright

    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief)).interaction_id
        await agent.resume(interaction_id, "CTOs at mid-size hospitals")
    leads = tmp_path / "leads.csv"
    rows = ["email,first_name,company"] + [f"l{i}@example.com,Ann{i},Acme{i}" for i in range(9)]
    leads.write_text("\n".join([*rows, "not-an-address,Bob,Bad"]) + "\n", encoding="utf-8")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text))
        await page.goto(f"{web_server}/runs/{interaction_id}")
        await page.wait_for_selector("#lines")
        await page.set_input_files("#lines-leads", str(leads))
        await page.fill("#lines-sample", "2")
        await page.click("#lines-form button[name=estimate]")
        await page.wait_for_selector("#lines-estimate")
        assert "9 leads, one LLM call each" in await page.inner_text("#lines-estimate")
        assert server.count("line") == 0
        await page.set_input_files("#lines-leads", str(leads))  # a browser keeps no file
        await page.click("#write-sample")
        await page.wait_for_selector("#sample", timeout=30_000)
        assert (await page.inner_text("#sample")).count("keeps your team busy") == 2
        server.respond_with(lambda r: Reply(delay=2.0) if r.kind == "line" else None)
        await page.click("#approve-sample button[type=submit]")
        await page.wait_for_selector("#lines-progress", timeout=30_000)  # written meanwhile
        await page.wait_for_selector("#lines-done", timeout=60_000)  # the page reloads itself
        done = await page.inner_text("#lines")
        assert "9 lines written, 1 lead skipped" in done
        assert "I imagine Acme8 keeps your team busy." in await page.inner_text("#written-lines")
        assert "not-an-address" in await page.inner_text("#skipped-leads")
        assert not [e for e in errors if "Content Security Policy" in e]
        await browser.close()
    assert server.count("line") == 9
