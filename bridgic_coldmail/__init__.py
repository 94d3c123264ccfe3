"""bridgic-coldmail: a cold-email sequence that pauses for human feedback and resumes later.

async with ColdMailAgent.open() as agent:  # the coldmail command's database
    pending = await agent.start(Brief(product=..., offer=..., sender=...))
    done = await agent.resume(pending.interaction_id, "CTOs at mid-size hospitals")
"""

from __future__ import annotations

from ._version import __version__
from .agent import ColdMailAgent
from .automa import ColdMailAutoma
from .errors import (
    ColdmailError,
    ConfigurationError,
    DatabaseNotFound,
    InvalidInput,
    LlmError,
    RunBeingResumed,
    RunConflict,
    RunNotFound,
    SnapshotError,
    SnapshotIntegrityError,
    StoreError,
)
from .models import (
    MAX_FEEDBACK_CHARS,
    Brief,
    DamagedRun,
    Decision,
    EmailSequence,
    EmailStep,
    ListedRun,
    Run,
    RunEvent,
    RunStatus,
    make_decision,
)
from .retry import RetryPolicy
from .settings import Settings
from .sync import SyncColdMailAgent

__all__ = [
    "MAX_FEEDBACK_CHARS",
    "Brief",
    "ColdMailAgent",
    "ColdMailAutoma",
    "ColdmailError",
    "ConfigurationError",
    "DamagedRun",
    "DatabaseNotFound",
    "Decision",
    "EmailSequence",
    "EmailStep",
    "InvalidInput",
    "ListedRun",
    "LlmError",
    "RetryPolicy",
    "Run",
    "RunBeingResumed",
    "RunConflict",
    "RunEvent",
    "RunNotFound",
    "RunStatus",
    "Settings",
    "SnapshotError",
    "SnapshotIntegrityError",
    "StoreError",
    "SyncColdMailAgent",
    "__version__",
    "make_decision",
]
