"""Where a resume of ours spends its time: the evidence behind benchmarks/NOTES.md.

    python -m benchmarks.profile_resume path sqlite|postgres [--n 300]
    python -m benchmarks.profile_resume profile sqlite|postgres [--n 300] [--concurrent]
    python -m benchmarks.profile_resume work sqlite|postgres [--n 100]
    python -m benchmarks.profile_resume ledger [--number 50]
    python -m benchmarks.profile_resume spy sqlite|postgres [--n 1000] [--concurrent] [--gil]
    python -m benchmarks.profile_resume contention [--processes 4] [--n 1000] [--switch MS]

``path``: N sequential resumes, then N at once, counting statements, round trips (hops to
aiosqlite's thread, or queries sent to PostgreSQL), the wall time of each phase of a resume
(claim, the automa, complete) and the CPU time of each thread (the event loop's, and on
SQLite aiosqlite's, where the store's transactions run).

``profile``: cProfile of N resumes (sequential, or all at once), on the event loop's thread
and on aiosqlite's thread, grouped by where the code lives (the store, Bridgic, pydantic...).

``work``: for every subject (ours, LangGraph default and exit, the floor), the statements,
commits and round trips of a start and of a resume; on PostgreSQL also the server's own count
of committed transactions and WAL flushes (``pg_stat_wal.wal_sync``) and WAL bytes.

``ledger``: each step of an SQLite resume timed alone, the fastest of several batches (the
steadiest figure on a shared machine): what the rules, the MACs, the statements, a round trip
and the automa each cost.

``spy``: py-spy (``pip install py-spy``) samples every thread of a plain run of N resumes;
the samples are summed by the parts of the resume path they fall in (inclusive).

``contention``: N runs from several processes on one SQLite file (the scenario of
``scenarios.processes``), every store transaction timed: the wait for the write lock
(``BEGIN IMMEDIATE``, which SQLite's busy handler retries after sleeps of 1, 2, 5, 10, 15,
20, 25... ms), how long the lock is held, the COMMIT (an fsync for a durable one), and the
CPU time of the holding thread against the wall time it held the lock.

Measurement only: the store's functions are wrapped in place, never changed, and nothing
here is a test. Sizes are small on purpose; the figures it prints are for one machine at one
moment (print the load average beside them).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bridgic_coldmail import ColdMailAgent

from . import scenarios
from .fake_llm import InstantLlm
from .subjects import BRIEF, FEEDBACK, BackendName, Places, Store

TX_LOG_ENV = "COLDMAIL_BENCH_TX_LOG"
"""Where an instrumented worker of ``contention`` writes its transactions (JSON lines)."""


def thread_cpu(ident: int | None) -> float:
    """CPU seconds of one thread of this process."""
    if ident is None:
        return float("nan")
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


@contextlib.asynccontextmanager
async def ours(backend: BackendName, places: Places) -> AsyncIterator[Any]:
    store = places.new(backend, "profile")
    async with ColdMailAgent.open(
        store.location, llm=InstantLlm(), **store.agent_options()
    ) as agent:
        yield agent


@contextlib.contextmanager
def places_for(backend: BackendName) -> Iterator[Places]:
    with tempfile.TemporaryDirectory(prefix="coldmail-profile-") as folder:
        if backend == "sqlite":
            yield Places(Path(folder))
            return
        from testbed.pg import start_cluster

        cluster = start_cluster(durable=True)
        places = Places(Path(folder), cluster.url)
        try:
            yield places
        finally:
            places.drop_all()
            cluster.stop()


# --------------------------------------------------------------------------- path


@dataclass
class Tally:
    """Counts and times over a batch of resumes."""

    statements: Counter[str] = field(default_factory=Counter)
    round_trips: int = 0
    phases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def statement(self, sql: str) -> None:
        if sql.startswith("--"):  # SQLite traces a statement run inside another as "-- ..."
            return
        words = sql.strip().split()
        key = " ".join(words[:2]).upper() if words else "?"
        self.statements[key] += 1


def instrument(agent: Any, tally: Tally) -> Callable[[], None]:
    """Wrap the store's claim and complete, the automa's run, and the round trips; returns
    what undoes it."""
    store = agent._store
    undo: list[Callable[[], None]] = []

    def timed(owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                tally.phases[phase].append((time.perf_counter() - t0) * 1000)

        setattr(owner, name, wrapper)
        undo.append(lambda: setattr(owner, name, original))

    timed(store, "claim", "claim")
    timed(store, "complete", "complete")
    timed(agent._runner, "_run_automa", "automa")
    if hasattr(store, "_conn"):  # SQLite: count hops to aiosqlite's thread
        conn = store._conn
        original_execute = conn._execute

        async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            tally.round_trips += 1
            return await original_execute(fn, *args, **kwargs)

        conn._execute = counted
        undo.append(lambda: setattr(conn, "_execute", original_execute))
    else:  # PostgreSQL: every query sent, each a round trip (several statements each)
        import psycopg

        # On AsyncCursor, which AsyncClientCursor inherits ``execute`` from: the store's
        # scripts (client-side binding) and its plain reads and ROLLBACKs
        # (``conn.execute``, server-side binding) are all counted.
        original_cursor_execute = psycopg.AsyncCursor.execute

        async def sent(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            tally.round_trips += 1
            for part in str(query).split(";"):
                if part.strip():
                    tally.statement(part)
            return await original_cursor_execute(self, query, params, **kwargs)

        psycopg.AsyncCursor.execute = sent  # type: ignore[method-assign]
        undo.append(lambda: setattr(psycopg.AsyncCursor, "execute", original_cursor_execute))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


async def sqlite_trace(agent: Any, tally: Tally, on: bool) -> None:
    """Count every statement SQLite runs on the store's connection (set on its thread)."""
    conn = agent._store._conn
    callback = tally.statement if on else None
    await conn._execute(lambda: conn._conn.set_trace_callback(callback))


async def path(backend: BackendName, n: int) -> None:
    print(f"# The resume path on {backend}: {n} resumes, one at a time then all at once")
    print(f"({load()})\n")
    with places_for(backend) as places:
        async with ours(backend, places) as agent:
            for _ in range(5):
                await agent.resume((await agent.start(BRIEF)).interaction_id, FEEDBACK)
            store = agent._store
            sqlite = hasattr(store, "_conn")
            db_thread = store._conn._thread.ident if sqlite else None
            loop_thread = threading.get_ident()
            for mode in ("sequential", "concurrent"):
                ids = [(await agent.start(BRIEF)).interaction_id for _ in range(n)]
                tally = Tally()
                restore = instrument(agent, tally)
                if sqlite:
                    await sqlite_trace(agent, tally, True)
                cpu0 = thread_cpu(loop_thread), thread_cpu(db_thread)
                t0 = time.perf_counter()
                if mode == "sequential":
                    for interaction_id in ids:
                        await agent.resume(interaction_id, FEEDBACK)
                else:
                    await asyncio.gather(*(agent.resume(i, FEEDBACK) for i in ids))
                wall = time.perf_counter() - t0
                cpu1 = thread_cpu(loop_thread), thread_cpu(db_thread)
                if sqlite:
                    await sqlite_trace(agent, tally, False)
                restore()
                report_path(mode, n, tally, wall, cpu0, cpu1, sqlite)


def report_path(
    mode: str,
    n: int,
    tally: Tally,
    wall: float,
    cpu0: tuple[float, float],
    cpu1: tuple[float, float],
    sqlite: bool,
) -> None:
    per = 1000 / n
    print(f"## {mode}: {wall * per:.3f} ms of wall time per resume ({n / wall:.0f} resumes/s)")
    print(f"- round trips per resume: {tally.round_trips / n:.2f}")
    total = sum(tally.statements.values())
    listed = ", ".join(f"{k} {v / n:.2f}" for k, v in tally.statements.most_common())
    print(f"- statements per resume: {total / n:.2f} ({listed})")
    for phase, times in tally.phases.items():
        print(
            f"- {phase}: p50 {statistics.median(times):.3f} ms, "
            f"mean {statistics.fmean(times):.3f} ms (wall, as the caller sees it)"
        )
    loop_cpu = (cpu1[0] - cpu0[0]) * per
    print(f"- CPU on the event loop's thread: {loop_cpu:.3f} ms per resume")
    if sqlite:
        db_cpu = (cpu1[1] - cpu0[1]) * per
        print(f"- CPU on aiosqlite's thread: {db_cpu:.3f} ms per resume")
        print(
            f"- wall − CPU of both threads: {wall * per - loop_cpu - db_cpu:.3f} ms per resume "
            "(waiting: fsync, wake-ups, the GIL held by the other thread)"
        )
    print()


# --------------------------------------------------------------------------- profile

AREAS = (
    ("bridgic_coldmail/store", "our store (rules, row encoding and decoding)"),
    ("bridgic_coldmail/signing", "our MACs (signing.py)"),
    ("bridgic_coldmail/models", "our models' validators"),
    ("bridgic_coldmail/agent", "our agent"),
    ("bridgic_coldmail", "our other code (automa, writing, prompts)"),
    ("bridgic", "Bridgic (scheduler, snapshot load and dump)"),
    ("msgpack", "msgpack"),
    ("pydantic", "pydantic"),
    ("json", "json"),
    ("hmac", "hmac / hashlib"),
    ("hashlib", "hmac / hashlib"),
    ("inspect", "inspect (Bridgic's argument binding)"),
    ("typing", "typing"),
    ("copy", "copy (deepcopy)"),
    ("datetime", "datetime"),
    ("uuid", "uuid"),
    ("aiosqlite", "aiosqlite"),
    ("psycopg", "psycopg"),
    ("asyncio", "asyncio"),
    ("sqlite3", "sqlite3 (C: statements)"),
    ("importlib", "importlib (Bridgic's class lookups)"),
    ("re", "re"),
    ("enum", "enum"),
)


def area(filename: str, function: str) -> str:
    if filename == "~":  # built in: "<method 'execute' of 'sqlite3.Connection' objects>"
        name = function.strip("<>{}")
        if " of '" in name:
            method, owner = name.split("'")[1], name.split(" of '")[1].split("'")[0]
            name = f"{owner}.{method}"
        else:
            name = name.replace("built-in method ", "")
        if name.startswith("sqlite3."):
            return "sqlite3 (C: statements)"
        if "hmac" in name or "_hashlib" in name:
            return "hmac / hashlib"
        if "pydantic_core" in name:
            return "pydantic"
        if name.startswith(("select.", "_queue.SimpleQueue.get")):
            return "idle (waiting for work)"
        return f"built-ins ({name})" if name.count(".") < 2 else "built-ins (other)"
    if filename.startswith("<frozen importlib"):
        return "importlib (Bridgic's class lookups)"
    for needle, label in AREAS:
        if f"/{needle}/" in filename or filename.endswith(f"/{needle}.py"):
            return label
    return f"other ({Path(filename).name})"


def grouped(stats: pstats.Stats, calls: int) -> list[tuple[str, float]]:
    """Internal time per area, in ms per resume."""
    totals: dict[str, float] = defaultdict(float)
    raw = cast(dict[Any, Any], stats.stats)  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in raw.items():
        totals[area(filename, function)] += tottime
    return sorted(((k, v * 1000 / calls) for k, v in totals.items()), key=lambda kv: -kv[1])


async def profile(backend: BackendName, n: int, concurrent: bool, top: int, wall: bool) -> None:
    how = "all at once" if concurrent else "in turn"
    clock = "wall time" if wall else "CPU time of each thread (time.thread_time)"
    print(f"# cProfile of {n} resumes on {backend}, {how}; clock: {clock}")
    print(f"({load()})\n")
    with places_for(backend) as places:
        async with ours(backend, places) as agent:
            for _ in range(5):
                await agent.resume((await agent.start(BRIEF)).interaction_id, FEEDBACK)
            ids = [(await agent.start(BRIEF)).interaction_id for _ in range(n)]
            store = agent._store
            sqlite = hasattr(store, "_conn")
            timer = time.perf_counter if wall else time.thread_time
            loop_profile, db_profile = cProfile.Profile(timer), cProfile.Profile(timer)
            if sqlite:
                await store._conn._execute(db_profile.enable)
            loop_profile.enable()
            if concurrent:
                await asyncio.gather(*(agent.resume(i, FEEDBACK) for i in ids))
            else:
                for interaction_id in ids:
                    await agent.resume(interaction_id, FEEDBACK)
            loop_profile.disable()
            if sqlite:
                await store._conn._execute(db_profile.disable)
    threads = [("the event loop's thread", loop_profile)]
    if sqlite:
        threads.append(("aiosqlite's thread", db_profile))
    for name, profiler in threads:
        stats = pstats.Stats(profiler)
        total = sum(v[2] for v in cast(dict[Any, Any], stats.stats).values())  # type: ignore[attr-defined]
        print(f"## {name}: {total * 1000 / n:.3f} ms of profiled time per resume, by area")
        for label, ms in grouped(stats, n):
            if ms >= 0.005:
                print(f"- {label}: {ms:.3f} ms")
        print(f"\n### top {top} functions by internal time\n```")
        stats.sort_stats("tottime").print_stats(top)
        print("```\n")


# --------------------------------------------------------------------------- work


def sqlite_connection_of(subject: Any) -> Any:
    """The aiosqlite connection behind a subject of ``subjects.opened``."""
    if hasattr(subject, "agent"):
        return subject.agent._store._conn
    if hasattr(subject, "peer"):
        return subject.peer.saver.conn
    return subject.floor._conn


@dataclass
class Work:
    """What one batch of operations asked of the database."""

    statements: Counter[str] = field(default_factory=Counter)
    hops: int = 0
    server: dict[str, float] = field(default_factory=dict)


async def counted_sqlite(subject: Any, batch: Callable[[], Any]) -> Work:
    conn = sqlite_connection_of(subject)
    work = Work()

    def seen(sql: str) -> None:
        if not sql.startswith("--"):  # a statement run inside another
            words = sql.split()
            work.statements[" ".join(words[:1]).upper() if words else "?"] += 1

    original = conn._execute

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        work.hops += 1
        return await original(fn, *args, **kwargs)

    await original(lambda: conn._conn.set_trace_callback(seen))
    conn._execute = counted
    try:
        await batch()
    finally:
        conn._execute = original
        await original(lambda: conn._conn.set_trace_callback(None))
    return work


SERVER_COUNTERS = (
    "SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint, "
    "xact_commit, (SELECT wal_sync FROM pg_stat_wal), (SELECT wal_bytes FROM pg_stat_wal) "
    "FROM pg_stat_database WHERE datname = current_database()"
)
SERVER_NAMES = ("write transactions", "commits", "WAL flushes", "WAL bytes")
STATS_DELAY = 11.0
"""Seconds to wait before reading the server's statistics: a busy backend reports its
counters at most once a second, an idle one after ten seconds (PostgreSQL 15)."""


async def counted_postgres(url: str, batch: Callable[[], Any]) -> Work:
    """Queries the client sent (psycopg executes) and, from the server, transactions that
    wrote (transaction ids handed out), commits, WAL flushes (``pg_stat_wal.wal_sync``) and
    WAL bytes. The reads wait for the backends' statistics: about 11 s each."""
    import psycopg

    work = Work()
    patched: list[tuple[Any, str, Any]] = []

    def count(name: str) -> None:
        original = getattr(psycopg.AsyncCursor, name)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            client = " (client-side binding)" if isinstance(self, psycopg.AsyncClientCursor) else ""
            work.statements[f"{name}{client}"] += 1
            return await original(self, *args, **kwargs)

        patched.append((psycopg.AsyncCursor, name, original))
        setattr(psycopg.AsyncCursor, name, wrapper)

    count("execute")
    count("executemany")

    before = await server_counters(url)
    try:
        await batch()
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
    after = await server_counters(url)
    work.server = {k: after[k] - before[k] for k in after}
    return work


async def server_counters(url: str) -> dict[str, float]:
    """The server's counters (see SERVER_COUNTERS), once every backend has reported."""
    import psycopg

    await asyncio.sleep(STATS_DELAY)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute(SERVER_COUNTERS)).fetchone()
    assert row is not None
    return dict(zip(SERVER_NAMES, map(float, row), strict=True))


def _batches(subject: Any, ids: list[str], n: int) -> tuple[Any, Any]:
    """N starts (their ids into ``ids``), then N resumes of them."""

    async def starts() -> None:
        ids.extend([await subject.start() for _ in range(n)])

    async def resumes() -> None:
        for interaction_id in ids:
            await subject.resume(interaction_id)

    return starts, resumes


async def work_of(backend: BackendName, n: int) -> None:
    from .subjects import PEERS, SUBJECT_LABELS, opened

    print(f"# What {n} starts and {n} resumes ask of {backend}, per operation")
    print(f"({load()})\n")
    with places_for(backend) as places:
        for kind in PEERS:
            store = places.new(backend, f"work-{kind}")
            try:
                context = opened(kind, store, InstantLlm())
                subject = await context.__aenter__()
            except ImportError as exc:
                print(f"## {SUBJECT_LABELS[kind]}: not measured ({exc})\n")
                continue
            try:
                for _ in range(5):
                    await subject.resume(await subject.start())
                ids: list[str] = []
                starts, resumes = _batches(subject, ids, n)
                print(f"## {SUBJECT_LABELS[kind]}")
                for name, batch in (("start", starts), ("resume", resumes)):
                    if backend == "sqlite":
                        found = await counted_sqlite(subject, batch)
                    else:
                        found = await counted_postgres(store.location, batch)
                    total = sum(found.statements.values())
                    listed = ", ".join(
                        f"{k} {v / n:.2f}" for k, v in sorted(found.statements.items())
                    )
                    said = f"- per {name}: {total / n:.2f} statements ({listed})"
                    if backend == "sqlite":
                        said += f"; {found.hops / n:.2f} round trips to aiosqlite's thread"
                    else:
                        said += "; server: " + ", ".join(
                            f"{k} {v / n:.2f}" if k != "WAL bytes" else f"{k} {v / n:.0f}"
                            for k, v in found.server.items()
                        )
                    print(said)
                print()
            finally:
                await context.__aexit__(None, None, None)


# --------------------------------------------------------------------------- ledger


def cheapest(call: Callable[[], Any], number: int, repeat: int = 15) -> float:
    """Microseconds per call: the fastest of ``repeat`` batches of ``number`` calls (the
    batch least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e6


async def cheapest_async(call: Callable[[], Any], number: int, repeat: int = 15) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            await call()
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e6


async def ledger(number: int) -> None:
    """Each step of an SQLite resume timed alone (min of repeats): what each one costs when
    nothing else competes for the CPU."""
    import sqlite3
    from datetime import datetime, timezone

    from bridgic.core.automa import Snapshot
    from bridgic.core.automa.interaction import InteractionFeedback

    from bridgic_coldmail import ColdMailAutoma, RunStatus
    from bridgic_coldmail._runner import SUPPORTED_SERIALIZATION_VERSIONS as VERSIONS
    from bridgic_coldmail.models import make_decision, validate_feedback, validate_interaction_id
    from bridgic_coldmail.store import Finished
    from bridgic_coldmail.store import sqlite as sq
    from bridgic_coldmail.store.codec import decode_row, row_mac_values, run_from_row
    from bridgic_coldmail.store.rules import (
        ClaimPlan,
        claim_from,
        judge_claim,
        plan_claim,
        plan_complete,
    )

    print(f"# The resume path on SQLite, step by step (fastest of 15 batches of {number})")
    print(f"({load()})\n")
    with places_for("sqlite") as places:
        async with ours("sqlite", places) as agent:
            iid = (await agent.start(BRIEF)).interaction_id
            store = agent._store
            store = getattr(store, "_store", None) or store  # the file opened by the start
            signer, schema = store._signer, sq._SchemaGuard(store.location)
            db = sqlite3.connect(store.location, isolation_level=None)
            db.row_factory = sqlite3.Row
            action = make_decision("feedback", text=FEEDBACK)
            now = datetime.now(timezone.utc)

            def select_row() -> dict[str, Any]:
                db.execute("BEGIN IMMEDIATE")
                try:
                    found = sq._hold(db, iid, schema)
                finally:
                    db.execute("ROLLBACK")
                assert found is not None
                return found

            row = select_row()
            snapshot = bytes(row["snapshot"])
            signature = bytes(row["signature"])

            def judge() -> Any:
                return judge_claim(
                    row,
                    action,
                    now=now,
                    supported_versions=VERSIONS,
                    signer=signer,
                    snapshot=snapshot,
                )

            verdict = judge()
            assert isinstance(verdict, ClaimPlan)

            def plan_and_seal() -> Any:
                change, expires = plan_claim(row, verdict, action, now=now, lease=60)
                change.seal(signer, sign_row=True)
                return change, expires

            change, expires = plan_and_seal()

            def build_claim() -> Any:
                return claim_from(row, change, verdict, action, snapshot=snapshot, expires=expires)

            claim = build_claim()
            result = Finished(RunStatus.COMPLETED, claim.run.draft)

            def complete_and_seal() -> Any:
                done = plan_complete(change.row, claim, result, now=now, signature=None)
                done.seal(signer, sign_row=True)
                return done

            done = complete_and_seal()

            def write_claim() -> None:
                db.execute("BEGIN IMMEDIATE")
                sq._update(db, change)
                db.execute("ROLLBACK")

            def empty_transaction() -> None:
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("BEGIN IMMEDIATE")
                db.execute("COMMIT")

            loop, thread = "event loop", "aiosqlite's thread"
            steps: list[tuple[str, Callable[[], Any], str]] = [
                ("BEGIN IMMEDIATE + SELECT row and snapshot + ROLLBACK", select_row, thread),
                ("judge_claim (row MAC, run_from_row, snapshot HMAC, rules)", judge, thread),
                ("  decode_row (row MAC + run_from_row)", lambda: decode_row(row, signer), thread),
                (
                    "  run_from_row (pydantic: Brief, 2 EmailSequence, Run)",
                    lambda: run_from_row(row),
                    thread,
                ),  # fmt: skip
                (
                    "  row MAC (row_mac_values + one HMAC)",
                    lambda: signer.row_mac(row_mac_values(row)),
                    thread,
                ),  # fmt: skip
                (
                    "  snapshot signature (HMAC of the snapshot)",
                    lambda: signer.verify(iid, "1.0", snapshot, signature),
                    thread,
                ),  # fmt: skip
                ("plan_claim + seal (row MAC, event MAC)", plan_and_seal, thread),
                ("claim_from (run_from_row of the claimed row)", build_claim, thread),
                ("UPDATE row + INSERT event (in BEGIN … ROLLBACK)", write_claim, thread),
                (
                    "empty transaction (PRAGMA synchronous, BEGIN IMMEDIATE, COMMIT)",
                    empty_transaction,
                    thread,
                ),  # fmt: skip
                ("plan_complete + seal", complete_and_seal, thread),
                (
                    "run_from_row of the result (returned to the caller)",
                    lambda: run_from_row(done.row),
                    thread,
                ),  # fmt: skip
                (
                    "validate_interaction_id + validate_feedback",
                    lambda: (validate_interaction_id(iid), validate_feedback(FEEDBACK)),
                    loop,
                ),  # fmt: skip
            ]
            found = [(name, cheapest(call, number), where) for name, call, where in steps]
            fsyncs = []
            for _ in range(max(20, number // 10)):
                t0 = time.perf_counter()
                db.execute("PRAGMA synchronous = FULL")
                db.execute("BEGIN IMMEDIATE")
                # A real write (the store is thrown away after), so the COMMIT flushes pages.
                db.execute("UPDATE runs SET last_error = ? WHERE interaction_id = ?", (t0, iid))
                db.execute("COMMIT")
                fsyncs.append((time.perf_counter() - t0) * 1e6)
            db.close()

            async def hop() -> None:
                await store._conn._execute(lambda: None)

            async def nothing() -> None:
                return None

            async def holding() -> None:
                await agent._runner.holding(claim, nothing())

            data = Snapshot(serialized_bytes=snapshot, serialization_version="1.0")

            def load_snapshot() -> Any:
                return ColdMailAutoma.load_from_snapshot(data)

            async def load_and_run() -> None:
                automa = agent._runner.automa(load_snapshot())
                await automa.arun(
                    feedback_data=InteractionFeedback(interaction_id=iid, data=FEEDBACK)
                )

            found += [
                (
                    "one round trip to aiosqlite's thread (an empty call)",
                    await cheapest_async(hop, number),
                    "both",
                ),  # fmt: skip
                (
                    "Runner.holding (the lease keeper task) around nothing",
                    await cheapest_async(holding, number),
                    loop,
                ),  # fmt: skip
                (
                    "ColdMailAutoma.load_from_snapshot (Bridgic: msgpack, class lookups)",
                    cheapest(load_snapshot, number),
                    loop,
                ),  # fmt: skip
            ]
            found.append(
                (
                    "automa arun from the snapshot (refine, review; instant LLM)",
                    await cheapest_async(load_and_run, number) - found[-1][1],
                    loop,
                )  # fmt: skip
            )
    width = max(len(name) for name, _, _ in found)
    print("| step | µs | thread |\n|---|---|---|")
    for name, micro, where in found:
        print(f"| {name:<{width}} | {micro:8.1f} | {where} |")
    print(
        f"\nA durable COMMIT of a real row (synchronous=FULL, an fsync): p50 "
        f"{statistics.median(fsyncs):.0f} µs, min {min(fsyncs):.0f} µs over {len(fsyncs)}."
    )


# --------------------------------------------------------------------------- spy

SPY_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (label, frames that mark it); inclusive: a sample counts for every part it is in
    ("claim (the store's transaction)",
     ("SqliteRunStore.claim.<locals>.work", "PostgresRunStore.claim (")),
    ("complete (the store's transaction)",
     ("SqliteRunStore.complete.<locals>.work", "PostgresRunStore.complete (")),
    ("  judge_claim (MACs, signature, decode)", ("judge_claim (",)),
    ("  decode_row (row MAC check + run_from_row)", ("decode_row (",)),
    ("  run_from_row (pydantic: brief, draft, sequence)", ("run_from_row (",)),
    ("  RowChange.seal (row and event MACs)", ("RowChange.seal (",)),
    ("  SnapshotSigner.mac_values", ("SnapshotSigner.mac_values (",)),
    ("  SnapshotSigner.verify (snapshot HMAC)", ("SnapshotSigner.verify (",)),
    ("  claim_from (builds the Claim: run_from_row again)", ("claim_from (",)),
    ("  plan_claim / plan_complete", ("plan_claim (", "plan_complete (")),
    ("  statements and round trips (the store's _transaction and _Tx)",
     ("_transaction (", "_Tx.", "_script (")),
    ("the automa (load, run)", ("Runner._run_automa (",)),
    ("  Snapshot load (msgpack, class lookups)", ("load_from_snapshot (",)),
    ("  Bridgic arun", ("GraphAutoma.arun (",)),
    ("Runner.holding (lease keeper task)", ("Runner.holding (",)),
    ("validate_interaction_id / feedback", ("validate_interaction_id (",)),
    ("asyncio (event loop machinery)", ("BaseEventLoop._run_once (",)),
)  # fmt: skip


SPY_PACKAGES = (
    "bridgic_coldmail/store/",
    "bridgic_coldmail/signing",
    "bridgic_coldmail/models",
    "bridgic_coldmail/agent",
    "bridgic_coldmail/",
    "bridgic/",
    "pydantic",
    "msgpack",
    "aiosqlite/",
    "psycopg",
    "asyncio/",
    "json/",
    "importlib",
    "inspect.py",
    "typing.py",
    "copy.py",
    "threading.py",
    "queue.py",
    "selectors.py",
    "logging/",
)


def innermost_package(stack: str) -> str:
    """The package of the innermost frame that belongs to a known one."""
    for frame in reversed(stack.split(";")):
        where = frame.rsplit("(", 1)[-1]
        for package in SPY_PACKAGES:
            if package in where:
                return package.rstrip("/")
    return "other"


def spy(
    backend: BackendName, n: int, concurrent: bool, rate: int, gil: bool, keep: str | None
) -> None:
    """Sample a plain run of N resumes with py-spy (all threads) and say where they were."""
    import shutil
    import subprocess

    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    with tempfile.TemporaryDirectory(prefix="coldmail-spy-") as folder:
        raw = Path(keep) if keep else Path(folder) / "samples.txt"
        command = ["py-spy", "record", "--format", "raw", "--threads", "--rate", str(rate)]
        command += ["--gil"] if gil else []
        command += ["-o", str(raw), "--", sys.executable, "-m", "benchmarks.profile_resume"]
        command += ["plain", backend, "--n", str(n)] + (["--concurrent"] if concurrent else [])
        subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).parent.parent)
        stacks = [line.rsplit(" ", 1) for line in raw.read_text().splitlines() if line]
    how = "all at once" if concurrent else "in turn"
    held = "holding the GIL" if gil else "running (not idle)"
    print(f"# py-spy, {n} resumes on {backend}, {how}: samples of threads {held}")
    print(f"({load()}; {rate} samples/s)\n")
    threads: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for stack, times in stacks:
        db_thread = "_connection_worker_thread" in stack
        thread = "aiosqlite's thread" if db_thread else "event loop"
        # The resumes only: not the imports, opening and closing the store, or the starts.
        if thread == "event loop" and "BaseEventLoop._run_once" not in stack:
            continue
        if any(m in stack for m in ("ColdMailAgent.start", "insert_paused", "ColdMailAgent.open",
                                    "_migrate", ".close (")):  # fmt: skip
            continue
        threads[thread].append((stack, int(times)))
    total = sum(c for found in threads.values() for _, c in found)
    for thread, found in threads.items():
        count = sum(c for _, c in found)
        print(f"## {thread}: {count / rate * 1000 / n:.3f} ms per resume ({count / total:.0%})")
        print("\nBy the innermost frame's package (exclusive):")
        packages: Counter[str] = Counter()
        for stack, c in found:
            packages[innermost_package(stack)] += c
        for name, c in packages.most_common():
            if c / count >= 0.01:
                print(f"- {name}: {c / rate * 1000 / n:.3f} ms ({c / count:.0%})")
        print("\nBy part of the path (inclusive: a sample counts in every part it is in):")
        for label, markers in SPY_PARTS:
            part = sum(c for stack, c in found if any(m in stack for m in markers))
            if part:
                print(f"- {label}: {part / rate * 1000 / n:.3f} ms ({part / count:.0%})")
        print()


async def plain(backend: BackendName, n: int, concurrent: bool) -> None:
    """N resumes and nothing else (for an outside profiler)."""
    with places_for(backend) as places:
        async with ours(backend, places) as agent:
            ids = [(await agent.start(BRIEF)).interaction_id for _ in range(n)]
            if concurrent:
                await asyncio.gather(*(agent.resume(i, FEEDBACK) for i in ids))
            else:
                for interaction_id in ids:
                    await agent.resume(interaction_id, FEEDBACK)


# --------------------------------------------------------------------------- contention


@dataclass
class Transaction:
    """One store transaction, timed on the thread that ran it."""

    durable: bool
    began: float  # monotonic, when BEGIN was sent
    locked: float  # when BEGIN IMMEDIATE returned: the write lock is held
    committing: float  # when COMMIT (or ROLLBACK) was sent
    ended: float  # when it returned: the lock is released
    cpu_held: float  # CPU seconds of the thread between ``locked`` and ``ended``


def install_transaction_log(path: str) -> None:
    """Time every transaction of the SQLite store in this process; write them at exit."""
    from bridgic_coldmail.store import sqlite as sqlite_store

    original = sqlite_store._transaction
    found: list[Transaction] = []
    lock = threading.Lock()

    @contextlib.contextmanager
    def timed(db: Any, *, durable: bool = True, immediate: bool = True) -> Iterator[Any]:
        began = time.monotonic()
        marks: dict[str, float] = {}

        with original(db, durable=durable, immediate=immediate) as tx:
            marks["locked"] = time.monotonic()
            marks["cpu"] = time.thread_time()
            yield tx
            marks["committing"] = time.monotonic()
        ended = time.monotonic()
        with lock:
            found.append(
                Transaction(
                    durable,
                    began,
                    marks["locked"],
                    marks["committing"],
                    ended,
                    time.thread_time() - marks["cpu"],
                )
            )

    sqlite_store._transaction = timed

    def dump() -> None:
        with open(path, "a") as out:
            for t in found:
                out.write(json.dumps(t.__dict__) + "\n")

    atexit.register(dump)


def contention(processes: int, n: int, switch_ms: float | None, kind: str) -> None:
    from .subjects import Kind

    print(
        f"# {n} runs from {processes} processes on one SQLite file ({kind}"
        + (f", switch interval {switch_ms} ms" if switch_ms else "")
        + ")"
    )
    print(f"({load()})\n")
    with tempfile.TemporaryDirectory(prefix="coldmail-contention-") as folder:
        log = Path(folder) / "transactions.jsonl"
        store = Store("sqlite", str(Path(folder) / "one.db"))
        env = {TX_LOG_ENV: str(log)}
        if switch_ms:
            env["COLDMAIL_BENCH_SWITCH_MS"] = str(switch_ms)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            found = scenarios.processes(
                cast(Kind, kind), store, n, processes, module="benchmarks.profile_resume"
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        print(
            f"started {found.started_per_s:.0f} runs/s, resumed {found.resumed_per_s:.0f} "
            f"runs/s, errors {found.errors}\n"
        )
        if kind == "ours" and log.exists():
            report_transactions([Transaction(**json.loads(line)) for line in log.open()])


BUSY_STEPS_MS = (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100)
"""SQLite's default busy handler (``sqliteDefaultBusyCallback``): the sleeps between tries."""


def report_transactions(found: list[Transaction]) -> None:
    for durable, name in ((False, "claims (synchronous=NORMAL)"),
                          (True, "pauses and results (synchronous=FULL)")):  # fmt: skip
        chosen = [t for t in found if t.durable == durable]
        if not chosen:
            continue
        wait = sorted((t.locked - t.began) * 1000 for t in chosen)
        held = [(t.ended - t.locked) * 1000 for t in chosen]
        commit = [(t.ended - t.committing) * 1000 for t in chosen]
        cpu = [t.cpu_held * 1000 for t in chosen]
        waited = [w for w in wait if w > 0.5]
        print(f"## {len(chosen)} {name}")
        print(
            f"- wait for the write lock: p50 {statistics.median(wait):.2f} ms, p90 "
            f"{wait[int(0.9 * (len(wait) - 1))]:.2f} ms, max {wait[-1]:.1f} ms; "
            f"{len(waited)} of {len(wait)} waited more than 0.5 ms"
        )
        print(
            f"- lock held: p50 {statistics.median(held):.2f} ms, mean {statistics.fmean(held):.2f}"
            f" ms; of which the COMMIT p50 {statistics.median(commit):.2f} ms, mean "
            f"{statistics.fmean(commit):.2f} ms, max {max(commit):.1f} ms"
        )
        print(
            f"- CPU of the holding thread while it held the lock: mean {statistics.fmean(cpu):.2f}"
            f" ms of {statistics.fmean(held):.2f} ms held"
        )
        steps, edges = Counter[str](), []
        total = 0.0
        for step in BUSY_STEPS_MS:
            total += step
            edges.append(total)
        for w in waited:
            tries = next((i + 1 for i, edge in enumerate(edges) if w <= edge + 0.5), len(edges))
            steps[f"≤{edges[tries - 1]:.0f} ms"] += 1
        if steps:
            print(
                "- waits by the busy handler's cumulative sleeps (1, 3, 8, 18, 33, 53, 78... "
                "ms): "
                + ", ".join(
                    f"{k}: {v}" for k, v in sorted(steps.items(), key=lambda kv: float(kv[0][1:-3]))
                )  # fmt: skip
            )
        print()
    span = max(t.ended for t in found) - min(t.began for t in found)
    busy = merged_length([(t.locked, t.ended) for t in found])
    print(
        f"The write lock was held {busy / span * 100:.0f}% of the {span:.2f} s between the first "
        "transaction and the last (the rest: no process held it, all were working outside "
        "it, or waiters were asleep in the busy handler)."
    )


def merged_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


# --------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_resume")
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("path", "profile"):
        one = sub.add_parser(name)
        one.add_argument("backend", choices=("sqlite", "postgres"))
        one.add_argument("--n", type=int, default=300)
        if name == "profile":
            one.add_argument("--concurrent", action="store_true")
            one.add_argument("--top", type=int, default=25)
            one.add_argument(
                "--wall",
                action="store_true",
                help="profile wall time (default: each thread's CPU time, steadier under load)",
            )
    counts = sub.add_parser("work")
    counts.add_argument("backend", choices=("sqlite", "postgres"))
    counts.add_argument("--n", type=int, default=100)
    book = sub.add_parser("ledger")
    book.add_argument("--number", type=int, default=50)
    for name in ("spy", "plain"):
        one = sub.add_parser(name)
        one.add_argument("backend", choices=("sqlite", "postgres"))
        one.add_argument("--n", type=int, default=1000)
        one.add_argument("--concurrent", action="store_true")
        if name == "spy":
            one.add_argument("--rate", type=int, default=200)
            one.add_argument("--gil", action="store_true", help="only threads holding the GIL")
            one.add_argument("--keep", help="keep py-spy's raw samples in this file")
    many = sub.add_parser("contention")
    many.add_argument("--processes", type=int, default=4)
    many.add_argument("--n", type=int, default=1000)
    many.add_argument("--switch", type=float, help="sys.setswitchinterval in ms, per worker")
    many.add_argument("--kind", choices=("ours", "floor"), default="ours")
    args = parser.parse_args(argv)
    if args.what == "path":
        asyncio.run(path(args.backend, args.n))
    elif args.what == "profile":
        asyncio.run(profile(args.backend, args.n, args.concurrent, args.top, args.wall))
    elif args.what == "work":
        asyncio.run(work_of(args.backend, args.n))
    elif args.what == "ledger":
        asyncio.run(ledger(args.number))
    elif args.what == "spy":
        spy(args.backend, args.n, args.concurrent, args.rate, args.gil, args.keep)
    elif args.what == "plain":
        asyncio.run(plain(args.backend, args.n, args.concurrent))
    else:
        contention(args.processes, args.n, args.switch, args.kind)


def worker() -> None:
    """A worker of ``scenarios.processes`` with its transactions logged (``contention``)."""
    from .workers import main as worker_main

    switch = os.environ.get("COLDMAIL_BENCH_SWITCH_MS")
    if switch:
        sys.setswitchinterval(float(switch) / 1000)
    log = os.environ.get(TX_LOG_ENV)
    kind, backend, location, count = sys.argv[1:]
    if log and kind == "ours":
        install_transaction_log(log)
    asyncio.run(worker_main(cast(Any, kind), Store(cast(Any, backend), location), int(count)))


if __name__ == "__main__":
    if os.environ.get(TX_LOG_ENV) and len(sys.argv) == 5 and sys.argv[1] in ("ours", "floor"):
        worker()
    else:
        main()
