"""Peak RSS of one process running N concurrent runs (start all, then resume all).

python -m benchmarks.rss ours|floor N DB_PATH     # prints {"peak_rss_mb": ...}
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path

from .fake_llm import InstantLlm
from .run import concurrent_throughput, opened


async def main(kind: str, n: int, path: Path) -> None:
    async with opened(kind, path, InstantLlm()) as subject:
        await concurrent_throughput(subject, n)


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
    kind, n, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    asyncio.run(main(kind, n, path))
    print(json.dumps({"peak_rss_mb": peak_rss_kb() / 1024}))
