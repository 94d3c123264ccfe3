"""Signed snapshots: a writable database must not become code execution.

Every tampering case is refused with ``SnapshotIntegrityError`` before Bridgic's loader sees a
byte, and leaves the row exactly as it was.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
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
from bridgic_coldmail.signing import KEY_ENV, key_file_for
from bridgic_coldmail.store import RunStore
from bridgic_coldmail.testing import ScriptedOpenAIServer

from .conftest import PROCESS_TIMEOUT, REPO, run_cli

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


def _row(db_path: Path, interaction_id: str) -> dict[str, object]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM runs WHERE interaction_id = ?", (interaction_id,))
        return dict(found.fetchone())


def _tamper(db_path: Path, interaction_id: str, **columns: object) -> None:
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            f"UPDATE runs SET {assignments} WHERE interaction_id = ?",
            (*columns.values(), interaction_id),
        )


async def _paused(db_path: Path, brief: Brief) -> str:
    async with ColdMailAgent.open(db_path) as agent:
        return (await agent.start(brief)).interaction_id


async def _resume_refused(db_path: Path, interaction_id: str) -> None:
    before = _row(db_path, interaction_id)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotIntegrityError, match="does not match its signature"):
            await agent.resume(interaction_id, FEEDBACK)
    assert _row(db_path, interaction_id) == before


def test_the_payload_is_live_when_loaded_without_the_signature_check(tmp_path: Path) -> None:
    # The control: fed straight to Bridgic's loader, this payload really creates the file.
    marker = tmp_path / "pwned-control"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(_malicious_snapshot(marker))
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from bridgic.core.utils._msgpackx import load_bytes
        from tests.test_integrity import _CreatesFile
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
    _tamper(db_path, interaction_id, snapshot=_malicious_snapshot(marker))
    await _resume_refused(db_path, interaction_id)
    assert not marker.exists()
    assert server.count("refine") == 0


async def test_pickle_payload_with_a_forged_signature_is_refused(
    db_path: Path, brief: Brief, tmp_path: Path
) -> None:
    interaction_id = await _paused(db_path, brief)
    marker = tmp_path / "pwned"
    for forged in (b"\x00" * 32, b"", None):
        _tamper(db_path, interaction_id, snapshot=_malicious_snapshot(marker), signature=forged)
        await _resume_refused(db_path, interaction_id)
    assert not marker.exists()


async def test_a_flipped_byte_is_refused(db_path: Path, brief: Brief) -> None:
    interaction_id = await _paused(db_path, brief)
    snapshot = bytearray(_row(db_path, interaction_id)["snapshot"])  # type: ignore[arg-type]
    snapshot[len(snapshot) // 2] ^= 0x01
    _tamper(db_path, interaction_id, snapshot=bytes(snapshot))
    await _resume_refused(db_path, interaction_id)


async def test_a_truncated_snapshot_is_refused(db_path: Path, brief: Brief) -> None:
    interaction_id = await _paused(db_path, brief)
    snapshot = _row(db_path, interaction_id)["snapshot"]
    assert isinstance(snapshot, bytes)
    _tamper(db_path, interaction_id, snapshot=snapshot[: len(snapshot) // 3])
    await _resume_refused(db_path, interaction_id)


async def test_a_changed_serialization_version_is_refused(db_path: Path, brief: Brief) -> None:
    interaction_id = await _paused(db_path, brief)
    _tamper(db_path, interaction_id, serialization_version="1.1")
    before = _row(db_path, interaction_id)
    # Even a version the code accepts is refused: the signature covers the version too.
    async with RunStore.open(db_path) as store:
        with pytest.raises(SnapshotIntegrityError):
            await store.claim(interaction_id, FEEDBACK, {"1.0", "1.1"})
    assert _row(db_path, interaction_id) == before


async def test_a_row_copied_under_another_interaction_id_is_refused(
    db_path: Path, brief: Brief
) -> None:
    original = await _paused(db_path, brief)
    other = await _paused(db_path, brief)
    source = _row(db_path, original)
    _tamper(db_path, other, snapshot=source["snapshot"], signature=source["signature"])
    await _resume_refused(db_path, other)

    copy = "f" * 32
    with sqlite3.connect(db_path) as conn:
        columns = [c for c in source if c != "interaction_id"]
        conn.execute(
            f"INSERT INTO runs (interaction_id, {', '.join(columns)}) "
            f"VALUES (?, {', '.join('?' for _ in columns)})",
            (copy, *(source[c] for c in columns)),
        )
    await _resume_refused(db_path, copy)
    async with ColdMailAgent.open(db_path) as agent:  # the original is untouched and resumes
        assert (await agent.resume(original, FEEDBACK)).status is RunStatus.COMPLETED


def test_cli_reports_tampering_with_its_own_exit_code(db_path: Path, brief: Brief) -> None:
    import asyncio

    interaction_id = asyncio.run(_paused(db_path, brief))
    _tamper(db_path, interaction_id, snapshot=b"\x80garbage")
    result = run_cli("resume", interaction_id, "--feedback", FEEDBACK)
    assert result.returncode == SnapshotIntegrityError.exit_code == 9
    assert "does not match its signature" in result.stderr
    assert "Traceback" not in result.stderr


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
    key_file.write_bytes(saved)
    os.chmod(key_file, 0o600)
    async with ColdMailAgent.open(db_path) as agent:
        assert (await agent.resume(interaction_id, FEEDBACK)).status is RunStatus.COMPLETED


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
    monkeypatch.setenv(KEY_ENV, "k" * 40)
    interaction_id = await _paused(db_path, brief)
    assert not key_file_for(db_path).exists()
    async with ColdMailAgent.open(db_path) as agent:
        assert (await agent.resume(interaction_id, FEEDBACK)).status is RunStatus.COMPLETED

    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigurationError, match="use at least 32"):
        async with ColdMailAgent.open(db_path):
            pass
