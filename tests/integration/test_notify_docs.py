"""The documentation's five lines that verify a webhook on the host's side run as written:
they accept what coldmail sends and refuse anything forged, edited, stale or malformed."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bridgic_coldmail.notify import deliver
from bridgic_coldmail.notify.channels import sign_webhook, webhook_keys

from ..conftest import REPO
from ..notify_servers import LOOPBACK, WEBHOOK_SECRET, make_notification, make_settings

HOST_SNIPPET = """\
import os; from standardwebhooks import Webhook                # pip install standardwebhooks
webhook = Webhook(os.environ["COLDMAIL_WEBHOOK_SECRET"])       # the same whsec_… as coldmail's
def verified(body: bytes, headers: dict[str, str]) -> dict | None:  # the raw body, as received
    try: return webhook.verify(body, headers)                  # {"type": "run.review", "data": …}
    except Exception: return None                              # forged, edited, stale, malformed
"""
"""The documentation's "Reaching the reviewer" page (``PAGE``) shows exactly these lines."""


def host_verifier(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes, dict[str, str]], Any]:
    monkeypatch.setenv("COLDMAIL_WEBHOOK_SECRET", WEBHOOK_SECRET)
    namespace: dict[str, Any] = {}
    exec(compile(HOST_SNIPPET, "reaching-the-reviewer.md", "exec"), namespace)
    verified: Callable[[bytes, dict[str, str]], Any] = namespace["verified"]
    return verified


@contextmanager
def host(verified: Callable[[bytes, dict[str, str]], Any]) -> Iterator[tuple[str, list[Any]]]:
    """A host application's route: 400 unless ``verified``, then de-duplicated by id."""
    events: list[Any] = []
    seen: set[str] = set()

    class Route(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            event = verified(body, headers)
            if event is not None and headers["webhook-id"] not in seen:
                seen.add(headers["webhook-id"])
                events.append(event)
            self.send_response(400 if event is None else 204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Route)
    # A short poll: shutdown() waits up to one (0.5 s by default) after every test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/coldmail", events
    finally:
        server.shutdown()
        server.server_close()


async def test_the_five_lines_accept_a_delivery_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(HOST_SNIPPET.splitlines()) == 5
    with host(host_verifier(monkeypatch)) as (url, events):
        n = make_notification(url)
        settings = make_settings()
        first = await deliver(n, settings)
        again = await deliver(n, settings)  # a retry: the same webhook-id
    assert first.delivered and first.status == 204 and again.delivered
    assert len(events) == 1 and events[0]["type"] == "run.paused"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, h: (body + b" ", h),
        lambda body, h: (body.replace(b"run.paused", b"run.complet"), h),
        lambda body, h: (body, {**h, "webhook-id": "another"}),
        lambda body, h: (body, {**h, "webhook-timestamp": str(int(time.time()) - 3600)}),
        lambda body, h: (body, {**h, "webhook-signature": "garbage"}),
        lambda body, h: (body, {**h, "webhook-signature": "v1,abc"}),
        lambda body, h: (b"\xff" + body, h),
        lambda body, h: (body, {k: v for k, v in h.items() if k != "webhook-signature"}),
    ],
)
def test_the_five_lines_refuse_forged_edited_stale_and_malformed_requests(
    monkeypatch: pytest.MonkeyPatch, tamper: Callable[..., tuple[bytes, dict[str, str]]]
) -> None:
    body = json.dumps({"type": "run.paused", "timestamp": "t", "data": {}}).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": "n1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(
            webhook_keys(WEBHOOK_SECRET), "n1", timestamp, body.decode()
        ),
    }
    with host(host_verifier(monkeypatch)) as (url, events):
        assert httpx.post(url, content=body, headers=headers).status_code == 204
        forged_body, forged_headers = tamper(body, headers)
        assert httpx.post(url, content=forged_body, headers=forged_headers).status_code == 400
    assert len(events) == 1


PAGE = REPO / "docs" / "how-to" / "reaching-the-reviewer.md"
"""The documentation's "Reaching the reviewer" page."""


def _snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(import os; from standardwebhooks.*?)```", text, re.S)


def test_the_reaching_the_reviewer_page_shows_the_tested_lines() -> None:
    text = PAGE.read_text()
    assert text.startswith("# Reaching the reviewer\n")
    assert _snippets(text) == [HOST_SNIPPET]
    assert "how-to/reaching-the-reviewer.md" in (REPO / "mkdocs.yml").read_text()


def test_every_copy_of_the_lines_in_the_docs_is_the_tested_one() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    blocks = [block for page in pages for block in _snippets(page.read_text())]
    assert blocks and blocks == [HOST_SNIPPET] * len(blocks)
