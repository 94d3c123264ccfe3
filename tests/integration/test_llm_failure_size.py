"""Failures stay small: a huge LLM error or answer is neither printed whole nor stored whole.

A failed step is printed once and stored twice (the run's ``last_error`` and a history
event); before 0.6 both held the server's whole error body, megabytes per failure. The answer
is also capped before it is parsed: the HTTP body as it is read (whatever its framing or
compression) and the answer's text before JSON parsing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import (
    Brief,
    ColdMailAgent,
    LlmError,
    RetryPolicy,
    RunStatus,
    SyncColdMailAgent,
)
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer, default_sequence

from ..conftest import Completed

FEEDBACK = "CTOs at mid-size hospitals"
MB = 1024 * 1024
HUGE = 5 * MB
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
MAX_LINE = 600
"""The longest one-line error these tests accept."""


def _huge_extra_key() -> str:
    answer = default_sequence("refine", "Product: Acme")
    answer["opener"]["x" * HUGE] = "y"
    return json.dumps(answer)


def _huge_text_field() -> str:
    answer = default_sequence("refine", "Product: Acme")
    answer["opener"]["body"] = "\x1b[31m" + "word " * (HUGE // 5)
    return json.dumps(answer)


FAULTS = {
    "400-body": Reply(kind="refine", status=400, content="\x1b]0;pwned\x07" + "e" * HUGE),
    "500-body": Reply(kind="refine", status=500, content="e" * HUGE),
    "extra-key": Reply(kind="refine", content=_huge_extra_key()),
    "long-body": Reply(kind="refine", content=_huge_text_field()),
    "chunked": Reply(kind="refine", content=_huge_extra_key(), chunked=True),
    "gzip-bomb": Reply(kind="refine", content=" " * (50 * MB) + _huge_text_field(), gzip=True),
}


def _stored_bytes(db_path: Path) -> int:
    """The bytes the database holds, with its write-ahead log checkpointed into it."""
    with sqlite3.connect(db_path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_huge_failure_prints_one_short_line_and_stores_a_few_bytes(
    cli: Callable[..., Completed], server: ScriptedOpenAIServer, db_path: Path, fault: str
) -> None:
    started = cli("start", "--product", "Acme", "--offer", "saves time", "--sender", "Dana",
                  "--json")  # fmt: skip
    assert started.returncode == 0, started.stderr
    interaction_id = json.loads(started.stdout)["interaction_id"]
    before = _stored_bytes(db_path)

    server.enqueue(*[FAULTS[fault]] * 4)
    failed = cli("resume", interaction_id, "--feedback", FEEDBACK)
    assert failed.returncode == 6, failed.stderr  # an LLM failure
    assert failed.stdout == ""
    (line,) = failed.stderr.splitlines()
    assert len(line) <= MAX_LINE, line[:2000]
    assert "\x1b" not in line and "\x07" not in line

    grown = _stored_bytes(db_path) - before
    assert grown <= 8 * 1024, f"the database grew by {grown} bytes"
    with SyncColdMailAgent.open(db_path) as agent:
        run = agent.get(interaction_id)
        (failure,) = [event for event in agent.history(interaction_id) if event.kind == "failed"]
    assert run.status is RunStatus.AWAITING_FEEDBACK  # nothing lost: it can be resumed again
    assert run.last_error is not None and len(run.last_error) <= MAX_LINE
    assert failure.detail == run.last_error


@pytest.mark.parametrize("fault", ["chunked", "gzip-bomb"])
async def test_an_oversized_answer_is_refused_as_it_is_read_without_retrying(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief, fault: str
) -> None:
    async with ColdMailAgent.open(db_path, retry=FAST) as agent:
        paused = await agent.start(brief)
        server.enqueue(FAULTS[fault])
        with pytest.raises(LlmError, match="larger than 1 MiB"):
            await agent.resume(paused.interaction_id, FEEDBACK)
        assert server.count("refine") == 1  # the same server would send the same again
        done = await agent.resume(paused.interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED


async def test_a_compressed_answer_of_normal_size_is_read(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    answer = json.dumps(default_sequence("draft", "Product: Acme Scheduler"))
    server.enqueue(Reply(kind="draft", content=answer, gzip=True, chunked=True))
    async with ColdMailAgent.open(db_path, retry=FAST) as agent:
        paused = await agent.start(brief)
    assert paused.draft.opener.subject == "A faster way with Acme Scheduler"
    assert server.count("draft") == 1


async def test_every_request_caps_the_answer_in_tokens(
    server: ScriptedOpenAIServer, db_path: Path, brief: Brief
) -> None:
    async with ColdMailAgent.open(db_path, retry=FAST) as agent:
        await agent.start(brief)
    (request,) = server.requests
    assert 1000 <= request.body["max_tokens"] <= 8192
