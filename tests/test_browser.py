"""A reviewer in a real browser: Debian's Chromium driven by Playwright (no browser download).

Opens the inbox, opens a run, types feedback, submits, sees the form say the model is working
(the page's script), then the refined sequence, and saves a screenshot; the stylesheet applies
and the Content-Security-Policy blocks nothing. Needs ``/usr/bin/chromium`` (``apt-get install
chromium``), which CI installs.

The server is ``coldmail serve --port N`` in a child process, on a free port.
"""

from __future__ import annotations

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

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.testing import ScriptedOpenAIServer

from .conftest import REPO

CHROMIUM = "/usr/bin/chromium"
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


async def test_reviewer_gives_feedback_in_a_real_browser(
    web_server: str, server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed")
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
