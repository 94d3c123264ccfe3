"""A resumer killed with SIGKILL mid-refine: the run is claimable again once its lease expires,
the draft is not recomputed, and the feedback given is kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bridgic_coldmail import RunBeingResumed
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from .conftest import PROCESS_TIMEOUT, REPO, run_cli, start_run_with_cli, wait_for_request

LEASE = 5.0


def test_a_killed_resumer_leaves_the_run_resumable_after_its_lease(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    interaction_id = start_run_with_cli()
    server.enqueue(Reply(kind="refine", delay=60.0))  # the LLM is slow; the resumer dies waiting
    victim = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "resume", interaction_id, "--feedback", "CTOs"],
        cwd=REPO,
        env={**os.environ, "COLDMAIL_LEASE_SECONDS": str(LEASE)},
    )
    wait_for_request(server, "refine")
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=PROCESS_TIMEOUT)

    shown = json.loads(run_cli("show", interaction_id, "--json").stdout)
    assert shown["status"] == "resuming" and shown["feedback"] == "CTOs"
    if time.monotonic() - killed_at < LEASE - 0.5:  # still inside the dead resumer's lease
        early = run_cli("resume", interaction_id, "--feedback", "CTOs")
        assert early.returncode == RunBeingResumed.exit_code, early.stderr

    time.sleep(max(0.0, LEASE - (time.monotonic() - killed_at)) + 0.2)
    done = run_cli("resume", interaction_id, "--feedback", "CTOs", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    assert server.count("draft") == 1  # the draft was not recomputed
    assert server.count("refine") == 2
    history = run_cli("show", interaction_id).stdout
    assert history.count("feedback received: CTOs") == 2  # the dead resumer's feedback is kept
