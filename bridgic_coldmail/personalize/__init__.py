"""One line per lead: personalized first lines, checked for honesty, written at a polite pace.

Phase 1 of issue 23, with no store, command or page yet. How a batch uses it::

    context = LineContext(brief, approved_sequence, guidance=())
    pacer = pacer_for(settings)                     # shared by every lead of the batch
    writer = line_writer(llm, settings, pacer)      # an LLM, or plain lines in code
    with LeadReader(path) as leads:                 # the estimate streams the list once
        tasks = (LineTask.for_lead(context, lead) for lead in leads if isinstance(lead, Lead))
        print(estimate_batch(tasks, writer, prices_for(settings)).describe())
    progress = Progress(total, pacer=pacer)
    result = await writer.write(LineTask.for_lead(context, lead))   # per lead, concurrently
    progress.add(result)                            # result.line, or result.skipped

``lines`` checks a line, ``writer`` writes one (``plain`` without an LLM), ``pacing`` paces
the calls, ``estimate`` counts tokens and cost, ``progress`` shows how far the batch is.
"""

from .estimate import BatchEstimate, CallTokens, Prices, estimate_batch, prices_for
from .lines import LineContext, LineRefused, LineTask, check_line, line_problems
from .pacing import Pacer, pacer_for
from .plain import WRITER_PLAIN, PlainLineWriter
from .progress import Progress
from .writer import WRITER_LLM, LineResult, LineWriter, LlmLineWriter, line_writer

__all__ = [
    "WRITER_LLM",
    "WRITER_PLAIN",
    "BatchEstimate",
    "CallTokens",
    "LineContext",
    "LineRefused",
    "LineResult",
    "LineTask",
    "LineWriter",
    "LlmLineWriter",
    "Pacer",
    "PlainLineWriter",
    "Prices",
    "Progress",
    "check_line",
    "estimate_batch",
    "line_problems",
    "line_writer",
    "pacer_for",
    "prices_for",
]
