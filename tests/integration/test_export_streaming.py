"""Every profile, and an A/B export, streams its leads: memory does not grow with the list
except for the lead reader's duplicate index (about 140 bytes a lead, tests/unit/test_leads.py).

Measured with tracemalloc at two sizes: what grows between them, per lead, must stay under
:data:`PER_LEAD_BOUND`, and the file written must be several times the peak, so an export that
kept its rows (about 900 bytes each here) could not pass. At 100,000 leads the same runs take
about a minute per profile under tracemalloc on a loaded two-core machine, so that size is
measured by ``benchmarks/export_profiles.py`` (rows per second and the traced peak, per
profile), not here."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from bridgic_coldmail.export.profiles import NAMES
from bridgic_coldmail.export.writer import Variant, export_sequence
from testbed.export_workload import FOOTER, A, B, make_leads

from ..conftest import PROCESS_TIMEOUT, REPO

SMALL = 1_500
LARGE = 6_000
PER_LEAD_BOUND = 250
"""Bytes a lead may add to the peak: the duplicate index's ~140, with room for dict resizes."""
SLACK = 128 * 1024


def traced_peak(leads: Path, out: Path, tool: str, variants: bool) -> int:
    chosen = [Variant("A", A, "a" * 32), Variant("B", B, "b" * 32)] if variants else A
    tracemalloc.start()
    try:
        export_sequence(chosen, leads, out, profile=tool, footer=FOOTER, overwrite=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lists")
    small, large = folder / "small.csv", folder / "large.csv"
    make_leads(small, SMALL)
    make_leads(large, LARGE)
    return small, large


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tool", "variants"), [(name, False) for name in NAMES] + [("smartlead", True)]
)
def test_each_profile_streams_in_flat_memory(
    tmp_path: Path, lists: tuple[Path, Path], tool: str, variants: bool
) -> None:
    small, large = lists
    out = tmp_path / "campaign.csv"
    at_small = traced_peak(small, out, tool, variants)
    at_large = traced_peak(large, out, tool, variants)
    grown = at_large - at_small
    assert grown < PER_LEAD_BOUND * (LARGE - SMALL) + SLACK, f"grew {grown:,} bytes"
    assert out.stat().st_size > 4 * at_large, f"peak {at_large:,} bytes"


def test_the_benchmark_runs_and_records_every_profile(tmp_path: Path) -> None:
    """``python -m benchmarks.export_profiles`` (tiny size; timings are never asserted)."""
    out = tmp_path / "EXPORT_PROFILES.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.export_profiles", "--rows", "300", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT * 5,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [(r[0].strip("| "), r[1]) for r in rows[1:]] == [
        *((name, "1") for name in NAMES),
        ("smartlead", "2"),
    ]
