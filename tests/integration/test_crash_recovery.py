"""A resumer killed with SIGKILL mid-refine, on each backend: the run stays held while its
lease lasts, is claimable again once the lease expires, the draft is not recomputed, and the
feedback given is kept in the history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bridgic_coldmail import RunBeingResumed
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Backend, run_cli, wait_for_request
from ..rows import expire_lease


@pytest.mark.slow
def test_a_killed_resumer_leaves_the_run_resumable_after_its_lease(
    server: ScriptedOpenAIServer, backend: Backend
) -> None:
    env = {**backend.env, "COLDMAIL_DB": backend.db}
    started = run_cli("start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana",
                      "--json", env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    interaction_id = json.loads(started.stdout)["interaction_id"]
    server.enqueue(Reply(kind="refine", delay=60.0))  # the LLM is slow; the resumer dies waiting
    victim = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "resume", interaction_id, "--feedback", "CTOs"],
        cwd=REPO,
        env={**os.environ, **env},
    )
    wait_for_request(server, "refine")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=PROCESS_TIMEOUT) == -signal.SIGKILL

    shown = json.loads(run_cli("show", interaction_id, "--json", env=env).stdout)
    assert shown["status"] == "resuming" and shown["feedback"] == "CTOs"
    early = run_cli("resume", interaction_id, "--feedback", "CTOs", env=env)
    assert early.returncode == RunBeingResumed.exit_code, early.stderr  # the lease still holds

    expire_lease(backend.rows, interaction_id)  # as if the default 300 s had passed
    done = run_cli("resume", interaction_id, "--feedback", "CTOs", "--json", env=env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    assert server.count("draft") == 1  # the draft was not recomputed
    assert server.count("refine") == 2
    history = run_cli("show", interaction_id, env=env).stdout
    assert history.count("feedback received: CTOs") == 2  # the dead resumer's feedback is kept
