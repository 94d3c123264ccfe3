"""The report: figures (one row each) and the Markdown table of ``RESULTS.md``."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = (
    "| workload | unit | ours p50 | ours p95 | floor p50 | floor p95 | ours ÷ floor | "
    "target | met | note |"
)


@dataclass
class Figure:
    """One row: samples of this package and of its floor for one workload."""

    workload: str
    unit: str
    ours: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    note: str = ""
    higher_is_better: bool = False

    @property
    def ratio(self) -> float:
        """ours ÷ floor at the median (NaN without a floor)."""
        bottom = p50(self.floor)
        return p50(self.ours) / bottom if self.floor and bottom else float("nan")


@dataclass
class Run:
    """What the header says about the run."""

    command: str
    elapsed: float
    rounds: int
    sequential: int
    postgres: str
    """The PostgreSQL server measured, or why none was."""


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
    if unit == "runs/s":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _versions() -> str:
    names = ("bridgic-coldmail", "bridgic-core", "bridgic-llms-openai", "aiosqlite", "psycopg",
             "psycopg-pool", "pydantic", "openai")  # fmt: skip
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def render(figures: list[Figure], run: Run) -> str:
    """The whole RESULTS.md: header, table, then benchmarks/NOTES.md."""
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{run.command}` ({run.elapsed:.0f} s)",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; SQLite "
        f"{sqlite3.sqlite_version}; PostgreSQL: {run.postgres}",
        f"- Versions: {_versions()}",
        f"- Rounds: {run.rounds}; latencies pool every sample of every round "
        f"({run.sequential} runs a round); throughputs are per round (median, and the worst "
        "round in the p95 column).",
        "- LLM: an in-process `InstantLlm` (zero latency) unless the row says HTTP; the HTTP "
        "rows use the real OpenAI client against `python -m bridgic_coldmail.testing` in "
        "another process.",
        "- Floors: the same automa and LLM doing the bare minimum with the same durability for "
        "the pause and the result — raw aiosqlite for SQLite rows, raw psycopg (pooled, "
        "psycopg's defaults) for PostgreSQL rows: one row per snapshot, no signature, claim, "
        "history or JSON columns (`benchmarks/floor.py`).",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        if f.higher_is_better:
            ours95, floor95 = min(f.ours, default=float("nan")), min(f.floor, default=float("nan"))
        else:
            ours95, floor95 = p95(f.ours), p95(f.floor)
        ratio = f.ratio
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
