"""Attacks on the export's target rules, round two (issue 17, item 7): what the README and
docs/export.md promise about ``--out`` as a clumsy operator types it.

Each test failed on main when it was written; see the report of the "attack" helper.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import ColdMailAgent, InvalidInput
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Completed
from .test_export_target import (  # noqa: F401  (fixtures: the guard is autouse)
    OLD,
    _system_files_are_never_touched,
    completed,
    source,
)

# --- "a file really named - is ./-" --------------------------------------------------------


def test_cli_out_dot_slash_dash_writes_a_file_named_dash_not_standard_output(
    cli: Callable[..., Completed],
    completed: str,  # noqa: F811
    source: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/export.md: "``--out -`` writes to standard output (a file really named ``-`` is
    ``./-``)". The agent turns ``out`` into a ``Path``, and ``Path("./-")`` is ``Path("-")``:
    the file goes to standard output and no file is written."""
    monkeypatch.chdir(tmp_path)
    done = cli("export", completed, "--leads", str(source), "--out", "./-")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "-").is_file(), "no file named '-' was written"
    assert (tmp_path / "-").read_bytes().startswith(b"email,")
    assert "ana@x.com" not in done.stdout  # the rows did not go to standard output


async def test_agent_export_to_dot_slash_dash_writes_a_file(
    server: ScriptedOpenAIServer,
    source: Path,  # noqa: F811
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """The Python API states the same rule (``out="-"`` is standard output), so ``"./-"`` is
    a file; ``agent.export`` passes ``out`` through ``Path``, which makes it ``"-"``, and the
    rows go to standard output."""
    monkeypatch.chdir(tmp_path)
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start({"product": "Ledgerly", "offer": "o", "sender": "Sam"})
        await agent.resume(run.interaction_id, "Controllers")
        report = await agent.export(run.interaction_id, source, "./-")
    printed = capsysbinary.readouterr().out
    assert b"ana@x.com" not in printed, "the export went to standard output"
    assert report.out is not None
    assert (tmp_path / "-").read_bytes().startswith(b"email,")


# --- a trailing slash: the operator meant a folder ------------------------------------------


def test_out_naming_a_missing_folder_with_a_trailing_slash_is_refused(
    cli: Callable[..., Completed],
    completed: str,  # noqa: F811
    source: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``--out exports/`` when ``exports`` does not exist: the operator meant a folder (the
    shell and every POSIX call read a trailing slash so). ``Path`` drops the slash, and the
    export quietly writes a *file* named ``exports``. Expected: a one-line refusal (exit 2),
    nothing written."""
    exports = tmp_path / "exports"
    done = cli("export", completed, "--leads", str(source), "--out", f"{exports}/")
    assert done.returncode == InvalidInput.exit_code, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1
    assert not exports.exists(), "a file named 'exports' was written"


def test_out_naming_a_regular_file_with_a_trailing_slash_never_replaces_it(
    cli: Callable[..., Completed],
    completed: str,  # noqa: F811
    source: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``campaign.csv/`` is not a path to ``campaign.csv`` for the system (``open`` and
    ``stat`` fail with ENOTDIR); the export still replaced the file, even with the slash
    that says "a folder"."""
    old = tmp_path / "campaign.csv"
    old.write_bytes(OLD)
    done = cli("export", completed, "--leads", str(source), "--out", f"{old}/", "--overwrite")
    assert done.returncode == InvalidInput.exit_code, (done.stdout, done.stderr)
    assert old.read_bytes() == OLD


@pytest.mark.parametrize("spelling", ["{old}/.", "{folder}/", "{folder}/."])
def test_out_spelled_as_a_folder_is_refused_in_one_line(
    cli: Callable[..., Completed],
    completed: str,  # noqa: F811
    source: Path,  # noqa: F811
    tmp_path: Path,
    spelling: str,
) -> None:
    """The same rule for a last part ``.`` (``Path("campaign.csv/.")`` is ``campaign.csv``)
    and for an existing folder named with a slash: refused, nothing written anywhere."""
    old = tmp_path / "campaign.csv"
    old.write_bytes(OLD)
    folder = tmp_path / "exports"
    folder.mkdir()
    out = spelling.format(old=old, folder=folder)
    done = cli("export", completed, "--leads", str(source), "--out", out, "--overwrite")
    assert done.returncode == InvalidInput.exit_code, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "names a folder" in done.stderr
    assert old.read_bytes() == OLD
    assert list(folder.iterdir()) == []
