"""Personalized lines at scale (issue 23): one line per lead through the real OpenAI client to
the loopback scripted server, which answers each line request after a fixed latency.

* **Throughput**: leads written a second (after the sample) against concurrency ÷ latency,
  the most the LLM's latency allows; target ≥ 0.8×. Every lead must have exactly one
  recorded call (none written twice). Beside it, what bounds it on this machine: the event
  loop's CPU per lead, and the **bare OpenAI SDK** (the same requests to the same server, as
  many at once, nothing else: no store, no checks) measured just before — at 50 ms a call
  one process is CPU-bound on the SDK's own work per request (``benchmarks/NOTES.md``).
* **Two worker processes** (``coldmail personalize --workers 2``): the same batch, written by
  the command with 32 calls in flight *in all* (16 a process), timed from the command's start
  to its end (the children's start-up included), against the same 32 ÷ latency.
* **A latency tail**: one call in ten takes ten times as long (100 ms, and 1 s), as real
  LLM servers' tails do; against concurrency ÷ the mean latency, target ≥ 0.8×. A batch that
  waited for the slowest lead of a group before leasing the next reached a third of it.
* **Memory**: RSS when a quarter of the leads are written and at the end; target: the end
  within 20 MB of the quarter (flat: nothing grows per lead).
* **Four workers on one PostgreSQL**: the sample approved without writing, then four
  processes run ``personalize`` on the same batch; each lead written once, throughput.
* **Killed half-way**: a process writing the batch is killed with SIGKILL once half the
  leads have a line, then the batch is resumed; the scripted server (in this process, where
  it can count) must see no second call for a lead whose line was stored.

    python -m benchmarks --only personalize --no-postgres      # SQLite rows only
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.personalize.batch import batch_id_for, read_lead_list
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from .report import HERE, Figure
from .subjects import SECRET_KEY

LATENCY = 0.05
"""Seconds the scripted server takes to answer each line request."""
TAIL = (0.1, 1.0)
"""The tail row's latencies: most calls, and one in ten (chosen by the lead's number)."""
TAIL_SERVER = """
import re, sys, threading
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

usual, slow = float(sys.argv[1]), float(sys.argv[2])

def respond(request):
    if request.kind != "line":
        return None
    found = re.search(r"- company: Acme(\\d+)", request.user_text)
    slowest = found is not None and int(found.group(1)) % 10 == 3
    return Reply(delay=slow if slowest else usual)

with ScriptedOpenAIServer() as server:
    server.respond_with(respond)
    print(server.base_url, flush=True)
    threading.Event().wait()
"""
CONCURRENCY = 32
BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")
WORKER = """
import asyncio, sys
from bridgic_coldmail import ColdMailAgent

async def main() -> None:
    async with ColdMailAgent.open() as agent:
        await agent.personalize(sys.argv[1], sys.argv[2])

asyncio.run(main())
"""


def write_leads(path: Path, count: int) -> Path:
    rows = ["email,first_name,company,title"]
    rows += [f"lead{i}@example.com,Ann{i},Acme{i},Controller" for i in range(count)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@contextlib.contextmanager
def server_process(latency: float, tail: float | None = None) -> Iterator[str]:
    """The scripted server in a process of its own: every line request answered after
    ``latency`` seconds, or with a ``tail``, one in ten (leads 3, 13, 23 …) after ``tail``."""
    command = ["-m", "bridgic_coldmail.testing", "--line-latency", str(latency)]
    if tail is not None:
        command = ["-c", TAIL_SERVER, str(latency), str(tail)]
    proc = subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def approved_run(agent: ColdMailAgent) -> str:
    run = await agent.start(BRIEF)
    await agent.resume(run.interaction_id, "finance teams at manufacturers")
    return run.interaction_id


async def throughput_and_memory(db: str, leads: Path, count: int) -> dict[str, Any]:
    """One process writes the whole batch; the rate after the sample, RSS at 25% and 100%."""
    async with ColdMailAgent.open(db, missing="create") as agent:
        run_id = await approved_run(agent)
        await agent.personalize(run_id, leads, sample=5)
        written = 0
        rss: dict[str, float] = {}

        def on_line(_: object) -> None:
            nonlocal written
            written += 1
            if written == (count - 5) // 4:
                rss["quarter"] = rss_mb()

        started = time.perf_counter()
        cpu = time.thread_time()
        report = await agent.approve_sample(run_id, on_line=on_line)
        seconds = time.perf_counter() - started
        cpu = time.thread_time() - cpu
        rss["end"] = rss_mb()
        rows = await agent._store.batch_leads(report.batch.batch_id, limit=count + 10)
    return {
        "rate": (count - 5) / seconds,
        "loop_ms_per_lead": 1000 * cpu / (count - 5),
        "load": os.getloadavg()[0],
        "rss": rss,
        "written": report.counts.written,
        "most_calls": max(r.calls for r in rows),
        "calls": report.counts.calls,
    }


async def bare_sdk(base_url: str, count: int) -> dict[str, Any]:
    """The floor: ``count`` line requests through the bare OpenAI SDK on the transport ours
    uses (aiohttp), ``CONCURRENCY`` at once (the prompt and response format a lead's call
    sends; nothing stored, nothing checked)."""
    import openai

    from bridgic_coldmail.llm.openai_backend import answer_schema
    from bridgic_coldmail.models import EmailSequence, EmailStep
    from bridgic_coldmail.personalize.lines import LineContext, LineTask
    from bridgic_coldmail.personalize.writer import LineAnswer, line_messages

    sequence = EmailSequence(
        opener=EmailStep(subject="Fewer no-shows", body="Hi,\n\n{{icebreaker}} Acme Scheduler "
                         "cuts no-shows by 30%.\n\nDana", wait_days=0),
        follow_up=EmailStep(subject="Re: Fewer no-shows", body="Hi,\n\nAny thoughts?\n\nDana",
                            wait_days=3),
    )  # fmt: skip
    task = LineTask(LineContext(BRIEF, sequence), {"first_name": "Ann",
                    "company": "Acme1", "title": "Controller"}, 2)  # fmt: skip
    messages: Any = [{"role": m.role.value, "content": m.content} for m in line_messages(task)]
    response_format: Any = {"type": "json_schema", "json_schema": {
        "name": "LineAnswer", "schema": answer_schema(LineAnswer), "strict": True}}  # fmt: skip
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="benchmark",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    places = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with places:
            await client.chat.completions.create(
                model="benchmark",
                messages=messages,
                response_format=response_format,
            )

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))  # connections opened
    started, cpu = time.perf_counter(), time.thread_time()
    await asyncio.gather(*(one() for _ in range(count)))
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    await client.close()
    return {"rate": count / seconds, "loop_ms_per_call": 1000 * cpu / count}


async def with_workers(db: str, leads: Path, count: int, workers: int) -> dict[str, Any]:
    """``coldmail personalize --approve-sample --workers N`` on a sampled batch, as a person
    runs it: the whole command timed; beside it, the rate from the first line written after
    the sample to the last (the processes' start-ups left out)."""
    async with ColdMailAgent.open(db, missing="create") as agent:
        run_id = await approved_run(agent)
        await agent.personalize(run_id, leads, sample=5)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bridgic_coldmail", "personalize", run_id, "--leads", str(leads),
         "--approve-sample", "--workers", str(workers), "--json"],
        env={**os.environ, "COLDMAIL_DB": db}, cwd=HERE.parent, capture_output=True, text=True,
        timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    async with ColdMailAgent.open(db) as agent:
        report = await agent.batch_status(run_id)
        rows = await agent._store.batch_leads(report.batch.batch_id, limit=count + 10)
    times = sorted(r.written_at for r in rows if not r.in_sample and r.written_at is not None)
    span = (times[-1] - times[0]).total_seconds() if len(times) > 1 else float("nan")
    return {
        "code": done.returncode,
        "rate": (count - 5) / seconds,
        "steady_rate": (len(times) - 1) / span,
        "load": max(load, os.getloadavg()[0]),
        "written": report.counts.written,
        "most_calls": max(r.calls for r in rows),
        "calls": report.counts.calls,
    }


async def four_workers(db: str, leads: Path, count: int, env: dict[str, str]) -> dict[str, Any]:
    async with ColdMailAgent.open(db, missing="create") as agent:
        run_id = await approved_run(agent)
        await agent.personalize(run_id, leads, sample=5)
        await agent.approve_sample(run_id, write_rest=False)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, run_id, str(leads)],
            env={**os.environ, **env, "COLDMAIL_DB": db},
            cwd=HERE.parent,
        )
        for _ in range(4)
    ]
    codes = [p.wait(timeout=3600) for p in procs]
    seconds = time.perf_counter() - started
    async with ColdMailAgent.open(db) as agent:
        report = await agent.batch_status(run_id)
        rows = await agent._store.batch_leads(report.batch.batch_id, limit=count + 10)
    return {
        "codes": codes,
        "rate": (count - 5) / seconds,
        "written": report.counts.written,
        "most_calls": max(r.calls for r in rows),
    }


async def killed_and_resumed(db: str, leads: Path, count: int) -> dict[str, Any]:
    """A child writing the batch killed half-way; the calls counted at an in-process server."""
    with ScriptedOpenAIServer() as server:
        server.respond_with(lambda r: Reply(delay=LATENCY) if r.kind == "line" else None)
        env = {
            "OPENAI_API_BASE": server.base_url,
            "OPENAI_API_KEY": "benchmark",
            "COLDMAIL_DB": db,
            "COLDMAIL_LEASE_SECONDS": "3",
            "COLDMAIL_BUSY_TIMEOUT": "1",
        }
        with environment(env):
            async with ColdMailAgent.open(db, missing="create") as agent:
                run_id = await approved_run(agent)
                await agent.personalize(run_id, leads, sample=5)
                await agent.approve_sample(run_id, write_rest=False)
            batch_id = batch_id_for(run_id, read_lead_list(leads).digest)
            child = subprocess.Popen(
                [sys.executable, "-c", WORKER, run_id, str(leads)], env=os.environ.copy()
            )
            stored: set[str] = set()
            async with ColdMailAgent.open(db) as agent:
                while len(stored) < count // 2 and child.poll() is None:
                    await asyncio.sleep(0.05)
                    rows = await agent._store.batch_leads(batch_id, states=["written"], limit=count)
                    stored = {r.email for r in rows}
            child.send_signal(signal.SIGKILL)
            child.wait()
            before = len(server.requests)
            async with ColdMailAgent.open(db) as agent:
                report = await agent.personalize(run_id, leads)
            again = collections.Counter(
                f"lead{m.group(1)}@example.com"
                for r in server.requests[before:]
                if (m := re.search(r"- company: Acme(\d+)", r.user_text))
            )
    return {
        "stored_at_kill": len(stored),
        "paid_again": len(set(again) & stored),
        "written": report.counts.written,
    }


async def personalize(ctx: Any) -> list[Figure]:
    """The rows of issue 23 (see the module docstring)."""
    count = ctx.sizes.personalize_leads
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="coldmail-lines-") as folder:
        leads = write_leads(Path(folder) / "leads.csv", count)
        settings = {"COLDMAIL_PERSONALIZE_CONCURRENCY": str(CONCURRENCY)}
        with server_process(LATENCY) as base_url:
            env = {**settings, "OPENAI_API_BASE": base_url, "OPENAI_API_KEY": "benchmark"}
            with environment(env):
                bare = await bare_sdk(base_url, min(count, 2000))
                found = await throughput_and_memory(str(Path(folder) / "one.db"), leads, count)
                ctx.log(f"personalize: bare SDK {json.dumps(bare)}; {json.dumps(found)}")
                figures.append(throughput_figure(found, count, LATENCY, bare))
                two = await with_workers(str(Path(folder) / "two.db"), leads, count, 2)
                ctx.log(f"personalize, --workers 2: {json.dumps(two)}")
                figures.append(workers_figure(two, count, 2))
                quarter, end = found["rss"].get("quarter", float("nan")), found["rss"]["end"]
                figures.append(
                    Figure(
                        f"RSS at the end vs a quarter of the way, {count:,} leads",
                        "MB",
                        [end],
                        [quarter],
                        "within 20 MB (flat)",
                        met=end - quarter <= 20,
                        note="floor column: RSS when a quarter of the leads were written",
                    )
                )
                if ctx.places.postgres_url is not None:
                    store = ctx.places.new("postgres", "lines")
                    pg_env = {**env, "COLDMAIL_SECRET_KEY": SECRET_KEY}
                    with environment(pg_env):
                        four = await four_workers(store.location, leads, count, pg_env)
                    ctx.log(f"personalize, four workers: {json.dumps(four)}")
                    figures.append(
                        Figure(
                            f"four worker processes on one PostgreSQL batch, {count:,} leads",
                            "leads/s",
                            [four["rate"]],
                            [CONCURRENCY / LATENCY],
                            "every lead written once, by one of the four",
                            met=four["written"] == count
                            and four["most_calls"] == 1
                            and four["codes"] == [0, 0, 0, 0],
                            note="floor column: one process's concurrency ÷ latency",
                            higher_is_better=True,
                        )
                    )
        slow_count = max(200, count // 5)
        slow_leads = write_leads(Path(folder) / "slow.csv", slow_count)
        with server_process(*TAIL) as base_url:
            env = {**settings, "OPENAI_API_BASE": base_url, "OPENAI_API_KEY": "benchmark"}
            with environment(env):
                slow = await throughput_and_memory(
                    str(Path(folder) / "slow.db"), slow_leads, slow_count
                )
                ctx.log(f"personalize with a latency tail: {json.dumps(slow)}")
                figures.append(throughput_figure(slow, slow_count, None, None))
        killed = await killed_and_resumed(str(Path(folder) / "killed.db"), leads, count)
        ctx.log(f"personalize, killed and resumed: {json.dumps(killed)}")
        figures.append(
            Figure(
                f"leads paid for again after a SIGKILL half-way, {count:,} leads",
                "leads",
                [float(killed["paid_again"])],
                [float(killed["stored_at_kill"])],
                "0 (of those with a stored line)",
                met=killed["paid_again"] == 0 and killed["written"] == count,
                note="floor column: leads whose line was stored when the process was killed",
            )
        )
    return figures


def workers_figure(found: dict[str, Any], count: int, workers: int) -> Figure:
    """The ``--workers`` row: the whole command's rate against the total concurrency ÷
    latency (the concurrency is split between the processes, never multiplied)."""
    target = CONCURRENCY / LATENCY
    return Figure(
        f"lines written a second, {count:,} leads, --workers {workers}, {CONCURRENCY} at once "
        f"in all, {LATENCY * 1000:.0f} ms a call, SQLite",
        "leads/s",
        [found["rate"]],
        [target],
        "≥ 0.8× total concurrency ÷ latency; one call a lead",
        met=found["rate"] >= 0.8 * target
        and found["most_calls"] == 1
        and found["written"] == count
        and found["code"] == 0,
        note=f"floor column: {CONCURRENCY} ÷ {LATENCY:g} s; the whole command, its processes' "
        f"start-up included; first to last line: {found['steady_rate']:.0f} leads/s "
        f"({found['steady_rate'] / target:.2f}×); {found['calls']:,} calls recorded for "
        f"{found['written']:,} lines; load {found['load']:.1f} on {os.cpu_count()} cores",
        higher_is_better=True,
    )


def throughput_figure(
    found: dict[str, Any], count: int, latency: float | None, bare: dict[str, Any] | None
) -> Figure:
    """The throughput row at a fixed ``latency``, or (None) with the :data:`TAIL`."""
    mean = latency if latency is not None else 0.9 * TAIL[0] + 0.1 * TAIL[1]
    target = CONCURRENCY / mean
    calls = (
        f"{latency * 1000:.0f} ms a call"
        if latency is not None
        else f"{TAIL[0] * 1000:.0f} ms a call, one in ten {TAIL[1]:g} s"
    )
    floor = (
        f"; the bare OpenAI SDK just before: {bare['rate']:.0f} calls/s "
        f"({bare['rate'] / target:.2f}×), {bare['loop_ms_per_call']:.1f} ms of CPU a call"
        if bare is not None
        else ""
    )
    return Figure(
        f"lines written a second, {count:,} leads, {CONCURRENCY} at once, {calls}, SQLite",
        "leads/s",
        [found["rate"]],
        [target],
        f"≥ 0.8× concurrency ÷ {'' if latency is not None else 'mean '}latency; one call a lead",
        met=found["rate"] >= 0.8 * target
        and found["most_calls"] == 1
        and found["written"] == count,
        note=f"floor column: {CONCURRENCY} ÷ {mean:g} s; {found['calls']:,} calls "
        f"recorded for {found['written']:,} lines; event loop {found['loop_ms_per_lead']:.1f} "
        f"ms of CPU a lead{floor}; load {found['load']:.1f} on {os.cpu_count()} cores",
        higher_is_better=True,
    )
