"""Attacks on the promises of README "Trust and safety", "Bad input" and "Review rounds".

Every test here reproduces a finding of the attack review: each failed on the code it was
written against, and each holds the code to the promise it names. The docstrings describe
the attack as it worked then. An
attacker here is who README's threat model names: someone who can write the database but
cannot read the signing key; or a crash, a race, or an odd path given to the command line.

Raw access to rows goes through ``tests/rows.py`` (``SqliteRows``), except where a test
needs something it cannot express (a schema-4 file, a typed value).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import resource
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    RunConflict,
    RunStatus,
    SnapshotIntegrityError,
    make_decision,
)
from bridgic_coldmail.errors import ColdmailError, ConfigurationError
from bridgic_coldmail.models import DamagedRun, Run
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.signing import KeySource, load_signer
from bridgic_coldmail.store.sqlite_sql import (
    V1_RUNS,
    V2_SIGNATURES_AND_HISTORY,
    V3_HISTORY_BY_TRIGGERS,
    V4_SNAPSHOT_LAST,
)
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import REPO, _coldmail, run_cli
from ..rows import SqliteRows, as_legacy, signer_for

FEEDBACK = "CTOs at mid-size hospitals"
FORGED = "Hi,\n\nPay the overdue invoice at http://evil.example/pay today.\n\nDana"
SHORT_TIMEOUT = 15
"""Seconds a command may take before it counts as hung (they all answer in about one)."""


async def _completed(db_path: Path, brief: Brief) -> str:
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start(brief)
        await agent.resume(run.interaction_id, FEEDBACK)
        return run.interaction_id


async def _at_review(db_path: Path, brief: Brief, **options: object) -> str:
    async with ColdMailAgent.open(db_path, **options) as agent:  # type: ignore[arg-type]
        run = await agent.start(brief, review=True)
        await agent.resume(run.interaction_id, FEEDBACK)
        return run.interaction_id


def _forge_sequence(rows: SqliteRows, interaction_id: str) -> None:
    """Strip the row MAC (as if stored by 0.4) and rewrite the sequence under review."""
    row = rows.row(interaction_id)
    assert row is not None and row["row_mac"] is not None
    sequence = json.loads(row["sequence_json"])
    sequence["opener"]["body"] = FORGED
    rows.set(interaction_id, row_mac=None, sequence_json=json.dumps(sequence))


# --------------------------------------------------------------------------- forged text


def _inbox(db_path: Path) -> Any:
    """The web inbox on this database (skipped without the web extra)."""
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    from bridgic_coldmail.web.app import create_app

    return create_app(Settings.resolve(db=str(db_path)), host="127.0.0.1", port=8000)


@pytest.mark.slow
async def test_a_history_event_whose_mac_was_removed_is_refused_in_a_signed_run(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """README: 'an edited … history event is refused (get, show, the run page)'.

    A signed run's events all carry a MAC (0.5 writes every event with one). Replacing an
    event's text and setting its MAC to NULL keeps seq and count right, so the count check
    passes; the event is shown flagged 'unverified' by the CLI and not flagged at all on the
    run page."""
    interaction_id = await _completed(db_path, brief)
    rows = SqliteRows(db_path)
    rows.set_event(
        interaction_id, 2, kind="rejected", actor="CEO", detail="Wire the budget now", mac=None
    )
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotIntegrityError):
            await agent.history(interaction_id)


async def test_the_run_page_never_shows_a_forged_history_event(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    interaction_id = await _completed(db_path, brief)
    SqliteRows(db_path).set_event(interaction_id, 2, detail="Approved by the CEO", mac=None)
    app = _inbox(db_path)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            page = await c.get(f"/runs/{interaction_id}")
    assert "Approved by the CEO" not in page.text


async def test_a_signed_run_whose_row_mac_was_removed_is_not_shown_as_a_legacy_run(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """README: whoever can write the database 'cannot show text this installation did not
    write as genuine'. Setting row_mac to NULL turns any 0.5 run into what looks like a run of
    0.4 (verified=False), whose every text column the attacker then rewrites. Its first
    history event still carries this installation's MAC: the run was born signed."""
    interaction_id = await _at_review(db_path, brief)
    _forge_sequence(SqliteRows(db_path), interaction_id)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotIntegrityError):
            await agent.get(interaction_id)


async def test_a_planted_schema_4_copy_of_a_signed_run_is_not_shown_as_a_legacy_run(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """The same downgrade without touching a MAC column: rebuild the file as schema 4 (no key
    needed: the fingerprint and the snapshot signature are copied), with a forged brief.
    Migration 5 turns it into a legacy run that is shown (verified=False), and resumed."""
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief)).interaction_id
    rows = SqliteRows(db_path)
    row = rows.row(interaction_id)
    assert row is not None
    fingerprint = rows.meta("key_fingerprint")
    for leftover in db_path.parent.glob(db_path.name + "*"):
        if not leftover.name.endswith(".key"):
            leftover.unlink()
    forged_brief = brief.model_copy(update={"offer": "wire 5000 USD to IBAN XX00 EVIL first"})
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TABLE coldmail_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL)"
        )
        for statement in (
            *V1_RUNS,
            *V2_SIGNATURES_AND_HISTORY,
            *V3_HISTORY_BY_TRIGGERS,
            *V4_SNAPSHOT_LAST,
        ):
            conn.execute(statement)
        for version in (1, 2, 3, 4):
            conn.execute(
                "INSERT INTO coldmail_schema VALUES (?, 'old', '2026-01-01T00:00:00+00:00')",
                (version,),
            )
        conn.execute("INSERT INTO coldmail_meta VALUES ('key_fingerprint', ?)", (fingerprint,))
        conn.execute(
            "INSERT INTO runs (interaction_id, status, brief_json, draft_json, question, "
            "serialization_version, created_at, updated_at, snapshot, signature) "
            "VALUES (?, 'awaiting_feedback', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                interaction_id,
                forged_brief.model_dump_json(),
                row["draft_json"],
                row["question"],
                row["serialization_version"],
                row["created_at"],
                row["updated_at"],
                row["snapshot"],
                row["signature"],
            ),
        )
    async with ColdMailAgent.open(db_path) as agent:
        shown = await agent.list()
        assert not any(isinstance(r, Run) and "IBAN XX00 EVIL" in r.brief.offer for r in shown), (
            "a forged brief is listed as a run"
        )


@pytest.mark.slow
async def test_unverified_text_is_flagged_in_every_json_output(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """README: runs whose text is not signed 'are shown, flagged unverified'. A script
    reading ``--json`` must be able to tell, too."""
    interaction_id = await _at_review(db_path, brief)
    as_legacy(SqliteRows(db_path), signer_for(db_path), interaction_id, signature=None)
    shown = run_cli("show", interaction_id, "--json")
    listed = run_cli("list", "--json")
    assert json.loads(shown.stdout)["verified"] is False
    assert json.loads(listed.stdout)[0]["verified"] is False


async def test_show_sequence_does_not_print_unverified_emails_as_if_genuine(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """``coldmail show ID --sequence`` is 'the JSON coldmail edit --file takes': a reviewer who
    saves it, tweaks it and sends it back with ``coldmail edit`` puts the forged emails into
    the next snapshot as their own edit. It prints them with no flag, exit 0."""
    interaction_id = await _at_review(db_path, brief)
    _forge_sequence(SqliteRows(db_path), interaction_id)
    sequence = run_cli("show", interaction_id, "--sequence")
    assert sequence.returncode == SnapshotIntegrityError.exit_code
    assert "does not match its signature" in sequence.stderr
    assert FORGED.splitlines()[2] not in sequence.stdout


async def test_a_run_whose_row_mac_was_removed_cannot_be_revised_past_its_round_limit(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """README: 'A run reaches at most max_rounds rounds by revising (… fixed per run when it
    starts)'. max_rounds is covered by the row MAC, but a row without a MAC is claimed like a
    0.4 run: its round, max_rounds, decided_json and pause_id are the attacker's."""
    interaction_id = await _at_review(db_path, brief, max_rounds=1)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(RunConflict, match="cannot be revised again"):
            await agent.revise(interaction_id, "shorter")
    SqliteRows(db_path).set(interaction_id, row_mac=None, max_rounds=50)
    before = server.count("revise")
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(ColdmailError):
            await agent.revise(interaction_id, "shorter")
    assert server.count("revise") == before


class _CreatesFile:
    """Unpickling this creates a file (the shape of a real pickle attack)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


async def test_a_run_born_signed_is_not_offered_to_trust_unsigned_as_a_0_1_run(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """README: 'Unsigned runs are never trusted by accident'. Set signature and row_mac to
    NULL and put a pickle in the snapshot of a run this installation signed: resume says the
    run 'was stored by bridgic-coldmail 0.1 or written by another program' and the CLI hint
    prints the exact command, 'coldmail trust-unsigned ID --yes', which signs the pickle; the
    next resume runs it. The run's first history event still carries this installation's
    MAC, so the store can tell that it was born signed and has been tampered with."""
    marker = tmp_path / "pwned"
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief)).interaction_id
    payload = msgpack.packb({"t": "pickled", "d": pickle.dumps(_CreatesFile(marker))})
    SqliteRows(db_path).set(interaction_id, snapshot=payload, signature=None, row_mac=None)
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(SnapshotIntegrityError) as refused:
            await agent.resume(interaction_id, FEEDBACK)
        assert "0.1" not in str(refused.value), "a tampered run is described as a 0.1 run"
        assert await agent.trust_unsigned([interaction_id]) == []
    assert not marker.exists()


async def test_the_result_a_resume_returns_is_the_one_stored(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """README: 'a pause and a result are committed with synchronous=FULL (fsync before the
    call returns)' and 'cannot make a feedback or decision apply twice'. Two triggers planted
    in the file (no key needed) put the genuine 'resuming' row back inside the store's own
    complete() transaction and drop its new events: resume returns awaiting_review, the
    store holds resuming, and once the lease runs out the same feedback is refined again.
    Schema 5 has no triggers at all; the store could refuse a file that has any."""
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief, review=True)).interaction_id
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        columns = [
            r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "interaction_id"
        ]
        restore = ", ".join(f"{c} = (SELECT {c} FROM shadow)" for c in columns)
        conn.executescript(
            f"""
            CREATE TABLE shadow AS SELECT * FROM runs WHERE 0;
            CREATE TRIGGER keep AFTER UPDATE OF status ON runs WHEN NEW.status = 'resuming' BEGIN
                DELETE FROM shadow;
                INSERT INTO shadow SELECT * FROM runs WHERE interaction_id = NEW.interaction_id;
            END;
            CREATE TRIGGER undo AFTER UPDATE OF snapshot ON runs
            WHEN (SELECT COUNT(*) FROM shadow) = 1 BEGIN
                UPDATE runs SET {restore} WHERE interaction_id = NEW.interaction_id;
                DELETE FROM run_events WHERE interaction_id = NEW.interaction_id
                    AND seq > (SELECT event_count FROM shadow);
            END;
            """
        )
    with pytest.raises(ColdmailError, match=r"did not create \(table shadow, trigger keep, "):
        async with ColdMailAgent.open(db_path) as agent:
            await agent.resume(interaction_id, FEEDBACK)
    assert server.count("refine") == 0


async def test_a_planted_trigger_with_a_reset_schema_cookie_is_refused_on_every_open(
    tmp_path: Path,
) -> None:
    """The planted-object check is skipped when the schema cookie has not moved since the last
    check. A cookie remembered per connection object could be matched by a later connection
    that reuses the object's id, with the cookie reset (PRAGMA schema_version) by whoever
    planted the trigger. Every store lists the objects at least once."""
    from bridgic_coldmail.store import SqliteRunStore

    key = "k3y-0123456789abcdefghijklmnopqrstuv"
    planted = tmp_path / "planted.db"
    store = await SqliteRunStore.connect(planted, secret_key=key)
    await store.close()
    with closing(sqlite3.connect(planted, isolation_level=None)) as conn:
        cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
        conn.execute("CREATE TRIGGER t AFTER UPDATE ON runs BEGIN SELECT 1; END")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(f"PRAGMA schema_version = {cookie}")
    for attempt in range(30):  # genuine stores opened and closed, then the planted one
        genuine = await SqliteRunStore.connect(tmp_path / f"genuine-{attempt}.db", secret_key=key)
        await genuine.close()
        with pytest.raises(ColdmailError, match="did not create"):
            await SqliteRunStore.connect(planted, secret_key=key)


# --------------------------------------------------------------------------- one bad row


@pytest.mark.parametrize("column", ["round", "event_count", "max_rounds"])
async def test_one_row_with_a_non_integer_number_does_not_break_the_listing(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief, column: str
) -> None:
    """README: a run that cannot be shown is 'listed as damaged (list, the inbox)' and 'one
    bad row never hides the others'. SQLite keeps 1.5 as REAL in an INTEGER column; the MAC
    code raises TypeError('cannot MAC a float') and list, get, show and the inbox fail."""
    async with ColdMailAgent.open(db_path) as agent:
        bad = (await agent.start(brief)).interaction_id
        good = (await agent.start(brief)).interaction_id
    SqliteRows(db_path).set(bad, **{column: 1.5})
    async with ColdMailAgent.open(db_path) as agent:
        listed = await agent.list()
        assert {r.interaction_id for r in listed} == {bad, good}
        assert isinstance(next(r for r in listed if r.interaction_id == bad), DamagedRun)
        with pytest.raises(SnapshotIntegrityError):
            await agent.get(bad)


async def test_one_timestamp_without_a_time_zone_does_not_take_the_inbox_down(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """Timestamps are not signed ('they change how old a run looks, not what it says'), but a
    naive one makes the inbox's age() subtract naive from aware: 500 for every run."""
    async with ColdMailAgent.open(db_path) as agent:
        bad = (await agent.start(brief)).interaction_id
        await agent.start(brief)
    SqliteRows(db_path).set(bad, created_at="2026-01-01T00:00:00")
    app = _inbox(db_path)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            inbox = await c.get("/")
    assert inbox.status_code == 200


@pytest.mark.slow
async def test_an_unreadable_lease_is_not_an_unexpected_error(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """claim_expires_at is not signed; text that is not a timestamp (or one without a zone)
    makes judge_claim raise ValueError/TypeError: exit 1, 'a bug: please report it'."""
    async with ColdMailAgent.open(db_path) as agent:
        interaction_id = (await agent.start(brief)).interaction_id
        claim = await agent._store.claim(
            interaction_id, make_decision("feedback", text=FEEDBACK), {"1.0"}
        )
        assert not isinstance(claim, (DamagedRun,)) and hasattr(claim, "token")
    SqliteRows(db_path).set(interaction_id, claim_expires_at="soon")
    resumed = run_cli("resume", interaction_id, "--feedback", FEEDBACK)
    assert resumed.returncode != 1, resumed.stderr


# --------------------------------------------------------------------------- review rounds


async def test_the_same_decision_for_an_earlier_round_returns_the_stored_result(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """README: 'the same decision for the same round again returns the stored result; a
    different one is a RunConflict'. Only the last decision is kept (decided_json), so a
    retry of round 1's decision once round 2 was decided is refused as a conflict."""
    interaction_id = await _at_review(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        await agent.revise(interaction_id, "shorter", round=1)
        await agent.revise(interaction_id, "warmer", round=2)
        again = await agent.revise(interaction_id, "shorter", round=1)
    assert (again.status, again.round) == (RunStatus.AWAITING_REVIEW, 3)


# --------------------------------------------------------------------------- the key


START_A_RUN = ("start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana")
"""Opens (creating) the database and loads its key before the LLM is called."""


def _coldmail_env(db_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "COLDMAIL_DB": str(db_path), **extra}


def test_a_key_file_that_is_a_named_pipe_is_refused_not_waited_on(db_path: Path) -> None:
    """README: 'A key file must be a regular file … otherwise it is refused, saying how to
    fix it' (exit 7). os.open(O_RDONLY) on a FIFO blocks until a writer appears: forever."""
    db_path.parent.mkdir(parents=True)
    fifo = db_path.parent / "key.fifo"
    os.mkfifo(fifo)
    try:
        done = subprocess.run(
            [_coldmail(), *START_A_RUN],
            env=_coldmail_env(db_path, COLDMAIL_KEY_FILE=str(fifo)),
            capture_output=True,
            text=True,
            timeout=SHORT_TIMEOUT,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("coldmail waited for a writer on the key file (a FIFO)")
    assert done.returncode == 7


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_an_unusable_key_file_is_a_configuration_error(db_path: Path, kind: str) -> None:
    """README: key files that cannot be used are refused with exit 7; these are exit 1,
    'unexpected error' (IsADirectoryError from fdopen, UnicodeDecodeError from read)."""
    db_path.parent.mkdir(parents=True)
    key = db_path.parent / "the.key"
    if kind == "directory":
        key.mkdir(mode=0o700)
    else:
        key.write_bytes(b"\xff" * 40)
        key.chmod(0o600)
    done = subprocess.run(
        [_coldmail(), *START_A_RUN],
        env=_coldmail_env(db_path, COLDMAIL_KEY_FILE=str(key)),
        capture_output=True,
        text=True,
        timeout=SHORT_TIMEOUT,
        cwd=REPO,
    )
    assert done.returncode == 7, done.stderr


def test_a_secret_key_that_is_not_utf8_is_a_configuration_error(db_path: Path) -> None:
    env = _coldmail_env(db_path)
    env_bytes = {k.encode(): v.encode() for k, v in env.items()}
    env_bytes[b"COLDMAIL_SECRET_KEY"] = b"\xff" * 40
    done = subprocess.run(
        [_coldmail(), "list"], env=env_bytes, capture_output=True, timeout=SHORT_TIMEOUT, cwd=REPO
    )
    assert done.returncode == 7, done.stderr


def test_a_secret_key_of_one_repeated_character_is_refused(db_path: Path) -> None:
    """The web token refuses 'a repeated few' characters; the signing key, which guards
    against code execution, takes 32 times 'a'."""
    with pytest.raises(ConfigurationError):
        Settings.resolve(db=str(db_path), secret_key="a" * 32)


def _open_key(path: str, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        load_signer(KeySource(None, Path(path)), may_create=True, holds_runs=False)
        results.put("ok")  # type: ignore[attr-defined]
    except ConfigurationError as exc:
        results.put(str(exc))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_two_processes_creating_the_same_key_file_both_get_the_key(tmp_path: Path) -> None:
    """The key file is created with O_EXCL and *then* written: the loser of the race reads
    it empty and is told 'holds 0 characters … restore the original file' (about 1 race in
    6 on two cores). Two databases sharing COLDMAIL_KEY_FILE, opened for the first time at
    once, hit it; so does a crash between create and write, for good."""
    context = multiprocessing.get_context("fork")
    failures = []
    for trial in range(150):
        path = str(tmp_path / f"shared-{trial}.key")
        barrier, results = context.Barrier(2), context.Queue()
        workers = [
            context.Process(target=_open_key, args=(path, barrier, results)) for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(SHORT_TIMEOUT)
        failures += [r for r in (results.get(), results.get()) if r != "ok"]
    assert failures == []


# --------------------------------------------------------------------------- paths that hang


def _limited_memory() -> None:
    limit = 1024 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize(
    "args",
    [
        ("edit", "0" * 32, "--file", "{fifo}"),
        ("start", "--product", "A", "--offer", "B", "--sender", "C", "--leads", "{fifo}"),
        ("edit", "0" * 32, "--file", "/dev/zero"),
    ],
    ids=["edit-fifo", "leads-fifo", "edit-dev-zero"],
)
def test_an_input_file_that_never_ends_is_refused(db_path: Path, args: tuple[str, ...]) -> None:
    """README 'Bad input': a database path that is a FIFO or a device is refused; the other
    paths the CLI reads are not checked. A FIFO blocks in open() forever; /dev/zero is read
    whole by read_text() until memory runs out (here, 1 GiB: MemoryError, exit 1)."""
    db_path.parent.mkdir(parents=True)
    fifo = db_path.parent / "input.fifo"
    os.mkfifo(fifo)
    command = [_coldmail(), *(a.format(fifo=fifo) for a in args)]
    try:
        done = subprocess.run(
            command,
            env=_coldmail_env(db_path),
            capture_output=True,
            text=True,
            timeout=SHORT_TIMEOUT,
            cwd=REPO,
            preexec_fn=_limited_memory,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args[:1])} hung on {args[-1]}")
    assert done.returncode == 2, done.stderr


@pytest.mark.slow
async def test_export_into_a_folder_that_cannot_be_written_is_invalid_input(
    db_path: Path, server: ScriptedOpenAIServer, brief: Brief, tmp_path: Path
) -> None:
    """README: export raises InvalidInput when 'the lead list or out cannot be used'. The
    temporary file beside ``out`` is created unguarded: exit 1, 'unexpected error'. (As
    root every folder is writable, so /proc and /sys stand in for a read-only one.)"""
    interaction_id = await _at_review(db_path, brief)
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(interaction_id)
    leads = tmp_path / "leads.csv"
    leads.write_text("email,first_name\na@example.com,Ann\n", encoding="utf-8")
    for out in ("/proc/campaign.csv", "/sys/campaign.csv"):
        done = run_cli("export", interaction_id, "--leads", str(leads), "--out", out)
        assert done.returncode == 2, done.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
