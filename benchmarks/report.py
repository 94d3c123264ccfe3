"""The report: figures (one row each) and the Markdown tables of ``RESULTS.md``.

Two kinds of row: a :class:`Comparison` (the side-by-side table: this package, LangGraph in
both durability modes and the floor, one value per round each) and a :class:`Figure` (this
package against its floor, samples pooled).
"""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .subjects import PEERS, SUBJECT_LABELS, Kind

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
class Bound:
    """A target on ours ÷ a subject's figure: at most ``ratio`` for a time, at least
    ``ratio`` for a rate."""

    subject: Kind
    ratio: float


@dataclass
class Comparison:
    """One row of the side-by-side table: one value per round for each subject (the median
    of that round's samples for a time, the round's rate for a rate)."""

    workload: str
    unit: str
    rounds: dict[Kind, list[float]]
    higher_is_better: bool = False
    bounds: list[Bound] = field(default_factory=list)
    note: str = ""

    def value(self, subject: Kind) -> float:
        """The median of the subject's rounds."""
        return p50(self.rounds.get(subject, []))

    def spread(self, subject: Kind) -> float:
        """Half the range of the subject's rounds, as a fraction of their median."""
        found = self.rounds.get(subject, [])
        middle = p50(found)
        return (max(found) - min(found)) / 2 / middle if found and middle else float("nan")

    def ratio(self, subject: Kind) -> float:
        """ours ÷ the subject, at the medians."""
        bottom = self.value(subject)
        return self.value("ours") / bottom if bottom == bottom and bottom else float("nan")

    def holds(self, bound: Bound) -> bool:
        ratio = self.ratio(bound.subject)
        return ratio >= bound.ratio if self.higher_is_better else ratio <= bound.ratio

    @property
    def met(self) -> bool | None:
        if not self.bounds or any(self.ratio(b.subject) != self.ratio(b.subject)
                                  for b in self.bounds):  # fmt: skip
            return None
        return all(self.holds(b) for b in self.bounds)

    def within_noise(self) -> list[Kind]:
        """The bounds whose margin is smaller than the rounds' spread (the verdict could
        flip on a rerun)."""
        close = []
        for bound in self.bounds:
            ratio = self.ratio(bound.subject)
            margin = abs(ratio / bound.ratio - 1)
            if margin < self.spread("ours") + self.spread(bound.subject):
                close.append(bound.subject)
        return close


@dataclass
class Run:
    """What the header says about the run."""

    command: str
    elapsed: float
    rounds: int
    sequential: int
    postgres: str
    """The PostgreSQL server measured, or why none was."""
    loads: list[float] = field(default_factory=list)
    """The 1-minute load average, sampled before and after every child process."""
    side_by_side: list[str] = field(default_factory=list)
    """What the side-by-side table's header says (subjects, settings, or why not measured)."""


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
             "psycopg-pool", "pydantic", "openai", "langgraph", "langgraph-checkpoint",
             "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres")  # fmt: skip
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def _noise(run: Run) -> list[str]:
    if not run.loads:
        return []
    cores = os.cpu_count() or 1
    low, high = min(run.loads), max(run.loads)
    said = (
        f"- Noise: 1-minute load average {low:.1f}–{high:.1f} on {cores} cores, sampled before "
        "and after each child process (this benchmark alone keeps about one core busy, and "
        "the database server another on PostgreSQL rows). Each value of the side-by-side "
        "table is the median of its rounds, ± half their range."
    )
    if high > cores:
        said += (
            f" **The load went above {cores}: other work shared the machine, so these "
            "figures are indicative only.**"
        )
    return [said]


def _value(row: Comparison, subject: Kind) -> str:
    value = row.value(subject)
    if value != value:
        return "—"
    spread = row.spread(subject)
    return f"{_fmt(value, row.unit)} ±{spread * 100:.0f}%"


def _ratio(value: float) -> str:
    return "—" if value != value else f"{value:.2f}×"


def _comparison_note(row: Comparison) -> str:
    notes = [row.note] if row.note else []
    close = row.within_noise()
    if close:
        names = ", ".join(SUBJECT_LABELS[c] for c in close)
        notes.append(f"margin to the target against {names} within the rounds' spread")
    if not row.bounds:
        langgraph: tuple[Kind, ...] = ("langgraph", "langgraph-exit")
        peers = [p for p in langgraph if row.value(p) == row.value(p)]
        if peers:
            behind = [
                SUBJECT_LABELS[p]
                for p in peers
                if (row.ratio(p) < 1 if row.higher_is_better else row.ratio(p) > 1)
            ]
            notes.append("ahead of LangGraph" if not behind else f"behind {', '.join(behind)}")
    return "; ".join(notes)


def render_comparisons(rows: list[Comparison]) -> list[str]:
    lines = [
        "| figure | unit | ours | LangGraph default | LangGraph exit | floor | ours ÷ default "
        "| ours ÷ exit | ours ÷ floor | target | met | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        sign = "≥" if row.higher_is_better else "≤"
        target = " and ".join(
            f"{sign} {b.ratio:g}× {SUBJECT_LABELS[b.subject]}" for b in row.bounds
        )
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.workload} | {row.unit} | "
            + " | ".join(_value(row, s) for s in PEERS)
            + " | "
            + " | ".join(_ratio(row.ratio(s)) for s in PEERS[1:])
            + f" | {target or '—'} | {met} | {_comparison_note(row)} |"
        )
    return lines


def render(rows: list[Figure | Comparison], run: Run) -> str:
    """The whole RESULTS.md: header, the side-by-side table, the table against the floors,
    then benchmarks/NOTES.md."""
    figures = [r for r in rows if isinstance(r, Figure)]
    comparisons = [r for r in rows if isinstance(r, Comparison)]
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{run.command}` ({run.elapsed:.0f} s)",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; SQLite "
        f"{sqlite3.sqlite_version}; PostgreSQL: {run.postgres}",
        f"- Versions: {_versions()}",
        *_noise(run),
        "",
    ]
    if comparisons or run.side_by_side:
        lines += ["## Side by side: this package, LangGraph and the floor", ""]
        lines += [*run.side_by_side, ""]
        if comparisons:
            lines += [*render_comparisons(comparisons), ""]
    if figures:
        lines += ["## This package against its floors", "", *_floor_header(run), ""]
        lines += _render_figures(figures)
    if not any(f.workload.startswith("local model") for f in figures):
        lines += ["", "Local model: not measured (install the `local` extra to include it)."]
    lines.append("")
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def _floor_header(run: Run) -> list[str]:
    return [
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
    ]


def _render_figures(figures: list[Figure]) -> list[str]:
    lines = [HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
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
    return lines
