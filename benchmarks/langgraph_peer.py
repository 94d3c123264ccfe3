"""LangGraph as a benchmark subject: the same three steps, the same LLM, its own checkpointers.

Installed by the ``bench`` extra (``pip install -e ".[bench]"``); without it the LangGraph
columns are left out and the report says why (``testbed.extras.langgraph_missing``).

The graph is this package's automa written the way LangGraph's documentation writes a
human-in-the-loop graph (``interrupt()`` in a node, ``Command(resume=...)`` to go on):

    draft ──▶ ask_audience (interrupt) ──▶ refine

``draft`` and ``refine`` do exactly what ``ColdMailAutoma``'s workers do — build the same
:class:`WritingTask` and call :func:`write_sequence` with the same instant LLM, which
validates the answer into an :class:`EmailSequence` — so the application's work is the same
on both sides and only orchestration and persistence differ. The state holds JSON data (the
brief, the draft and the result as dicts, the feedback as text), LangGraph's cheapest case:
a pydantic object in the state would be serialized with its class path and imported again on
load. Our automa has a fourth worker, ``review``, that returns at once outside review mode;
LangGraph has no counterpart, so every figure of ours carries that one extra step.

Checkpointers, each as its documentation opens it:

* SQLite: ``AsyncSqliteSaver.from_conn_string(path)``: one aiosqlite connection behind an
  ``asyncio.Lock``. Its ``setup()`` sets ``journal_mode=WAL`` and leaves ``synchronous`` at
  SQLite's default, ``FULL`` (read back by :meth:`LangGraphPeer.settings`): every commit
  fsyncs, as our pause and result commits do (our claims commit with ``NORMAL``).
* PostgreSQL: ``AsyncPostgresSaver`` on an ``AsyncConnectionPool`` with the keyword
  arguments its documentation requires (``autocommit=True, prepare_threshold=0,
  row_factory=dict_row``) and our pool's size (1 to 10). Every statement commits with the
  server's ``synchronous_commit`` (on), as our pause and result do.

``durability``: ``"async"`` (LangGraph's default: a checkpoint after every step, written
while the next step runs; ``ainvoke`` returns after every write finished) or ``"exit"`` (one
checkpoint when the graph pauses or ends). Both are durable when ``ainvoke`` returns.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from bridgic_coldmail import Brief, EmailSequence
from bridgic_coldmail.llm.prompts import AUDIENCE_QUESTION
from bridgic_coldmail.llm.writing import TaskKind, WritingTask, write_sequence
from bridgic_coldmail.retry import NO_RETRY
from bridgic_coldmail.settings import DEFAULT_POOL_SIZE

Durability = Literal["async", "exit"]
SYNCHRONOUS = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}


class ColdMailState(TypedDict, total=False):
    brief: dict[str, Any]
    draft: dict[str, Any]
    feedback: str
    sequence: dict[str, Any]


def build_graph(llm: Any) -> Any:
    """The uncompiled ``StateGraph``: draft → ask_audience (interrupt) → refine."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    async def write(kind: TaskKind, state: ColdMailState, **task: Any) -> dict[str, Any]:
        written = await write_sequence(
            WritingTask(kind=kind, brief=Brief.model_validate(state["brief"]), **task),
            llm=llm,
            model="instant",
            timeout=None,
            retry=NO_RETRY,
        )
        return written.model_dump(mode="json")

    async def draft(state: ColdMailState) -> ColdMailState:
        return {"draft": await write("draft", state)}

    async def ask_audience(state: ColdMailState) -> ColdMailState:
        # Re-runs from its top on resume, like our pausing worker; interrupt() then returns
        # the value given to Command(resume=...).
        feedback = interrupt({"question": AUDIENCE_QUESTION, "draft": state["draft"]})
        return {"feedback": str(feedback)}

    async def refine(state: ColdMailState) -> ColdMailState:
        current = EmailSequence.model_validate(state["draft"])
        sequence = await write("refine", state, feedback=state["feedback"], current=current)
        return {"sequence": sequence}

    graph = StateGraph(ColdMailState)
    graph.add_node("draft", draft)
    graph.add_node("ask_audience", ask_audience)
    graph.add_node("refine", refine)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "ask_audience")
    graph.add_edge("ask_audience", "refine")
    graph.add_edge("refine", END)
    return graph


@dataclass
class LangGraphPeer:
    """Starts runs (paused at the interrupt, checkpointed) and resumes them to the end."""

    graph: Any
    saver: Any
    durability: Durability

    @property
    def name(self) -> str:
        return f"LangGraph ({'default' if self.durability == 'async' else 'exit'} durability)"

    def _config(self, thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}}

    async def start(self, brief: Brief) -> str:
        thread_id = uuid.uuid4().hex
        state = await self.graph.ainvoke(
            {"brief": brief.model_dump(mode="json")},
            self._config(thread_id),
            durability=self.durability,
        )
        if "__interrupt__" not in state:
            raise AssertionError("the LangGraph run did not pause at the interrupt")
        return thread_id

    async def resume(self, thread_id: str, feedback: str) -> Any:
        from langgraph.types import Command

        state = await self.graph.ainvoke(
            Command(resume=feedback), self._config(thread_id), durability=self.durability
        )
        if "sequence" not in state:
            raise AssertionError("the LangGraph run did not finish")
        return state["sequence"]

    async def settings(self) -> dict[str, str]:
        """What the checkpointer's database runs with (for the report)."""
        conn = self.saver.conn
        if hasattr(conn, "execute") and hasattr(conn, "_conn"):  # aiosqlite
            found = {}
            for pragma in ("journal_mode", "synchronous"):
                async with conn.execute(f"PRAGMA {pragma}") as cursor:
                    row = await cursor.fetchone()
                found[pragma] = SYNCHRONOUS.get(str(row[0]), str(row[0]))
            return found
        async with conn.connection() as pg:
            cursor = await pg.execute("SHOW synchronous_commit")
            row = await cursor.fetchone()
        return {"synchronous_commit": str(next(iter(row.values())))}


@contextlib.asynccontextmanager
async def opened(
    backend: str, location: str, llm: Any, durability: Durability
) -> AsyncIterator[LangGraphPeer]:
    """The peer on an SQLite file or a PostgreSQL database (set up), closed on exit."""
    if backend == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(location) as saver:
            await saver.setup()
            yield LangGraphPeer(build_graph(llm).compile(checkpointer=saver), saver, durability)
        return

    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow, dict_row
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(
        location,
        connection_class=AsyncConnection[DictRow],
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        min_size=1,
        max_size=DEFAULT_POOL_SIZE,
        open=False,
    ) as pool:
        await pool.wait()
        postgres = AsyncPostgresSaver(pool)
        await postgres.setup()
        yield LangGraphPeer(build_graph(llm).compile(checkpointer=postgres), postgres, durability)
