"""The benchmark harness still runs end to end (tiny sizes). Timings are never asserted.

It measures PostgreSQL too when the PostgreSQL tier can run here (CI: always), and says so
in the table's header otherwise; the local model's rows appear when the local extra is in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO, in_ci, tier_unavailable


@pytest.mark.slow
def test_benchmark_smoke_run_writes_a_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    without_postgres = tier_unavailable("postgres")
    if without_postgres and in_ci():
        pytest.fail(f"{without_postgres}; CI must measure PostgreSQL", pytrace=False)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)]
        + (["--no-postgres"] if without_postgres else []),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert "| workload | unit | ours p50 |" in text
    for row in (
        "full cycle",
        "runs started concurrently",
        "runs resumed concurrently (HTTP, loopback server)",
        "disk per awaiting run",
        "list page (50 awaiting)",
        "peak RSS",
    ):
        assert row in text, row
    assert "errors: 0" in text
    assert "## Side by side: this package, LangGraph and the floor" in text
    from testbed.extras import langgraph_missing

    if langgraph_missing() is None:  # the bench extra: LangGraph's columns hold figures
        side_by_side = text.split("## Side by side")[1].split("## This package against")[0]
        for line in side_by_side.splitlines():
            if without_postgres and "PostgreSQL" in line:
                continue
            if line.startswith("| full cycle, ") or line.startswith("| resume, "):
                cells = [c.strip() for c in line.strip("|").split("|")]
                assert "—" not in cells[2:9], line  # ours, LangGraph ×2, floor, three ratios
        assert "synchronous=FULL" in side_by_side
    else:
        assert "LangGraph: not measured" in text
    if without_postgres:
        assert "PostgreSQL: not measured (--no-postgres)" in text
    else:
        assert "full cycle, PostgreSQL" in text
    if tier_unavailable("local") is None:
        assert "local model: on-topic quality" in text and "local model: tokens/s" in text
