"""Sending a reviewed sequence to a lead list: the lead list (``leads.py``), the checks
(``lint.py``, ``formulas.py``) and the file written for the sending tools (``writer.py``,
with each tool's rules in ``profiles.py``).

The merge-field grammar they share with the models and the LLM's schema is
``bridgic_coldmail.merge``. ``bridgic_coldmail.export.export_sequence`` and
``preview_export`` keep the import path release 0.5 documented (docs/how-to/export.md).
"""

from __future__ import annotations

from .writer import (
    FORMATS,
    FORMULA_TRIGGERS,
    OUTPUT_COLUMNS,
    ExportReport,
    ExportStopped,
    SkippedRow,
    StopSignal,
    export_sequence,
    neutralize_cell,
    preview_export,
    run_stoppable,
    store_files,
)

__all__ = [
    "FORMATS",
    "FORMULA_TRIGGERS",
    "OUTPUT_COLUMNS",
    "ExportReport",
    "ExportStopped",
    "SkippedRow",
    "StopSignal",
    "export_sequence",
    "neutralize_cell",
    "preview_export",
    "run_stoppable",
    "store_files",
]
