"""One of the processes of the multi-process scenario (``scenarios.processes``).

    python -m benchmarks.workers ours|floor sqlite|postgres LOCATION N

Opens its own store, warms up, prints ``{"ready": true}``; then on each ``go`` line from its
parent: first N runs started at once, then those N resumed at once, printing after each
``{"t0", "t1", "done", "errors"}`` (``time.monotonic``, shared by every process on Linux).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, cast

from .fake_llm import InstantLlm
from .subjects import Kind, Store, opened


def _say(report: dict[str, Any]) -> None:
    print(json.dumps(report), flush=True)


async def main(kind: Kind, store: Store, n: int) -> None:
    async with opened(kind, store, InstantLlm()) as subject:
        for _ in range(5):
            await subject.resume(await subject.start())
        _say({"ready": True})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        t0 = time.monotonic()
        started = await asyncio.gather(*(subject.start() for _ in range(n)), return_exceptions=True)
        t1 = time.monotonic()
        ids = [s for s in started if isinstance(s, str)]
        _say({"t0": t0, "t1": t1, "done": len(ids), "errors": n - len(ids)})
        await loop.run_in_executor(None, sys.stdin.readline)
        t0 = time.monotonic()
        resumed = await asyncio.gather(*(subject.resume(i) for i in ids), return_exceptions=True)
        t1 = time.monotonic()
        failed = sum(isinstance(r, BaseException) for r in resumed)
        _say({"t0": t0, "t1": t1, "done": len(ids) - failed, "errors": failed})


if __name__ == "__main__":
    kind, backend, location, count = sys.argv[1:]
    store = Store(cast(Any, backend), location)
    asyncio.run(main(cast(Kind, kind), store, int(count)))
