"""Before a batch: how many leads, how many tokens (estimated) and what cost; during it: the
progress line, live on a terminal and plain elsewhere."""

from __future__ import annotations

import io
import json
import os
import re
import select
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bridgic_coldmail.errors import ConfigurationError, LlmError
from bridgic_coldmail.export.leads import Lead, LeadReader
from bridgic_coldmail.llm import close_llm, openai_llm
from bridgic_coldmail.personalize import (
    LineContext,
    LineResult,
    LineTask,
    LlmLineWriter,
    Pacer,
    PlainLineWriter,
    Prices,
    Progress,
    estimate_batch,
    prices_for,
)
from bridgic_coldmail.personalize.estimate import CallTokens, tokens_in
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

from ..personalize_cases import CASES, LEDGERLY, LEDGERLY_SEQUENCE

CONTEXT = LineContext(LEDGERLY, LEDGERLY_SEQUENCE)


@pytest.fixture
async def llm(server: ScriptedOpenAIServer) -> AsyncIterator[object]:
    built = openai_llm(Settings.resolve())
    yield built
    await close_llm(built)


@pytest.fixture
def respond(server: ScriptedOpenAIServer) -> Iterator[Callable[..., None]]:
    yield server.respond_with
    server.respond_with(None)


def writer_for(llm: object) -> LlmLineWriter:
    return LlmLineWriter(llm, model="gpt-4o-mini", timeout=10, pacer=Pacer(4))


# --------------------------------------------------------------------------- the estimate


def test_tokens_are_estimated_at_four_characters_each() -> None:
    assert [tokens_in(t) for t in ("", "abcd", "abcde", "x" * 400)] == [0, 1, 2, 100]
    assert CallTokens(3, 4) + CallTokens(10, 20) == CallTokens(13, 24)
    assert CallTokens(3, 4).total == 7


async def test_the_estimate_matches_what_the_server_receives(
    llm: object, server: ScriptedOpenAIServer, respond: Callable[..., None]
) -> None:
    respond(lambda r: Reply(json.dumps({"line": "As a controller you see every invoice."})))
    writer = writer_for(llm)
    for case in CASES:
        task = LineTask(LineContext(case.brief, case.sequence), case.lead)
        estimated = writer.tokens_for(task)
        await writer.write(task)
        body = server.requests[-1].body
        sent = sum(len(m["content"]) for m in body["messages"]) + len(
            json.dumps(body["response_format"]["json_schema"]["schema"], separators=(",", ":"))
        )
        # The prompt's characters / 4, give or take the per-message overhead.
        assert abs(estimated.prompt - sent / 4) <= 20, (case.name, estimated, sent)
        assert estimated.answer == tokens_in('{"line":""}' + "x" * 200)


def test_a_batch_estimate_streams_the_list_and_prices_it(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("email,first_name,title,company\n")
        for i in range(10_000):
            out.write(f"lead{i}@firm{i}.example,Ann,Controller,Firm {i} Ltd\n")
        out.write("not-an-address,Bob,CFO,Nowhere\n")
    writer = LlmLineWriter(object(), model="m", timeout=1, pacer=Pacer(1))
    with LeadReader(path) as reader:
        tasks = (LineTask.for_lead(CONTEXT, lead) for lead in reader if isinstance(lead, Lead))
        estimate = estimate_batch(tasks, writer, Prices(0.15, 0.6))
    one = writer.tokens_for(LineTask(CONTEXT, {"first_name": "Ann", "title": "Controller",
                                               "company": "Firm 1 Ltd"}))  # fmt: skip
    assert estimate.leads == 10_000
    assert abs(estimate.tokens.prompt - 10_000 * one.prompt) <= 10_000  # "Firm 12345" is longer
    assert estimate.tokens.answer == 10_000 * one.answer
    assert estimate.cost == pytest.approx(
        (estimate.tokens.prompt * 0.15 + estimate.tokens.answer * 0.6) / 1000
    )
    assert estimate.most_cost == pytest.approx(estimate.cost * 3)  # type: ignore[operator]
    text = estimate.describe()
    assert text.startswith("10,000 leads, one LLM call each: about ")
    assert "million prompt tokens" in text and "(estimated at 4 characters a token)" in text
    assert f"about {estimate.cost:,.2f} at the prices set" in text
    assert "up to 3 calls a lead" in text
    unpriced = estimate_batch([LineTask(CONTEXT, {"company": "Acme"})], writer)
    assert unpriced.cost is None and "set prices per 1,000 tokens" in unpriced.describe()
    assert unpriced.describe().startswith("1 lead, one LLM call each")


def test_plain_lines_cost_nothing() -> None:
    estimate = estimate_batch([LineTask(CONTEXT, {"company": "Acme"})] * 3, PlainLineWriter())
    assert estimate.tokens.total == 0 and estimate.cost is None
    assert estimate.describe() == (
        "3 leads; lines written without an LLM, from the lead's columns: no LLM calls, no cost."
    )


def test_prices_come_from_the_settings_in_pairs() -> None:
    assert prices_for(Settings.resolve({})) is None
    env = {"COLDMAIL_PRICE_PROMPT_PER_1K": "0.15", "COLDMAIL_PRICE_ANSWER_PER_1K": "0"}
    assert prices_for(Settings.resolve(env)) == Prices(0.15, 0.0)
    with pytest.raises(ConfigurationError, match="set both"):
        Settings.resolve({"COLDMAIL_PRICE_ANSWER_PER_1K": "0.6"})
    for bad in ("-1", "nan", "inf", "1001", "cheap", "true"):
        with pytest.raises(ConfigurationError, match="COLDMAIL_PRICE_PROMPT_PER_1K"):
            Settings.resolve({**env, "COLDMAIL_PRICE_PROMPT_PER_1K": bad})
    with pytest.raises(ConfigurationError, match="price_answer_per_1k"):
        Settings.resolve({}, price_prompt_per_1k=0.1, price_answer_per_1k=True)


# --------------------------------------------------------------------------- progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def written(row: int = 2) -> LineResult:
    return LineResult(row=row, line="A line for this lead.")


def skipped(row: int = 2) -> LineResult:
    return LineResult(row=row, line=None, skipped="why")


def test_off_a_terminal_progress_is_a_plain_line_every_interval() -> None:
    out = io.StringIO()
    clock = Clock()
    progress = Progress(100, out=out, interval=10, clock=clock)
    assert not progress.live
    for i in range(40):
        clock.now += 0.5
        progress.add(skipped() if i % 10 == 0 else written())
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert (
        lines[0]
        == "Writing lines: 1 of 100 leads (1%) · 0 written, 1 skipped · 2.0/s, about 50 s left"
    )
    assert len(lines) == 3  # the first, one 10 s later, and the end
    assert lines[-1].startswith("Writing lines: 40 of 100 leads (40%) · 36 written, 4 skipped")
    done = io.StringIO()
    finished = Progress(2, out=done, clock=clock)
    finished.add(written())
    clock.now += 30
    finished.add(written())
    finished.close()
    assert done.getvalue().splitlines()[-1].endswith("2 written, 0 skipped · took 30 s")


def test_on_a_terminal_progress_is_one_line_redrawn_in_place() -> None:
    master, slave = os.openpty()  # a real terminal, as a person's shell has
    try:
        with os.fdopen(slave, "w", encoding="utf-8", closefd=False) as out:
            clock = Clock()
            progress = Progress(10, out=out, clock=clock, label="Lines \x1b[31mred")
            assert progress.live
            for _ in range(10):
                clock.now += 1
                progress.add(written())
            progress.close()
        chunks = []
        while select.select([master], [], [], 0.5)[0]:  # a pty hands its output in pieces
            chunks.append(os.read(master, 65536))
        shown = b"".join(chunks).decode("utf-8")
    finally:
        os.close(master)
        os.close(slave)
    frames = [frame for frame in shown.replace("\r\n", "\n").split("\r") if frame.strip()]
    assert len(frames) == 11  # one redraw per second of the fake clock, and the last again
    assert frames[0].startswith("Lines \\x1b[31mred: [##..................] 1 of 10 leads")
    assert "\x1b" not in shown  # the label's escape is shown, not obeyed
    assert frames[-1].startswith("Lines \\x1b[31mred: [####################] 10 of 10 leads")
    assert shown.endswith("\n")


async def test_the_progress_line_says_when_the_pacer_slowed_down() -> None:
    pacer = Pacer(8)
    assert "calls at once" not in Progress(10, out=io.StringIO(), pacer=pacer).line()
    async with pacer.slot() as ticket:
        pacer.rate_limited(ticket, retry_after=30)
    line = Progress(10, out=io.StringIO(), pacer=pacer).line()
    assert re.search(r"paused (29|30) s by the LLM server \(429\)$", line), line
    slowed = Pacer(8)
    async with slowed.slot() as ticket:
        slowed.rate_limited(ticket, retry_after=0)
    assert "slowed to 4 of 8 calls at once" in Progress(10, pacer=slowed).line()
    with pytest.raises(LlmError):
        slowed.halt("stop")
    assert Progress(10, pacer=slowed).line().endswith("halted")


def test_a_closed_or_odd_stream_is_not_a_terminal() -> None:
    class Odd(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert not Progress(1, out=Odd()).live
