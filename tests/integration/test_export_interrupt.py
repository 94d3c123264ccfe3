"""Ctrl-C or SIGTERM in the middle of a large export, in a real ``coldmail`` process: the
previous file stays byte for byte, no temporary file is left, and the work stops at once
rather than after the whole list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Completed

LEADS = 150_000
NOTE = "n" * 150
ROW_AT_LEAST = 200
"""Bytes each exported row takes at least (the note is written twice: its column and the body)."""
SIGNAL_AT = 256 * 1024
"""Send the signal once the temporary file has this many bytes: well under way."""


@pytest.fixture
def completed(cli: Callable[..., Completed], server: ScriptedOpenAIServer) -> str:
    started = cli("start", "--product", "Ledgerly", "--offer", "o", "--sender", "Sam",
                  "--json")  # fmt: skip
    assert started.returncode == 0, started.stderr
    rid = str(json.loads(started.stdout)["interaction_id"])
    assert cli("resume", rid, "--feedback", "Controllers").returncode == 0
    return rid


@pytest.fixture
def big_list(tmp_path: Path) -> Path:
    path = tmp_path / "leads.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,first_name,company\n")
        for number in range(LEADS):
            handle.write(f"lead{number}@example.com,Name{number},{NOTE}\n")
    return path


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize(
    ("signal_number", "format"),
    [(signal.SIGINT, "csv"), (signal.SIGTERM, "csv"), (signal.SIGINT, "json")],
)
def test_an_interrupted_export_keeps_the_old_file_and_leaves_no_temporary(
    completed: str, big_list: Path, tmp_path: Path, signal_number: int, format: str
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "campaign.csv"
    old = b"the previous export, byte for byte\r\n" * 100
    out.write_bytes(old)
    command = [sys.executable, "-m", "bridgic_coldmail", "export", completed, "--leads",
               str(big_list), "--out", str(out), "--overwrite", "--format", format]  # fmt: skip
    child = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLDMAIL_DB": os.environ["COLDMAIL_DB"]},
    )
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        at_signal = 0
        while at_signal < SIGNAL_AT:
            assert child.poll() is None, f"the export ended first: {child.communicate()}"
            assert time.monotonic() < deadline, "the export never got under way"
            at_signal = max([p.stat().st_size for p in _temporaries(folder)] or [0])
            time.sleep(0.005)
        child.send_signal(signal_number)
        largest = at_signal
        while child.poll() is None:  # how far the temporary file still grows
            for temporary in _temporaries(folder):
                try:
                    largest = max(largest, temporary.stat().st_size)
                except FileNotFoundError:
                    pass
            assert time.monotonic() < deadline, "the export did not stop"
            time.sleep(0.002)
        stdout, stderr = child.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "Wrote" not in stdout
    assert out.read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == ["campaign.csv"]
    # Stopped at once: a worker that ran on to the end would have written the whole list.
    assert largest < LEADS * ROW_AT_LEAST // 4, (at_signal, largest)


@pytest.mark.slow  # a child process paced by the clock
def test_the_same_export_left_alone_writes_every_row(
    cli: Callable[..., Completed], completed: str, big_list: Path, tmp_path: Path
) -> None:
    """What the test above stops: the list does export, to more than ROW_AT_LEAST a row."""
    out = tmp_path / "campaign.csv"
    done = cli("export", completed, "--leads", str(big_list), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"Wrote {LEADS} lead(s)" in done.stdout
    assert out.stat().st_size > LEADS * ROW_AT_LEAST
