"""A personalization batch end to end, once per backend: the sample pauses for a person (a
signed Bridgic pause), is revised twice with guidance, is approved, and the rest is written
once per lead — also across a process killed with SIGKILL and resumed, counted at the
scripted LLM server."""

from __future__ import annotations

import asyncio
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
from bridgic_coldmail.errors import InvalidInput, RunConflict, SnapshotIntegrityError
from bridgic_coldmail.personalize.batch import batch_id_for, read_lead_list
from bridgic_coldmail.testing import RecordedRequest, Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Backend, Completed

FEEDBACK = "finance teams at mid-size manufacturers"


def _leads(tmp_path: Path, count: int, *, bad: int = 0) -> Path:
    path = tmp_path / "leads.csv"
    rows = ["email,first_name,company"]
    rows += [f"lead{i}@example.com,Ann{i},Acme{i}" for i in range(count)]
    rows += [f"not-an-address-{i},Bob,Bad{i}" for i in range(bad)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _company(text: str) -> str | None:
    found = re.search(r"^- company: (\S+)$", text, re.MULTILINE)
    return found.group(1) if found else None


def _line_calls(server: ScriptedOpenAIServer) -> collections.Counter[str | None]:
    return collections.Counter(_company(r.user_text) for r in server.requests if r.kind == "line")


async def _approved_run(agent: ColdMailAgent, brief: Brief) -> str:
    run = await agent.start(brief)
    await agent.resume(run.interaction_id, FEEDBACK)
    return run.interaction_id


async def test_the_sample_pauses_is_revised_twice_then_every_lead_is_written_once(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    leads = _leads(tmp_path, 12, bad=1)
    async with ColdMailAgent.open(backend.db, settings=backend.settings()) as agent:
        run_id = await _approved_run(agent, brief)
        first = await agent.personalize(run_id, leads, sample=3)
        assert first.waiting_for_approval and first.batch.round == 1
        assert [s.line for s in first.sample] == [
            f"I imagine Acme{i} keeps your team busy." for i in range(3)
        ]
        assert _line_calls(server) == {f"Acme{i}": 1 for i in range(3)}
        again = await agent.personalize(run_id, leads, sample=3)  # resumed: still waiting
        assert again.waiting_for_approval and server.count("line") == 3

        revised = await agent.guide_sample(run_id, "mention the month-end close")
        assert revised.waiting_for_approval and revised.batch.round == 2
        assert revised.batch.guidance == ("mention the month-end close",)
        twice = await agent.guide_sample(run_id, "keep it under twelve words")
        assert twice.batch.round == 3 and len(twice.batch.guidance) == 2
        last_prompts = [r.user_text for r in server.requests if r.kind == "line"][-3:]
        assert all("keep it under twelve words" in p and "month-end" in p for p in last_prompts)
        assert _line_calls(server) == {f"Acme{i}": 3 for i in range(3)}

        done = await agent.approve_sample(run_id)
        assert done.done and done.batch.sample_approved
        assert done.counts.written == 12 and done.counts.open == 0
        assert [s.row for s in done.skipped] == [14]  # the bad address, reported with why
        assert "email" in (done.skipped[0].error or "").lower()
        calls = _line_calls(server)
        assert calls == {
            **{f"Acme{i}": 3 for i in range(3)},
            **{f"Acme{i}": 1 for i in range(3, 12)},
        }
        # Approving again, or running personalize again, writes (and pays for) nothing more.
        assert (await agent.approve_sample(run_id)).done
        assert (await agent.personalize(run_id, leads)).done
        assert _line_calls(server) == calls
        with pytest.raises(RunConflict, match="approved already"):
            await agent.guide_sample(run_id, "one more change")


async def test_only_an_approved_run_is_personalized(
    agent: ColdMailAgent, brief: Brief, tmp_path: Path
) -> None:
    run = await agent.start(brief)
    with pytest.raises(RunConflict, match="not approved"):
        await agent.personalize(run.interaction_id, _leads(tmp_path, 2))
    run_id = await _approved_run(agent, brief)
    with pytest.raises(InvalidInput, match="no personalization batch"):
        await agent.approve_sample(run_id)
    with pytest.raises(InvalidInput, match="sample must be"):
        await agent.personalize(run_id, _leads(tmp_path, 2), sample=0)
    with pytest.raises(InvalidInput):
        await agent.guide_sample(run_id, "   ")


async def test_a_planted_sample_approval_is_refused(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    leads = _leads(tmp_path, 4)
    async with ColdMailAgent.open(backend.db, settings=backend.settings()) as agent:
        run_id = await _approved_run(agent, brief)
        await agent.personalize(run_id, leads, sample=2)
        batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
        backend.rows.set_batch(batch_id, status="writing", sample_approved=1)
        with pytest.raises(SnapshotIntegrityError):
            await agent.personalize(run_id, leads)
        assert server.count("line") == 2  # nothing written past the sample


CHILD = """
import asyncio, sys
from bridgic_coldmail import ColdMailAgent

async def main() -> None:
    async with ColdMailAgent.open() as agent:
        await agent.approve_sample(sys.argv[1], leads=sys.argv[2])

asyncio.run(main())
"""


@pytest.mark.slow  # kills a child process, waits out its lease
async def test_a_batch_killed_half_way_resumes_without_a_second_call_for_a_written_lead(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    count = 40
    leads = _leads(tmp_path, count)
    settings = backend.settings(lease_seconds=2, busy_timeout=0.5, personalize_concurrency=4)
    async with ColdMailAgent.open(backend.db, settings=settings) as agent:
        run_id = await _approved_run(agent, brief)
        await agent.personalize(run_id, leads, sample=2)
    batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
    server.respond_with(lambda r: Reply(delay=0.05) if r.kind == "line" else None)
    env = {
        **os.environ,
        **backend.env,
        "COLDMAIL_DB": backend.db,
        "COLDMAIL_LEASE_SECONDS": "2",
        "COLDMAIL_BUSY_TIMEOUT": "0.5",
        "COLDMAIL_PERSONALIZE_CONCURRENCY": "4",
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD, run_id, str(leads)], env=env, cwd=REPO)
    deadline = time.monotonic() + PROCESS_TIMEOUT
    written: list[dict[str, object]] = []
    while len(written) < count // 2:
        assert time.monotonic() < deadline and child.poll() is None, "the child did not write"
        time.sleep(0.05)
        written = [r for r in backend.rows.batch_leads(batch_id) if r["state"] == "written"]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=PROCESS_TIMEOUT)
    stored = {
        json.loads(str(r["lead_json"]))["company"]
        for r in backend.rows.batch_leads(batch_id)
        if r["state"] == "written"
    }
    assert count // 2 <= len(stored) < count
    before = len(server.requests)
    async with ColdMailAgent.open(backend.db, settings=settings) as agent:
        report = await agent.personalize(run_id, leads)  # waits out the dead worker's leases
    assert report.done and report.counts.written == count
    after = collections.Counter(_company(r.user_text) for r in server.requests[before:])
    assert not set(after) & stored, "a lead whose line was stored was paid for again"
    rows = backend.rows.batch_leads(batch_id)
    assert all(r["state"] == "written" for r in rows)


async def test_leads_whose_calls_hang_do_not_hold_back_the_rest(
    backend: Backend, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """The window keeps its calls in flight: two leads whose calls hang (each leased with
    others) take two of the four places, and every other lead is written meanwhile, each
    once; the two are written when their calls answer."""
    count = 40
    leads = _leads(tmp_path, count)
    settings = backend.settings(personalize_concurrency=4)
    release = threading.Event()
    hanging = {"Acme2", "Acme6"}

    def respond(request: RecordedRequest) -> Reply | None:
        if request.kind == "line" and _company(request.user_text) in hanging:
            release.wait(PROCESS_TIMEOUT)
        return None

    async with ColdMailAgent.open(backend.db, settings=settings) as agent:
        run_id = await _approved_run(agent, brief)
        await agent.personalize(run_id, leads, sample=2)
        server.respond_with(respond)
        batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
        writing = asyncio.create_task(agent.approve_sample(run_id))
        try:
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while True:
                rows = await asyncio.to_thread(backend.rows.batch_leads, batch_id)
                written = {json.loads(str(r["lead_json"]))["company"] for r in rows
                           if r["state"] == "written"}  # fmt: skip
                if len(written) == count - len(hanging):
                    break
                assert not writing.done() and time.monotonic() < deadline, (
                    f"only {len(written)} of {count - len(hanging)} written while two hang"
                )
                await asyncio.sleep(0.05)
            assert not written & hanging
        finally:
            release.set()
        report = await writing
    assert report.done and report.counts.written == count
    assert _line_calls(server) == {f"Acme{i}": 1 for i in range(count)}


def test_the_command_shows_the_estimate_the_sample_and_how_to_answer(
    cli: Callable[..., Completed],
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
    tmp_path: Path,
) -> None:
    leads = _leads(tmp_path, 5, bad=1)

    async def approved() -> str:
        async with ColdMailAgent.open(db_path) as agent:
            return await _approved_run(agent, brief)

    run_id = asyncio.run(approved())
    first = cli("personalize", run_id, "--leads", str(leads), "--sample", "2")
    assert first.returncode == 0, first.stderr
    assert "Estimate: 5 leads, one LLM call each" in first.stderr
    assert "Sample, round 1 — 2 of 6 leads:" in first.stdout
    assert "I imagine Acme1 keeps your team busy." in first.stdout
    assert f"coldmail personalize {run_id} --leads {leads} --approve-sample" in first.stdout
    guided = cli("personalize", run_id, "--guidance", "name their city")
    assert guided.returncode == 0 and "round 2 (guidance: name their city)" in guided.stdout
    done = cli("personalize", run_id, "--approve-sample")
    assert done.returncode == 0, done.stderr
    assert "Done: 5 of 6 leads have a line, 1 skipped, 0 left" in done.stdout
    assert "row 7 not-an-address-0:" in done.stdout
    assert "Writing lines: 3 of 3 leads (100%)" in done.stderr  # plain lines off a terminal
    status = cli("personalize", run_id, "--status", "--json")
    assert json.loads(status.stdout)["counts"]["written"] == 5
    refused = cli("personalize", run_id, "--guidance", "too late")
    assert refused.returncode == RunConflict.exit_code and "approved already" in refused.stderr
    assert server.count("line") == 2 + 2 + 3
    missing = cli("personalize", run_id)
    assert missing.returncode == InvalidInput.exit_code and "--leads" in missing.stderr


ICEBREAKER_SEQUENCE = {
    "opener": {
        "subject": "A quick idea for {{company}}",
        "body": "Hi {{first_name}},\n\n{{icebreaker}} Acme Scheduler cuts no-shows.\n\nDana",
        "wait_days": 0,
    },
    "follow_up": {"subject": "Again", "body": "Hi again,\n\nAny thoughts?\n\nDana", "wait_days": 3},
}


async def test_the_export_fills_icebreaker_from_approved_lines_and_reports_leads_without(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    leads = _leads(tmp_path, 4)
    run = await agent.start(brief, review=True, fields=["first_name", "company", "icebreaker"])
    await agent.resume(run.interaction_id, FEEDBACK)
    await agent.edit(run.interaction_id, ICEBREAKER_SEQUENCE)
    run_id = (await agent.approve(run.interaction_id)).interaction_id
    out = tmp_path / "out.csv"
    with pytest.raises(InvalidInput, match="icebreaker"):  # no batch: an unknown field
        await agent.export(run_id, leads, out)
    await agent.personalize(run_id, leads, sample=2)
    with pytest.raises(InvalidInput, match="icebreaker"):  # a sample not approved: unused
        await agent.export(run_id, leads, out)
    # One lead's line fails every try: it is skipped in the batch and in the export.
    server.respond_with(
        lambda r: (
            Reply(json.dumps({"line": "Congrats on the IPO, Zorblax!"}))
            if r.kind == "line" and "Acme3" in r.user_text
            else None
        )
    )
    await agent.approve_sample(run_id)
    report = await agent.export(run_id, leads, out)
    assert report.rows_written == 3
    (skipped,) = report.skipped
    assert skipped.row == 5 and "no personalized line for {{icebreaker}}" in skipped.reason
    text = out.read_text(encoding="utf-8")
    for i in range(3):
        assert f"I imagine Acme{i} keeps your team busy. Acme Scheduler cuts no-shows." in text
    assert "Zorblax" not in text and "lead3@example.com" not in text
