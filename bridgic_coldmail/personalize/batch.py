"""A personalization batch, end to end: the sample a person signs off, then every lead.

**The sample is a real Bridgic pause.** :class:`SampleAutoma` is a small ``GraphAutoma`` of
its own — ``write_sample`` → ``ask_sample`` (``interact_with_human``) → approved, or
``rewrite_sample`` with the person's guidance and ``ask_sample`` again — whose snapshot is
signed with the store's key and stored in the batch's row under the pause's interaction id
(``store/batches.py``). Answering it takes the batch's hold (a claim with a lease, fenced),
verifies the signature, loads the snapshot and runs it with the answer, as a run's resume
does. Batches are not runs: their own table keeps them out of ``coldmail list``, the
inbox's tabs and the run counts, each of which would otherwise have to learn to skip them.

As in ``automa.py``, the pausing worker (``ask_sample``) does no work; the LLM calls are in
``write_sample`` and ``rewrite_sample``, whose lines are stored per lead as they are written
(not in the snapshot). A sample rewritten with guidance is round 2, 3…: the leads written in
an earlier round are set back to pending first, so that a rewrite interrupted and started
again keeps the lines of its own round and pays for the rest only.

**The rest of the list** is written once the automa finishes with the approval, by
:func:`write_leads`, which any number of processes may run on one batch: each keeps a
rolling window of calls in flight (:class:`_Window`), leasing leads from the store a small
group ahead of the calls, writing their lines through the batch's ``Pacer`` and recording
them fenced by its lease (``LineRecord``) a few at a time, within a quarter of a second. A
killed process loses at most the calls it had in flight; its leases run out and the next
``personalize`` takes those leads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from bridgic.core.automa import GraphAutoma, Snapshot, worker
from bridgic.core.automa.interaction import Event, InteractionException, InteractionFeedback

from .._bridgic_lookups import SHARED_POOL
from ..errors import ColdmailError
from ..export.leads import Lead, LeadReader
from ..models import Brief, EmailSequence
from ..store.batches import (
    Batch,
    BatchAction,
    BatchApproved,
    BatchClaim,
    BatchCounts,
    BatchLead,
    BatchLeadRow,
    BatchPaused,
    LeadClaim,
    LineRecord,
    NewBatch,
)
from ..store.protocol import RunStore
from .lines import LineContext, LineTask
from .writer import LineResult, LineWriter

SAMPLE_EVENT = "sample_approval"
"""The ``event_type`` of the sample's pause."""
SUPPORTED_SERIALIZATION_VERSIONS = frozenset({"1.0"})


# --------------------------------------------------------------------------- the automa


class SampleAutoma(GraphAutoma):
    """Writes a batch's sample, pauses for a person, and rewrites it with their guidance
    until they approve. Stable import path (snapshots name it): never move or rename it or
    its workers. The :class:`SampleDriver` is attached after construction and after loading
    (never serialized: it holds the store and the LLM)."""

    _driver: Any = None

    def attach(self, driver: SampleDriver) -> None:
        if self.thread_pool is None:  # type: ignore[has-type]
            self.thread_pool = SHARED_POOL
        self._driver = driver

    @worker(is_start=True)
    async def write_sample(
        self, sample_round: int = 1, guidance: list[str] | None = None
    ) -> dict[str, Any]:
        """The first sample: one line per sample lead, stored as each is written."""
        given = list(guidance or [])
        await self._driver.write_sample(sample_round, tuple(given))
        return {"round": sample_round, "guidance": given}

    @worker(dependencies=["write_sample"], is_output=True)
    async def ask_sample(self, sample: dict[str, Any]) -> str | None:
        """Pause for the person. Re-runs from the top on resume: no work here."""
        event = Event(
            event_type=SAMPLE_EVENT,
            timestamp=datetime.now(timezone.utc),
            data={"round": sample["round"], "guidance": sample["guidance"]},
        )
        answer = self.interact_with_human_from_worker_key(event, "ask_sample")
        data = cast("dict[str, Any]", answer.data)
        if data.get("kind") == "approve":
            return "approved"
        guidance = [*sample["guidance"], str(data["text"])]
        self.ferry_to("rewrite_sample", next_round=int(sample["round"]) + 1, notes=guidance)
        return None

    @worker()
    async def rewrite_sample(self, next_round: int, notes: list[str]) -> None:
        """The sample again, with every guidance given so far; then ask again."""
        await self._driver.write_sample(next_round, tuple(notes))
        self.ferry_to("ask_sample", sample={"round": next_round, "guidance": list(notes)})


# --------------------------------------------------------------------------- one batch


@dataclass(frozen=True)
class BatchPlan:
    """What a batch works from: the run's brief and final sequence, the writer, the pacing."""

    store: RunStore
    brief: Brief
    sequence: EmailSequence
    writer: LineWriter
    lease_seconds: float
    window: int
    """Calls kept in flight at once (the concurrency; the pacer may allow fewer)."""
    on_result: Callable[[LineResult], None] | None = None


class SampleDriver:
    """What :class:`SampleAutoma` calls: writes the sample's leads while holding the batch."""

    def __init__(self, plan: BatchPlan, hold: BatchClaim) -> None:
        self.plan = plan
        self.hold = hold

    async def write_sample(self, sample_round: int, guidance: tuple[str, ...]) -> None:
        store = self.plan.store
        if sample_round > 1:
            await store.reset_sample(self.hold, before_round=sample_round)
        await write_leads(self.plan, self.hold.batch_id, sample_round, guidance, sample=True)


async def write_leads(
    plan: BatchPlan,
    batch_id: str,
    sample_round: int,
    guidance: tuple[str, ...],
    *,
    sample: bool = False,
) -> None:
    """Write every lead of the batch still to write (``sample``: the sample's only), keeping
    ``plan.window`` calls in flight (:class:`_Window`); returns when none is left to lease
    and none is leased by anyone else (a dead worker's leases are waited out).

    Raises:
        LlmError: the batch halted (see ``pacing.py``); lines written so far are stored.
    """
    context = LineContext(plan.brief, plan.sequence, guidance)
    pause = OTHERS_FIRST_LOOK
    while True:
        await _Window(plan, batch_id, sample_round, context, sample=sample).run()
        if await _open_leads(plan.store, batch_id, sample=sample) == 0:
            return
        await asyncio.sleep(pause)  # leased by someone else: soon written, or its lease lapses
        pause = min(2 * pause, 1.0, plan.lease_seconds / 10)


OTHERS_FIRST_LOOK = 0.05
"""Seconds before the first look at leads another process holds, doubled at each look up to
a second: a live worker records its last lines within :data:`RECORD_WITHIN_SECONDS` of
writing them, so the first looks end the batch soon after it does (a fixed second had cost
every ``--workers`` command one), and the later ones cost a dead worker's lease little."""


async def _open_leads(store: RunStore, batch_id: str, *, sample: bool) -> int:
    if not sample:
        return (await store.batch_counts(batch_id)).open
    rows = await store.batch_leads(batch_id, states=["pending", "claimed"], sample=True)
    return len(rows)


RECORD_EVERY_LINES = 16
"""Finished lines recorded together, in one fenced, durable transaction."""
RECORD_WITHIN_SECONDS = 0.25
"""A finished line waits at most about this long to be recorded, however slow the others: a
killed process loses the calls it had in flight and at most this much of finished lines."""


class _Window:
    """A rolling window over the batch's leads: ``plan.window`` calls in flight, a new one
    started as soon as one ends, never a wait for the slowest of a group.

    Leads are leased a group at a time (:func:`lease_group`) a little ahead of the calls,
    all under the window's one lease token, so that one statement renews them all and one
    transaction records a group of finished lines (fenced by that token: a lead whose lease
    ran out and was taken by another worker is not recorded here). Leasing, recording and
    the calls overlap, so no store round trip stalls the window. When the batch halts (or a
    store call fails), the calls in flight are cancelled and the lines already finished are
    recorded before the error is raised; the leads leased but not finished come back when
    their lease runs out.
    """

    def __init__(
        self,
        plan: BatchPlan,
        batch_id: str,
        sample_round: int,
        context: LineContext,
        *,
        sample: bool,
    ) -> None:
        self.plan = plan
        self.store = plan.store
        self.batch_id = batch_id
        self.round = sample_round
        self.context = context
        self.sample = sample
        self.group = lease_group(plan.window)
        self.queue: collections.deque[LeadClaim] = collections.deque()
        """Leads leased and not started yet."""
        self.calls: set[asyncio.Task[LineRecord]] = set()
        self.finished: list[LineRecord] = []
        """Lines written and not recorded yet."""
        self.token = uuid.uuid4().hex
        """The lease token of every lead this window leases."""
        self.leasing: asyncio.Task[list[LeadClaim]] | None = None
        self.asked = 0
        """Leads the lease in progress asked for; fewer back: none is left to lease."""
        self.exhausted = False
        self.recording: asyncio.Task[None] | None = None
        self.ended: list[asyncio.Task[Any]] = []
        """Tasks that ended since the loop last looked (their done callbacks add them)."""
        self.wake = asyncio.Event()
        self.record_timer: asyncio.TimerHandle | None = None
        self.overdue = False
        """A finished line has waited :data:`RECORD_WITHIN_SECONDS`: record at once."""

    async def run(self) -> None:
        keeper = asyncio.create_task(self._renew())
        try:
            while True:
                self._lease_more()
                self._start_calls()
                self._record_some()
                if self.ended:
                    done, self.ended = self.ended, []
                    self._collect(done)
                elif self.calls or self.leasing or self.recording:
                    self.wake.clear()
                    await self.wake.wait()
                elif self.finished:
                    self._record_some(now=True)
                else:
                    return
        finally:
            keeper.cancel()
            if self.record_timer is not None:
                self.record_timer.cancel()
            pending = [*self.calls, *filter(None, [self.leasing])]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):  # the error that ended the window is raised
                await asyncio.shield(self._record_rest())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        task.add_done_callback(self._on_end)
        return task

    def _on_end(self, task: asyncio.Task[Any]) -> None:
        self.ended.append(task)
        self.wake.set()

    def _lease_more(self) -> None:
        wanted = self.plan.window - len(self.calls) - len(self.queue) + self.group
        if self.leasing is None and not self.exhausted and wanted >= self.group:
            self.asked = wanted
            self.leasing = self._spawn(
                self.store.claim_leads(
                    self.batch_id,
                    wanted,
                    self.plan.lease_seconds,
                    sample=self.sample,
                    token=self.token,
                )
            )

    def _start_calls(self) -> None:
        while self.queue and len(self.calls) < self.plan.window:
            self.calls.add(self._spawn(self._write(self.queue.popleft())))

    async def _write(self, claim: LeadClaim) -> LineRecord:
        result = await self.plan.writer.write(task_for(self.context, claim))
        if self.plan.on_result is not None:
            self.plan.on_result(result)
        return LineRecord(
            claim.position,
            result.line,
            result.writer,
            error=result.skipped,
            retry_later=result.retry_later,
            calls=result.calls,
            tokens=result.tokens.total,
        )

    def _collect(self, done: list[asyncio.Task[Any]]) -> None:
        """Take what ended: every finished line is kept for recording before an error (the
        first one) is raised."""
        failure: BaseException | None = None
        for task in done:
            error = task.exception()
            if task is self.leasing:
                self.leasing = None
                if error is None:
                    claims = task.result()
                    self.exhausted = len(claims) < self.asked
                    self.queue.extend(claims)
            elif task is self.recording:
                self.recording = None
            else:
                self.calls.discard(task)
                if error is None:
                    self.finished.append(task.result())
            failure = failure or error
        if failure is not None:
            raise failure

    def _record_some(self, *, now: bool = False) -> None:
        """Start recording the finished lines when there are enough, or when the first of
        them has waited long enough (``now``: whatever there is); one recording at a time."""
        if not self.finished:
            return
        if self.record_timer is None and not self.overdue:
            self.record_timer = asyncio.get_running_loop().call_later(
                RECORD_WITHIN_SECONDS, self._record_due
            )
        if self.recording is None and (
            now or self.overdue or len(self.finished) >= RECORD_EVERY_LINES
        ):
            if self.record_timer is not None:
                self.record_timer.cancel()
                self.record_timer = None
            self.overdue = False
            group, self.finished = self.finished, []
            self.recording = self._spawn(self._record(group))

    def _record_due(self) -> None:
        self.record_timer = None
        self.overdue = True
        self.wake.set()

    async def _record(self, group: list[LineRecord]) -> None:
        try:
            await self.store.record_lines(self.batch_id, self.token, self.round, group)
        except BaseException:
            self.finished[:0] = group  # kept for the last try (``_record_rest``)
            raise

    async def _record_rest(self) -> None:
        """Record every finished line still unrecorded (after the recording in progress)."""
        if self.recording is not None:
            await asyncio.wait([self.recording])
            self.recording = None
        if self.finished:
            group, self.finished = self.finished, []
            await self._record(group)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.plan.lease_seconds / 3)
            with contextlib.suppress(ColdmailError):  # tried again a third of a lease later
                await self.store.renew_leads(self.batch_id, self.token, self.plan.lease_seconds)


def lease_group(window: int) -> int:
    """Leads leased in one go beyond what fills the window: a quarter of it (at most 16),
    so that one lease round trip feeds several calls."""
    return max(1, min(16, window // 4))


def task_for(context: LineContext, claim: LeadClaim) -> LineTask:
    """The line to write for a leased lead (its email column is never shown)."""
    values = {name: cell for name, cell in claim.values.items() if cell.strip() != claim.email}
    return LineTask(context, values, claim.row)


# --------------------------------------------------------------------------- the steps


class SampleStepError(ColdmailError):
    """The automa did something a sample step must not (paused where it was, or ended
    without an answer); never expected."""


async def run_sample_step(plan: BatchPlan, hold: BatchClaim) -> Batch | None:
    """Run the automa for the hold: the first sample (a new automa), or the answer the hold
    carries (the snapshot, loaded); record where it ended. None when the hold was lost."""
    driver = SampleDriver(plan, hold)
    batch = hold.batch
    if hold.snapshot is None:
        automa = SampleAutoma()
        automa.attach(driver)
        first = batch.settings.get("guidance") or []
        running = automa.arun(sample_round=1, guidance=[str(g) for g in first])
    else:
        if hold.serialization_version not in SUPPORTED_SERIALIZATION_VERSIONS:
            raise SampleStepError(
                f"the sample's snapshot has format {hold.serialization_version}, which this "
                "release cannot resume; upgrade bridgic-coldmail"
            )
        snapshot = Snapshot(
            serialized_bytes=hold.snapshot,
            serialization_version=str(hold.serialization_version),
        )
        loaded = SampleAutoma.load_from_snapshot(snapshot)
        if not isinstance(loaded, SampleAutoma):
            raise SampleStepError("the batch's snapshot is not a sample automa")
        loaded.attach(driver)
        action = hold.action or BatchAction("approve")
        data = {"kind": action.kind, "text": action.text}
        reply = InteractionFeedback(interaction_id=str(batch.pause_id), data=data)
        running = loaded.arun(feedback_data=reply)
    result: BatchPaused | BatchApproved
    try:
        outcome = await _holding(plan.store, hold, running)
    except InteractionException as pause:
        interaction = pause.interactions[0]
        if interaction.interaction_id == batch.pause_id:
            raise SampleStepError("the sample paused again where it was; nothing changed") from None
        event = interaction.event.data
        result = BatchPaused(
            pause_id=interaction.interaction_id,
            snapshot=pause.snapshot.serialized_bytes,
            serialization_version=pause.snapshot.serialization_version,
            round=int(event["round"]),
            guidance=tuple(str(g) for g in event["guidance"]),
        )
    else:
        if outcome != "approved":
            raise SampleStepError(f"the sample automa ended with {outcome!r}, not an approval")
        result = BatchApproved()
    return await plan.store.step_batch(hold, result)


async def _holding(store: RunStore, hold: BatchClaim, work: Awaitable[Any]) -> Any:
    """Await ``work`` while renewing the batch's hold; stop it when the hold is lost."""
    task = asyncio.ensure_future(work)
    lost = False

    async def renew() -> None:
        nonlocal lost
        while True:
            await asyncio.sleep(store.lease_seconds / 3)
            try:
                if not await store.renew_batch(hold):
                    lost = True
                    task.cancel()
                    return
            except ColdmailError:
                continue

    keeper = asyncio.create_task(renew())
    try:
        return await task
    except asyncio.CancelledError:
        if lost:
            raise ColdmailError(
                "another process took the batch over while this one wrote its sample "
                "(the lease ran out); see where it is with coldmail personalize --status"
            ) from None
        raise
    finally:
        keeper.cancel()


# --------------------------------------------------------------------------- the lead list


@dataclass(frozen=True)
class LeadList:
    """A lead CSV read for a batch: its digest and its leads (usable or not)."""

    digest: str
    leads: tuple[BatchLead, ...]

    @property
    def usable(self) -> int:
        return sum(lead.problem is None for lead in self.leads)


def read_lead_list(path: str | Path) -> LeadList:
    """The leads of ``path`` for a batch; a row the reader refuses is kept, with why.

    Raises:
        InvalidInput: the file cannot be read as a lead list (``LeadReader``).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
    leads: list[BatchLead] = []
    with LeadReader(path) as reader:
        for item in reader:
            if isinstance(item, Lead):
                leads.append(BatchLead(item.row, item.email, item.values))
            else:
                leads.append(BatchLead(item.row, item.email, {}, problem=item.reason))
    return LeadList("sha256:" + digest.hexdigest(), tuple(leads))


def batch_id_for(interaction_id: str, digest: str) -> str:
    """The batch of a run and a list: the same id on every host, so that two hosts starting
    it at once create one batch."""
    return hashlib.sha256(f"{interaction_id}\x00{digest}".encode()).hexdigest()[:32]


def new_batch(
    interaction_id: str, leads: LeadList, sample: int, settings: Mapping[str, Any]
) -> NewBatch:
    return NewBatch(
        batch_id=batch_id_for(interaction_id, leads.digest),
        interaction_id=interaction_id,
        leads_digest=leads.digest,
        settings=settings,
        sample_size=sample,
        leads=leads.leads,
        token=uuid.uuid4().hex,
    )


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class BatchReport:
    """Where a batch is: its state, its counts, the sample (while it waits for a person),
    the leads skipped and why, and how long this call took."""

    batch: Batch
    counts: BatchCounts
    sample: tuple[BatchLeadRow, ...] = ()
    skipped: tuple[BatchLeadRow, ...] = ()
    seconds: float = 0.0
    held_elsewhere: bool = False
    """Another process holds the batch (writing its sample): nothing was done here."""

    @property
    def waiting_for_approval(self) -> bool:
        return self.batch.status == "awaiting_approval"

    @property
    def done(self) -> bool:
        return self.batch.status == "done"


async def report_of(
    store: RunStore, batch: Batch, *, started: float, held_elsewhere: bool = False
) -> BatchReport:
    counts = await store.batch_counts(batch.batch_id)
    sample: tuple[BatchLeadRow, ...] = ()
    if batch.status == "awaiting_approval":
        sample = tuple(await store.batch_leads(batch.batch_id, sample=True))
    skipped = tuple(await store.batch_leads(batch.batch_id, states=["skipped"], limit=200))
    return BatchReport(batch, counts, sample, skipped, time.monotonic() - started, held_elsewhere)


@dataclass
class Lines:
    """A batch's written lines by address (lower case), and the leads without one."""

    by_email: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    """Address -> why it has no line (skipped, altered, or not written yet)."""


async def lines_of(store: RunStore, batch_id: str) -> Lines:
    """Every lead's line (or why it has none), read in pages."""
    found = Lines()
    after = -1
    while True:
        page = await store.batch_leads(batch_id, after=after, limit=2000)
        if not page:
            return found
        for lead in page:
            key = lead.email.strip().lower()
            if lead.state == "written" and lead.verified and lead.line is not None:
                found.by_email[key] = lead.line
            elif lead.state == "skipped":
                found.missing[key] = lead.error or "skipped"
            else:
                found.missing[key] = "its line is not written yet (run coldmail personalize)"
        after = page[-1].position
