"""Whether the optional packages the benchmarks compare with are installed."""

from __future__ import annotations

from importlib.util import find_spec

LANGGRAPH_MODULES = (
    "langgraph",
    "langgraph.checkpoint.sqlite",
    "langgraph.checkpoint.postgres",
)


def langgraph_missing() -> str | None:
    """Why LangGraph cannot be measured here, or None when it can."""
    for name in LANGGRAPH_MODULES:
        try:
            found = find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return f'{name} is not installed (pip install -e ".[bench]")'
    return None
