"""Processes exit promptly on success, on error and on Ctrl-C, and an interrupted resume
gives its claim back. Each child runs under the ``PROCESS_TIMEOUT`` hang guard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import (
    PROCESS_TIMEOUT,
    REPO,
    run_cli,
    run_process,
    start_run_with_cli,
    wait_for_request,
)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        cwd=REPO,
    )


def test_an_exception_inside_the_agent_block_still_lets_the_process_exit() -> None:
    result = _python(
        """
        import asyncio
        from bridgic_coldmail import ColdMailAgent

        async def main():
            async with ColdMailAgent.open() as agent:
                await agent.list()
                raise RuntimeError("host application bug")

        asyncio.run(main())
        """
    )
    assert result.returncode == 1
    assert "host application bug" in result.stderr


def test_a_sync_agent_left_open_does_not_keep_the_process_alive() -> None:
    result = _python(
        """
        from bridgic_coldmail import SyncColdMailAgent
        agent = SyncColdMailAgent.open()
        print(len(agent.list()))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


@pytest.mark.slow
def test_ctrl_c_during_refine_exits_and_leaves_the_run_resumable(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    interaction_id = start_run_with_cli()
    server.enqueue(Reply(kind="refine", delay=30.0))
    resumer = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "resume", interaction_id, "--feedback", "CTOs"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_request(server, "refine")
    resumer.send_signal(signal.SIGINT)
    _, stderr = resumer.communicate(timeout=PROCESS_TIMEOUT)
    assert resumer.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr

    shown = json.loads(run_cli("show", interaction_id, "--json").stdout)
    assert shown["status"] == "awaiting_feedback"
    assert shown["feedback"] == "CTOs"
    text = run_cli("show", interaction_id).stdout
    assert "The last resume failed: the resume was interrupted" in text
    server.reset()
    done = run_process(
        [sys.executable, "-m", "bridgic_coldmail", "resume", interaction_id, "--feedback", "CTOs"]
    )
    assert done.returncode == 0, done.stderr
    assert server.count("refine") == 1
