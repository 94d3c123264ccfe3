"""Kept import path: ``bridgic_coldmail.render`` as release 0.5 had it (the resume script and
the notebook in examples/ print runs with it). The code is in ``bridgic_coldmail.cli.render``."""

from __future__ import annotations

from .cli.render import (
    format_history,
    format_run,
    format_run_line,
    format_sequence,
    json_for_terminal,
)
from .text import terminal_safe

__all__ = [
    "format_history",
    "format_run",
    "format_run_line",
    "format_sequence",
    "json_for_terminal",
    "terminal_safe",
]
