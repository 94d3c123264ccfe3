"""The embedded model, measured: on-topic quality, draft and refine times, and its speed
against plain llama.cpp generation on the same hardware in the same run.

    python -m benchmarks.local_model          # prints Markdown rows for RESULTS.md

Quality: :data:`QUALITY_CASES` are twelve briefs (different products, industries and
senders, with and without an audience and a call to action), each with a reviewer's feedback
and a seed, fixed before any output was looked at (in ``testbed/local_quality.py``). Each
case drafts and refines with the real model and passes only if every check of
:func:`check_case` holds. The test suite runs the same cases (``tests/unit/test_local_quality.py``)
and needs at least 11 of 12.

Speed: each case's draft and refinement are timed through ``LocalLlm.acompose``; after each
one, plain ``Llama.create_completion`` generates the same number of tokens from the same
first prompt and the same cached state (interleaved call by call, so drift in the
machine's speed hits both sides). The ratio of the two rates is what this package's way
of generating costs against what the hardware does.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from bridgic_coldmail.llm.writing import WritingTask
from bridgic_coldmail.models import EmailSequence
from testbed.local_quality import (
    LONG_FEEDBACK_CASES,
    LONG_FEEDBACK_PASS_MARK,
    QUALITY_CASES,
    QUALITY_PASS_MARK,
    QualityCase,
    check_case,
)

# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class CaseResult:
    """One case: its draft and refinement, their times, and what the checks found."""

    case: QualityCase
    draft: EmailSequence
    refined: EmailSequence
    draft_seconds: float
    refine_seconds: float
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class LocalModelResults:
    """What :func:`measure` found, by name."""

    model: str
    cases: tuple[CaseResult, ...]
    draft_p50: float
    """Seconds, median over the cases, through ``LocalLlm.acompose``."""
    draft_p95: float
    refine_p50: float
    refine_p95: float
    ours_tokens_per_second: float
    """Every token this package generated (kept or not) over the whole time of its calls."""
    plain_tokens_per_second: float
    """Plain ``create_completion`` of the same number of tokens from the same prompt."""
    plain_spread: tuple[float, float]
    """The slowest and fastest plain rate of one call: how noisy the machine was."""
    first_call_seconds: float
    """Loading the model and evaluating the worksheet's head, once per process."""
    load_average: tuple[float, float]
    """The 1-minute load average before and after."""

    @property
    def speed_ratio(self) -> float:
        return self.ours_tokens_per_second / self.plain_tokens_per_second

    @property
    def quality_passed(self) -> int:
        return sum(result.passed for result in self.cases)


async def ameasure(
    cases: tuple[QualityCase, ...] = QUALITY_CASES, log: Any = None
) -> LocalModelResults:
    """Draft and refine every case with the real model; time it and check it (async)."""
    log = log or (lambda message: None)
    from bridgic_coldmail.llm.local.model import LocalLlm, using_model
    from bridgic_coldmail.llm.local.writer import TEMPERATURE, WORKSHEET_HEAD, LlamaLines

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    warm = LocalLlm(seed=0)
    shared = (warm.model_path, warm.n_ctx, warm.n_threads)
    with using_model(*shared) as llama:
        lines = LlamaLines(llama)
        head = lines.tokenize(WORKSHEET_HEAD, bos=True)
        lines.start(head)
    first_call = time.perf_counter() - started

    def plain(prompt: list[int], tokens: int, seed: int) -> tuple[int, float]:
        with using_model(*shared) as llama:
            lines = LlamaLines(llama)
            lines.start(head)
            began = time.perf_counter()
            out = llama.create_completion(
                prompt, max_tokens=tokens, temperature=TEMPERATURE, seed=seed
            )
            return int(out["usage"]["completion_tokens"]), time.perf_counter() - began

    ours_tokens = ours_seconds = plain_tokens = plain_seconds = 0.0
    plain_rates: list[float] = []
    results = []
    for number, case in enumerate(cases):
        llm = LocalLlm(seed=case.seed)
        timed: list[tuple[EmailSequence, float]] = []
        for kind in ("draft", "refine"):
            task = WritingTask(
                kind=kind,  # type: ignore[arg-type]
                brief=case.brief,
                feedback=case.feedback if kind == "refine" else None,
                current=timed[0][0] if timed else None,
                fields=case.fields,
            )

            # Interleaved call by call, so drift in the machine's speed hits both alike.
            began = time.perf_counter()
            sequence = await llm.acompose(task)
            timed.append((sequence, time.perf_counter() - began))
            stats = llm.last_stats
            assert stats is not None
            n, seconds = await asyncio.to_thread(plain, stats.first_prompt, stats.tokens, case.seed)
            ours_tokens += stats.tokens
            ours_seconds += stats.seconds
            plain_tokens += n
            plain_seconds += seconds
            plain_rates.append(n / seconds)
        (draft, draft_s), (refined, refine_s) = timed
        problems = tuple(check_case(case, draft, refined))
        log(f"case {number + 1}: draft {draft_s:.1f} s, refine {refine_s:.1f} s, "
            f"{'pass' if not problems else '; '.join(problems)}")  # fmt: skip
        results.append(CaseResult(case, draft, refined, draft_s, refine_s, problems))

    drafts = [r.draft_seconds for r in results]
    refines = [r.refine_seconds for r in results]
    return LocalModelResults(
        model=warm.model_path.name,
        cases=tuple(results),
        draft_p50=statistics.median(drafts),
        draft_p95=_p95(drafts),
        refine_p50=statistics.median(refines),
        refine_p95=_p95(refines),
        ours_tokens_per_second=ours_tokens / ours_seconds,
        plain_tokens_per_second=plain_tokens / plain_seconds,
        plain_spread=(min(plain_rates), max(plain_rates)),
        first_call_seconds=first_call,
        load_average=(load_before, os.getloadavg()[0]),
    )


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(cases: tuple[QualityCase, ...] = QUALITY_CASES, log: Any = None) -> LocalModelResults:
    """Draft and refine every case with the real model; time it and check it."""
    return asyncio.run(ameasure(cases, log))


def figures(results: LocalModelResults) -> list[dict[str, Any]]:
    """The rows as keyword arguments for ``benchmarks.run.Figure`` (plain llama.cpp in the
    "floor" column of the speed row), for the full benchmark run to include."""
    seeds = ", ".join(str(r.case.seed) for r in results.cases)
    low, high = results.plain_spread
    n = len(results.cases)
    return [
        dict(workload="local model: draft (acompose)", unit="s",
             ours=[r.draft_seconds for r in results.cases], target="≤ 8 s (p50)",
             met=results.draft_p50 <= 8,
             note=f"{results.model}, {n} briefs, fixed seeds; the first call in a process adds "
             f"{results.first_call_seconds:.1f} s (load + worksheet head)"),
        dict(workload="local model: refine (acompose)", unit="s",
             ours=[r.refine_seconds for r in results.cases], target="≤ 8 s (p50)",
             met=results.refine_p50 <= 8, note="the same briefs and seeds"),
        dict(workload="local model: tokens/s, ours (floor: plain llama.cpp)", unit="tokens/s",
             ours=[results.ours_tokens_per_second], floor=[results.plain_tokens_per_second],
             target="≥ 0.8× plain", met=results.speed_ratio >= 0.8, higher_is_better=True,
             note="plain: create_completion of the same number of tokens from the same prompt, "
             f"interleaved call by call; plain per call {low:.0f}–{high:.0f} tokens/s"),
        dict(workload="local model: on-topic quality", unit=f"of {n} cases",
             ours=[float(results.quality_passed)], target=f"≥ {QUALITY_PASS_MARK} of 12",
             met=results.quality_passed >= QUALITY_PASS_MARK, higher_is_better=True,
             note=f"seeds {seeds}; checks in benchmarks/local_model.py"),
    ]  # fmt: skip


def markdown_rows(results: LocalModelResults) -> list[str]:
    """Rows in the table format of RESULTS.md (workload, unit, ours p50/p95, floor, …)."""
    seeds = ", ".join(str(r.case.seed) for r in results.cases)
    low, high = results.plain_spread
    noise = (
        f"plain rate per call {low:.0f}–{high:.0f} tokens/s; load average "
        f"{results.load_average[0]:.2f} → {results.load_average[1]:.2f}"
    )
    met = {True: "yes", False: "**no**"}
    return [
        f"| local model: draft (acompose) | s | {results.draft_p50:.2f} | "
        f"{results.draft_p95:.2f} | — | — | — | ≤ 8 s (p50) | {met[results.draft_p50 <= 8]} | "
        f"{results.model}, {len(results.cases)} briefs, fixed seeds; first call in a process "
        f"adds {results.first_call_seconds:.1f} s (load + worksheet head) |",
        f"| local model: refine (acompose) | s | {results.refine_p50:.2f} | "
        f"{results.refine_p95:.2f} | — | — | — | ≤ 8 s (p50) | "
        f"{met[results.refine_p50 <= 8]} | the same briefs and seeds |",
        f"| local model: generation speed vs plain llama.cpp | tokens/s | "
        f"{results.ours_tokens_per_second:.1f} | — | {results.plain_tokens_per_second:.1f} | — | "
        f"{results.speed_ratio:.2f}× | ≥ 0.8× plain | {met[results.speed_ratio >= 0.8]} | "
        f"plain: create_completion of the same number of tokens from the same prompt, "
        f"interleaved; {noise} |",
        f"| local model: on-topic quality | cases passed | {results.quality_passed} / "
        f"{len(results.cases)} | — | — | — | — | ≥ {QUALITY_PASS_MARK} of 12 | "
        f"{met[results.quality_passed >= QUALITY_PASS_MARK]} | seeds {seeds}; checks in "
        f"benchmarks/local_model.py |",
    ]


def long_feedback_row(results: LocalModelResults) -> str:
    """The row of :data:`LONG_FEEDBACK_CASES` (only its quality: the times are like the
    fixed cases')."""
    seeds = ", ".join(str(r.case.seed) for r in results.cases)
    met = "yes" if results.quality_passed >= LONG_FEEDBACK_PASS_MARK else "**no**"
    return (
        f"| local model: long feedbacks read as a person would | cases passed | "
        f"{results.quality_passed} / {len(results.cases)} | — | — | — | — | "
        f"≥ {LONG_FEEDBACK_PASS_MARK} of {len(results.cases)} | {met} | seeds {seeds}; "
        "cases written before any output of the change that reads them was seen |"
    )


def main() -> None:
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    results = measure(log=log)
    long = measure(LONG_FEEDBACK_CASES, log=log)
    for result in (*results.cases, *long.cases):
        if result.problems:
            print(f"<!-- {result.case.brief.product}: {'; '.join(result.problems)} -->")
    print("\n".join([*markdown_rows(results), long_feedback_row(long)]))


if __name__ == "__main__":
    main()
