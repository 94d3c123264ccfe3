"""Measure what bridgic-coldmail adds around the LLM, beside floors doing the bare minimum.

    python -m benchmarks                 # the full run (several minutes); writes RESULTS.md
    python -m benchmarks --smoke --out /tmp/r.md   # tiny N: proves the harness still works

The harness is three layers: ``subjects.py`` (this package or its floor, on an SQLite file or
a PostgreSQL database), ``scenarios.py`` (workloads returning named results) and
``report.py`` (figures and the table). This module puts them together as a list of
sections, :data:`SECTIONS`; each section returns the figures (rows) it measured.

PostgreSQL rows need a server: ``COLDMAIL_BENCH_PG_URL`` (a database where the user may
``CREATE DATABASE``), else a throwaway cluster with the server's durable defaults (fsync and
``synchronous_commit`` on) started from Debian's binaries (``tests/pg.py``); without either
they are left out and the header says why.

The LLM is :class:`benchmarks.fake_llm.InstantLlm` (zero latency) except in the HTTP rows,
which go through the real OpenAI client to the loopback scripted server in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridgic_coldmail.llm import close_llm, openai_llm
from bridgic_coldmail.settings import Settings

from . import scenarios
from .fake_llm import InstantLlm
from .report import HERE, Figure, Run, p50, render
from .subjects import KINDS, LABELS, BackendName, Places, Subject, opened

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


SMOKE = Sizes(rounds=1, sequential=5, concurrent=20, disk=20, scale_small=50, scale_large=200,
              scale_samples=5)  # fmt: skip


@dataclass
class Context:
    """What every section gets: the sizes, fresh stores on demand, and a progress log."""

    sizes: Sizes
    places: Places
    log: Callable[[str], None]

    @property
    def backends(self) -> tuple[BackendName, ...]:
        return ("sqlite", "postgres") if self.places.postgres_url else ("sqlite",)


Section = Callable[[Context], Awaitable[list[Figure]]]


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
        started.target, resumed.target = "≥ 1,000 runs/s, 0 errors", "≥ 0.8× floor, 0 errors"
        started.met = p50(started.ours) >= 1000 and errors == 0
        resumed.met = resumed.ratio >= 0.8 and errors == 0
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
            for kind in KINDS:
                store = ctx.places.new(backend, f"procs-{kind}-{round_}")
                found[kind].append(
                    await asyncio.to_thread(scenarios.processes, kind, store, n, count)
                )
        what = f"{n:,} runs from {count} processes"
        figures += _throughput_figures(what, LABELS[backend], found, targets=True)
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
    from bridgic_coldmail.local_llm import local_extra_installed

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
    latency,
    concurrency,
    many_processes,
    http,
    disk,
    scale,
    memory,
    local_model,
]
"""Every section, in report order."""


# --------------------------------------------------------------------------- orchestration


async def measure(ctx: Context, sections: list[Section] | None = None) -> list[Figure]:
    figures: list[Figure] = []
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
        from tests.pg import start_cluster

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
    parser.add_argument(
        "--only",
        type=lambda text: [_section(name) for name in text.split(",")],
        help=f"some sections only, e.g. --only latency,concurrency "
        f"({', '.join(s.__name__ for s in SECTIONS)})",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    command = "python -m benchmarks" + (" --smoke" if args.smoke else "")
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
    run = Run(command, time.perf_counter() - started, sizes.rounds, sizes.sequential, pg_said)
    text = render(figures, run)
    args.out.write_text(text)
    print(text)
