"""Kept import path: ``bridgic_coldmail.lint`` as release 0.5 documented it
(docs/how-to/export.md). The code is in ``bridgic_coldmail.export.lint``."""

from __future__ import annotations

from .export.lint import DEFAULT_ACRONYMS, LintIssue, Severity, has_errors, lint_sequence

__all__ = ["DEFAULT_ACRONYMS", "LintIssue", "Severity", "has_errors", "lint_sequence"]
