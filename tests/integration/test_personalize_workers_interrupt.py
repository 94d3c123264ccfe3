"""``coldmail personalize --approve-sample --workers N`` interrupted as a terminal does it:
Ctrl-C sends SIGINT to the whole process group, children included, while they wait for the
parent's word and while they write. No process is left behind, no stored line is lost, and
running the command again finishes the batch. A child fed anything but the word writes
nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import Brief
from bridgic_coldmail.personalize.batch import batch_id_for, read_lead_list
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Backend, run_cli
from .test_personalize_workers import InFlight, _after_parent, _env, _leads, _sampled

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _start(
    run_id: str, leads: Path, env: dict[str, str], workers: str = "3"
) -> subprocess.Popen[str]:
    """The command in a session of its own, so that its process group is its terminal's."""
    return subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "personalize", run_id, "--leads", str(leads),
         "--approve-sample", "--workers", workers, "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _group_left(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(proc.name))
    return found


def _until(condition: Callable[[], bool], parent: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, what
        if parent.poll() is not None:
            pytest.fail(f"{what}: the command ended: {parent.communicate()}")
        time.sleep(0.05)


def _ended(parent: subprocess.Popen[str], run_id: str) -> tuple[str, str]:
    """Wait for the parent and every process of its group; none may outlive it for long."""
    try:
        out, err = parent.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _group_left(parent.pid) or _after_parent(run_id):
        if time.monotonic() > deadline:
            left = _group_left(parent.pid)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes left behind after the command ended: {left}")
        time.sleep(0.05)
    return out, err


async def test_ctrl_c_while_the_children_wait_leaves_nothing_and_the_batch_for_approval(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """The parent is held before its approval (another connection holds the write lock);
    Ctrl-C then reaches it and its waiting children at once: all end, nothing is written,
    and the approval given again writes the batch."""
    leads = _leads(tmp_path, 20)
    run_id = await _sampled(backend, brief, leads)
    calls = len(server.requests)
    lock = sqlite3.connect(backend.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    parent = _start(run_id, leads, _env(backend, COLDMAIL_BUSY_TIMEOUT="60"))
    try:
        _until(lambda: len(_after_parent(run_id)) == 2, parent, "the children did not start")
        time.sleep(0.5)  # let them reach their wait for the word
        os.killpg(parent.pid, signal.SIGINT)
        _, err = _ended(parent, run_id)
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert parent.returncode != 0
    assert "Traceback" not in err, err
    assert len(server.requests) == calls  # no line asked for
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    batch = backend.rows.batch(batch_id)
    assert batch is not None and batch["status"] == "awaiting_approval"
    again = run_cli(
        "personalize", run_id, "--leads", str(leads), "--approve-sample", "--workers", "2",
        "--json", env=_env(backend),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"]["written"] == 20
    assert _after_parent(run_id) == []


async def test_ctrl_c_while_the_workers_write_loses_nothing_and_the_command_again_finishes(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    count = 60
    leads = _leads(tmp_path, count)
    run_id = await _sampled(backend, brief, leads)
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    flight = InFlight(0.1, one=2, patience=PROCESS_TIMEOUT / 4)
    server.respond_with(flight)
    env = _env(
        backend,
        COLDMAIL_PERSONALIZE_CONCURRENCY="4",
        COLDMAIL_LEASE_SECONDS="2",
        COLDMAIL_BUSY_TIMEOUT="0.5",
    )
    parent = _start(run_id, leads, env, workers="2")

    def written() -> int:
        return sum(r["state"] == "written" for r in backend.rows.batch_leads(batch_id))

    try:
        _until(lambda: flight.both.is_set() and written() >= 10, parent, "no worker wrote")
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGINT)
    _, err = _ended(parent, run_id)
    assert parent.returncode != 0
    assert "Traceback" not in err, err
    stored = written()
    assert stored < count, "the batch was over before Ctrl-C"
    again = run_cli(
        "personalize", run_id, "--leads", str(leads), "--approve-sample", "--workers", "2",
        "--json", env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["status"] == "done" and report["counts"]["written"] == count
    assert all(r["state"] == "written" for r in backend.rows.batch_leads(batch_id))
    assert _after_parent(run_id) == []


async def test_a_child_whose_standard_input_is_not_the_word_writes_nothing(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    leads = _leads(tmp_path, 10)
    run_id = await _sampled(backend, brief, leads)
    calls = len(server.requests)
    garbage_lines = (b"GO\n", b"go", b"go \n", b"gone\n", b"\xff" * 9000 + b"\n", b"\n", b" go\n")
    for garbage in garbage_lines:
        child = subprocess.run(
            [sys.executable, "-m", "bridgic_coldmail", "personalize", run_id, "--leads",
             str(leads), "--approve-sample", "--json", "--workers", "1", "--after-parent"],
            input=garbage, env=_env(backend), cwd=REPO, capture_output=True,
            timeout=PROCESS_TIMEOUT,
        )  # fmt: skip
        assert child.returncode == 0, (garbage[:20], child.stderr)
        assert child.stdout == b"", garbage[:20]
    assert len(server.requests) == calls
    batch = backend.rows.batch(batch_id_for(run_id, read_lead_list(leads).digest))
    assert batch is not None and batch["status"] == "awaiting_approval"


async def test_workers_on_a_batch_with_nothing_to_approve_or_write_leave_no_process(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """``--workers 2`` where there is nothing for a second process to do: a batch still
    waiting for its approval (without ``--approve-sample``), a lead list with no batch (the
    approval refused), and a batch already done (with and without ``--approve-sample``)."""
    leads = _leads(tmp_path, 6)
    run_id = await _sampled(backend, brief, leads)
    (tmp_path / "other").mkdir()
    other = _leads(tmp_path / "other", 3)
    env = _env(backend)
    base = ["personalize", run_id, "--workers", "2", "--json"]

    waiting = run_cli(*base, "--leads", str(leads), env=env)
    assert waiting.returncode == 0, waiting.stderr
    assert json.loads(waiting.stdout)["status"] == "awaiting_approval"
    assert _after_parent(run_id) == []
    refused = run_cli(*base, "--leads", str(other), "--approve-sample", env=env)
    assert refused.returncode != 0 and "A worker process stopped" not in refused.stderr
    assert _after_parent(run_id) == []
    written = run_cli(*base, "--leads", str(leads), "--approve-sample", env=env)
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout)["status"] == "done"
    calls = len(server.requests)
    for extra in (["--approve-sample"], []):
        again = run_cli(*base, "--leads", str(leads), *extra, env=env)
        assert again.returncode == 0, again.stderr
        assert "A worker process stopped" not in again.stderr
        assert json.loads(again.stdout)["status"] == "done"
        assert _after_parent(run_id) == []
    assert len(server.requests) == calls


async def test_the_parent_killed_while_the_workers_write_leaves_a_batch_the_command_finishes(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """SIGKILL of the parent after its word: the child was approved and goes on with the
    batch (the parent's leases lapse to it), then ends; it is not left waiting on anything.
    The command run again reports the batch done, every lead written."""
    count = 40
    leads = _leads(tmp_path, count)
    run_id = await _sampled(backend, brief, leads)
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    flight = InFlight(0.05, one=2, patience=PROCESS_TIMEOUT / 4)
    server.respond_with(flight)
    env = _env(
        backend, COLDMAIL_PERSONALIZE_CONCURRENCY="4", COLDMAIL_LEASE_SECONDS="2",
        COLDMAIL_BUSY_TIMEOUT="0.5",
    )  # fmt: skip
    parent = _start(run_id, leads, env, workers="2")

    def written() -> int:
        return sum(r["state"] == "written" for r in backend.rows.batch_leads(batch_id))

    try:
        _until(lambda: flight.both.is_set() and written() >= 5, parent, "no worker wrote")
        parent.kill()
        parent.communicate()
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while _group_left(parent.pid):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.05)
    finally:
        for pid in _group_left(parent.pid):
            os.kill(pid, signal.SIGKILL)
    again = run_cli(
        "personalize", run_id, "--leads", str(leads), "--approve-sample", "--workers", "2",
        "--json", env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["status"] == "done" and report["counts"]["written"] == count
    assert _after_parent(run_id) == []
