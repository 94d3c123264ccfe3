"""Every page answers in bounded time, and no page holds up the others.

The run page marks the words each version changed. Its work is bounded by construction: the
words of two texts are aligned by ``rapidfuzz``'s bit-parallel LCS, whose cost is
``ceil(n / 64) * m`` word steps whatever the words are, and only when ``n * m`` is at most
``views.MAX_DIFF_CELLS`` (every valid body fits); past it, the changed middle is marked whole.
The tests count the cells handed to the aligner on the worst texts we could construct
(repetitive, alternating, at their length limit, over many rounds) rather than time them; a
hang guard only keeps a regression from hanging the suite.

The page is rendered on a worker thread, so a slow render never stalls the event loop: a
test forces one and asks for the inbox meanwhile.
"""

from __future__ import annotations

import asyncio
import html
import random
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Indel, LCSseq

from bridgic_coldmail import Brief, ColdMailAgent
from bridgic_coldmail.export import lint
from bridgic_coldmail.web import views

from .test_web import settings_for, web_client
from .test_web_review import at_review

HANG_GUARD = 60.0
"""Seconds before a request is taken for hung: a guard, not a timing assertion."""
BODY = views.BODY_LIMIT
SUBJECT = views.SUBJECT_LIMIT


def repeated(word: str, limit: int) -> str:
    """``word word word …`` as long as ``limit`` allows."""
    return " ".join([word] * ((limit + 1) // (len(word) + 1)))


def seeded_words(vocabulary: str, limit: int, seed: int) -> str:
    chooser = random.Random(seed)
    return " ".join(chooser.choice(vocabulary) for _ in range((limit + 1) // 2))


def alternating(limit: int, period: int) -> str:
    """``a b a b …`` (period 1) or ``a a b b …`` (period 2), as long as ``limit`` allows."""
    return " ".join("ab"[i // period % 2] for i in range((limit + 1) // 2))


TEN = "abcdefghij"
WORST_PAIRS: dict[str, Callable[[int], tuple[str, str]]] = {
    "one word, then another": lambda n: (repeated("x", n), repeated("y", n)),
    "alternating, shifted": lambda n: (alternating(n, 1), "b " + alternating(n - 2, 1)),
    "alternating, other period": lambda n: (alternating(n, 1), alternating(n, 2)),
    "two random words": lambda n: (seeded_words("ab", n, 1), seeded_words("ab", n, 2)),
    "ten random words": lambda n: (seeded_words(TEN, n, 3), seeded_words(TEN, n, 4)),
    "lines of one word": lambda n: ("x\n" * (n // 2), "x\ny\n" * (n // 4)),
}  # fmt: skip
"""Texts that made ``difflib`` run for minutes (the first two at 2,000 characters took tens of
seconds): repetitive, alternating, nothing or everything in common."""


@pytest.fixture
def aligned_cells(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Records ``len(a) * len(b)`` of every alignment the highlighting asks rapidfuzz for."""
    cells: list[int] = []
    real = Indel.opcodes

    def counting(a: Any, b: Any, **options: Any) -> Any:
        cells.append(len(a) * len(b))
        return real(a, b, **options)

    monkeypatch.setattr(Indel, "opcodes", counting)
    yield cells


def shown_text(marked: str) -> str:
    """The text a reader sees in highlighted markup."""
    return html.unescape(re.sub(r"</?ins>", "", marked))


def unmarked_words(marked: str) -> list[str]:
    """The words left outside ``<ins>``: those the highlighting says did not change."""
    outside = re.sub(r"<ins>.*?</ins>", " ", marked, flags=re.S)
    return html.unescape(outside).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """The textbook dynamic program, for checking small cases."""
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


# ---------------------------------------------------------------------------- the highlighting


@pytest.mark.parametrize("case", list(WORST_PAIRS))
def test_the_worst_bodies_are_aligned_within_the_bound(case: str, aligned_cells: list[int]) -> None:
    before, after = WORST_PAIRS[case](BODY)
    assert len(before) <= BODY and len(after) <= BODY
    marked = views.highlight_changes(before, after)
    assert shown_text(marked) == after
    assert len(aligned_cells) <= 1 and all(c <= views.MAX_DIFF_CELLS for c in aligned_cells)
    # The words left unmarked are a longest common subsequence: nothing more is marked.
    assert len(unmarked_words(marked)) == LCSseq.similarity(before.split(), after.split())


def test_every_valid_body_fits_the_bound() -> None:
    most_words = len(repeated("x", BODY).split())
    assert most_words * most_words <= views.MAX_DIFF_CELLS


def test_texts_past_the_bound_are_marked_whole_without_aligning(aligned_cells: list[int]) -> None:
    before = repeated("x", 8 * BODY)
    after = "x x " + repeated("y", 8 * BODY) + " x"
    marked = views.highlight_changes(before, after)
    assert aligned_cells == []  # the common ends are trimmed, and the middle is too large
    assert marked.startswith("x x <ins>y y") and marked.endswith("y</ins> x")
    assert shown_text(marked) == after


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("Hi Ann, thanks", "Hi Bob, thanks", "Hi <ins>Bob,</ins> thanks"),
        ("one two", "one two", "one two"),
        ("", "new words here", "<ins>new words here</ins>"),
        ("gone", "", ""),
        ("a\n\nb", "a\n\nnew\nb", "a\n\n<ins>new</ins>\nb"),
        ("  lead", "  lead and more  ", "  lead <ins>and more</ins>  "),
        ("x", "<b>&x", "<ins>&lt;b&gt;&amp;x</ins>"),
        ("same words", "same  words", "same  words"),  # whitespace alone is no change
    ],
)
def test_changed_words_are_marked_and_everything_is_escaped(
    before: str, after: str, expected: str
) -> None:
    assert str(views.highlight_changes(before, after)) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "<", "&", "\n", " "]), max_size=40),
    st.lists(st.sampled_from(["a", "b", "c", "<", "&", "\n", " "]), max_size=40),
)
def test_the_highlighting_shows_the_text_and_marks_a_minimal_change(
    before_parts: list[str], after_parts: list[str]
) -> None:
    before, after = " ".join(before_parts), " ".join(after_parts)
    marked = views.highlight_changes(before, after)
    assert shown_text(marked) == after
    assert "<ins></ins>" not in marked and not re.search(r"<ins>\s", marked)
    assert len(unmarked_words(marked)) == lcs_length(before.split(), after.split())


# ---------------------------------------------------------------------------- the run page


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with web_client(settings_for(db_path)) as c:
        yield c


def worst_sequence(text: str, subject: str) -> dict[str, Any]:
    return {
        "opener": {"subject": subject, "body": text, "wait_days": 0},
        "follow_up": {"subject": subject, "body": text, "wait_days": 3},
    }


async def get_page(client: httpx.AsyncClient, url: str) -> httpx.Response:
    page = await asyncio.wait_for(client.get(url), HANG_GUARD)
    assert page.status_code == 200
    return page


async def test_a_run_edited_with_the_worst_texts_renders_with_bounded_work(
    client: httpx.AsyncClient, db_path: Path, brief: Brief, aligned_cells: list[int]
) -> None:
    interaction_id = await at_review(db_path, brief)
    texts = [text for case in WORST_PAIRS.values() for text in case(BODY)]
    # A subject is one line: the same words, their line breaks made spaces.
    subjects = [" ".join(text.split()) for case in WORST_PAIRS.values() for text in case(SUBJECT)]
    async with ColdMailAgent.open(db_path) as agent:
        for text, subject in zip(texts, subjects, strict=True):  # twelve rounds of edits
            await agent.edit(interaction_id, worst_sequence(text, subject))
    page = await get_page(client, f"/runs/{interaction_id}")
    assert "Under review · round 13" in page.text
    assert page.text.count("<ins>") > 2  # the last edit's changes are marked
    async with ColdMailAgent.open(db_path) as agent:
        await agent.approve(interaction_id)
    completed = await get_page(client, f"/runs/{interaction_id}")
    assert "Final (approved)" in completed.text
    # Two pages, each at most three comparisons of two emails' subjects and bodies.
    assert 0 < len(aligned_cells) <= 2 * 3 * 4
    assert max(aligned_cells) <= views.MAX_DIFF_CELLS


@pytest.mark.parametrize(
    ("module", "name"),
    [(views, "highlight_changes"), (lint, "lint_sequence")],
    ids=["diff", "lint"],
)
async def test_a_slow_page_does_not_hold_up_other_requests(
    client: httpx.AsyncClient,
    db_path: Path,
    brief: Brief,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
) -> None:
    interaction_id = await at_review(db_path, brief)
    rendering, inbox_answered = threading.Event(), threading.Event()
    real = getattr(module, name)
    first = [True]

    def slow(*args: Any, **kwargs: Any) -> Any:
        """A step that lasts until the inbox has been answered (or the guard runs out)."""
        if first[0]:
            first[0] = False
            rendering.set()
            inbox_answered.wait(HANG_GUARD / 4)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, slow)
    heavy = asyncio.create_task(client.get(f"/runs/{interaction_id}"))
    assert await asyncio.to_thread(rendering.wait, HANG_GUARD)
    inbox = await asyncio.wait_for(client.get("/?tab=review"), HANG_GUARD)
    answered_while_rendering = not heavy.done()
    inbox_answered.set()
    page = await asyncio.wait_for(heavy, HANG_GUARD)
    assert inbox.status_code == 200 and interaction_id in inbox.text
    assert page.status_code == 200 and "Under review" in page.text
    assert answered_while_rendering, "the inbox waited for the other page to render"


async def test_a_run_with_many_rounds_shows_the_newest_and_counts_the_others(
    client: httpx.AsyncClient, db_path: Path, brief: Brief
) -> None:
    interaction_id = await at_review(db_path, brief)
    rounds = views.MAX_SHOWN_ROUNDS + 15
    async with ColdMailAgent.open(db_path) as agent:
        for number in range(1, rounds):
            text = f"Version {number}: " + repeated(f"w{number}", BODY - 20)
            await agent.edit(interaction_id, worst_sequence(text, f"Subject {number}"))
        history = await agent.history(interaction_id)
    page = (await get_page(client, f"/runs/{interaction_id}")).text
    shown = re.findall(r"<summary>Round (\d+) ·", page)
    # Rounds 1 to 34 were decided; 35 is under review. The newest 20 are shown, in order.
    assert [int(n) for n in shown] == list(range(rounds - views.MAX_SHOWN_ROUNDS, rounds))
    assert f"{rounds - 1 - views.MAX_SHOWN_ROUNDS} earlier rounds are not shown" in page
    assert f"coldmail show {interaction_id}</code> prints the whole history" in page
    assert len(page) < (views.MAX_SHOWN_ROUNDS + 3) * 4 * BODY  # the page does not grow with them
    assert len(history) > views.MAX_SHOWN_EVENTS
    assert page.count('<tr class="event">') == views.MAX_SHOWN_EVENTS
    assert f"{len(history) - views.MAX_SHOWN_EVENTS} earlier events are not shown" in page
