"""A real OpenAI-compatible server: llama-cpp-python's own, serving the embedded Gemma GGUF.

It refuses a ``json_schema`` response format (HTTP 500) and takes ``json_object`` with the
schema, so a start and a resume through it exercise the choice of form for real: one refused
request per process, then answers that validate.

Marked ``local`` (slow: the model writes whole emails under a grammar). It needs the
``llama-server`` extra (``pip install -e '.[llama-server]'``): skipped without it on a
developer's machine, it fails in CI, which installs it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridgic_coldmail import EmailSequence

from ..conftest import REPO, run_cli

pytestmark = pytest.mark.local
SERVER_TIMEOUT = 900  # a hang guard for a whole command; the model's times are not asserted
FEEDBACK = "Practice managers at multi-site veterinary groups who still post reminder cards"


def _server_installed() -> bool:
    try:
        import llama_cpp.server.app  # noqa: F401  (needs fastapi, sse-starlette, …)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """llama-cpp-python's server (``testbed.llama_server``) on a free loopback port: its
    base URL and its log."""
    if not _server_installed():
        if os.environ.get("CI"):
            pytest.fail("CI must install the llama-server extra: pip install -e '.[llama-server]'")
        pytest.skip("llama-cpp-python's server is not installed (pip install -e '.[llama-server]')")
    from bridgic_coldmail.llm.local.model import default_model_path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "testbed.llama_server", "--model", str(default_model_path()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1",
    ]  # fmt: skip
    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, log.read_text(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "llama-cpp-python's server did not start"
                time.sleep(0.5)
        yield base_url, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _statuses(log: Path) -> list[int]:
    """The status of every chat-completions request in the server's access log."""
    return [
        int(line.split('HTTP/1.1" ')[1].split()[0])
        for line in log.read_text(errors="replace").splitlines()
        if "POST /v1/chat/completions" in line and 'HTTP/1.1" ' in line
    ]


def test_a_start_and_a_resume_complete_through_llama_cpp_pythons_server(
    llama_server: tuple[str, Path], db_path: Path
) -> None:
    base_url, log = llama_server
    env = {
        "OPENAI_API_BASE": base_url, "OPENAI_API_KEY": "", "COLDMAIL_LLM": "openai",
        "COLDMAIL_LLM_TIMEOUT": str(SERVER_TIMEOUT // 2),
    }  # fmt: skip
    started = run_cli(
        "start", "--product", "Pawpost", "--offer", "sends vaccination reminders by text",
        "--sender", "Liam O'Brien", "--audience", "vets", "--json",
        env=env, timeout=SERVER_TIMEOUT,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    paused = json.loads(started.stdout)
    assert paused["status"] == "awaiting_feedback"
    EmailSequence.model_validate(paused["draft"])
    # The start's process: json_schema refused (500) once, then json_object answered (more
    # than once if an answer did not validate).
    during_start = _statuses(log)
    assert during_start[0] == 500 and set(during_start[1:]) == {200}, during_start

    resumed = run_cli(
        "resume", paused["interaction_id"], "--feedback", FEEDBACK, "--json",
        env=env, timeout=SERVER_TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout)
    assert done["status"] == "completed"
    assert done["draft"] == paused["draft"]  # the draft was not recomputed
    final = EmailSequence.model_validate(done["final"])
    assert final.opener.wait_days == 0 and 1 <= final.follow_up.wait_days <= 30
    # A new process probes once again: each process chooses its form once.
    during_resume = _statuses(log)[len(during_start) :]
    assert during_resume[0] == 500 and set(during_resume[1:]) == {200}, during_resume
