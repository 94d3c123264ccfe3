"""The scenarios: each runs one workload against a subject or a store and returns a named
result (never a tuple read by position)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridgic.core.automa.interaction import InteractionException

from bridgic_coldmail import ColdMailAgent, ColdMailAutoma, EmailSequence, RunStatus
from bridgic_coldmail.llm.prompts import AUDIENCE_QUESTION
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import NewRun, connect_store

from .fake_llm import InstantLlm
from .subjects import BRIEF, FEEDBACK, Kind, Places, Store, Subject, opened

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- latency


@dataclass
class Latencies:
    """Milliseconds per run, one sample per run."""

    start: list[float] = field(default_factory=list)
    resume: list[float] = field(default_factory=list)
    cycle: list[float] = field(default_factory=list)

    def extend(self, other: Latencies) -> None:
        self.start += other.start
        self.resume += other.resume
        self.cycle += other.cycle


async def sequential(subject: Subject, n: int) -> Latencies:
    """``n`` runs one after another: start, then resume, each timed."""
    for _ in range(5):  # warm-up: imports, caches, first pages, pool connections
        await subject.resume(await subject.start())
    found = Latencies()
    for _ in range(n):
        t0 = time.perf_counter()
        interaction_id = await subject.start()
        t1 = time.perf_counter()
        await subject.resume(interaction_id)
        t2 = time.perf_counter()
        found.start.append((t1 - t0) * 1000)
        found.resume.append((t2 - t1) * 1000)
        found.cycle.append((t2 - t0) * 1000)
    return found


# --------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    """Runs per second: ``n`` started at once, then the same ``n`` resumed at once."""

    started_per_s: float
    resumed_per_s: float
    errors: int
    cpu_ms_per_start: float = float("nan")
    """CPU time of this process per run started (when measured): steadier than wall time
    on a shared machine, but blind to work done in other processes (a database server)."""
    cpu_ms_per_resume: float = float("nan")


async def concurrent(
    subject: Subject, n: int, cpu_clock: Callable[[], float] | None = None
) -> Throughput:
    """``n`` starts at once on one event loop, then their ``n`` resumes at once; with
    ``cpu_clock`` (seconds of this process's CPU), also the CPU time per run of each phase."""
    clock: Callable[[], float] = cpu_clock or (lambda: float("nan"))
    c0, t0 = clock(), time.perf_counter()
    started = await asyncio.gather(*(subject.start() for _ in range(n)), return_exceptions=True)
    c1, t1 = clock(), time.perf_counter()
    ids = [s for s in started if isinstance(s, str)]
    resumed = await asyncio.gather(*(subject.resume(i) for i in ids), return_exceptions=True)
    c2, t2 = clock(), time.perf_counter()
    failed = sum(isinstance(r, BaseException) for r in resumed)
    return Throughput(
        started_per_s=len(ids) / (t1 - t0),
        resumed_per_s=(len(ids) - failed) / (t2 - t1),
        errors=(n - len(ids)) + failed,
        cpu_ms_per_start=(c1 - c0) * 1000 / max(1, len(ids)),
        cpu_ms_per_resume=(c2 - c1) * 1000 / max(1, len(ids) - failed),
    )


def processes(
    kind: Kind, store: Store, n: int, count: int = 4, module: str = "benchmarks.workers"
) -> Throughput:
    """``n`` runs from ``count`` processes (``n / count`` each, every process with its own
    store: its own SQLite connection, or its own PostgreSQL pool), started at once, then
    resumed at once; a rate is all runs over the wall time from the first process's start to
    the last one's end (``time.monotonic`` is one clock for every process on Linux).
    ``module``: the worker to run (``benchmarks.workers``'s protocol)."""
    share = n // count
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                kind,
                store.backend,
                store.location,
                str(share),
            ],  # fmt: skip
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        for _ in range(count)
    ]

    def phase() -> list[dict[str, Any]]:
        for worker in workers:  # every worker waits for this line before it begins
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        return [_report(worker) for worker in workers]

    try:
        for worker in workers:
            assert _report(worker)["ready"]
        starts, resumes = phase(), phase()
        for worker in workers:
            worker.wait(timeout=60)  # it closes its store and exits after its last report
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    def rate(reports: list[dict[str, Any]]) -> float:
        done = sum(r["done"] for r in reports)
        return done / (max(r["t1"] for r in reports) - min(r["t0"] for r in reports))

    errors = sum(r["errors"] for r in starts + resumes)
    return Throughput(rate(starts), rate(resumes), errors)


@dataclass
class Round:
    """One subject's round of the side-by-side section, measured in a fresh process."""

    latencies: Latencies
    throughput: Throughput
    load: tuple[float, float]
    """The 1-minute load average when the process began and when it ended."""
    settings: dict[str, str]
    """The database settings the subject ran with, when it reports them."""


def round_in_child(kind: Kind, store: Store, sequential: int, concurrent: int) -> Round:
    """``sequential`` runs one at a time, then ``concurrent`` at once, in a fresh process
    (``benchmarks.child``) on ``store``."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.child",
            kind,
            store.backend,
            store.location,
            str(sequential),
            str(concurrent),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the {kind} round on {store.label} failed ({result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    found = json.loads(result.stdout.splitlines()[-1])
    return Round(
        latencies=Latencies(found["start"], found["resume"], found["cycle"]),
        throughput=Throughput(
            found["started_per_s"],
            found["resumed_per_s"],
            found["errors"],
            found["cpu_ms_per_start"],
            found["cpu_ms_per_resume"],
        ),
        load=(found["load"][0], found["load"][1]),
        settings=found["settings"],
    )


def _report(worker: subprocess.Popen[str]) -> dict[str, Any]:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError(f"a benchmark worker exited ({worker.wait()}) without reporting")
    report: dict[str, Any] = json.loads(line)
    return report


# --------------------------------------------------------------------------- disk


@dataclass
class DiskUsage:
    """KB per run in an SQLite file after a checkpoint: awaiting, completed, after VACUUM."""

    awaiting_kb: float
    completed_kb: float
    vacuumed_kb: float


def _file_size_after_checkpoint(path: Path, vacuum: bool = False) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if vacuum:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


async def disk_per_run(kind: Kind, store: Store, n: int) -> DiskUsage:
    path = Path(store.location)
    llm = InstantLlm()
    async with opened(kind, store, llm):
        pass
    empty = _file_size_after_checkpoint(path)
    async with opened(kind, store, llm) as subject:
        ids = [await subject.start() for _ in range(n)]
    awaiting = (_file_size_after_checkpoint(path) - empty) / n
    async with opened(kind, store, llm) as subject:
        for interaction_id in ids:
            await subject.resume(interaction_id)
    completed = (_file_size_after_checkpoint(path) - empty) / n
    vacuumed = (_file_size_after_checkpoint(path, vacuum=True) - empty) / n
    return DiskUsage(awaiting / 1024, completed / 1024, vacuumed / 1024)


# --------------------------------------------------------------------------- scale


async def populate(store: Store, count: int) -> list[str]:
    """``count`` awaiting runs, stored through the store (signed, with their history): copies
    of one real paused run under fresh ids. Read, never resumed (the snapshot inside names
    the original pause)."""
    automa = ColdMailAutoma()
    automa.attach_llm(InstantLlm(), "instant", None)
    try:
        await automa.arun(brief=BRIEF.model_dump(mode="json"))
        raise AssertionError("did not pause")
    except InteractionException as pause:
        snapshot = pause.snapshot
        draft = EmailSequence.model_validate(pause.interactions[0].event.data["draft"])
    settings = Settings.resolve(db=store.location, **store.agent_options())
    runs = await connect_store(settings)
    ids = [uuid.uuid4().hex for _ in range(count)]
    try:
        for chunk in range(0, count, 200):  # some at once: the store's thread stays busy
            await asyncio.gather(
                *(
                    runs.insert_paused(
                        NewRun(
                            interaction_id=interaction_id,
                            brief=BRIEF,
                            draft=draft,
                            question=AUDIENCE_QUESTION,
                            snapshot=snapshot.serialized_bytes,
                            serialization_version=snapshot.serialization_version,
                        )
                    )
                    for interaction_id in ids[chunk : chunk + 200]
                )
            )
    finally:
        await runs.close()
    return ids


@dataclass
class OpTimes:
    """Milliseconds per call of each operation."""

    get: list[float] = field(default_factory=list)
    resume: list[float] = field(default_factory=list)
    list: list[float] = field(default_factory=list)


@dataclass
class Scaling:
    small: OpTimes
    large: OpTimes


async def scaling(places: Places, small: int, large: int, samples: int) -> Scaling:
    """get / resume / list on a small and a large store, measured alternately so that a noisy
    machine slows both alike (the ratio between them is the figure)."""
    stores = {size: places.new("sqlite", f"scale-{size}") for size in (small, large)}
    stored = {size: await populate(store, size) for size, store in stores.items()}
    times = {size: OpTimes() for size in stores}
    async with contextlib.AsyncExitStack() as stack:
        agents = {
            size: await stack.enter_async_context(
                ColdMailAgent.open(store.location, llm=InstantLlm(), **store.agent_options())
            )
            for size, store in stores.items()
        }
        fresh = {
            size: [(await agent.start(BRIEF)).interaction_id for _ in range(samples)]
            for size, agent in agents.items()
        }
        picks = {size: random.sample(ids, min(samples, len(ids))) for size, ids in stored.items()}
        for i in range(samples):
            for size, agent in agents.items():
                t0 = time.perf_counter()
                await agent.get(picks[size][i % len(picks[size])])
                t1 = time.perf_counter()
                await agent.resume(fresh[size][i], FEEDBACK)
                t2 = time.perf_counter()
                await agent.list(RunStatus.AWAITING_FEEDBACK, limit=50)
                t3 = time.perf_counter()
                times[size].get.append((t1 - t0) * 1000)
                times[size].resume.append((t2 - t1) * 1000)
                times[size].list.append((t3 - t2) * 1000)
    return Scaling(times[small], times[large])


# --------------------------------------------------------------------------- memory


def peak_rss_mb(kind: Kind, store: Store, n: int) -> float:
    """Peak RSS of a fresh process that starts and resumes ``n`` runs at once."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.rss", kind, store.backend, store.location, str(n)],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    return float(json.loads(result.stdout)["peak_rss_mb"])
