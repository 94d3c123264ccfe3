"""One round of the side-by-side section, in a fresh process (``scenarios.round_in_child``).

    python -m benchmarks.child KIND sqlite|postgres LOCATION SEQUENTIAL CONCURRENT

KIND is ``ours``, ``floor``, ``langgraph`` or ``langgraph-exit``. Opens that subject on a fresh
store, runs SEQUENTIAL runs one after another (start, then resume, each timed, after five
warm-up runs), then CONCURRENT starts at once and their resumes at once, and prints one JSON
line: the samples, the rates, the CPU time per run this process spent in each concurrent phase, the
load average before and after, and the database settings the subject ran with.

A fresh process per round means no round inherits another's caches, pools, garbage or
imports, and the parent can alternate the order of the subjects from round to round.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from dataclasses import asdict
from typing import Any, cast

from .fake_llm import InstantLlm
from .scenarios import concurrent, sequential
from .subjects import BackendName, Kind, Peer, Store, opened


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(kind: Kind, store: Store, n_sequential: int, n_concurrent: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    async with opened(kind, store, InstantLlm()) as subject:
        settings = await subject.peer.settings() if isinstance(subject, Peer) else {}
        latencies = await sequential(subject, n_sequential)
        throughput = await concurrent(subject, n_concurrent, cpu_clock=cpu_seconds)
    return {
        "kind": kind,
        **asdict(latencies),
        **asdict(throughput),
        "load": [load_before, os.getloadavg()[0]],
        "settings": settings,
    }


if __name__ == "__main__":
    kind, backend, location, n_sequential, n_concurrent = sys.argv[1:]
    store = Store(cast(BackendName, backend), location)
    found = asyncio.run(measure(cast(Kind, kind), store, int(n_sequential), int(n_concurrent)))
    print(json.dumps(found), flush=True)
