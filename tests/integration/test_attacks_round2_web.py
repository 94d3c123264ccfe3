"""Attacks on "no request may stall others", round two (issue 17, item 1), from the side of
the export: a burst of exports from the inbox.

Found by a probe: six exports of a 40,000-row list sent at once, and the run page asked for a
second later answered after 28 s (0.3 s alone). Each export runs on a worker thread of the
event loop's default executor, which has ``min(32, cores + 4)`` of them; the run page builds
its lint and its HTML on the same executor, so while that many exports run, every page waits
for one of them to finish.

The exports here are held at their start (a patch that only makes them slow), so the test
does not depend on the machine's speed: with the executor's every worker taken by an
export, the page never answers until one is let go.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import bridgic_coldmail.export as export_package
from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.testing import ScriptedOpenAIServer

from .test_web import settings_for, web_client

DEFAULT_EXECUTOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)
"""What ``asyncio``'s default executor has (``concurrent.futures.ThreadPoolExecutor``)."""
PAGE_WAIT = 30.0
"""How long the page may take here: the guard of this test, not a speed target (it answers
in well under a second alone)."""


async def test_a_burst_of_exports_never_stalls_the_run_page(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        pending = await agent.start(brief)
        completed = (await agent.resume(pending.interaction_id, "CTOs")).interaction_id
    gate = threading.Event()
    entered = threading.Semaphore(0)
    original = export_package.export_sequence

    def held_export(*args: Any, **kwargs: Any) -> Any:
        entered.release()
        gate.wait(60)  # let go by the test; the timeout only keeps a failure from hanging
        return original(*args, **kwargs)

    monkeypatch.setattr(export_package, "export_sequence", held_export)
    body = b"email,first_name\nana@x.com,Ana\nbo@y.org,Bo\n"
    async with web_client(settings_for(db_path)) as client:

        async def export() -> int:
            answer = await client.post(
                f"/api/runs/{completed}/export",
                content=body,
                headers={"Content-Type": "text/csv"},
            )
            return answer.status_code

        exports = [asyncio.ensure_future(export()) for _ in range(DEFAULT_EXECUTOR_WORKERS + 1)]
        try:
            while not entered.acquire(blocking=False):  # at least one export is running
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # and every one that can start has started
            page = await asyncio.wait_for(client.get(f"/runs/{completed}"), PAGE_WAIT)
            assert page.status_code == 200
            assert not any(e.done() for e in exports)  # the exports were still held
        finally:
            gate.set()
            statuses = await asyncio.gather(*exports)
    assert statuses == [200] * len(exports)
