"""How far a batch is: a live bar on a terminal, plain lines anywhere else.

On a terminal (``out.isatty()``) one line is redrawn in place, at most every
:data:`REDRAW_SECONDS`; elsewhere (a log file, CI, a pipe) a plain line is printed every
``interval`` seconds and at the end, so that a log reads as a list of lines rather than a
string of carriage returns. Both say the same: leads done of the total, written and skipped,
the rate, the time left, and what the pacer is doing (calls at once, a pause after a 429).

Not tqdm or rich: neither is a dependency, tqdm's output off a terminal is the same bar
redrawn with carriage returns, and the one line needed here is short. Everything shown passes
through ``text.terminal_safe``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..text import terminal_safe
from .pacing import Pacer
from .writer import LineResult

REDRAW_SECONDS = 0.2
PLAIN_INTERVAL = 10.0
BAR_WIDTH = 20


class Progress:
    """Counts a batch's results and shows them (see the module docstring).

    Args:
        total: leads in the batch (the estimate counted them).
        out: where to write; standard error by default.
        pacer: the batch's pacer, to show when it has slowed down.
        interval: seconds between plain lines off a terminal.
        clock: ``time.monotonic`` (tests pass their own).
    """

    def __init__(
        self,
        total: int,
        *,
        out: TextIO | None = None,
        pacer: Pacer | None = None,
        label: str = "Writing lines",
        interval: float = PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.out = out if out is not None else sys.stderr
        self.pacer = pacer
        self.label = label
        self.interval = interval
        self.clock = clock
        self.written = 0
        self.skipped = 0
        self.live = _is_terminal(self.out)
        self._started = clock()
        self._shown_at: float | None = None
        self._width = 0

    @property
    def done(self) -> int:
        return self.written + self.skipped

    def add(self, result: LineResult) -> None:
        """Count one lead's result and show the progress if it is time to."""
        if result.written:
            self.written += 1
        else:
            self.skipped += 1
        self.show()

    def show(self, *, force: bool = False) -> None:
        """Draw the line now if it is due (or ``force``)."""
        now = self.clock()
        due = REDRAW_SECONDS if self.live else self.interval
        if not force and self._shown_at is not None and now - self._shown_at < due:
            return
        self._shown_at = now
        text = terminal_safe(self.line(now))
        if self.live:
            columns = shutil.get_terminal_size((100, 20)).columns - 1
            text = text[:columns]
            self.out.write("\r" + text + " " * max(0, self._width - len(text)))
            self._width = len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        """Show the final count (and end the live line)."""
        self.show(force=True)
        if self.live:
            self.out.write("\n")
            self.out.flush()

    def line(self, now: float | None = None) -> str:
        """The progress as one line of text."""
        now = self.clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        total = max(self.total, self.done)
        share = self.done / total if total else 1.0
        parts = [f"{self.done:,} of {total:,} leads ({share:.0%})"]
        if self.live:
            filled = round(share * BAR_WIDTH)
            parts[0] = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " + parts[0]
        parts.append(f"{self.written:,} written, {self.skipped:,} skipped")
        rate = self.done / elapsed
        if self.done and self.done < total:
            parts.append(f"{rate:.1f}/s, about {_duration((total - self.done) / rate)} left")
        elif self.done == total:
            parts.append(f"took {_duration(elapsed)}")
        pacer = self.pacer
        if pacer is not None and self.done < total:
            if pacer.halted is not None:
                parts.append("halted")
            elif pacer.paused_for > 0:
                parts.append(f"paused {pacer.paused_for:.0f} s by the LLM server (429)")
            elif pacer.limit < pacer.concurrency:
                parts.append(f"slowed to {pacer.limit} of {pacer.concurrency} calls at once")
        return f"{self.label}: " + " · ".join(parts)


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
