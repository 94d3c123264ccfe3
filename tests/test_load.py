"""Load: a thousand runs at once, from one process and from four, then resumed at once; and
a hundred two-process races. No "database is locked", every run completed exactly once.

The figures are counts, not timings: speed is measured in benchmarks/, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridgic_coldmail import ColdMailAgent, RunBeingResumed, RunStatus
from bridgic_coldmail.testing import ScriptedOpenAIServer

from .conftest import REPO

pytestmark = pytest.mark.load
WORKER_TIMEOUT = 600  # hang guard only


def _workers(command: str, arguments: list[str]) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.load_worker", command, argument],
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


async def _statuses(db_path: Path) -> dict[RunStatus, int]:
    async with ColdMailAgent.open(db_path) as agent:
        counts: dict[RunStatus, int] = {}
        for status in RunStatus:
            runs = await agent.list(status, limit=1000)
            counts[status] = len(runs)
        return counts


async def test_thousand_concurrent_runs_in_one_process(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    from tests.load_worker import resume, start

    started = await start(1000)
    _assert_no_errors([started])
    resumed = await resume(started["ids"])
    _assert_no_errors([resumed])
    assert resumed["completed"] == 1000
    assert server.count("draft") == 1000 and server.count("refine") == 1000
    assert (await _statuses(db_path))[RunStatus.COMPLETED] == 1000


async def test_thousand_runs_from_four_processes_then_resumed_from_four(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
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
    assert (await _statuses(db_path)) == {
        RunStatus.AWAITING_FEEDBACK: 0,
        RunStatus.RESUMING: 0,
        RunStatus.COMPLETED: 1000,
    }


async def test_hundred_two_process_races_each_refine_once(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> None:
    from tests.load_worker import start

    started = await start(100)
    _assert_no_errors([started])
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(started["ids"]))
    (result,) = _workers("race", [str(ids_file)])
    for outcome in result["outcomes"]:
        assert 0 in outcome, outcome  # somebody won
        assert set(outcome) <= {0, RunBeingResumed.exit_code}, outcome
    assert server.count("refine") == 100  # exactly one refine per race
    assert (await _statuses(db_path))[RunStatus.COMPLETED] == 100
