"""``coldmail personalize --workers N``: N processes write one approved batch, sharing the
concurrency (its total is the setting's), on an SQLite file and on PostgreSQL — each lead's
line paid for once, counted at the scripted server; one worker killed with SIGKILL mid-batch
loses nothing and costs no second call for a lead whose line was stored."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.cli.personalize import check_workers, shares
from bridgic_coldmail.errors import InvalidInput
from bridgic_coldmail.personalize.batch import batch_id_for, read_lead_list
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import RecordedRequest, Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Backend, Completed, run_cli

FEEDBACK = "finance teams at mid-size manufacturers"


def _leads(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "leads.csv"
    rows = ["email,first_name,company", *(f"l{i}@example.com,Ann{i},Acme{i}" for i in range(count))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _company(text: str) -> str | None:
    found = re.search(r"^- company: (\S+)$", text, re.MULTILINE)
    return found.group(1) if found else None


class InFlight:
    """A responder that holds each line call ``delay`` seconds and counts the calls in
    flight at once, as the server sees them (every process's). Until more than ``one``
    calls are in flight together, each call also waits (up to ``patience`` seconds): a
    child process starting slowly on a busy machine still meets the first one's calls."""

    def __init__(self, delay: float, one: int, patience: float) -> None:
        self.delay = delay
        self.one = one
        self.patience = patience
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()
        self.both = threading.Event()

    def __call__(self, request: RecordedRequest) -> Reply | None:
        if request.kind != "line":
            return None
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now > self.one:
                self.both.set()
        self.both.wait(self.patience)
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1
        return Reply()


async def _sampled(backend: Backend, brief: Brief, leads: Path) -> str:
    async with ColdMailAgent.open(backend.db, settings=backend.settings()) as agent:
        run = await agent.start(brief)
        await agent.resume(run.interaction_id, FEEDBACK)
        report = await agent.personalize(run.interaction_id, leads, sample=2)
        assert report.waiting_for_approval
    return run.interaction_id


def _env(backend: Backend, **extra: str) -> dict[str, str]:
    return {**os.environ, **backend.env, "COLDMAIL_DB": backend.db, **extra}


def test_workers_is_checked_against_its_bounds_and_what_it_splits(
    cli: Callable[..., Completed],
) -> None:
    for given, said in (
        ("0", "from 1 to 16, not 0"),
        ("17", "from 1 to 16, not 17"),
        ("9", "splits the 8 calls in flight"),
    ):
        done = cli("personalize", "a" * 32, "--leads", "x.csv", "--workers", given)
        assert done.returncode == InvalidInput.exit_code, done.stderr
        assert said in done.stderr
    budget = cli(
        "personalize", "a" * 32, "--approve-sample", "--workers", "3",
        env={"COLDMAIL_PERSONALIZE_TPM": "2500"},
    )  # fmt: skip
    assert budget.returncode == InvalidInput.exit_code
    assert "at least 1,000 each: use at most 2 workers" in budget.stderr
    setting = cli("personalize", "a" * 32, "--status", env={"COLDMAIL_PERSONALIZE_WORKERS": "0"})
    assert setting.returncode != 0 and "COLDMAIL_PERSONALIZE_WORKERS" in setting.stderr
    settings = Settings.resolve(env={"COLDMAIL_PERSONALIZE_WORKERS": "4"})
    assert check_workers(None, settings) == 4 and check_workers(2, settings) == 2
    with pytest.raises(InvalidInput):
        check_workers(True, settings)  # type: ignore[arg-type]
    assert shares(32, 3) == [11, 11, 10] and sum(shares(7, 4)) == 7 and shares(5, 1) == [5]


async def test_two_worker_processes_write_each_lead_once_sharing_the_concurrency(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    count = 60
    leads = _leads(tmp_path, count)
    run_id = await _sampled(backend, brief, leads)
    flight = InFlight(0.02, one=3, patience=PROCESS_TIMEOUT / 4)
    server.respond_with(flight)
    done = run_cli(
        "personalize", run_id, "--leads", str(leads), "--approve-sample", "--workers", "2",
        "--json",
        env=_env(backend, COLDMAIL_PERSONALIZE_CONCURRENCY="6"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "done" and report["counts"]["written"] == count
    calls = collections.Counter(_company(r.user_text) for r in server.requests if r.kind == "line")
    assert calls == {f"Acme{i}": 1 for i in range(count)}  # the two sample leads: once too
    # Both processes wrote (one alone keeps 3 in flight), never more than the total.
    assert 3 < flight.most <= 6, flight.most
    rows = backend.rows.batch_leads(batch_id_for(run_id, read_lead_list(leads).digest))
    assert all(r["state"] == "written" and r["calls"] == 1 for r in rows)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def test_a_worker_killed_mid_batch_loses_nothing_and_pays_no_finished_lead_twice(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    count = 80
    leads = _leads(tmp_path, count)
    run_id = await _sampled(backend, brief, leads)
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    flight = InFlight(0.05, one=2, patience=PROCESS_TIMEOUT / 4)  # both start writing
    server.respond_with(flight)
    env = _env(
        backend,
        COLDMAIL_PERSONALIZE_CONCURRENCY="4",
        COLDMAIL_LEASE_SECONDS="2",
        COLDMAIL_BUSY_TIMEOUT="0.5",
    )
    parent = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "personalize", run_id, "--leads", str(leads),
         "--approve-sample", "--workers", "2", "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + PROCESS_TIMEOUT
    try:
        children: list[int] = []
        written: list[dict[str, object]] = []
        while not children or not flight.both.is_set() or len(written) < count // 4:
            assert time.monotonic() < deadline and parent.poll() is None, parent.communicate()
            time.sleep(0.05)
            children = _children(parent.pid)
            written = [r for r in backend.rows.batch_leads(batch_id) if r["state"] == "written"]
        os.kill(children[0], signal.SIGKILL)
        stored = {
            json.loads(str(r["lead_json"]))["company"]
            for r in backend.rows.batch_leads(batch_id)
            if r["state"] == "written"
        }
        before = len(server.requests)
        out, err = parent.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, err
    assert "A worker process stopped (exit -9)" in err
    report = json.loads(out)
    assert report["status"] == "done" and report["counts"]["written"] == count
    assert len(stored) < count, "the batch was over before the worker was killed"
    after = collections.Counter(_company(r.user_text) for r in server.requests[before:])
    assert not set(after) & stored, "a lead whose line was stored was paid for again"
    rows = backend.rows.batch_leads(batch_id)
    assert all(r["state"] == "written" for r in rows)


def _after_parent(run_id: str) -> list[int]:
    """Processes still running (not zombies) that are ``--after-parent`` children of this run."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"--after-parent" in command and run_id.encode() in command and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_approval_that_fails_ends_the_waiting_children_and_they_write_nothing(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """The children start before the approval: when it is refused (here: another lead list,
    which has no batch), they are ended without a line written, and none is left behind."""
    leads = _leads(tmp_path, 30)
    run_id = await _sampled(backend, brief, leads)
    other = tmp_path / "other.csv"
    other.write_text("email,first_name,company\nzed@example.com,Zed,Zeta\n", encoding="utf-8")
    calls = len(server.requests)
    done = run_cli(
        "personalize", run_id, "--leads", str(other), "--approve-sample", "--workers", "3",
        env=_env(backend),
    )  # fmt: skip
    assert done.returncode != 0 and "--leads" in done.stderr, done.stderr
    assert "A worker process stopped" not in done.stderr
    assert _after_parent(run_id) == []
    assert len(server.requests) == calls  # no line asked for
    rows = backend.rows.batch_leads(batch_id_for(run_id, read_lead_list(leads).digest))
    assert [r["state"] for r in rows if r["state"] == "written"] == ["written"] * 2  # the sample


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_children_whose_parent_is_killed_before_it_says_go_write_nothing_and_end(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """The parent is held before its approval (another connection holds the database's
    write lock) and killed with SIGKILL there: its children, waiting for its word, see their
    standard input end, and end without writing — no orphan writes an unapproved batch."""
    import sqlite3

    leads = _leads(tmp_path, 30)
    run_id = await _sampled(backend, brief, leads)
    calls = len(server.requests)
    lock = sqlite3.connect(backend.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    parent = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail", "personalize", run_id, "--leads", str(leads),
         "--approve-sample", "--workers", "3", "--json"],
        env=_env(backend, COLDMAIL_BUSY_TIMEOUT="60"), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while len(_after_parent(run_id)) < 2:
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        lock.execute("ROLLBACK")
        while _after_parent(run_id):
            assert time.monotonic() < deadline, "a child outlived its parent"
            time.sleep(0.05)
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
        if parent.poll() is None:
            parent.kill()
    assert len(server.requests) == calls
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    batch = backend.rows.batch(batch_id)
    assert batch is not None and batch["status"] == "awaiting_approval"  # still for a person
    rows = backend.rows.batch_leads(batch_id)
    assert sum(r["state"] == "written" for r in rows) == 2


def test_a_child_run_by_hand_on_a_terminal_is_refused(
    cli: Callable[..., Completed],
) -> None:
    """``--after-parent`` is the command's own handshake: typed at a terminal it would wait
    for a word nobody sends, so it says what to use instead."""
    import pexpect

    from ..conftest import spawn_coldmail

    child = spawn_coldmail("personalize", "a" * 32, "--approve-sample", "--after-parent")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == InvalidInput.exit_code
    assert "use --workers N" in (child.before or "")
