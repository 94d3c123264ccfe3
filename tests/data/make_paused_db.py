"""Write tests/data/paused-by-<version>.db: runs paused by this release, for later releases.

Run once per release that changes what is stored (``python -m tests.data.make_paused_db``),
commit the database and its key file, and never regenerate an existing one:
``tests/integration/test_migrations.py`` resumes every database in this folder with the current
code.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bridgic_coldmail import Brief, ColdMailAgent, __version__
from bridgic_coldmail.testing import ScriptedOpenAIServer

HERE = Path(__file__).resolve().parent
FEEDBACK = "CTOs at mid-size hospitals"


async def main() -> None:
    db_path = HERE / f"paused-by-{__version__}.db"
    if db_path.exists():
        raise SystemExit(f"{db_path} exists; a release's fixture is never regenerated")
    with ScriptedOpenAIServer() as server:
        os.environ.update(OPENAI_API_BASE=server.base_url, OPENAI_API_KEY="fixture")
        os.environ.pop("COLDMAIL_SECRET_KEY", None)
        async with ColdMailAgent.open(db_path) as agent:
            brief = Brief(product="Acme Scheduler", offer="cuts no-shows", sender="Dana Lee")
            paused = await agent.start(brief)
            done = await agent.start(brief)
            await agent.resume(done.interaction_id, FEEDBACK)
            # From 0.5: a run paused at review round 2 (one revision), with merge fields.
            review = await agent.start(brief, review=True, fields=["First Name"])
            await agent.resume(review.interaction_id, FEEDBACK)
            await agent.revise(review.interaction_id, "shorter", reviewer="Ann")
    print(
        f"{db_path.name}: awaiting {paused.interaction_id}, completed {done.interaction_id}, "
        f"at review {review.interaction_id}"
    )


if __name__ == "__main__":
    asyncio.run(main())
