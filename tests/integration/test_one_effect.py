"""One decision, one effect — even when the reply to the commit is lost.

The failures here are real: on SQLite the store's own transaction commits and then fails (a
patch forces the failure after ``COMMIT``, the only way to lose an acknowledgement of a local
file); on PostgreSQL a loopback proxy in front of the real server drops the connection right
after the server acknowledged the ``COMMIT``; Ctrl-C is a real SIGINT to a real ``coldmail``
process. Each time the caller learns the recorded result, or is told a retry that is safe, and
the LLM is called once per decision.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

import bridgic_coldmail.store.sqlite as sqlite_store
from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    LlmError,
    RunBeingResumed,
    RunStatus,
    StoreError,
)
from bridgic_coldmail.models import Run
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, REPO, Backend, Completed, wait_for_request
from ..rows import SqliteRows, expire_lease

FEEDBACK = "CTOs at mid-size hospitals"


async def _at_review(agent: ColdMailAgent, brief: Brief) -> str:
    pending = await agent.start(brief, review=True)
    return (await agent.resume(pending.interaction_id, FEEDBACK)).interaction_id


def _kinds(history: list[Any]) -> list[tuple[str, int | None]]:
    return [(event.kind, event.round) for event in history]


# --------------------------------------------------------------------------- SQLite


@contextmanager
def commits_then_fails(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> Iterator[list[int]]:
    """Once a run is claimed, the next ``times`` durable transactions of the SQLite store
    (the completion, and then the calls that check on it) commit and then fail, as if the
    reply to COMMIT were lost. Yields the count of failures forced."""
    original = sqlite_store._transaction
    forced: list[int] = []
    claimed: list[bool] = []

    @contextmanager
    def committing_then_failing(
        db: sqlite3.Connection, *, durable: bool = True, immediate: bool = True
    ) -> Iterator[Any]:
        with original(db, durable=durable, immediate=immediate) as tx:
            yield tx
        if not durable:
            claimed.append(True)  # a claim (or a lease renewal, a release)
        elif immediate and claimed and len(forced) < times:
            forced.append(1)
            raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(sqlite_store, "_transaction", committing_then_failing)
        yield forced


async def test_a_decision_whose_commit_reply_is_lost_returns_the_recorded_result(
    agent: ColdMailAgent,
    server: ScriptedOpenAIServer,
    brief: Brief,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rid = await _at_review(agent, brief)
    with commits_then_fails(monkeypatch) as forced:
        revised = await agent.revise(rid, "shorter")
    assert forced == [1]  # the completion really committed and then failed
    assert (revised.status, revised.round) == (RunStatus.AWAITING_REVIEW, 2)
    assert await agent.get(rid) == revised
    assert server.count("revise") == 1
    history = _kinds(await agent.history(rid))
    assert history[-2:] == [("revised", 1), ("review", 2)]  # one effect, no "failed"
    assert ("failed", 1) not in history


async def test_feedback_whose_commit_reply_is_lost_returns_the_recorded_result(
    agent: ColdMailAgent,
    server: ScriptedOpenAIServer,
    brief: Brief,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pending = await agent.start(brief)
    with commits_then_fails(monkeypatch):
        done = await agent.resume(pending.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED and server.count("refine") == 1
    assert await agent.get(pending.interaction_id) == done


async def test_the_same_decision_repeated_returns_the_stored_result_unless_given_a_round(
    agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    """A caller that never saw the answer (its process died after the commit, a client timed
    out) sends the same decision again: it gets the stored result, not a second revision.
    Naming the round is how a reviewer deliberately asks for the same revision again."""
    rid = await _at_review(agent, brief)
    first = await agent.revise(rid, "shorter")
    assert await agent.revise(rid, "shorter") == first
    assert await agent.revise(rid, "shorter", reviewer="Ann") == first
    assert server.count("revise") == 1
    again = await agent.revise(rid, "shorter", round=2)  # deliberately, for round 2
    assert again.round == 3 and server.count("revise") == 2

    sequence = again.sequence
    assert sequence is not None
    mine = sequence.model_copy(
        update={"opener": sequence.opener.model_copy(update={"subject": "Mine"})}
    )
    edited = await agent.edit(rid, mine)
    assert await agent.edit(rid, mine) == edited and edited.round == 4
    revised = await agent.revise(rid, "shorter")  # after another decision: a new revision
    assert revised.round == 5 and server.count("revise") == 3


def test_the_same_command_run_again_returns_the_stored_result(
    server: ScriptedOpenAIServer,
    brief: Brief,
    cli: Callable[..., Completed],
) -> None:
    rid = asyncio.run(_at_review_in_new_agent(brief))
    first = cli("revise", rid, "--feedback", "shorter", "--json")
    second = cli("revise", rid, "--feedback", "shorter", "--json")
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert json.loads(second.stdout)["round"] == 2 and server.count("revise") == 1
    assert second.stderr.strip() == (
        f"coldmail: round 1 of run {rid} already took this decision; nothing changed. "
        f"To revise round 2 the same way, add --round 2"
    )
    deliberate = cli("revise", rid, "--feedback", "shorter", "--round", "2", "--json")
    assert json.loads(deliberate.stdout)["round"] == 3 and server.count("revise") == 2


async def test_the_same_api_request_sent_again_returns_the_stored_result(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    """A client whose request timed out after the server committed sends it again."""
    from .test_web import settings_for, web_client

    rid = await _at_review_in_new_agent(brief)
    async with web_client(settings_for(db_path)) as client:
        first = await client.post(f"/api/runs/{rid}/revise", json={"guidance": "shorter"})
        again = await client.post(f"/api/runs/{rid}/revise", json={"guidance": "shorter"})
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json() and first.json()["round"] == 2
    assert server.count("revise") == 1


async def _at_review_in_new_agent(brief: Brief) -> str:
    async with ColdMailAgent.open() as agent:
        return await _at_review(agent, brief)


def test_when_the_result_cannot_be_confirmed_the_retry_offered_is_safe(
    server: ScriptedOpenAIServer,
    brief: Brief,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Completed],
) -> None:
    """The store stays unreachable after the commit for longer than the lease: the command
    cannot learn what was recorded. It says so, and the command it offers returns the
    recorded result instead of revising again."""
    rid = asyncio.run(_at_review_in_new_agent(brief))
    fast = {"COLDMAIL_LEASE_SECONDS": "1", "COLDMAIL_BUSY_TIMEOUT": "0.3"}
    with commits_then_fails(monkeypatch, times=10**6):
        lost = cli("revise", rid, "--feedback", "shorter", env=fast)
    assert lost.returncode == StoreError.exit_code
    assert len(lost.stderr.splitlines()) == 1, lost.stderr
    assert "could not be confirmed" in lost.stderr and "retry" not in lost.stderr.lower()
    offered = f"coldmail revise {rid} --feedback shorter --round 1"
    assert lost.stderr.rstrip().endswith(offered), lost.stderr
    again = cli("revise", rid, "--feedback", "shorter", "--round", "1", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["round"] == 2
    assert server.count("revise") == 1  # the offered command returned the recorded result


# --------------------------------------------------------------------------- Ctrl-C

_INTERRUPTING_RUNNER = """
import os, signal, sqlite3, sys, time
from contextlib import contextmanager
import bridgic_coldmail.store.sqlite as store

original = store._transaction
state = {"claimed": False, "sent": False}

@contextmanager
def interrupted_after_the_commit(db, *, durable=True, immediate=True):
    with original(db, durable=durable, immediate=immediate) as tx:
        yield tx
    if not durable:
        state["claimed"] = True  # the claim: the next durable commit is the completion
    elif state["claimed"] and not state["sent"] and os.environ.get("INTERRUPT") == "after":
        state["sent"] = True
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, right after the COMMIT

@contextmanager
def interrupted_before_the_commit(db, *, durable=True, immediate=True):
    if durable and state["claimed"] and not state["sent"]:
        state["sent"] = True
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the completion starts…
        time.sleep(0.5)  # …and reaches the event loop before this thread goes on
        raise sqlite3.OperationalError("interrupted")  # nothing written
    with interrupted_after_the_commit(db, durable=durable, immediate=immediate) as tx:
        yield tx

store._transaction = (
    interrupted_after_the_commit if os.environ["INTERRUPT"] == "after"
    else interrupted_before_the_commit
)
from bridgic_coldmail.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _interrupted_cli(when: str, *args: str) -> Completed:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_INTERRUPTING_RUNNER)
    try:
        result = subprocess.run(
            [sys.executable, script.name, *args],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            env={**os.environ, "INTERRUPT": when},
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    finally:
        os.unlink(script.name)
    return Completed(result.returncode, result.stdout, result.stderr)


def test_ctrl_c_right_after_the_commit_reports_the_decision_applied(
    server: ScriptedOpenAIServer, brief: Brief, db_path: Path
) -> None:
    rid = asyncio.run(_at_review_in_new_agent(brief))
    interrupted = _interrupted_cli("after", "revise", rid, "--feedback", "shorter")
    assert interrupted.returncode == 130, interrupted
    assert "unchanged" not in interrupted.stderr and "Traceback" not in interrupted.stderr
    assert interrupted.stderr.strip() == (
        f"coldmail: interrupted, but the decision was recorded: run {rid} is awaiting review "
        "at round 2; see coldmail show " + rid
    )
    run, history = asyncio.run(_stored(rid))
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 2)
    assert [e for e in history if e.kind == "failed"] == []  # never "interrupted before…"
    assert server.count("revise") == 1


def test_ctrl_c_before_the_commit_reports_the_run_unchanged(
    server: ScriptedOpenAIServer, brief: Brief, db_path: Path
) -> None:
    rid = asyncio.run(_at_review_in_new_agent(brief))
    interrupted = _interrupted_cli("before", "revise", rid, "--feedback", "shorter")
    assert interrupted.returncode == 130, interrupted
    assert interrupted.stderr.strip() == (
        f"coldmail: interrupted before the decision was recorded: run {rid} is unchanged, "
        "awaiting review at round 1; run the command again to apply it"
    )
    run, _ = asyncio.run(_stored(rid))
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 1)


async def test_a_claim_interrupted_while_it_is_granted_is_given_back(
    agent: ColdMailAgent,
    server: ScriptedOpenAIServer,
    brief: Brief,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled while SQLite's thread grants the claim: the claim still commits, and the
    run must not stay held by nobody until its lease runs out."""
    rid = await _at_review(agent, brief)
    original = sqlite_store._transaction
    granting, go_on = threading.Event(), threading.Event()

    @contextmanager
    def slow_claim(
        db: sqlite3.Connection, *, durable: bool = True, immediate: bool = True
    ) -> Iterator[Any]:
        with original(db, durable=durable, immediate=immediate) as tx:
            yield tx
            if not durable and not granting.is_set():  # the claim, about to commit
                granting.set()
                go_on.wait(timeout=PROCESS_TIMEOUT)

    monkeypatch.setattr(sqlite_store, "_transaction", slow_claim)
    deciding = asyncio.create_task(agent.revise(rid, "shorter"))
    await asyncio.to_thread(granting.wait, PROCESS_TIMEOUT)
    deciding.cancel()  # Ctrl-C while the claim is being granted
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await deciding
    monkeypatch.undo()
    run = await agent.get(rid)
    assert (run.status, run.round) == (RunStatus.AWAITING_REVIEW, 1)  # given back at once
    assert _kinds(await agent.history(rid))[-2:] == [("revised", 1), ("failed", 1)]
    assert server.count("revise") == 0


async def _stored(rid: str) -> tuple[Run, list[Any]]:
    async with ColdMailAgent.open() as agent:
        return await agent.get(rid), await agent.history(rid)


# --------------------------------------------------------------------------- fenced out


@pytest.mark.slow  # a 2 s LLM reply outlasting a lease taken over
@pytest.mark.parametrize("other", ["fails", "records-other-feedback", "records-the-same"])
async def test_a_resumer_fenced_out_at_completion_is_told_what_was_really_recorded(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, other: str
) -> None:
    rows = SqliteRows(db_path)
    async with (
        ColdMailAgent.open(db_path, lease_seconds=30) as first,
        ColdMailAgent.open(db_path, retry=NO_RETRY) as second,
    ):
        pending = await first.start(brief)
        rid = pending.interaction_id
        server.enqueue(Reply(kind="refine", delay=2.0))  # the first resumer is slow…
        slow = asyncio.create_task(first.resume(rid, FEEDBACK))
        await asyncio.to_thread(wait_for_request, server, "refine")
        expire_lease(rows, rid)  # …and its lease is taken over (it was paused, say)
        if other == "fails":
            server.enqueue(Reply(kind="refine", status=400, content="no"))
            with pytest.raises(LlmError):
                await second.resume(rid, FEEDBACK)
        else:
            feedback = "Nurses" if other == "records-other-feedback" else FEEDBACK
            recorded = await second.resume(rid, feedback)
        outcome: BaseException | Run
        try:
            outcome = await slow
        except RunBeingResumed as refused:
            outcome = refused
    if other == "records-the-same":
        assert outcome == recorded  # the caller learns the recorded result
        return
    assert isinstance(outcome, RunBeingResumed)
    message = str(outcome)
    assert "result is the one recorded" not in message
    if other == "fails":
        assert "nothing was recorded" in message and "awaiting feedback" in message
    else:
        assert "another resumer's result is recorded" in message and "'Nurses'" in message


# --------------------------------------------------------------------------- PostgreSQL


class CommitReplyDropper:
    """A loopback proxy in front of PostgreSQL's Unix socket that, once armed, drops the
    connection instead of passing on the server's reply to the COMMIT of a query that
    contains ``marker``: the server committed, the client never hears of it."""

    _COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"  # CommandComplete("COMMIT")

    def __init__(self, target: str, folder: Path, marker: bytes) -> None:
        self.target = target
        self.folder = folder
        self.marker = marker
        self.armed = False
        self.dropped = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CommitReplyDropper:
        path = str(self.folder / ".s.PGSQL.5432")
        self._server = await asyncio.start_unix_server(self._serve, path=path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # every connection still open ends, and its handler
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        server_in, server_out = await asyncio.open_unix_connection(self.target)
        self._writers += [client_out, server_out]
        state = {"armed_here": False}

        async def upstream() -> None:
            while data := await client_in.read(65536):
                if self.armed and self.marker in data:
                    state["armed_here"] = True
                server_out.write(data)
                await server_out.drain()

        async def downstream() -> None:
            tail = b""
            while data := await server_in.read(65536):
                seen = tail + data
                if state["armed_here"] and self._COMMIT_DONE in seen:
                    self.armed = False
                    self.dropped += 1
                    raise ConnectionAbortedError("dropped after the COMMIT")
                tail = seen[-16:]
                client_out.write(data)
                await client_out.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_out, server_out):
                writer.close()


def _through(url: str, folder: Path) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["host"] = str(folder)
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Backend]:
    from ..pg import postgres_backend

    with postgres_backend(request) as found:
        yield found


@pytest.fixture
async def proxied(pg: Backend) -> AsyncIterator[tuple[Settings, CommitReplyDropper]]:
    target = dict(parse_qsl(urlsplit(pg.db).query))["host"] + "/.s.PGSQL.5432"
    with tempfile.TemporaryDirectory(prefix="coldmail-proxy-") as folder:
        async with CommitReplyDropper(target, Path(folder), marker=b"snapshot = ") as proxy:
            settings = Settings.resolve(
                env={**os.environ, **pg.env}, db=_through(pg.db, Path(folder))
            )
            yield settings, proxy


async def test_on_postgresql_a_decision_whose_commit_reply_is_lost_is_applied_once(
    proxied: tuple[Settings, CommitReplyDropper], server: ScriptedOpenAIServer, brief: Brief
) -> None:
    settings, proxy = proxied
    async with ColdMailAgent.open(settings=settings) as agent:
        rid = await _at_review(agent, brief)
        proxy.armed = True
        revised = await agent.revise(rid, "shorter")
        assert proxy.dropped == 1  # the server committed; its reply never arrived
        assert (revised.status, revised.round) == (RunStatus.AWAITING_REVIEW, 2)
        assert await agent.revise(rid, "shorter") == revised  # the same request again
        history = _kinds(await agent.history(rid))
    assert server.count("revise") == 1
    assert history[-2:] == [("revised", 1), ("review", 2)] and ("failed", 1) not in history
