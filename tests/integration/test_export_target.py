"""Where an export may write: only a regular file, never the run store's own files, an
existing file only when told to, ``-`` for standard output — and the same when the target is
swapped while the export runs."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from bridgic_coldmail import ColdMailAgent, InvalidInput
from bridgic_coldmail.export import export_sequence, store_files
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.signing import key_file_for
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Completed
from ..unit.test_export import leads, leftovers, sequence

OLD = b"the previous export\r\n"
SYSTEM = ("/dev/", "/proc/", "/sys/")


@pytest.fixture(autouse=True)
def _system_files_are_never_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests name /dev/null and /dev/stdout; running as root, a regression would replace
    them for the whole machine (release 0.5 did: it renamed its file onto /dev/stdout). Any
    write, rename, link or unlink there fails the test instead."""

    def where(path: str | bytes | os.PathLike[str], dir_fd: int | None) -> str:
        name = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(name):
            name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
        return os.path.abspath(name)

    def guard(path: str | bytes | os.PathLike[str], dir_fd: int | None) -> None:
        place = where(path, dir_fd)
        if place.startswith(SYSTEM) and not place.startswith("/dev/shm/"):
            raise AssertionError(f"the export tried to change {place}")

    real_open, real_replace, real_link, real_unlink = os.open, os.replace, os.link, os.unlink
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

    def open_(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        harmless = os.fsdecode(path) == os.devnull and not flags & (os.O_CREAT | os.O_TRUNC)
        if flags & writing and not harmless:  # (subprocess opens /dev/null for its stdin)
            guard(path, dir_fd)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):  # type: ignore[no-untyped-def]
        guard(dst, dst_dir_fd)
        return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kw):  # type: ignore[no-untyped-def]
        guard(dst, dst_dir_fd)
        return real_link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kw)

    def unlink(path, *, dir_fd=None):  # type: ignore[no-untyped-def]
        guard(path, dir_fd)
        return real_unlink(path, dir_fd=dir_fd)

    for name, patched in (("open", open_), ("replace", replace), ("rename", replace),
                          ("link", link), ("unlink", unlink)):  # fmt: skip
        monkeypatch.setattr(os, name, patched)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return leads(tmp_path, "ana@x.com,Ana,Acme", "bo@y.io,Bo,Beta")


def _everything_in(folder: Path) -> dict[str, int]:
    """Each entry of ``folder`` and its file type, to see that nothing was replaced."""
    return {p.name: stat.S_IFMT(p.lstat().st_mode) for p in folder.iterdir()}


# --- not a regular file -----------------------------------------------------------------


def test_a_fifo_is_never_replaced(tmp_path: Path, source: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match=r"pipe is not a regular file \(it is a named pipe\)"):
        export_sequence(sequence(), source, fifo, overwrite=True)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and leftovers(tmp_path) == []


def test_a_device_is_never_replaced(tmp_path: Path, source: Path) -> None:
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(InvalidInput, match=r"is not a regular file \(it is a character device\)"):
        export_sequence(sequence(), source, device, overwrite=True)
    assert stat.S_ISCHR(device.lstat().st_mode) and leftovers(tmp_path) == []


@pytest.mark.parametrize("special", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "/dev/null"])
def test_dev_and_proc_paths_are_refused_even_when_stdout_is_a_regular_file(
    tmp_path: Path, source: Path, special: str
) -> None:
    """/dev/stdout resolves to whatever fd 1 is; when that is a log file, replacing "it" would
    replace the log. The path is refused before anything is resolved or written."""
    before = os.fstat(1)
    with pytest.raises(InvalidInput, match="give - to write to standard output"):
        export_sequence(sequence(), source, special, overwrite=True)
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_a_symlink_to_a_special_file_is_refused(tmp_path: Path, source: Path) -> None:
    link = tmp_path / "campaign.csv"
    link.symlink_to("/dev/stdout")
    with pytest.raises(InvalidInput, match="give - to write to standard output"):
        export_sequence(sequence(), source, link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"


def test_a_folder_is_refused(tmp_path: Path, source: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidInput, match="is a folder"):
        export_sequence(sequence(), source, tmp_path / "folder", overwrite=True)


def test_a_dangling_symlink_is_refused_not_followed(tmp_path: Path, source: Path) -> None:
    link = tmp_path / "campaign.csv"
    link.symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(InvalidInput, match="symbolic link to .*elsewhere.csv, which does not"):
        export_sequence(sequence(), source, link)
    assert link.is_symlink() and not (tmp_path / "elsewhere.csv").exists()


def test_a_symlink_to_a_regular_file_updates_that_file_and_keeps_the_link(
    tmp_path: Path, source: Path
) -> None:
    real = tmp_path / "real.csv"
    real.write_bytes(OLD)
    link = tmp_path / "campaign.csv"
    link.symlink_to(real)
    report = export_sequence(sequence(), source, link, overwrite=True)
    assert link.is_symlink() and real.read_bytes().startswith(b"email,")
    assert report.out == link


# --- the run store's own files ----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[Path, str]]:
    """A database path with its WAL, shared-memory, journal and key files present (SQLite
    never has a WAL and a journal at once; here each is there to be linked to), and what an
    agent on it protects."""
    db = tmp_path / "runs" / "coldmail.db"
    db.parent.mkdir()
    names = ("coldmail.db", "coldmail.db-wal", "coldmail.db-shm", "coldmail.db-journal",
             "coldmail.db-writer.lock", "coldmail.db.key")  # fmt: skip
    for name in names:
        (db.parent / name).write_bytes(b"precious " + name.encode())
    return db, store_files(Settings(db=str(db)))


@pytest.mark.parametrize("name", ["coldmail.db", "coldmail.db-wal", "coldmail.db-shm",
                                  "coldmail.db.key", "coldmail.db-journal",
                                  "coldmail.db-writer.lock"])  # fmt: skip
@pytest.mark.parametrize("route", ["path", "symlink", "hard link"])
def test_the_database_and_its_key_are_never_replaced(
    tmp_path: Path,
    source: Path,
    store: tuple[Path, dict[Path, str]],
    name: str,
    route: str,
) -> None:
    db, protected = store
    target = db.parent / name
    if route == "symlink":
        target = tmp_path / "campaign.csv"
        target.symlink_to(db.parent / name)
    elif route == "hard link":
        target = tmp_path / "campaign.csv"
        os.link(db.parent / name, target)
    before = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    with pytest.raises(InvalidInput, match="write the export to another file"):
        export_sequence(sequence(), source, target, overwrite=True, protected=protected)
    assert {p.name: p.read_bytes() for p in db.parent.iterdir()} == before
    assert leftovers(db.parent) == [] and leftovers(tmp_path) == []


def test_the_protected_files_follow_the_settings(tmp_path: Path) -> None:
    db = tmp_path / "coldmail.db"
    key = tmp_path / "elsewhere.key"
    sqlite = store_files(Settings(db=str(db), key_file=key))
    assert set(sqlite) >= {db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal"), key}
    assert key_file_for(db) not in sqlite  # an explicit key file replaces the default one
    assert set(store_files(Settings(db=str(db)))) >= {key_file_for(db)}
    remote = store_files(Settings(db="postgresql://u@h/d", key_file=key))
    assert set(remote) == {key}


async def test_the_agent_refuses_its_own_database_as_the_target(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path, source: Path
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start({"product": "Ledgerly", "offer": "o", "sender": "Sam"})
        await agent.resume(run.interaction_id, "Controllers")
        before = db_path.read_bytes()
        for target in (db_path, Path(f"{db_path}.key")):
            with pytest.raises(InvalidInput, match="write the export to another file"):
                await agent.export(run.interaction_id, source, target, overwrite=True)
        assert (await agent.get(run.interaction_id)).final is not None
    assert db_path.read_bytes()[:16] == before[:16] == b"SQLite format 3\x00"


# --- an existing file -------------------------------------------------------------------


@pytest.mark.parametrize("format", ["csv", "json"])
def test_an_existing_file_is_kept_unless_overwrite_is_given(
    tmp_path: Path, source: Path, format: Literal["csv", "json"]
) -> None:
    out = tmp_path / f"campaign.{format}"
    out.write_bytes(OLD)
    with pytest.raises(InvalidInput, match=rf"campaign.{format} already exists; .*overwrite=True"):
        export_sequence(sequence(), source, out, format=format)
    assert out.read_bytes() == OLD and leftovers(tmp_path) == []
    report = export_sequence(sequence(), source, out, overwrite=True, format=format)
    assert report.rows_written == 2 and out.read_bytes().startswith(
        b"email," if format == "csv" else b"["
    )


@pytest.mark.parametrize("format", ["csv", "json"])
def test_json_goes_through_the_same_target_rules(
    tmp_path: Path,
    source: Path,
    store: tuple[Path, dict[Path, str]],
    format: Literal["csv", "json"],
) -> None:
    db, protected = store
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(db)
    for target, refusal in (
        (fifo, "is not a regular file"),
        (link, "write the export to another file"),
        (Path("/dev/stdout"), "give - to write to standard output"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(InvalidInput, match=refusal):
            export_sequence(
                sequence(), source, target, format=format, overwrite=True, protected=protected
            )
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()
    assert db.read_bytes() == b"precious coldmail.db" and leftovers(tmp_path) == []


def test_overwrite_is_not_needed_for_a_new_file(tmp_path: Path, source: Path) -> None:
    report = export_sequence(sequence(), source, tmp_path / "new.csv")
    assert report.rows_written == 2


# --- the target swapped while the export runs --------------------------------------------


@pytest.fixture
def during_the_export(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Run ``swap`` once, after the rows are written and before the file is put in place."""

    def arrange(swap: Callable[[], None]) -> None:
        real_fsync = os.fsync
        done: list[bool] = []

        def fsync(fd: int) -> None:
            real_fsync(fd)
            if not done and stat.S_ISREG(os.fstat(fd).st_mode):
                done.append(True)
                swap()

        monkeypatch.setattr(os, "fsync", fsync)

    return arrange


def test_a_file_created_meanwhile_is_not_replaced_without_overwrite(
    tmp_path: Path, source: Path, during_the_export: Callable[[Callable[[], None]], None]
) -> None:
    out = tmp_path / "campaign.csv"
    during_the_export(lambda: out.write_bytes(OLD))
    with pytest.raises(InvalidInput, match="already exists"):
        export_sequence(sequence(), source, out)
    assert out.read_bytes() == OLD and leftovers(tmp_path) == []


def test_a_fifo_put_in_place_meanwhile_is_not_replaced(
    tmp_path: Path, source: Path, during_the_export: Callable[[Callable[[], None]], None]
) -> None:
    out = tmp_path / "campaign.csv"
    out.write_bytes(OLD)

    def swap() -> None:
        out.unlink()
        os.mkfifo(out)

    during_the_export(swap)
    with pytest.raises(InvalidInput, match="is not a regular file"):
        export_sequence(sequence(), source, out, overwrite=True)
    assert stat.S_ISFIFO(out.lstat().st_mode) and leftovers(tmp_path) == []


def test_a_link_to_the_database_put_in_place_meanwhile_is_not_replaced(
    tmp_path: Path,
    source: Path,
    store: tuple[Path, dict[Path, str]],
    during_the_export: Callable[[Callable[[], None]], None],
) -> None:
    db, protected = store
    out = tmp_path / "campaign.csv"
    out.write_bytes(OLD)

    def swap() -> None:
        out.unlink()
        os.link(db, out)

    during_the_export(swap)
    with pytest.raises(InvalidInput, match="write the export to another file"):
        export_sequence(sequence(), source, out, overwrite=True, protected=protected)
    assert db.read_bytes() == b"precious coldmail.db" and out.read_bytes() == db.read_bytes()
    assert leftovers(tmp_path) == []


def test_a_folder_swapped_for_a_symlink_meanwhile_does_not_redirect_the_file(
    tmp_path: Path, source: Path, during_the_export: Callable[[Callable[[], None]], None]
) -> None:
    """The file is created and renamed inside the folder opened at the start, so a folder
    replaced by a symlink to another one (the database's, say) does not move the write."""
    exports = tmp_path / "exports"
    exports.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = tmp_path / "exports-moved"

    def swap() -> None:
        exports.rename(moved)
        exports.symlink_to(elsewhere)

    during_the_export(swap)
    export_sequence(sequence(), source, exports / "campaign.csv")
    assert sorted(os.listdir(elsewhere)) == []
    assert sorted(os.listdir(moved)) == ["campaign.csv"]


# --- standard output -------------------------------------------------------------------


def test_dash_writes_to_standard_output_as_utf8_crlf_and_no_file(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    source = leads(tmp_path, "zoe@x.com,Zoë,=Café")
    report = export_sequence(sequence(), source, "-")
    data = capsysbinary.readouterr().out
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[1][:3] == ["zoe@x.com", "Zoë", "'=Café"] and data.count(b"\r\n") >= 2
    assert (report.out, report.rows_written) == (None, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]


def test_dash_writes_json_too(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    export_sequence(sequence(), leads(tmp_path, "ana@x.com,Ana,Acme"), "-", format="json")
    records = json.loads(capsysbinary.readouterr().out)
    assert records[0]["First Name"] == "Ana"


def test_a_refused_export_to_standard_output_writes_nothing_there(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    rows = [f"lead{i}@x.com,N{i},C{i}" for i in range(50)] + ["bad,B,C"]
    with pytest.raises(InvalidInput, match=r"row 52 \(bad\)"):
        export_sequence(sequence(), leads(tmp_path, *rows), "-", strict=True)
    assert capsysbinary.readouterr().out == b""


def test_standard_output_that_is_a_terminal_is_refused(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with pytest.raises(InvalidInput, match="standard output is a terminal"):
        export_sequence(sequence(), leads(tmp_path, "ana@x.com,Ana,Acme"), "-")
    assert capsysbinary.readouterr().out == b""


def test_a_file_named_dash_is_written_as_dot_slash_dash(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    export_sequence(sequence(), source, "./-")
    assert (tmp_path / "-").read_bytes().startswith(b"email,")


# --- the command line -------------------------------------------------------------------


@pytest.fixture
def completed(cli: Callable[..., Completed], server: ScriptedOpenAIServer) -> str:
    started = cli("start", "--product", "Ledgerly", "--offer", "o", "--sender", "Sam", "--json")
    assert started.returncode == 0, started.stderr
    rid = str(json.loads(started.stdout)["interaction_id"])
    assert cli("resume", rid, "--feedback", "Controllers").returncode == 0
    return rid


def test_cli_refuses_an_existing_file_without_overwrite_in_one_line(
    cli: Callable[..., Completed], completed: str, tmp_path: Path, source: Path
) -> None:
    out = tmp_path / "campaign.csv"
    out.write_bytes(OLD)
    refused = cli("export", completed, "--leads", str(source), "--out", str(out))
    assert refused.returncode == InvalidInput.exit_code
    assert refused.stderr.count("\n") == 1 and "--overwrite" in refused.stderr
    assert out.read_bytes() == OLD
    done = cli("export", completed, "--leads", str(source), "--out", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"email,")


def test_cli_refuses_its_own_database(
    cli: Callable[..., Completed], completed: str, db_path: Path, source: Path
) -> None:
    before = _everything_in(db_path.parent)
    for target in (db_path, Path(f"{db_path}.key"), Path(f"{db_path}-wal")):
        refused = cli("export", completed, "--leads", str(source), "--out", str(target),
                      "--overwrite")  # fmt: skip
        assert refused.returncode == InvalidInput.exit_code, target
        assert "write the export to another file" in refused.stderr
    assert _everything_in(db_path.parent) == before
    assert cli("show", completed).returncode == 0


def test_cli_dash_prints_the_file_on_stdout_and_the_summary_on_stderr(
    cli: Callable[..., Completed], completed: str, source: Path
) -> None:
    done = cli("export", completed, "--leads", str(source), "--out", "-")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert [r[0] for r in rows] == ["email", "ana@x.com", "bo@y.io"]
    assert "Wrote 2 lead(s) to standard output (csv)." in done.stderr
    as_json = cli("export", completed, "--leads", str(source), "--out", "-", "--json")
    assert json.loads(as_json.stderr)["out"] == "-"
    assert [r[0] for r in csv.reader(io.StringIO(as_json.stdout))][1:] == ["ana@x.com", "bo@y.io"]


def test_cli_dash_into_a_pipe_closed_early_ends_with_one_line(
    completed: str, tmp_path: Path
) -> None:
    """``coldmail export … --out - | head``: the reader leaves; one line says so, no traceback
    and no "Exception ignored" from the interpreter's last flush."""
    source = tmp_path / "big.csv"
    with source.open("w", encoding="utf-8") as handle:
        handle.write("email,first_name\n")
        handle.writelines(f"lead{n}@example.com,Name{n}\n" for n in range(50_000))
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridgic_coldmail",
            "export",
            completed,
            "--leads",
            str(source),
            "--out",
            "-",
        ],  # fmt: skip
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.read(100).startswith(b"email,first_name")
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=PROCESS_TIMEOUT) == InvalidInput.exit_code
    assert stderr.count("\n") == 1 and "standard output was closed" in stderr, stderr


def test_cli_never_reads_the_key_file_as_a_lead_list(
    cli: Callable[..., Completed], completed: str, db_path: Path, tmp_path: Path
) -> None:
    """Read as a CSV, the key file is a one-column list without an email column, and the
    message naming its header would print the key."""
    key = Path(f"{db_path}.key")
    secret = key.read_text(encoding="ascii").strip()
    link = tmp_path / "leads.csv"
    link.symlink_to(key)
    for leads_path in (key, link):
        refused = cli("export", completed, "--leads", str(leads_path), "--out",
                      str(tmp_path / "o.csv"))  # fmt: skip
        assert refused.returncode == InvalidInput.exit_code
        assert "is the signing key file, not a lead list" in refused.stderr
        assert secret[:16] not in refused.stderr + refused.stdout
