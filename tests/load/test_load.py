"""Load, on each backend: a thousand runs at once from one process and from four (each with
its own store — on PostgreSQL its own connection pool), then resumed at once; and a hundred
two-process races. Zero errors, exactly two LLM calls per run, one refinement per race. And
``coldmail serve --workers 3`` taking runs and feedback on either backend.

The figures are counts, not timings: speed is measured in benchmarks/, never asserted here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridgic_coldmail import ColdMailAgent, RunBeingResumed, RunStatus
from bridgic_coldmail.models import Run
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Backend

pytestmark = pytest.mark.load
WORKER_TIMEOUT = 600  # hang guard only


@pytest.fixture
def store_env(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """This process and its children use the backend's store (its URL and key)."""
    monkeypatch.setenv("COLDMAIL_DB", backend.db)
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    return backend


def _workers(command: str, arguments: list[str]) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.load.load_worker", command, argument],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argument in arguments
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=WORKER_TIMEOUT)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def _assert_no_errors(results: list[dict[str, Any]]) -> None:
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]


async def _statuses(backend: Backend) -> dict[str, int]:
    """How many readable runs of each status the store holds (damaged ones counted apart)."""
    async with ColdMailAgent.open(backend.db) as agent:
        counts: dict[str, int] = {}
        for status in RunStatus:
            runs = await agent.list(status, limit=1000)
            counts[status.value] = sum(isinstance(r, Run) for r in runs)
            damaged = len(runs) - counts[status.value]
            if damaged:
                counts[f"damaged {status.value}"] = damaged
        return {name: n for name, n in counts.items() if n}


async def test_thousand_concurrent_runs_in_one_process(
    server: ScriptedOpenAIServer, store_env: Backend
) -> None:
    from tests.load.load_worker import resume, start

    started = await start(1000)
    _assert_no_errors([started])
    resumed = await resume(started["ids"])
    _assert_no_errors([resumed])
    assert resumed["completed"] == 1000
    assert server.count("draft") == 1000 and server.count("refine") == 1000
    assert await _statuses(store_env) == {"completed": 1000}


async def test_thousand_runs_from_four_processes_then_resumed_from_four(
    server: ScriptedOpenAIServer, store_env: Backend, tmp_path: Path
) -> None:
    started = _workers("start", ["250"] * 4)
    _assert_no_errors(started)
    ids = [i for r in started for i in r["ids"]]
    assert len(set(ids)) == 1000

    files = []
    for n in range(4):
        path = tmp_path / f"ids-{n}.json"
        path.write_text(json.dumps(ids[n::4]))
        files.append(str(path))
    resumed = _workers("resume", files)
    _assert_no_errors(resumed)
    assert sum(r["completed"] for r in resumed) == 1000
    assert server.count("draft") == 1000 and server.count("refine") == 1000  # two calls a run
    assert await _statuses(store_env) == {"completed": 1000}


async def test_hundred_two_process_races_each_refine_once(
    server: ScriptedOpenAIServer, store_env: Backend, tmp_path: Path
) -> None:
    from tests.load.load_worker import start

    started = await start(100)
    _assert_no_errors([started])
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(started["ids"]))
    (result,) = _workers("race", [str(ids_file)])
    for outcome in result["outcomes"]:
        assert 0 in outcome, outcome  # somebody won
        assert set(outcome) <= {0, RunBeingResumed.exit_code}, outcome
    assert server.count("refine") == 100  # exactly one refine per race
    assert await _statuses(store_env) == {"completed": 100}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_with_several_workers_on_either_backend(
    server: ScriptedOpenAIServer, store_env: Backend
) -> None:
    pytest.importorskip("uvicorn", reason="coldmail serve needs the web extra")
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "serve", "--port", str(port), "--workers", "3"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    brief = {"product": "Acme", "offer": "saves time", "sender": "Dana"}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while True:
                try:
                    if (await client.get("/api/runs")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "coldmail serve did not come up"
                await asyncio.sleep(0.2)
            started = await asyncio.gather(
                *(client.post("/api/runs", json=brief) for _ in range(30))
            )
            assert [r.status_code for r in started] == [201] * 30
            ids = [r.json()["interaction_id"] for r in started]
            # Each run twice at once, so requests for one run meet in different workers.
            resumed = await asyncio.gather(
                *(
                    client.post(f"/api/runs/{i}/feedback", json={"feedback": "CTOs"})
                    for i in ids + ids
                )
            )
    finally:
        proc.terminate()
        proc.wait(timeout=PROCESS_TIMEOUT)
    assert {r.status_code for r in resumed} <= {200, 409}
    assert sum(r.status_code == 200 and r.json()["status"] == "completed" for r in resumed) >= 30
    assert server.count("draft") == 30 and server.count("refine") == 30  # once per run
    assert await _statuses(store_env) == {"completed": 30}
