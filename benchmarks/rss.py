"""Peak RSS of one process running N concurrent runs (start all, then resume all).

python -m benchmarks.rss ours|floor sqlite|postgres LOCATION N     # prints {"peak_rss_mb": ...}
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path
from typing import Any, cast

from .fake_llm import InstantLlm
from .scenarios import concurrent
from .subjects import Kind, Store, opened


async def main(kind: Kind, store: Store, n: int) -> None:
    async with opened(kind, store, InstantLlm()) as subject:
        await concurrent(subject, n)


def peak_rss_kb() -> int:
    # ru_maxrss survives execve on Linux, so a child started by a big parent would report the
    # parent's peak; VmHWM belongs to this process image alone.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    kind, backend, location, n = sys.argv[1:]
    asyncio.run(main(cast(Kind, kind), Store(cast(Any, backend), location), int(n)))
    print(json.dumps({"peak_rss_mb": peak_rss_kb() / 1024}))
