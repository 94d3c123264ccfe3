"""Reaching the reviewer at scale (issue 21): deadlines that fall due together, notifications
to a receiver, and a worker's memory beside many pending deadlines.

* **Deadlines at once**: N runs paused for audience feedback, each with a deadline
  (``reject``) due at the same instant; two workers (two stores on one database, in one
  process) fire them. Each run must be rejected by its deadline exactly once; the figure is
  the time from the due instant to the history's ``rejected`` event, p50 and p95.
* **Deliveries**: N ``run.paused`` webhooks (Standard Webhooks, signed) to a receiver in
  another process on loopback that answers 204; deliveries a second for one worker.
* **Memory**: the peak RSS of a process that opens the store and runs a worker pass while
  100,000 deadlines are pending (not due), against the same with 1,000: the worker claims
  in batches, so nothing should grow with the number waiting.

    python -m benchmarks --only reviewer --no-postgres      # SQLite rows only
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.delivery import Worker, timed_worker
from bridgic_coldmail.models import DEADLINE_ACTOR, RunStatus
from bridgic_coldmail.notify.policy import WaitPolicy
from bridgic_coldmail.signing import SnapshotSigner
from bridgic_coldmail.store import RunStore, connect_store
from bridgic_coldmail.store.outbox import Timer

from .fake_llm import InstantLlm
from .report import HERE, Figure
from .subjects import Store

if TYPE_CHECKING:
    from .run import Context

WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BRIEF = Brief(
    product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee", audience="CFOs"
)
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

ThreadingHTTPServer.request_queue_size = 1024  # the worker opens up to a batch at once
ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
MEMORY = """
import asyncio, json, sys
from pathlib import Path
from bridgic_coldmail.delivery import timed_worker
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.store import connect_store
from benchmarks.rss import peak_rss_kb

async def main() -> None:
    settings = Settings.resolve(db=sys.argv[1], secret_key=sys.argv[2] or None)
    store = await connect_store(settings)
    worker, runner = timed_worker(store, settings)
    for _ in range(5):
        await worker.run_once()
    await runner.aclose()
    await store.close()
    print(json.dumps({"peak_rss_mb": peak_rss_kb() / 1024, "timers": worker.stats.timers}))

asyncio.run(main())
"""


def _settings_options(store: Store) -> dict[str, Any]:
    return {**store.agent_options(), "webhook_secret": WEBHOOK_SECRET}


async def _agent(store: Store) -> ColdMailAgent:
    from bridgic_coldmail.settings import Settings

    options = _settings_options(store)
    settings = Settings.resolve(db=store.location, **options)
    return await ColdMailAgent.connect(settings=settings, llm=InstantLlm())


def _deadline_at(due: datetime) -> Any:
    """A plan for ``RunStore.enqueue``: one ``reject`` deadline of the run's pause, due at
    ``due`` (the same instant for every run)."""
    wait = WaitPolicy(respond_within=60.0, on_timeout="reject")

    def plan(row: Mapping[str, Any], now: datetime, signer: SnapshotSigner) -> list[Any]:
        run_id = str(row["interaction_id"])
        timer = Timer("deadline", run_id, str(row["pause_id"]), None, 1, due, due, wait)
        return [timer.row(signer, now=now)]

    return plan


async def deadlines_at_once(store: Store, n: int, workers: int = 2) -> tuple[list[float], int]:
    """Seconds from the due instant to each run's rejection, and the runs not rejected by
    their deadline exactly once."""
    agent = await _agent(store)
    try:
        ids = [
            r.interaction_id for r in await asyncio.gather(*(agent.start(BRIEF) for _ in range(n)))
        ]
        due = datetime.now(timezone.utc) + timedelta(seconds=2)
        plan = _deadline_at(due)
        for run_id in ids:
            await agent._store.enqueue(run_id, plan)
        await asyncio.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds()) + 0.01)
        stores = [await connect_store(agent.settings) for _ in range(workers)]
        try:
            pairs = [timed_worker(s, agent.settings) for s in stores]
            for worker, _ in pairs:
                worker.batch = 50
            await asyncio.gather(*(w.run_once() for w, _ in pairs))
            for _, runner in pairs:
                await runner.aclose()
        finally:
            for s in stores:
                await s.close()
        latencies, wrong = [], 0
        for run_id in ids:
            run = await agent.get(run_id)
            rejected = [
                e
                for e in await agent.history(run_id)
                if e.kind == "rejected" and e.actor == DEADLINE_ACTOR
            ]
            if run.status is not RunStatus.REJECTED or len(rejected) != 1:
                wrong += 1
                continue
            latencies.append((rejected[0].at - due).total_seconds())
        return latencies, wrong
    finally:
        await agent.aclose()


@contextmanager
def receiver_process() -> Iterator[str]:
    process = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        process.kill()
        process.wait()


async def deliveries_per_second(store: Store, n: int) -> tuple[float, int]:
    """One worker delivering ``n`` queued webhooks: deliveries a second, and failures."""
    agent = await _agent(store)
    try:
        with receiver_process() as url:
            await asyncio.gather(*(agent.start(BRIEF, notify=[url]) for _ in range(n)))
            opened: RunStore = await connect_store(agent.settings)
            try:
                worker = Worker(opened, agent.settings, batch=50)
                began = time.perf_counter()
                await worker.run_once()
                took = time.perf_counter() - began
            finally:
                await opened.close()
        return worker.stats.delivered / took, n - worker.stats.delivered
    finally:
        await agent.aclose()


async def _pending(store: Store, runs: int, per_run: int) -> None:
    """``runs × per_run`` deadlines pending a year from now."""
    agent = await _agent(store)
    try:
        ids = [
            r.interaction_id
            for r in await asyncio.gather(*(agent.start(BRIEF) for _ in range(runs)))
        ]
        later = datetime.now(timezone.utc) + timedelta(days=365)
        wait = WaitPolicy(respond_within=60.0, on_timeout="reject")

        def plan(row: Mapping[str, Any], now: datetime, signer: SnapshotSigner) -> list[Any]:
            run_id = str(row["interaction_id"])
            return [
                Timer("reminder", run_id, str(row["pause_id"]), None, n, later, later, wait).row(
                    signer, now=now
                )
                for n in range(1, per_run + 1)
            ]

        for run_id in ids:
            await agent._store.enqueue(run_id, plan)
    finally:
        await agent.aclose()


def worker_rss_mb(store: Store) -> float:
    secret = _settings_options(store).get("secret_key") or ""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY, store.location, secret],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    return float(json.loads(result.stdout)["peak_rss_mb"])


async def reviewer(ctx: Context) -> list[Figure]:
    """The rows of issue 21 (see the module's docstring)."""
    n = ctx.sizes.concurrent
    figures = []
    for backend in ctx.backends:
        label = "SQLite" if backend == "sqlite" else "PostgreSQL"
        latencies, wrong = await deadlines_at_once(ctx.places.new(backend, "deadlines"), n)
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
        figures.append(
            Figure(
                f"{n:,} deadlines due at once, two workers, due → applied, {label}",
                "s",
                latencies,
                [],
                "each applied exactly once",
                met=wrong == 0,
                note=f"p95 {p95:.2f} s; runs not rejected exactly once by their deadline: {wrong}",
            )
        )
        ctx.log(f"deadlines on {label} done")
        rate, failed = await deliveries_per_second(ctx.places.new(backend, "deliveries"), n)
        figures.append(
            Figure(
                f"{n:,} webhooks to a loopback receiver, one worker, {label}",
                "deliveries/s",
                [rate],
                [],
                "0 failed",
                met=failed == 0,
                note=f"failed: {failed}; Standard Webhooks signatures, HTTP/1.1 keep-alive",
                higher_is_better=True,
            )
        )
        ctx.log(f"deliveries on {label} done")
    small, large = (
        ctx.places.new("sqlite", "timers-small"),
        ctx.places.new("sqlite", "timers-large"),
    )
    runs = max(1, ctx.sizes.scale_small // 10)
    await _pending(small, runs, 1_000 // runs)
    await _pending(large, runs, ctx.sizes.scale_large // runs)
    rss_small, rss_large = worker_rss_mb(small), worker_rss_mb(large)
    figures.append(
        Figure(
            f"peak RSS of a worker pass with {ctx.sizes.scale_large:,} pending timers "
            "(floor column: 1,000), SQLite",
            "MB",
            [rss_large],
            [rss_small],
            "≤ 1.1× the small store",
            met=rss_large <= 1.1 * rss_small,
        )
    )
    ctx.log("worker memory done")
    return figures
