"""A child process for the load tests: start or resume many runs at once, or race resumers.

    python -m tests.load.load_worker start N            # N runs started concurrently
    python -m tests.load.load_worker resume IDS_FILE    # every id resumed concurrently
    python -m tests.load.load_worker race IDS_FILE      # per id, two forked processes race

Prints one JSON object on stdout. Settings come from the environment (COLDMAIL_DB, which may
be a postgresql:// URL, COLDMAIL_SECRET_KEY, OPENAI_*): each process opens its own store,
so on PostgreSQL each has its own connection pool.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from bridgic_coldmail import Brief, ColdMailAgent, ColdmailError, RunBeingResumed, RunStatus
from bridgic_coldmail.settings import is_postgres_url

BRIEF = Brief(product="Acme Scheduler", offer="cuts no-shows by 30%", sender="Dana Lee")
FEEDBACK = "CTOs at mid-size hospitals"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def start(count: int) -> dict[str, Any]:
    async with ColdMailAgent.open() as agent:
        results = await asyncio.gather(
            *(agent.start(BRIEF) for _ in range(count)), return_exceptions=True
        )
    return {
        "ids": [r.interaction_id for r in results if not isinstance(r, BaseException)],
        "errors": [_error(r) for r in results if isinstance(r, BaseException)],
    }


async def resume(ids: list[str]) -> dict[str, Any]:
    async with ColdMailAgent.open() as agent:
        results = await asyncio.gather(
            *(agent.resume(i, FEEDBACK) for i in ids), return_exceptions=True
        )
    done = [r for r in results if not isinstance(r, BaseException)]
    return {
        "completed": sum(1 for r in done if r.status is RunStatus.COMPLETED),
        "errors": [_error(r) for r in results if isinstance(r, BaseException)],
    }


def _racer(interaction_id: str, barrier: Any) -> None:
    async def main() -> int:
        async with ColdMailAgent.open() as agent:
            barrier.wait()
            try:
                await agent.resume(interaction_id, FEEDBACK)
            except RunBeingResumed:
                return RunBeingResumed.exit_code
            except ColdmailError as exc:
                print(_error(exc), file=sys.stderr)
                return exc.exit_code
        return 0

    sys.exit(asyncio.run(main()))


def race(ids: list[str]) -> dict[str, Any]:
    import bridgic.llms.openai  # noqa: F401  (imported once here, not in every forked racer)

    if is_postgres_url(os.environ.get("COLDMAIL_DB", "")):
        import bridgic_coldmail.store.postgres  # noqa: F401  (likewise psycopg and its pool)

    context = multiprocessing.get_context("fork")
    outcomes: list[list[int | None]] = []
    for interaction_id in ids:
        barrier = context.Barrier(2)
        racers = [context.Process(target=_racer, args=(interaction_id, barrier)) for _ in "ab"]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(timeout=60)
        outcomes.append([racer.exitcode for racer in racers])
    return {"outcomes": outcomes}


def main(argv: list[str]) -> None:
    command, argument = argv
    if command == "start":
        result = asyncio.run(start(int(argument)))
    else:
        ids = json.loads(Path(argument).read_text())
        result = asyncio.run(resume(ids)) if command == "resume" else race(ids)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
