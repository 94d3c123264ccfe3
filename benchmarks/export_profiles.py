"""Export speed and memory for each sending tool's profile (issue 22): N leads streamed into
a file shaped for the tool, with the compliance footer, and once as an A/B test of two
variants.

    python -m benchmarks.export_profiles                    # 100,000 leads; EXPORT_PROFILES.md
    python -m benchmarks.export_profiles --rows 2000 --out /tmp/e.md     # a quick look

Each row runs the export twice on the same list: once timed (rows per second, wall clock,
without tracing, which slows allocation several times) and once under ``tracemalloc`` for the
peak of traced memory. The duplicate check of the lead reader keeps about 140 bytes a lead
(14 MB for 100,000); everything else is one row at a time, so the peak should not depend on
the profile. Self-contained: it needs no store and no LLM.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bridgic_coldmail.export.profiles import NAMES
from bridgic_coldmail.export.writer import Variant, export_sequence
from bridgic_coldmail.models import EmailSequence
from testbed.export_workload import FOOTER, A, B, make_leads

HERE = Path(__file__).resolve().parent
DEFAULT_ROWS = 100_000


@dataclass(frozen=True)
class ProfileResult:
    """One profile's export of ``rows`` leads."""

    profile: str
    variants: int
    rows: int
    seconds: float
    peak_traced_bytes: int
    file_bytes: int
    load: float
    """The 1-minute load average after the timed run: rows per second mean little above the
    machine's CPU count."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def measure(profile: str, variants: int, leads: Path, folder: Path) -> ProfileResult:
    """Export ``leads`` for ``profile`` (timed, then traced); ``variants``: 1 or 2."""
    chosen: EmailSequence | list[Variant] = (
        A if variants == 1 else [Variant("A", A, "a" * 32), Variant("B", B, "b" * 32)]
    )
    out = folder / f"{profile}-{variants}.csv"
    started = time.perf_counter()
    report = export_sequence(chosen, leads, out, profile=profile, footer=FOOTER, overwrite=True)
    seconds = time.perf_counter() - started
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tracemalloc.start()
    try:
        export_sequence(chosen, leads, out, profile=profile, footer=FOOTER, overwrite=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return ProfileResult(
        profile, variants, report.rows_written, seconds, peak, out.stat().st_size, load
    )


def run(rows: int = DEFAULT_ROWS, profiles: Sequence[str] = NAMES) -> list[ProfileResult]:
    """Every profile once, and smartlead as an A/B export of two variants."""
    with tempfile.TemporaryDirectory(prefix="coldmail-export-bench-") as temp:
        folder = Path(temp)
        leads = folder / "leads.csv"
        make_leads(leads, rows)
        results = [measure(profile, 1, leads, folder) for profile in profiles]
        results.append(measure("smartlead", 2, leads, folder))
    return results


def to_markdown(results: Sequence[ProfileResult]) -> str:
    """The results as a Markdown table, with the machine they came from."""
    lines = [
        "# Export profiles",
        "",
        f"{results[0].rows:,} leads per row; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}. "
        "`python -m benchmarks.export_profiles` writes this file. Rows per second are wall "
        "clock, one run each: read them beside the load column (the 1-minute load average).",
        "",
        "| profile | variants | rows/s | seconds | peak traced MB | file MB | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.profile} | {r.variants} | {r.rows_per_second:,.0f} | {r.seconds:.2f} | "
            f"{r.peak_traced_bytes / 1e6:.1f} | {r.file_bytes / 1e6:.1f} | {r.load:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--out", type=Path, default=HERE / "EXPORT_PROFILES.md")
    args = parser.parse_args(argv)
    text = to_markdown(run(args.rows))
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
