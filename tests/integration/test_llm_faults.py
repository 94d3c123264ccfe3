"""LLM faults against the scripted server: what is retried, how patiently, and what is not.

Each failing resume leaves the run resumable; the request counts show that the retry policy
is the only retry layer (the OpenAI SDK's and Bridgic's are off for the LLM built here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, LlmError, RetryPolicy, RunStatus
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

FEEDBACK = "CTOs at mid-size hospitals"
FAST = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2, max_retry_after=5)


@pytest.fixture
async def fast_agent(server: ScriptedOpenAIServer, db_path: Path) -> AsyncIterator[ColdMailAgent]:
    async with ColdMailAgent.open(db_path, retry=FAST, llm_timeout=0.5) as agent:
        yield agent


async def _paused(agent: ColdMailAgent, brief: Brief) -> str:
    return (await agent.start(brief)).interaction_id


async def test_429_waits_as_long_as_retry_after_says(
    fast_agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    interaction_id = await _paused(fast_agent, brief)
    server.enqueue(
        Reply(kind="refine", status=429, content="slow down", headers={"Retry-After": "1"})
    )
    done = await fast_agent.resume(interaction_id, FEEDBACK)
    assert done.status is RunStatus.COMPLETED
    first, second = (r for r in server.requests if r.kind == "refine")
    # The policy's own backoff is 0.05 s; only Retry-After explains a one-second gap.
    assert second.received_at - first.received_at >= 0.95


async def test_retry_after_longer_than_allowed_fails_at_once(
    fast_agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    interaction_id = await _paused(fast_agent, brief)
    server.enqueue(Reply(kind="refine", status=429, headers={"Retry-After": "3600"}))
    with pytest.raises(LlmError, match="asks to wait 3600 s .* longer than the 5 s allowed"):
        await fast_agent.resume(interaction_id, FEEDBACK)
    assert server.count("refine") == 1
    assert (await fast_agent.get(interaction_id)).status is RunStatus.AWAITING_FEEDBACK


@pytest.mark.parametrize(
    "fault",
    [
        Reply(kind="refine", status=500, content="boom"),
        Reply(kind="refine", status=503, content="overloaded"),
        Reply(kind="refine", delay=1.5),
        Reply(kind="refine", content='{"opener": "not an email"}'),
        Reply(kind="refine", content="not json at all"),
    ],
    ids=["500", "503", "timeout", "invalid-output", "not-json"],
)
async def test_transient_faults_are_retried_then_succeed(
    fast_agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief, fault: Reply
) -> None:
    interaction_id = await _paused(fast_agent, brief)
    server.enqueue(fault, fault)
    done = await fast_agent.resume(interaction_id, FEEDBACK)
    assert done.final is not None
    assert server.count("refine") == 3


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Reply(kind="refine", status=502, content="bad gateway"), "failed after 4 tries"),
        (Reply(kind="refine", delay=1.5), "within 0.5 s after 4 tries"),
        (Reply(kind="refine", content="{}"), "did not validate after 4 tries"),
    ],
    ids=["5xx", "timeout", "invalid-output"],
)
async def test_persistent_faults_give_one_clear_error_after_bounded_tries(
    fast_agent: ColdMailAgent,
    server: ScriptedOpenAIServer,
    brief: Brief,
    fault: Reply,
    expected: str,
) -> None:
    interaction_id = await _paused(fast_agent, brief)
    server.enqueue(*[fault] * 4)
    with pytest.raises(LlmError, match=expected):
        await fast_agent.resume(interaction_id, FEEDBACK)
    assert server.count("refine") == 4  # exactly the policy's tries: no hidden retry layer
    run = await fast_agent.get(interaction_id)
    assert run.status is RunStatus.AWAITING_FEEDBACK and run.last_error is not None
    assert (await fast_agent.resume(interaction_id, FEEDBACK)).final is not None


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_not_retried(
    fast_agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief, status: int
) -> None:
    interaction_id = await _paused(fast_agent, brief)
    server.enqueue(Reply(kind="refine", status=status, content="no"))
    with pytest.raises(LlmError, match=f"Error code: {status}"):
        await fast_agent.resume(interaction_id, FEEDBACK)
    assert server.count("refine") == 1


async def test_draft_faults_are_retried_too(
    fast_agent: ColdMailAgent, server: ScriptedOpenAIServer, brief: Brief
) -> None:
    server.enqueue(Reply(kind="draft", status=503))
    pending = await fast_agent.start(brief)
    assert pending.status is RunStatus.AWAITING_FEEDBACK
    assert server.count("draft") == 2


def test_backoff_is_exponential_and_bounded() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=8.0)
    delays = [policy.backoff(n) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        expected = min(8.0, 0.5 * 2 ** (n - 1))
        assert expected * 0.8 <= delay <= expected * 1.2
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
