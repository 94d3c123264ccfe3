"""What a batch will take, before it starts: leads, tokens, and cost when prices are set.

Tokens are *estimated*, at :data:`CHARS_PER_TOKEN` characters a token: the exact count needs
the model's own tokenizer, which is not available offline for every model (tiktoken knows
OpenAI's; a vLLM or Ollama model has its own). For English prose the estimate is usually
within a quarter of the real count; text in other scripts takes more tokens per character, so
the estimate runs low for it. A call's prompt counts its messages, a few tokens of overhead
per message, and the answer's JSON schema (which the server receives and bills); its answer
counts the longest answer the schema allows, so the answer side is an upper bound.

Each lead takes one call when its first line passes the checks; a refused line is rewritten,
so the estimate also gives the most a batch can take (every lead at every try).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from ..settings import Settings
from .lines import LineTask

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
"""Role and separators around each message (OpenAI's published rule of thumb)."""
TOKENS_PER_REPLY = 3


def tokens_in(text: str) -> int:
    """Estimated tokens in ``text``: one per :data:`CHARS_PER_TOKEN` characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class CallTokens:
    """The estimated tokens of one LLM call."""

    prompt: int = 0
    answer: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.answer

    def __add__(self, other: CallTokens) -> CallTokens:
        return CallTokens(self.prompt + other.prompt, self.answer + other.answer)


NO_CALL = CallTokens()


def call_tokens(
    messages: Sequence[Any], answer: type[BaseModel], longest_answer: int
) -> CallTokens:
    """A structured-output call's tokens: ``messages`` (Bridgic ``Message``s) and the
    ``answer`` model's JSON schema in, at most ``longest_answer`` characters of JSON out."""
    prompt = sum(tokens_in(str(m.content or "")) + TOKENS_PER_MESSAGE for m in messages)
    answer_tokens = math.ceil(longest_answer / CHARS_PER_TOKEN)
    return CallTokens(prompt + _schema_tokens(answer) + TOKENS_PER_REPLY, answer_tokens)


@functools.cache
def _schema_tokens(answer: type[BaseModel]) -> int:
    return tokens_in(json.dumps(answer.model_json_schema(), separators=(",", ":")))


class TokenCounter(Protocol):
    """What the estimate needs from a line writer."""

    name: str
    """How the lines are written, for people (``"an LLM"``, ``"written without an LLM"``)."""
    tries: int
    """The most lines written for one lead (the first and its rewrites)."""

    def tokens_for(self, task: LineTask) -> CallTokens:
        """The estimated tokens of the first call for ``task`` (``NO_CALL`` for none)."""
        ...


@dataclass(frozen=True)
class Prices:
    """What 1,000 tokens cost, in whatever currency the prices are given in."""

    prompt_per_1k: float
    answer_per_1k: float

    def cost(self, tokens: CallTokens) -> float:
        return (tokens.prompt * self.prompt_per_1k + tokens.answer * self.answer_per_1k) / 1000


@dataclass(frozen=True)
class BatchEstimate:
    """What a batch will take: see the module docstring for how it is estimated."""

    leads: int
    tokens: CallTokens
    """All leads, one call each."""
    tries: int
    writer: str
    prices: Prices | None = None

    @property
    def cost(self) -> float | None:
        """The cost of one call per lead, when prices are set."""
        return self.prices.cost(self.tokens) if self.prices else None

    @property
    def most_tokens(self) -> CallTokens:
        """Every lead at every try (each rewrite's prompt is a little longer; ignored)."""
        return CallTokens(self.tokens.prompt * self.tries, self.tokens.answer * self.tries)

    @property
    def most_cost(self) -> float | None:
        return self.prices.cost(self.most_tokens) if self.prices else None

    def describe(self) -> str:
        """The estimate in a few sentences, for a person about to start the batch."""
        leads = f"{self.leads:,} lead{'s' if self.leads != 1 else ''}"
        if self.tokens.total == 0:
            return f"{leads}; lines {self.writer}: no LLM calls, no cost."
        text = (
            f"{leads}, one LLM call each: about {_tokens(self.tokens.prompt)} prompt tokens and "
            f"at most {_tokens(self.tokens.answer)} answer tokens (estimated at "
            f"{CHARS_PER_TOKEN} characters a token)"
        )
        if self.cost is not None and self.most_cost is not None:
            text += f", about {self.cost:,.2f} at the prices set"
            if self.tries > 1:
                text += (
                    f"; if every line were refused and rewritten, up to {self.tries} calls a "
                    f"lead: {self.most_cost:,.2f}"
                )
        else:
            text += "; set prices per 1,000 tokens to see the cost"
        return text + "."


def estimate_batch(
    tasks: Iterable[LineTask], writer: TokenCounter, prices: Prices | None = None
) -> BatchEstimate:
    """Estimate a batch by building each lead's prompt (streamed: any number of leads)."""
    leads = 0
    tokens = NO_CALL
    for task in tasks:
        leads += 1
        tokens += writer.tokens_for(task)
    return BatchEstimate(leads, tokens, writer.tries, writer.name, prices)


def _tokens(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1_000_000:,.1f} million"
    return f"{count:,}"


def prices_for(settings: Settings) -> Prices | None:
    """The prices the settings give (``price_prompt_per_1k``, ``price_answer_per_1k``)."""
    if settings.price_prompt_per_1k is None or settings.price_answer_per_1k is None:
        return None
    return Prices(settings.price_prompt_per_1k, settings.price_answer_per_1k)
