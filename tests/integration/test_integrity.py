"""Signed snapshots and rows: a writable database must not become code execution, nor show
text this installation did not write.

Every tampering case is refused before Bridgic's loader sees a byte, and leaves the row
exactly as it was. Store-level cases for every backend are in test_store_conformance.py;
these go through the agent, the command line and the key file, as an attacker would.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    ConfigurationError,
    RunStatus,
    SnapshotIntegrityError,
)
from bridgic_coldmail.models import DamagedRun
from bridgic_coldmail.signing import KEY_ENV, key_file_for
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, run_cli
from ..rows import SqliteRows, make_schema_1_database

FEEDBACK = "CTOs at mid-size hospitals"


class _CreatesFile:
    """Unpickling this creates a file: the shape of a real attack on pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _malicious_snapshot(marker: Path) -> bytes:
    # Bridgic's msgpack format: {"t": "pickled", "d": ...} is handed to pickle.loads.
    return msgpack.packb({"t": "pickled", "d": pickle.dumps(_CreatesFile(marker))})


async def _paused(db_path: Path, brief: Brief) -> str:
    async with ColdMailAgent.open(db_path) as agent:
        return (await agent.start(brief)).interaction_id


async def _resume_refused(db_path: Path, interaction_id: str, match: str) -> None:
    rows = SqliteRows(db_path)
    before = rows.row(interaction_id)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotIntegrityError, match=match):
            await agent.resume(interaction_id, FEEDBACK)
    assert rows.row(interaction_id) == before


def test_the_payload_is_live_when_loaded_without_the_signature_check(tmp_path: Path) -> None:
    # The control: fed straight to Bridgic's loader, this payload really creates the file.
    marker = tmp_path / "pwned-control"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(_malicious_snapshot(marker))
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from bridgic.core.utils._msgpackx import load_bytes
        from tests.integration.test_integrity import _CreatesFile
        load_bytes(Path({str(payload)!r}).read_bytes())
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=PROCESS_TIMEOUT)
    assert marker.exists()


async def test_pickle_payload_is_refused_and_never_runs(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    interaction_id = await _paused(db_path, brief)
    marker = tmp_path / "pwned"
    SqliteRows(db_path).set(interaction_id, snapshot=_malicious_snapshot(marker))
    await _resume_refused(db_path, interaction_id, "does not match its signature")
    assert not marker.exists()
    assert server.count("refine") == 0


async def test_pickle_payload_with_a_forged_signature_is_refused(
    db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    interaction_id = await _paused(db_path, brief)
    marker = tmp_path / "pwned"
    for forged in (b"\x00" * 32, b""):
        SqliteRows(db_path).set(
            interaction_id, snapshot=_malicious_snapshot(marker), signature=forged
        )
        await _resume_refused(db_path, interaction_id, "does not match its signature")
    assert not marker.exists()


def _schema_1_database(db_path: Path, runs: list[tuple[str, bytes]], brief: Brief) -> None:
    """A database exactly as bridgic-coldmail 0.1 wrote it: schema 1, unsigned snapshots."""
    make_schema_1_database(db_path, [(i, s, brief.model_dump_json()) for i, s in runs])


async def test_a_schema_downgrade_never_gets_unsigned_bytes_signed(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    # The attack: whoever can write the database file (not read the key file) replaces it
    # with a schema-1 database holding an unsigned pickle, and waits for the next open.
    await _paused(db_path, brief)
    key_file = key_file_for(db_path)
    assert key_file.exists()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    marker = tmp_path / "pwned"
    planted = "a" * 32
    _schema_1_database(db_path, [(planted, _malicious_snapshot(marker))], brief)

    # Opening (as `coldmail list` or the web server would) refuses: the database holds runs
    # but records no key, while a key file exists beside it.
    with pytest.raises(ConfigurationError, match="may have been replaced"):
        async with ColdMailAgent.open(db_path):
            pass
    listed = run_cli("list")
    assert listed.returncode == ConfigurationError.exit_code
    assert "may have been replaced" in listed.stderr
    assert SqliteRows(db_path).schema_versions() == [1]  # the refused open changed nothing
    assert not marker.exists()


@pytest.mark.slow
async def test_upgrading_a_0_1_database_leaves_its_runs_unsigned_until_trusted(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    # A genuine 0.1 database (no key file ever existed): opening migrates it, signs nothing.
    marker = tmp_path / "pwned"
    legacy = "b" * 32
    _schema_1_database(db_path, [(legacy, _malicious_snapshot(marker))], brief)
    async with ColdMailAgent.open(db_path) as agent:
        listed = await agent.list()
        assert [(r.interaction_id, isinstance(r, DamagedRun)) for r in listed] == [(legacy, False)]
        assert not listed[0].verified  # type: ignore[union-attr]
        with pytest.raises(SnapshotIntegrityError, match="has no signature"):
            await agent.resume(legacy, FEEDBACK)
    assert not marker.exists()
    refused = run_cli("resume", legacy, "--feedback", FEEDBACK)
    assert refused.returncode == SnapshotIntegrityError.exit_code
    assert f"coldmail trust-unsigned {legacy} --yes" in refused.stderr
    assert not marker.exists()


@pytest.mark.slow
async def test_trusting_unsigned_runs_is_an_explicit_operator_action(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    from bridgic.core.automa.interaction import InteractionException

    from bridgic_coldmail.automa import ColdMailAutoma
    from bridgic_coldmail.llm import openai_llm
    from bridgic_coldmail.settings import Settings

    automa = ColdMailAutoma()
    automa.attach_llm(openai_llm(Settings.resolve()), "gpt-4o-mini", 10)
    with pytest.raises(InteractionException) as paused:
        await automa.arun(brief=brief.model_dump(mode="json"))
    interaction_id = paused.value.interactions[0].interaction_id
    _schema_1_database(db_path, [(interaction_id, paused.value.snapshot.serialized_bytes)], brief)

    unconfirmed = run_cli("trust-unsigned", interaction_id)
    assert unconfirmed.returncode == 2 and "add --yes" in unconfirmed.stderr
    trusted = run_cli("trust-unsigned", interaction_id, "--yes")
    assert trusted.returncode == 0, trusted.stderr
    assert f"Signed 1 run(s): {interaction_id}" in trusted.stdout
    async with ColdMailAgent.open(db_path) as agent:
        done = await agent.resume(interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED and not done.verified
    assert server.count("refine") == 1


@pytest.mark.slow
async def test_edited_text_is_never_shown_as_genuine(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        good = (await agent.start(brief)).interaction_id
        edited = await agent.start(brief)
        await agent.resume(edited.interaction_id, FEEDBACK)
    forged = edited.draft.model_copy(
        update={"opener": edited.draft.opener.model_copy(update={"subject": "Wire $5,000 now"})}
    )
    SqliteRows(db_path).set(edited.interaction_id, sequence_json=forged.model_dump_json())
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotIntegrityError, match="does not match its signature"):
            await agent.get(edited.interaction_id)
        listed = {r.interaction_id: r for r in await agent.list()}
    assert isinstance(listed[edited.interaction_id], DamagedRun)
    assert not isinstance(listed[good], DamagedRun)
    shown = run_cli("show", edited.interaction_id)
    assert shown.returncode == SnapshotIntegrityError.exit_code
    assert "Wire $5,000" not in shown.stdout + shown.stderr
    listing = run_cli("list")
    assert listing.returncode == 0
    assert f"{edited.interaction_id}  DAMAGED" in listing.stdout and good in listing.stdout


@pytest.mark.slow
def test_cli_reports_tampering_with_its_own_exit_code(db_path: Path, brief: Brief) -> None:
    interaction_id = asyncio.run(_paused(db_path, brief))
    SqliteRows(db_path).set(interaction_id, snapshot=b"\x80garbage")
    result = run_cli("resume", interaction_id, "--feedback", FEEDBACK)
    assert result.returncode == SnapshotIntegrityError.exit_code == 9
    assert "does not match its signature" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the key file


async def test_key_file_is_created_beside_the_database_with_mode_0600(
    db_path: Path, brief: Brief
) -> None:
    await _paused(db_path, brief)
    key_file = key_file_for(db_path)
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64


async def test_a_missing_key_file_is_an_error_not_a_silent_rekey(
    db_path: Path, brief: Brief
) -> None:
    interaction_id = await _paused(db_path, brief)
    key_file = key_file_for(db_path)
    saved = key_file.read_bytes()
    key_file.unlink()
    with pytest.raises(ConfigurationError, match="key file .* is missing.*restore the file"):
        async with ColdMailAgent.open(db_path):
            pass
    assert not key_file.exists()  # no new key was made behind the user's back
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, saved)
    os.close(fd)
    async with ColdMailAgent.open(db_path) as agent:
        assert (await agent.resume(interaction_id, FEEDBACK)).status is RunStatus.COMPLETED


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
async def test_a_key_file_others_can_read_or_write_is_refused(
    db_path: Path, brief: Brief, mode: int
) -> None:
    await _paused(db_path, brief)
    key_file = key_file_for(db_path)
    os.chmod(key_file, mode)
    with pytest.raises(ConfigurationError, match=f"mode {mode:04o}.*chmod 600"):
        async with ColdMailAgent.open(db_path):
            pass


async def test_a_key_file_that_is_a_symlink_is_refused(db_path: Path, brief: Brief) -> None:
    await _paused(db_path, brief)
    key_file = key_file_for(db_path)
    real = key_file.with_name("elsewhere.key")
    key_file.rename(real)
    key_file.symlink_to(real)
    with pytest.raises(ConfigurationError, match="is a symbolic link"):
        async with ColdMailAgent.open(db_path):
            pass


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
async def test_a_key_file_owned_by_another_user_is_refused(db_path: Path, brief: Brief) -> None:
    await _paused(db_path, brief)
    key_file = key_file_for(db_path)
    os.chown(key_file, 65534, 65534)  # nobody
    with pytest.raises(ConfigurationError, match="belongs to user id 65534"):
        async with ColdMailAgent.open(db_path):
            pass


async def test_a_planted_key_file_is_not_adopted_for_a_database_with_runs(
    db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    # A genuine 0.1 database, and a key file someone placed beside it before its upgrade.
    _schema_1_database(db_path, [("c" * 32, b"unsigned")], brief)
    planted = key_file_for(db_path)
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"k" * 64)
    os.close(fd)
    with pytest.raises(ConfigurationError, match="records no signing key, and a key file"):
        async with ColdMailAgent.open(db_path):
            pass
    assert SqliteRows(db_path).schema_versions() == [1]  # nothing migrated, no key recorded


async def test_a_symlinked_database_finds_the_same_key(
    server: ScriptedOpenAIServer, tmp_path: Path, brief: Brief
) -> None:
    real = tmp_path / "data" / "real.db"
    link = tmp_path / "link.db"
    real.parent.mkdir()
    interaction_id = await _paused(real, brief)
    link.symlink_to(real)
    async with ColdMailAgent.open(link) as agent:
        assert (await agent.resume(interaction_id, FEEDBACK)).status is RunStatus.COMPLETED
    assert not key_file_for(link).with_name("link.db.key").exists()


async def test_a_changed_key_is_an_error(
    db_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _paused(db_path, brief)
    monkeypatch.setenv(KEY_ENV, "a-different-key-that-is-long-enough-0123456789")
    with pytest.raises(ConfigurationError, match="is not the key that signed the runs"):
        async with ColdMailAgent.open(db_path):
            pass


async def test_key_from_the_environment(
    tmp_path: Path, brief: Brief, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path = tmp_path / "env-key.db"
    monkeypatch.setenv(KEY_ENV, "k3y-0f-f0rty-characters-abcdefghijklmnop")
    interaction_id = await _paused(db_path, brief)
    assert not key_file_for(db_path).exists()
    async with ColdMailAgent.open(db_path) as agent:
        assert (await agent.resume(interaction_id, FEEDBACK)).status is RunStatus.COMPLETED

    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigurationError, match="use at least 32"):
        async with ColdMailAgent.open(db_path):
            pass
