"""Measure what bridgic-coldmail adds around the LLM, beside the raw Bridgic + aiosqlite floor.

    python -m benchmarks                 # the full run (a few minutes); writes RESULTS.md
    python -m benchmarks --smoke --out /tmp/r.md   # tiny N: proves the harness still works

The LLM is :class:`benchmarks.fake_llm.InstantLlm` (zero latency) except in the HTTP-path
figure, which goes through the real OpenAI client to the loopback scripted server running
in a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bridgic_coldmail import Brief, ColdMailAgent, RunStatus
from bridgic_coldmail.llm import llm_from_env
from bridgic_coldmail.signing import load_signer

from .fake_llm import InstantLlm
from .floor import RawFloor

HERE = Path(__file__).resolve().parent
BRIEF = Brief(
    product="Acme Scheduler",
    offer="cuts patient no-shows by 30% with two-way SMS reminders",
    sender="Dana Lee, founder of Acme",
    audience="clinic managers",
)
FEEDBACK = "CTOs at mid-size hospitals"


@dataclass
class Sizes:
    rounds: int = 3
    sequential: int = 300
    concurrent: int = 1000
    disk: int = 1000
    scale_small: int = 1_000
    scale_large: int = 100_000
    scale_samples: int = 200


SMOKE = Sizes(rounds=1, sequential=5, concurrent=20, disk=20, scale_small=50, scale_large=200,
              scale_samples=5)  # fmt: skip


# --------------------------------------------------------------------------- subjects


class Subject:
    """What is measured: ``start`` and ``resume`` on one database."""

    name: str

    async def start(self) -> str:
        raise NotImplementedError

    async def resume(self, interaction_id: str) -> object:
        raise NotImplementedError


class Ours(Subject):
    name = "bridgic-coldmail"

    def __init__(self, agent: ColdMailAgent) -> None:
        self.agent = agent

    async def start(self) -> str:
        return (await self.agent.start(BRIEF)).interaction_id

    async def resume(self, interaction_id: str) -> object:
        return await self.agent.resume(interaction_id, FEEDBACK)


class Floor(Subject):
    name = "raw Bridgic + aiosqlite"

    def __init__(self, floor: RawFloor) -> None:
        self.floor = floor

    async def start(self) -> str:
        return await self.floor.start(BRIEF)

    async def resume(self, interaction_id: str) -> object:
        return await self.floor.resume(interaction_id, FEEDBACK)


@contextlib.asynccontextmanager
async def opened(kind: str, path: Path, llm: Any) -> AsyncIterator[Subject]:
    if kind == "ours":
        async with ColdMailAgent.open(path, llm=llm) as agent:
            yield Ours(agent)
    else:
        floor = await RawFloor.open(path, llm)
        try:
            yield Floor(floor)
        finally:
            await floor.close()


# --------------------------------------------------------------------------- statistics


@dataclass
class Figure:
    workload: str
    unit: str
    ours: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    note: str = ""
    higher_is_better: bool = False


def p50(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def p95(samples: list[float]) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "—"
    if unit == "ms":
        return f"{value:.3f}"
    if unit in ("runs/s",):
        return f"{value:,.0f}"
    if unit in ("KB", "MB"):
        return f"{value:.2f}"
    return f"{value:.2f}"


# --------------------------------------------------------------------------- scenarios


async def sequential_latencies(subject: Subject, n: int) -> tuple[list[float], ...]:
    for _ in range(5):  # warm-up: imports, caches, first pages
        await subject.resume(await subject.start())
    starts, resumes, cycles = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        interaction_id = await subject.start()
        t1 = time.perf_counter()
        await subject.resume(interaction_id)
        t2 = time.perf_counter()
        starts.append((t1 - t0) * 1000)
        resumes.append((t2 - t1) * 1000)
        cycles.append((t2 - t0) * 1000)
    return starts, resumes, cycles


async def concurrent_throughput(subject: Subject, n: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    started = await asyncio.gather(*(subject.start() for _ in range(n)), return_exceptions=True)
    t1 = time.perf_counter()
    ids = [s for s in started if isinstance(s, str)]
    resumed = await asyncio.gather(*(subject.resume(i) for i in ids), return_exceptions=True)
    t2 = time.perf_counter()
    errors = sum(isinstance(r, BaseException) for r in [*started, *resumed])
    return len(ids) / (t1 - t0), (len(ids) - errors) / (t2 - t1), errors


def _file_size_after_checkpoint(path: Path, vacuum: bool = False) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if vacuum:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


async def disk_per_run(kind: str, folder: Path, n: int) -> tuple[float, float, float]:
    path = folder / f"disk-{kind}.db"
    llm = InstantLlm()
    async with opened(kind, path, llm):
        pass
    empty = _file_size_after_checkpoint(path)
    async with opened(kind, path, llm) as subject:
        ids = [await subject.start() for _ in range(n)]
    awaiting = (_file_size_after_checkpoint(path) - empty) / n
    async with opened(kind, path, llm) as subject:
        for interaction_id in ids:
            await subject.resume(interaction_id)
    completed = (_file_size_after_checkpoint(path) - empty) / n
    vacuumed = (_file_size_after_checkpoint(path, vacuum=True) - empty) / n
    return awaiting / 1024, completed / 1024, vacuumed / 1024


async def _populate(path: Path, stored: int) -> list[str]:
    """``stored`` awaiting runs: copies of one real paused row under fresh ids, each signed."""
    async with ColdMailAgent.open(path, llm=InstantLlm()) as agent:
        template = (await agent.start(BRIEF)).interaction_id
    signer = load_signer(path, may_create=False)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute(
            "SELECT brief_json, draft_json, question, snapshot, serialization_version "
            "FROM runs WHERE interaction_id = ?",
            (template,),
        ).fetchone()
        brief_json, draft_json, question, snapshot, serialization_version = row
        base = datetime.now(timezone.utc) - timedelta(days=30)
        ids = [uuid.uuid4().hex for _ in range(stored - 1)]

        def rows() -> Iterator[tuple[Any, ...]]:
            for n, interaction_id in enumerate(ids):
                moment = (base + timedelta(seconds=n)).isoformat(timespec="microseconds")
                signature = signer.sign(interaction_id, serialization_version, snapshot)
                yield (interaction_id, brief_json, draft_json, question, snapshot,
                       serialization_version, signature, moment, moment)  # fmt: skip

        with conn:
            conn.executemany(
                "INSERT INTO runs (interaction_id, status, brief_json, draft_json, question, "
                "snapshot, serialization_version, signature, created_at, updated_at) "
                "VALUES (?, 'awaiting_feedback', ?, ?, ?, ?, ?, ?, ?, ?)",
                rows(),
            )
            conn.executemany(
                "INSERT INTO run_events (interaction_id, at, kind) VALUES (?, ?, 'paused')",
                ((i, base.isoformat()) for i in ids),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return [template, *ids]


async def scaling(
    folder: Path, small: int, large: int, samples: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """get / resume / list timings on a small and a large store, measured alternately so that
    a noisy machine slows both alike (the ratio between them is the figure)."""
    sizes = {"small": small, "large": large}
    ids = {name: await _populate(folder / f"scale-{n}.db", n) for name, n in sizes.items()}
    timings: dict[str, dict[str, list[float]]] = {
        name: {"get": [], "resume": [], "list": []} for name in sizes
    }
    async with contextlib.AsyncExitStack() as stack:
        agents = {
            name: await stack.enter_async_context(
                ColdMailAgent.open(folder / f"scale-{n}.db", llm=InstantLlm())
            )
            for name, n in sizes.items()
        }
        fresh = {
            name: [(await agent.start(BRIEF)).interaction_id for _ in range(samples)]
            for name, agent in agents.items()
        }
        picks = {name: random.sample(ids[name], min(samples, len(ids[name]))) for name in sizes}

        async def timed(name: str, op: str, call: Awaitable[Any]) -> None:
            t0 = time.perf_counter()
            await call
            timings[name][op].append((time.perf_counter() - t0) * 1000)

        for i in range(samples):
            for name, agent in agents.items():
                await timed(name, "get", agent.get(picks[name][i % len(picks[name])]))
                await timed(name, "resume", agent.resume(fresh[name][i], FEEDBACK))
                await timed(name, "list", agent.list(RunStatus.AWAITING_FEEDBACK, limit=50))
    return timings["small"], timings["large"]


def peak_rss_mb(kind: str, n: int, folder: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.rss", kind, str(n), str(folder / f"rss-{kind}.db")],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    return float(json.loads(result.stdout)["peak_rss_mb"])


@contextlib.contextmanager
def scripted_server_process() -> Iterator[str]:
    """The loopback OpenAI-compatible server in its own process (no GIL shared with us)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridgic_coldmail.testing"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def local_model_figures(rounds: int) -> list[Figure]:
    """Draft and refine times of the embedded model, when its extra is installed."""
    from bridgic.core.model.protocols import PydanticModel

    from bridgic_coldmail import EmailSequence
    from bridgic_coldmail.local_llm import LocalLlm, local_extra_installed
    from bridgic_coldmail.prompts import draft_messages, refine_messages

    if not local_extra_installed():
        return []
    llm = LocalLlm()
    constraint = PydanticModel(model=EmailSequence)
    drafts, refines = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        draft = llm.structured_output(draft_messages(BRIEF, compact=True), constraint)
        t1 = time.perf_counter()
        llm.structured_output(refine_messages(BRIEF, draft, FEEDBACK, compact=True), constraint)
        t2 = time.perf_counter()
        drafts.append((t1 - t0) * 1000)
        refines.append((t2 - t1) * 1000)
    note = f"{llm.model_path.name}, one call each, no retries"
    return [
        Figure("local model: draft", "ms", drafts, note=note),
        Figure("local model: refine", "ms", refines, note=note),
    ]


# --------------------------------------------------------------------------- orchestration


async def _rounds(
    kind: str, folder: Path, rounds: int, body: Callable[[Subject], Awaitable[Any]], llm: Any
) -> list[Any]:
    results = []
    for r in range(rounds):
        async with opened(kind, folder / f"{kind}-{body.__name__}-{r}.db", llm) as subject:
            results.append(await body(subject))
    return results


async def measure(sizes: Sizes, folder: Path, log: Callable[[str], None]) -> list[Figure]:
    figures: list[Figure] = []
    seq: dict[str, list[Any]] = {"ours": [], "floor": []}
    for _ in range(sizes.rounds):  # alternate, so drift in machine speed hits both alike
        for kind in seq:
            seq[kind] += await _rounds(
                kind, folder, 1, lambda s: sequential_latencies(s, sizes.sequential), InstantLlm()
            )
    for index, (label, target) in enumerate(
        [
            ("start → paused and stored", ""),
            ("load → resumed → completed", ""),
            ("full cycle", "≤ 1.5× floor and ≤ 2.5 ms (p50)"),
        ]
    ):
        figure = Figure(
            label,
            "ms",
            [x for round_ in seq["ours"] for x in round_[index]],
            [x for round_ in seq["floor"] for x in round_[index]],
            target,
        )
        if index == 2:
            figure.met = p50(figure.ours) <= min(2.5, 1.5 * p50(figure.floor))
        figures.append(figure)
    log("sequential latencies done")

    for kind_llm, title in (("instant", ""), ("http", " (HTTP, loopback server)")):
        with contextlib.ExitStack() as stack:
            if kind_llm == "http":
                base_url = stack.enter_context(scripted_server_process())
                env = {"OPENAI_API_BASE": base_url, "OPENAI_API_KEY": "benchmark"}
                stack.enter_context(_environment(env))

            conc = {}
            for kind in ("ours", "floor"):
                llm = InstantLlm() if kind_llm == "instant" else llm_from_env(60)
                conc[kind] = await _rounds(
                    kind,
                    folder,
                    sizes.rounds,
                    lambda s: concurrent_throughput(s, sizes.concurrent),
                    llm,
                )
        errors = sum(r[2] for r in conc["ours"])
        for index, (verb, target_rate) in enumerate((("started", 1000), ("resumed", 800))):
            figure = Figure(
                f"{sizes.concurrent:,} runs {verb} concurrently{title}",
                "runs/s",
                [r[index] for r in conc["ours"]],
                [r[index] for r in conc["floor"]],
                "" if title else f"≥ {target_rate:,} runs/s, 0 errors",
                higher_is_better=True,
                note=f"errors: {errors}",
            )
            if not title:
                figure.met = p50(figure.ours) >= target_rate and errors == 0
            figures.append(figure)
        log(f"concurrency{title} done")

    disk = {kind: await disk_per_run(kind, folder, sizes.disk) for kind in ("ours", "floor")}
    figures.append(
        Figure(
            "disk per awaiting run",
            "KB",
            [disk["ours"][0]],
            [disk["floor"][0]],
            "≤ 6 KB",
            met=disk["ours"][0] <= 6,
        )  # fmt: skip
    )
    figures.append(
        Figure(
            "disk per completed run (after checkpoint)",
            "KB",
            [disk["ours"][1]],
            [disk["floor"][1]],
            note=f"after VACUUM: {disk['ours'][2]:.2f} KB (floor {disk['floor'][2]:.2f} KB)",
        )
    )
    log("disk done")

    small, large = await scaling(folder, sizes.scale_small, sizes.scale_large, sizes.scale_samples)
    for op, label in (("get", "get"), ("resume", "resume"), ("list", "list page (50 awaiting)")):
        ratio = p50(large[op]) / p50(small[op])
        figures.append(
            Figure(
                f"{label} with {sizes.scale_large:,} stored (vs {sizes.scale_small:,})",
                "ms",
                large[op],
                small[op],
                "≤ 1.2× the small store",
                met=ratio <= 1.2,
                note="floor column: the same operation with the small store",
            )
        )
    log("scaling done")

    rss = {kind: peak_rss_mb(kind, sizes.concurrent, folder) for kind in ("ours", "floor")}
    figures.append(
        Figure(
            f"peak RSS, {sizes.concurrent:,} concurrent runs",
            "MB",
            [rss["ours"]],
            [rss["floor"]],
            "≤ 100 MB",
            met=rss["ours"] <= 100,
        )  # fmt: skip
    )
    log("memory done")
    figures += local_model_figures(sizes.rounds)
    log("local model done")
    return figures


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
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


def render(figures: list[Figure], command: str, elapsed: float, sizes: Sizes) -> str:
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "bridgic-coldmail",
            "bridgic-core",
            "bridgic-llms-openai",
            "aiosqlite",
            "pydantic",
            "openai",
        )  # fmt: skip
    )
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command}` ({elapsed:.0f} s)",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; SQLite "
        f"{sqlite3.sqlite_version}",
        f"- Versions: {versions}",
        f"- Rounds: {sizes.rounds}; latencies pool every sample of every round "
        f"({sizes.sequential} runs a round); throughputs are per round (median and the "
        "worst round in the p95 column).",
        "- LLM: an in-process `InstantLlm` (zero latency) unless the row says HTTP; the HTTP "
        "rows use the real OpenAI client against `python -m bridgic_coldmail.testing` in "
        "another process.",
        "- Floor: the same automa and LLM with raw aiosqlite, one row per snapshot, no "
        "signature, claim, history or JSON columns (`benchmarks/floor.py`).",
        "",
        "| workload | unit | ours p50 | ours p95 | floor p50 | floor p95 | ours ÷ floor | "
        "target | met | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        if f.higher_is_better:
            ours95, floor95 = min(f.ours, default=float("nan")), min(f.floor, default=float("nan"))
        else:
            ours95, floor95 = p95(f.ours), p95(f.floor)
        ratio = p50(f.ours) / p50(f.floor) if f.floor and p50(f.floor) else float("nan")
        met = "—" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(
            f"| {f.workload} | {f.unit} | {_fmt(p50(f.ours), f.unit)} | {_fmt(ours95, f.unit)} "
            f"| {_fmt(p50(f.floor), f.unit)} | {_fmt(floor95, f.unit)} | "
            f"{'—' if ratio != ratio else f'{ratio:.2f}×'} | {f.target or '—'} | {met} | "
            f"{f.note} |"
        )
    if not any(f.workload.startswith("local model") for f in figures):
        lines += ["", "Local model: not measured (install the `local` extra to include it)."]
    lines.append("")
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    command = "python -m benchmarks" + (" --smoke" if args.smoke else "")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coldmail-bench-") as folder:
        figures = asyncio.run(measure(sizes, Path(folder), lambda m: print(m, flush=True)))
    text = render(figures, command, time.perf_counter() - started, sizes)
    args.out.write_text(text)
    print(text)
