"""Group commit: the completes that arrive while one commits are recorded together.

A durable commit waits for the disk (SQLite: an fsync holding the write lock; PostgreSQL: a
WAL flush). While it waits, other resumes finish and queue; the next transaction takes them
all, so N concurrent completes cost one flush and one hand-over to the database instead of N
(benchmarks/NOTES.md). A lone complete is a group of one: no added wait.

The backend's ``run`` records one group in one transaction and returns, for each member in
order, its value or its own error; it returns only once the transaction's COMMIT is durable,
so no member is told its result before it is on disk. When ``run`` raises, the transaction
recorded nothing and every member gets that error.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

M = TypeVar("M")

GROUP_LIMIT = 128
"""The most members one group transaction takes; the others wait for the next group."""

Outcome = tuple[Any, BaseException | None]
"""A member's value, or the error its own statements raised."""


class GroupCommit(Generic[M]):
    """Queues members and records them in groups, one group at a time."""

    def __init__(self, run: Callable[[Sequence[M]], Awaitable[Sequence[Outcome]]]) -> None:
        self._run = run
        self._waiting: list[tuple[M, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        """How many group transactions were run (benchmarks and tests read it)."""

    async def commit(self, member: M) -> Any:
        """Record ``member`` with the next group; its value once the group is durable."""
        loop = asyncio.get_running_loop()
        flusher = self._flusher
        if flusher is not None and flusher.get_loop() is not loop:
            # The store is used from another event loop now (asyncio.run again): what
            # waited on the old one can no longer be answered.
            self._waiting, flusher = [], None
        done: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((member, done))
        if flusher is None or flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        while self._waiting:
            group = self._waiting[:GROUP_LIMIT]
            del self._waiting[:GROUP_LIMIT]
            self.groups += 1
            try:
                outcomes = await self._run([member for member, _ in group])
            except asyncio.CancelledError:
                for _, done in (*group, *self._waiting):
                    done.cancel()
                raise
            except BaseException as exc:  # nothing of the group was recorded
                for _, done in group:
                    if not done.done():
                        done.set_exception(_own(exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (value, error), (_, done) in zip(outcomes, group, strict=True):
                if done.done():  # its caller was cancelled meanwhile
                    continue
                if error is None:
                    done.set_result(value)
                else:
                    done.set_exception(error)


def _own(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one member, so that members raising it do not share (and grow)
    one traceback."""
    try:
        return copy.copy(exc)
    except Exception:  # an exception that cannot be copied: shared, then
        return exc
