"""The batch's pace: calls at once, a pause for the whole batch after a 429, recovery, the
tokens-per-minute budget, and the halts — the pacer alone, then many leads against the
scripted server. Every time assertion is a lower bound ("no call started before…"), which a
loaded machine can only make easier to meet, never a speed target."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from bridgic_coldmail.errors import ConfigurationError, LlmError
from bridgic_coldmail.llm import close_llm, openai_llm
from bridgic_coldmail.personalize import LineContext, LineTask, LlmLineWriter, Pacer, pacer_for
from bridgic_coldmail.personalize.writer import LINE_MARKER
from bridgic_coldmail.retry import RetryPolicy
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import RecordedRequest, Reply, ScriptedOpenAIServer

from ..personalize_cases import LEDGERLY, LEDGERLY_SEQUENCE

RETRY = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_retry_after=5)
CONTEXT = LineContext(LEDGERLY, LEDGERLY_SEQUENCE)


def tasks(count: int) -> list[LineTask]:
    return [
        LineTask(CONTEXT, {"title": "Controller", "company": f"Firm {i}"}, row=i + 2)
        for i in range(count)
    ]


def honest(request: RecordedRequest) -> Reply:
    company = request.user_text.split("- company: ", 1)[1].split("\n", 1)[0]
    return Reply(json.dumps({"line": f"As Controller at {company}, you see every invoice."}))


# --------------------------------------------------------------------------- the pacer alone


async def test_never_more_calls_in_flight_than_the_limit() -> None:
    pacer = Pacer(3)
    in_flight = peak = 0

    async def call() -> None:
        nonlocal in_flight, peak
        async with pacer.slot() as ticket:
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            pacer.succeeded(ticket)

    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 3 and pacer.in_flight == 0 and pacer.stats.calls == 30


async def test_a_429_halves_the_limit_once_per_round_and_successes_win_it_back() -> None:
    pacer = Pacer(8, retry=RetryPolicy(max_retry_after=5))
    # Eight calls sent together all come back 429: one halving, not eight.
    tickets = []
    for _ in range(8):
        async with pacer.slot() as ticket:
            tickets.append(ticket)
    for ticket in tickets:
        pacer.rate_limited(ticket, retry_after=0)
    assert pacer.limit == 4 and pacer.stats.halvings == 1 and pacer.stats.rate_limited == 8
    # A call sent after the halving that is refused too halves again.
    async with pacer.slot() as later:
        pass
    pacer.rate_limited(later, retry_after=0)
    assert pacer.limit == 2 and pacer.stats.halvings == 2
    # Additive increase: about one more call at once per round of successes.
    rounds = []
    while pacer.limit < 8:
        async with pacer.slot() as ticket:
            pacer.succeeded(ticket)
        rounds.append(pacer.limit)
    assert rounds.count(2) == 2 and rounds.count(3) == 3 and rounds[-1] == 8
    for _ in range(50):
        async with pacer.slot() as ticket:
            pacer.succeeded(ticket)
    assert pacer.limit == 8  # never above the setting
    # It never goes below one.
    for _ in range(10):
        async with pacer.slot() as ticket:
            pacer.rate_limited(ticket, retry_after=0)
    assert pacer.limit == 1


async def test_a_429_pauses_every_call_until_its_retry_after() -> None:
    pacer = Pacer(4, retry=RetryPolicy(max_retry_after=5))
    async with pacer.slot() as ticket:
        refused_at = time.monotonic()
        pacer.rate_limited(ticket, retry_after=0.4)
    assert pacer.paused_for > 0.3
    started: list[float] = []

    async def call() -> None:
        async with pacer.slot() as ticket:
            started.append(time.monotonic())
            pacer.succeeded(ticket)

    await asyncio.gather(*(call() for _ in range(6)))
    assert min(started) >= refused_at + 0.4
    assert pacer.stats.paused_seconds > 0
    # A shorter pause never shortens a longer one; without Retry-After the backoff applies.
    pacer.pause_until(time.monotonic() + 0.3)
    pacer.pause_until(time.monotonic() + 0.1)
    assert pacer.paused_for > 0.2
    backoff = Pacer(1, retry=RetryPolicy(base_delay=0.2, max_delay=0.2))
    async with backoff.slot() as ticket:
        backoff.rate_limited(ticket, retry_after=None)
    assert 0.1 < backoff.paused_for <= 0.25


async def test_the_pacer_halts_on_a_wait_too_long_and_on_a_storm_without_end() -> None:
    pacer = Pacer(2, retry=RetryPolicy(max_retry_after=10))
    async with pacer.slot() as ticket:
        with pytest.raises(LlmError, match="asks to wait 3600 s"):
            pacer.rate_limited(ticket, retry_after=3600)
    with pytest.raises(LlmError, match="asks to wait") as halted:
        async with pacer.slot():
            pass
    assert halted.value.topic == "batch_halted" and pacer.halted is halted.value

    storm = Pacer(2, retry=RetryPolicy(max_retry_after=10), max_rate_limited_in_a_row=4)
    for _ in range(3):
        async with storm.slot() as ticket:
            storm.rate_limited(ticket, retry_after=0)
    async with storm.slot() as ticket:
        with pytest.raises(LlmError, match="refused 4 calls in a row"):
            storm.rate_limited(ticket, retry_after=0)
    # A success between them resets the count.
    calm = Pacer(2, retry=RetryPolicy(max_retry_after=10), max_rate_limited_in_a_row=2)
    for _ in range(5):
        async with calm.slot() as ticket:
            calm.rate_limited(ticket, retry_after=0)
        async with calm.slot() as ticket:
            calm.succeeded(ticket)
    assert calm.halted is None


async def test_calls_waiting_for_a_place_see_a_halt() -> None:
    pacer = Pacer(1)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with pacer.slot():
            holding.set()
            await release.wait()

    async def waiter() -> None:
        async with pacer.slot():
            raise AssertionError("a halted batch gives no more places")

    task = asyncio.create_task(holder())
    await holding.wait()
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    with pytest.raises(LlmError):
        pacer.halt("stop")
    release.set()
    await task
    with pytest.raises(LlmError, match="stop"):
        await waiting


async def test_the_budget_holds_and_a_call_larger_than_it_is_refused() -> None:
    # 1,000 tokens per 0.5 s period; calls of 300 tokens: 3 at once, then about one per 0.15 s.
    pacer = Pacer(20, tokens_per_minute=1000, period=0.5)
    started: list[float] = []
    begin = time.monotonic()

    async def call() -> None:
        async with pacer.slot(300) as ticket:
            started.append(time.monotonic() - begin)
            pacer.succeeded(ticket)

    await asyncio.gather(*(call() for _ in range(12)))
    started.sort()
    for index, at in enumerate(started):
        # A bucket of 1,000 refilled at 2,000 a second: the (n+1)th call's 300 tokens fit
        # only after (300 (n + 1) - 1000) / 2000 seconds.
        assert at >= (300 * (index + 1) - 1000) / 2000 - 0.01, (index, at)
    assert pacer.stats.budget_seconds > 0
    with pytest.raises(ConfigurationError, match="more than the whole budget"):
        async with pacer.slot(1001):
            pass


def test_bad_pacer_arguments_and_the_settings_pacer() -> None:
    with pytest.raises(ValueError):
        Pacer(0)
    with pytest.raises(ValueError):
        Pacer(1, tokens_per_minute=0)
    pacer = pacer_for(Settings.resolve({}, personalize_concurrency=3))
    assert (pacer.concurrency, pacer.tokens_per_minute) == (3, None)
    env = {"COLDMAIL_PERSONALIZE_CONCURRENCY": "16", "COLDMAIL_PERSONALIZE_TPM": "90000"}
    pacer = pacer_for(Settings.resolve(env))
    assert (pacer.concurrency, pacer.tokens_per_minute) == (16, 90000)
    for bad in ("0", "257", "-1", "1.5", "eight"):
        with pytest.raises(ConfigurationError, match="COLDMAIL_PERSONALIZE_CONCURRENCY"):
            Settings.resolve({"COLDMAIL_PERSONALIZE_CONCURRENCY": bad})
    for bad in ("999", "0", "1e12", "lots"):
        with pytest.raises(ConfigurationError, match="COLDMAIL_PERSONALIZE_TPM"):
            Settings.resolve({"COLDMAIL_PERSONALIZE_TPM": bad})
    assert Settings.resolve({}).personalize_sample_size == 5
    with pytest.raises(ConfigurationError, match="COLDMAIL_PERSONALIZE_SAMPLE_SIZE"):
        Settings.resolve({"COLDMAIL_PERSONALIZE_SAMPLE_SIZE": "0"})


# --------------------------------------------------------------------------- a batch, end to end


@pytest.fixture
def respond(server: ScriptedOpenAIServer) -> Iterator[Callable[..., None]]:
    yield server.respond_with
    server.respond_with(None)


@pytest.fixture
async def llm(server: ScriptedOpenAIServer) -> AsyncIterator[object]:
    built = openai_llm(Settings.resolve())
    yield built
    await close_llm(built)


class Storm:
    """Answers honestly after ``latency`` seconds, except that calls number ``storm`` get
    a 429 with ``Retry-After``; records when each 429 was sent."""

    def __init__(self, storm: set[int], retry_after: float, latency: float = 0.02) -> None:
        self.storm = storm
        self.retry_after = retry_after
        self.latency = latency
        self.calls = 0
        self.refused_at: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        assert LINE_MARKER in request.user_text
        with self.lock:
            self.calls += 1
            number = self.calls
        if number in self.storm:
            with self.lock:
                self.refused_at.append(time.monotonic())
            headers = {"Retry-After": f"{self.retry_after:g}"}
            return Reply("Rate limit reached", status=429, headers=headers)
        return Reply(honest(request).content, delay=self.latency)


async def run_batch(writer: LlmLineWriter, count: int) -> list[bool]:
    """Every lead at once (the pacer decides how many run); the first error is raised once
    every lead has ended, as a batch runner would."""
    results = await asyncio.gather(
        *(writer.write(task) for task in tasks(count)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return [r.written for r in results if not isinstance(r, BaseException)]


def arrivals_within(server: ScriptedOpenAIServer, start: float, end: float) -> int:
    return sum(1 for r in server.requests if start < r.received_at < end)


async def test_a_429_storm_slows_the_whole_batch_and_it_recovers(
    llm: object, server: ScriptedOpenAIServer, respond: Callable[..., None]
) -> None:
    storm = Storm(storm={5, 6, 7}, retry_after=0.5)
    respond(storm)
    pacer = Pacer(4, retry=RETRY)
    writer = LlmLineWriter(llm, model="m", timeout=10, pacer=pacer, retry=RETRY)
    written = await run_batch(writer, 40)
    assert all(written)  # a 429 is never a lead's failure
    assert server.count() == 43  # forty lines and three refused calls
    assert pacer.stats.rate_limited == 3 and pacer.stats.halvings >= 1
    # After each 429 left the server, at most the calls already in flight (the limit less
    # the refused one) arrived before its Retry-After was over.
    for refused_at in storm.refused_at:
        assert arrivals_within(server, refused_at, refused_at + 0.5) <= 3
    assert pacer.limit == 4  # back to the setting after enough successes
    # Enough calls came after the storm for a batch that ignored it to crowd that window.
    assert sum(1 for r in server.requests if r.received_at > max(storm.refused_at)) > 30


async def test_the_storm_check_catches_a_batch_that_ignores_429s(
    llm: object,
    server: ScriptedOpenAIServer,
    respond: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same storm with the pause and the halving switched off: the check above must fail.
    storm = Storm(storm={5, 6, 7}, retry_after=0.5)
    respond(storm)
    monkeypatch.setattr(Pacer, "rate_limited", lambda self, ticket, retry_after: None)
    writer = LlmLineWriter(llm, model="m", timeout=10, pacer=Pacer(4, retry=RETRY), retry=RETRY)
    assert all(await run_batch(writer, 40))
    assert max(arrivals_within(server, t, t + 0.5) for t in storm.refused_at) > 3


async def test_a_long_storm_halts_the_batch_instead_of_failing_every_lead(
    llm: object, server: ScriptedOpenAIServer, respond: Callable[..., None]
) -> None:
    respond(lambda request: Reply("Rate limit reached", status=429, headers={"Retry-After": "0"}))
    pacer = Pacer(4, retry=RETRY, max_rate_limited_in_a_row=6)
    writer = LlmLineWriter(llm, model="m", timeout=10, pacer=pacer, retry=RETRY)
    with pytest.raises(LlmError, match="refused 6 calls in a row"):
        await run_batch(writer, 20)
    assert server.count() <= 6 + 3  # the calls in flight when it halted may still arrive


async def test_the_token_budget_holds_for_a_batch(
    llm: object, server: ScriptedOpenAIServer, respond: Callable[..., None]
) -> None:
    respond(honest)
    writer = LlmLineWriter(llm, model="m", timeout=10, pacer=Pacer(8), retry=RETRY)
    per_call = writer.tokens_for(tasks(1)[0]).total
    budget = per_call * 3  # three calls at once, then one per period / 3
    pacer = Pacer(8, tokens_per_minute=budget, period=0.6, retry=RETRY)
    writer = LlmLineWriter(llm, model="m", timeout=10, pacer=pacer, retry=RETRY)
    begin = time.monotonic()
    assert all(await run_batch(writer, 9))
    arrived = sorted(r.received_at - begin for r in server.requests)
    assert len(arrived) == 9
    for index, at in enumerate(arrived):
        # Tokens of the calls started by then never exceed the bucket plus its refill.
        needed = (index + 1) * per_call - budget
        assert at >= needed / (budget / 0.6) - 0.02, (index, at)


@pytest.mark.parametrize(
    ("value", "halts"),
    [
        ("inf", True),
        ("1e9", True),
        ("nan", False),
        ("-5", False),
        ("Wed, 21 Oct 2015 07:28:00 GMT", False),  # a date in the past
        ("soon", False),  # not a wait: the backoff applies
        ("", False),
    ],
)
async def test_hostile_retry_after_values_neither_hang_nor_crash_the_batch(
    llm: object,
    server: ScriptedOpenAIServer,
    respond: Callable[..., None],
    value: str,
    halts: bool,
) -> None:
    calls = iter(range(1000))

    def once_then_honest(request: RecordedRequest) -> Reply:
        if next(calls) == 0:
            return Reply("Rate limit reached", status=429, headers={"Retry-After": value})
        return honest(request)

    respond(once_then_honest)
    pacer = Pacer(2, retry=RETRY)
    writer = LlmLineWriter(llm, model="m", timeout=10, pacer=pacer, retry=RETRY)
    if halts:
        with pytest.raises(LlmError, match="longer than the 5 s allowed"):
            await run_batch(writer, 3)
    else:
        assert await run_batch(writer, 3) == [True, True, True]
        assert pacer.stats.rate_limited == 1 and pacer.paused_for <= RETRY.max_delay
