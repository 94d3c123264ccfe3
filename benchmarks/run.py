"""Measure what bridgic-coldmail adds around the LLM, beside LangGraph and floors doing the
bare minimum.

    pip install -e ".[bench]"            # LangGraph and its SQLite and PostgreSQL savers
    python -m benchmarks                 # the full run (several minutes); writes RESULTS.md
    python -m benchmarks --only peers    # the side-by-side table alone
    python -m benchmarks --smoke --out /tmp/r.md   # tiny N: proves the harness still works

The harness is three layers: ``subjects.py`` (this package or its floor, on an SQLite file or
a PostgreSQL database), ``scenarios.py`` (workloads returning named results) and
``report.py`` (figures and the table). This module puts them together as a list of
sections, :data:`SECTIONS`; each section returns the figures (rows) it measured.

PostgreSQL rows need a server: ``COLDMAIL_BENCH_PG_URL`` (a database where the user may
``CREATE DATABASE``), else a throwaway cluster with the server's durable defaults (fsync and
``synchronous_commit`` on) started from Debian's binaries (``testbed/pg.py``); without either
they are left out and the header says why.

The LLM is :class:`benchmarks.fake_llm.InstantLlm` (zero latency) except in the HTTP rows,
which go through the real OpenAI client to the loopback scripted server in another process.

The side-by-side section (:func:`peers`) runs every subject in a fresh process per round
(``benchmarks/child.py``), the subjects' order reversed from one round to the next, so that a
drift in the machine's speed, and whatever one subject leaves behind (page cache, WAL
checkpoints, the server's buffers), hits every subject alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridgic_coldmail.llm import close_llm, openai_llm
from bridgic_coldmail.settings import Settings
from testbed.extras import langgraph_missing

from . import scenarios
from .fake_llm import InstantLlm
from .personalize_batch import personalize
from .report import HERE, Bound, Comparison, Figure, Run, p50, render
from .reviewer import reviewer
from .subjects import (
    KINDS,
    LABELS,
    PEERS,
    SUBJECT_LABELS,
    BackendName,
    Kind,
    Places,
    Subject,
    opened,
)

BENCH_PG_URL_ENV = "COLDMAIL_BENCH_PG_URL"


@dataclass
class Sizes:
    rounds: int = 3
    sequential: int = 300
    concurrent: int = 1000
    processes: int = 4
    disk: int = 1000
    scale_small: int = 1_000
    scale_large: int = 100_000
    scale_samples: int = 200
    peer_sequential: int = 300
    peer_concurrent: int = 300
    personalize_leads: int = 10_000


SMOKE = Sizes(rounds=1, sequential=5, concurrent=20, disk=20, scale_small=50, scale_large=200,
              scale_samples=5, peer_sequential=5, peer_concurrent=10,
              personalize_leads=200)  # fmt: skip


@dataclass
class Context:
    """What every section gets: the sizes, fresh stores on demand, and a progress log."""

    sizes: Sizes
    places: Places
    log: Callable[[str], None]
    loads: list[float] = field(default_factory=list)
    """The 1-minute load average before and after every child process of ``peers``."""
    said: list[str] = field(default_factory=list)
    """What the side-by-side table's header says."""

    @property
    def backends(self) -> tuple[BackendName, ...]:
        return ("sqlite", "postgres") if self.places.postgres_url else ("sqlite",)


Row = Figure | Comparison
Section = Callable[[Context], Awaitable[Sequence[Row]]]


async def _alternating(
    ctx: Context,
    backend: BackendName,
    name: str,
    body: Callable[[Subject], Awaitable[Any]],
    llm: Callable[[], Any] = InstantLlm,
) -> dict[str, list[Any]]:
    """``body`` for each round, this package and the floor alternating (so drift in machine
    speed hits both alike), each on a fresh store."""
    results: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for round_ in range(ctx.sizes.rounds):
        for kind in KINDS:
            store = ctx.places.new(backend, f"{name}-{kind}-{round_}")
            async with opened(kind, store, llm()) as subject:
                results[kind].append(await body(subject))
    return results


# --------------------------------------------------------------------------- sections


async def peers(ctx: Context) -> list[Row]:
    """This package, LangGraph (default and exit durability) and the floor side by side:
    resume and full-cycle latency, concurrent starts and resumes, each subject in a fresh
    process per round, in alternating order (``benchmarks/child.py``)."""
    s = ctx.sizes
    why = langgraph_missing()
    kinds: tuple[Kind, ...] = PEERS if why is None else ("ours", "floor")
    rows: list[Row] = []
    settings: dict[str, dict[str, str]] = {}
    for backend in ctx.backends:
        rounds: dict[Kind, list[scenarios.Round]] = {kind: [] for kind in kinds}
        for round_ in range(s.rounds):
            for kind in kinds if round_ % 2 == 0 else tuple(reversed(kinds)):
                store = ctx.places.new(backend, f"peer-{kind}-{round_}")
                found = await asyncio.to_thread(
                    scenarios.round_in_child, kind, store, s.peer_sequential, s.peer_concurrent
                )
                rounds[kind].append(found)
                ctx.loads += found.load
                if found.settings:
                    settings[f"{SUBJECT_LABELS[kind]} on {LABELS[backend]}"] = found.settings
            ctx.log(
                f"side by side on {LABELS[backend]}: round {round_ + 1} of {s.rounds} done "
                f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
            )
        rows += _comparisons(LABELS[backend], s.peer_concurrent, rounds)
    ctx.said += _side_by_side_header(s, kinds, why, settings)
    return rows


def _comparisons(label: str, n: int, rounds: dict[Kind, list[scenarios.Round]]) -> list[Comparison]:
    def each(value: Callable[[scenarios.Round], float]) -> dict[Kind, list[float]]:
        return {kind: [value(r) for r in found] for kind, found in rounds.items()}

    errors = sum(r.throughput.errors for found in rounds.values() for r in found)
    return [
        Comparison(f"resume, {label}", "ms", each(lambda r: p50(r.latencies.resume))),
        Comparison(
            f"full cycle, {label}",
            "ms",
            each(lambda r: p50(r.latencies.cycle)),
            bounds=[Bound("langgraph-exit", 0.8), Bound("langgraph", 0.5)],
        ),
        Comparison(
            f"{n:,} concurrent resumes, {label}",
            "runs/s",
            each(lambda r: r.throughput.resumed_per_s),
            higher_is_better=True,
            bounds=[Bound("langgraph-exit", 1.5), Bound("langgraph", 2.0)],
            note=f"errors: {errors}",
        ),
        Comparison(
            f"{n:,} concurrent starts, {label}",
            "runs/s",
            each(lambda r: r.throughput.started_per_s),
            higher_is_better=True,
            note=f"errors: {errors}",
        ),
        Comparison(
            f"CPU per resume, {n:,} at once, {label}",
            "ms",
            each(lambda r: r.throughput.cpu_ms_per_resume),
            note="this process only"
            + (" (not the server's)" if label == LABELS["postgres"] else ""),
        ),
    ]


def _side_by_side_header(
    s: Sizes, kinds: tuple[Kind, ...], why: str | None, settings: dict[str, dict[str, str]]
) -> list[str]:
    order = ", ".join(SUBJECT_LABELS[k] for k in kinds)
    said = [
        f"- How: {s.rounds} round{'' if s.rounds == 1 else 's'}; in each, every subject in a "
        f"fresh process (`benchmarks/child.py`) on a fresh store, in the order {order}, and "
        f"in the reverse order in the next round: {s.peer_sequential} runs one at a time "
        "(start, then resume, each timed, after 5 warm-up runs), then "
        f"{s.peer_concurrent:,} starts at once and their {s.peer_concurrent:,} resumes at "
        "once on one event loop. A time is the median of a round's samples, a rate the "
        "round's; each cell is the median over the rounds.",
        "- The same work: LangGraph runs draft → ask_audience (`interrupt()`) → refine, "
        "resumed with `Command(resume=...)`, each step building the same `WritingTask` and "
        "calling the same `write_sequence` with the same instant LLM as our automa "
        "(`benchmarks/langgraph_peer.py`); our automa has a fourth worker (`review`, which "
        'returns at once outside review mode). LangGraph default is `durability="async"` '
        '(a checkpoint per step), exit is `durability="exit"` (one when the graph pauses '
        "or ends); both have written everything when `ainvoke` returns.",
        "- The same durability where it can be set: ours commits the pause and the result "
        "with `synchronous=FULL` on SQLite and the server's `synchronous_commit` (on) on "
        "PostgreSQL, a claim without waiting for the flush; LangGraph's `AsyncSqliteSaver` "
        "sets `journal_mode=WAL` itself and leaves `synchronous` at SQLite's default (read "
        "back below), so each of its commits is flushed; `AsyncPostgresSaver` runs on a pool "
        "of 1–10 connections like ours (`autocommit=True, prepare_threshold=0, "
        "row_factory=dict_row`, as its documentation asks), each statement committed with "
        "`synchronous_commit` on; the floor flushes its two writes too.",
    ]
    if settings:
        read = "; ".join(
            f"{who}: " + ", ".join(f"{k}={v}" for k, v in found.items())
            for who, found in settings.items()
        )
        said.append(f"- Read back from the LangGraph savers' connections: {read}.")
    said.append(
        "- Targets (issue 20): full cycle ≤ 0.8× LangGraph exit and ≤ 0.5× default; "
        "concurrent resumes ≥ 1.5× exit and ≥ 2× default; four processes on one SQLite "
        "file ≥ 0.6× the floor (in the table against the floors)."
    )
    if why is not None:
        said.append(f"- LangGraph: not measured ({why}).")
    return said


async def latency(ctx: Context) -> list[Figure]:
    """Start, resume and the full cycle, one run at a time."""
    figures = []
    for backend in ctx.backends:
        found = await _alternating(
            ctx, backend, "seq", lambda s: scenarios.sequential(s, ctx.sizes.sequential)
        )
        ours, floor = scenarios.Latencies(), scenarios.Latencies()
        for latencies in found["ours"]:
            ours.extend(latencies)
        for latencies in found["floor"]:
            floor.extend(latencies)
        label = LABELS[backend]
        cycle = Figure(f"full cycle, {label}", "ms", ours.cycle, floor.cycle)
        if backend == "sqlite":
            cycle.target = "≤ 1.5× floor and ≤ 2.5 ms (p50)"
            cycle.met = p50(ours.cycle) <= min(2.5, 1.5 * p50(floor.cycle))
        figures += [
            Figure(f"start → paused and stored, {label}", "ms", ours.start, floor.start),
            Figure(f"load → resumed → completed, {label}", "ms", ours.resume, floor.resume),
            cycle,
        ]
        ctx.log(f"sequential latencies on {label} done")
    return figures


def _throughput_figures(
    what: str,
    label: str,
    found: dict[str, list[scenarios.Throughput]],
    targets: bool,
    how: str = "",
    resume_vs_floor: float = 0.8,
) -> list[Figure]:
    errors = sum(t.errors for t in found["ours"])
    started = Figure(
        f"{what} started concurrently{how}, {label}",
        "runs/s",
        [t.started_per_s for t in found["ours"]],
        [t.started_per_s for t in found["floor"]],
        higher_is_better=True,
        note=f"errors: {errors}",
    )
    resumed = Figure(
        f"{what} resumed concurrently{how}, {label}",
        "runs/s",
        [t.resumed_per_s for t in found["ours"]],
        [t.resumed_per_s for t in found["floor"]],
        higher_is_better=True,
        note=f"errors: {errors}",
    )
    if targets and label == "SQLite":
        started.target = "≥ 1,000 runs/s, 0 errors"
        resumed.target = f"≥ {resume_vs_floor:g}× floor, 0 errors"
        started.met = p50(started.ours) >= 1000 and errors == 0
        resumed.met = resumed.ratio >= resume_vs_floor and errors == 0
    elif targets:
        started.target = resumed.target = "0 errors"
        started.met = resumed.met = errors == 0
    return [started, resumed]


async def concurrency(ctx: Context) -> list[Figure]:
    """N runs started at once on one event loop, then resumed at once."""
    figures = []
    n = ctx.sizes.concurrent
    for backend in ctx.backends:
        found = await _alternating(ctx, backend, "conc", lambda s: scenarios.concurrent(s, n))
        figures += _throughput_figures(f"{n:,} runs", LABELS[backend], found, targets=True)
        ctx.log(f"concurrency on {LABELS[backend]} done")
    return figures


async def many_processes(ctx: Context) -> list[Figure]:
    """The same N runs from several processes at once, each with its own store."""
    figures = []
    n, count = ctx.sizes.concurrent, ctx.sizes.processes
    for backend in ctx.backends:
        found: dict[str, list[scenarios.Throughput]] = {kind: [] for kind in KINDS}
        for round_ in range(ctx.sizes.rounds):
            for kind in KINDS if round_ % 2 == 0 else tuple(reversed(KINDS)):
                store = ctx.places.new(backend, f"procs-{kind}-{round_}")
                found[kind].append(
                    await asyncio.to_thread(scenarios.processes, kind, store, n, count)
                )
        what = f"{n:,} runs from {count} processes"
        figures += _throughput_figures(
            what, LABELS[backend], found, targets=True, resume_vs_floor=0.6
        )
        ctx.log(f"{count} processes on {LABELS[backend]} done")
    return figures


async def http(ctx: Context) -> list[Figure]:
    """N concurrent runs through the real OpenAI client and the loopback scripted server."""
    n = ctx.sizes.concurrent
    with (
        scripted_server_process() as base_url,
        _environment({"OPENAI_API_BASE": base_url, "OPENAI_API_KEY": "benchmark"}),
    ):
        llms: list[Any] = []

        def llm() -> Any:
            llms.append(openai_llm(Settings.resolve(llm_timeout=60)))
            return llms[-1]

        try:
            found = await _alternating(
                ctx, "sqlite", "http", lambda s: scenarios.concurrent(s, n), llm
            )
        finally:
            for made in llms:
                await close_llm(made)
    ctx.log("concurrency over HTTP done")
    how = " (HTTP, loopback server)"
    return _throughput_figures(f"{n:,} runs", "SQLite", found, False, how)


async def disk(ctx: Context) -> list[Figure]:
    """Bytes per stored run in the SQLite file."""
    usage = {
        kind: await scenarios.disk_per_run(
            kind, ctx.places.new("sqlite", f"disk-{kind}"), ctx.sizes.disk
        )  # fmt: skip
        for kind in KINDS
    }
    ctx.log("disk done")
    ours, floor = usage["ours"], usage["floor"]
    return [
        Figure(
            "disk per awaiting run, SQLite",
            "KB",
            [ours.awaiting_kb],
            [floor.awaiting_kb],
            "≤ 6 KB",
            met=ours.awaiting_kb <= 6,
        ),  # fmt: skip
        Figure(
            "disk per completed run (after checkpoint), SQLite",
            "KB",
            [ours.completed_kb],
            [floor.completed_kb],
            note=f"after VACUUM: {ours.vacuumed_kb:.2f} KB (floor {floor.vacuumed_kb:.2f} KB)",
        ),
    ]


async def scale(ctx: Context) -> list[Figure]:
    """get / resume / list with a large store against a small one."""
    s = ctx.sizes
    found = await scenarios.scaling(ctx.places, s.scale_small, s.scale_large, s.scale_samples)
    figures = []
    for op, label in (("get", "get"), ("resume", "resume"), ("list", "list page (50 awaiting)")):
        large, small = getattr(found.large, op), getattr(found.small, op)
        figure = Figure(
            f"{label} with {s.scale_large:,} stored (vs {s.scale_small:,}), SQLite",
            "ms",
            large,
            small,
            "≤ 1.2× the small store",
            note="floor column: the same operation with the small store",
        )
        figure.met = figure.ratio <= 1.2
        figures.append(figure)
    ctx.log("scaling done")
    return figures


async def memory(ctx: Context) -> list[Figure]:
    """Peak RSS of a process running N runs at once."""
    n = ctx.sizes.concurrent
    rss = {
        kind: await asyncio.to_thread(
            scenarios.peak_rss_mb, kind, ctx.places.new("sqlite", f"rss-{kind}"), n
        )
        for kind in KINDS
    }
    ctx.log("memory done")
    return [
        Figure(
            f"peak RSS, {n:,} concurrent runs, SQLite",
            "MB",
            [rss["ours"]],
            [rss["floor"]],
            "≤ 100 MB",
            met=rss["ours"] <= 100,
        )  # fmt: skip
    ]


async def local_model(ctx: Context) -> list[Figure]:
    """The embedded model: speed against plain llama.cpp, and the on-topic quality check
    (``benchmarks/local_model.py``). Left out when the ``local`` extra is not installed."""
    from bridgic_coldmail.llm.local.model import local_extra_installed

    if not local_extra_installed():
        ctx.log("local model: the local extra is not installed; its rows are left out")
        return []
    from . import local_model as local

    smoke = ctx.sizes.rounds == SMOKE.rounds and ctx.sizes.concurrent == SMOKE.concurrent
    cases = local.QUALITY_CASES[:1] if smoke else local.QUALITY_CASES
    results = await local.ameasure(cases, log=ctx.log)
    ctx.log("local model done")
    return [Figure(**row) for row in local.figures(results)]


SECTIONS: list[Section] = [
    peers,
    latency,
    concurrency,
    many_processes,
    http,
    disk,
    scale,
    memory,
    local_model,
    personalize,
    reviewer,
]
"""Every section, in report order."""


# --------------------------------------------------------------------------- orchestration


async def measure(ctx: Context, sections: list[Section] | None = None) -> list[Row]:
    figures: list[Row] = []
    for section in SECTIONS if sections is None else sections:
        figures += await section(ctx)
        ctx.places.drop_all()
    return figures


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
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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


@contextlib.contextmanager
def postgres_server(wanted: bool) -> Iterator[tuple[str | None, str]]:
    """A PostgreSQL URL to create benchmark databases from, and what the header says."""
    if not wanted:
        yield None, "not measured (--no-postgres)"
        return
    given = os.environ.get(BENCH_PG_URL_ENV)
    if given:
        yield given, f"${BENCH_PG_URL_ENV}"
        return
    try:
        from testbed.pg import start_cluster

        cluster = start_cluster(durable=True)
    except Exception as exc:  # noqa: BLE001 - no server means no PostgreSQL rows, said why
        yield None, f"not measured ({exc})"
        return
    try:
        version = subprocess.run(
            [str(cluster.bindir / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
        yield cluster.url, f"{version}, a throwaway local cluster on a Unix socket, fsync on"
    finally:
        cluster.stop()


def _section(name: str) -> Section:
    for section in SECTIONS:
        if section.__name__ == name.strip():
            return section
    raise argparse.ArgumentTypeError(f"no section {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-postgres", action="store_true", help="leave out PostgreSQL rows")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 3; smoke 1)")
    parser.add_argument(
        "--only",
        type=lambda text: [_section(name) for name in text.split(",")],
        help=f"some sections only, e.g. --only latency,concurrency "
        f"({', '.join(s.__name__ for s in SECTIONS)})",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    command = "python -m " + " ".join(["benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="coldmail-bench-") as folder,
        postgres_server(not args.no_postgres) as (pg_url, pg_said),
    ):
        places = Places(Path(folder), pg_url)
        try:
            ctx = Context(sizes, places, lambda m: print(m, flush=True))
            figures = asyncio.run(measure(ctx, args.only))
        finally:
            places.drop_all()
    run = Run(
        command,
        time.perf_counter() - started,
        sizes.rounds,
        sizes.sequential,
        pg_said,
        loads=ctx.loads,
        side_by_side=ctx.said,
    )
    text = render(figures, run)
    args.out.write_text(text)
    print(text)
