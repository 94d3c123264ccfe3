"""Kept import path: ``bridgic_coldmail.writing`` as release 0.5 documented it (an LLM that
implements ``writing.SequenceComposer`` is handed the task itself). The code is in
``bridgic_coldmail.llm.writing``."""

from __future__ import annotations

from .llm.writing import (
    SequenceAnswer,
    SequenceComposer,
    TaskKind,
    WritingTask,
    answer_model,
    write_sequence,
)

__all__ = [
    "SequenceAnswer",
    "SequenceComposer",
    "TaskKind",
    "WritingTask",
    "answer_model",
    "write_sequence",
]
