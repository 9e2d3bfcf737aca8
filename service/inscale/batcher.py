"""Dynamic batching of concurrent requests, generic over the payload.

Requests wait in a bounded FIFO. A loop takes an idle instance slot, then cuts a batch from
the queue when one of these holds, checked in this order:

1. the rows waiting (compatible with the oldest request) fill `max_batch_size`; or a FIFO
   prefix of them adds up to the largest preferred batch size; or all of them add up to a
   smaller preferred size;
2. the oldest request is alone in the queue: an idle instance runs it at once, so a lone
   request is never held back by `max_queue_delay`;
3. `max_queue_delay` has passed since the oldest request was queued.

Otherwise it waits for the next arrival or that delay, whichever comes first. Under load the
instances are busy, requests pile up meanwhile, and the next idle instance takes them all:
batch size follows load without a timer on the fast path.

Requests are only merged when their keys are equal (the caller makes the key from the
non-batch dims), so arrays of different shapes never meet. `run_batch` is synchronous and
runs in a thread pool with one thread per instance: ONNX Runtime releases the GIL, so the
event loop keeps accepting while a batch computes.

What happens to requests is reported as events (`BatchEvents`: queued, dropped with a reason,
batch finished with its times) to one listener the caller gives; the batcher keeps no
counters of its own, only what is in it now (`load()`), which its own rules need.

This module imports nothing from the rest of inscale but its own event types
(`inscale.batch_events`); its errors are its own.
"""

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from inscale.batch_events import BatchEvents, BatchRecord, DropReason, Load, Ran, StepTimes

T = TypeVar("T")
R = TypeVar("R")


class BatcherError(Exception):
    """Base of the batcher's own errors."""


class QueueFullError(BatcherError):
    pass


class DeadlineError(BatcherError):
    pass


class BatcherClosedError(BatcherError):
    pass


class BatchFailedError(BatcherError):
    """`run_batch` raised; every request of that batch gets this, with the cause chained."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # rows per run
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # requests
    instances: int = 1
    batching: bool = True  # False: every request runs alone


class _State(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DROPPED = 3


@dataclass(slots=True, eq=False)
class _Pending(Generic[T, R]):
    payload: T | None
    rows: int
    key: Hashable
    enqueued: float
    future: asyncio.Future[R]
    state: _State = _State.QUEUED
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Plan(Generic[T, R]):
    items: list[_Pending[T, R]] = field(default_factory=list)
    ready: bool = False
    wake_at: float = 0.0


class Batcher(Generic[T, R]):
    """Merges `submit` calls into calls of `run_batch(payloads) -> results` (same length)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Ran[R]],
        policy: BatchPolicy,
        events: BatchEvents,
        *,
        name: str = "batcher",
    ) -> None:
        self._run_batch = run_batch
        self.policy = policy
        self._name = name
        self._events = events
        self._queue: deque[_Pending[T, R]] = deque()
        self._queued = 0
        self._queued_rows = 0
        self._running_batches = 0
        self._running_requests = 0
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._running_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._slots = asyncio.Semaphore(self.policy.instances)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(self.policy.instances, thread_name_prefix=self._name)
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests, let queued and running ones finish; True if all finished."""
        self._closed = True
        if self._idle is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop the loop; requests still queued are failed with BatcherClosedError."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for item in self._queue:
            if item.state is _State.QUEUED:
                closed = BatcherClosedError(f"{self._name} is shutting down")
                self._drop(item, DropReason.CLOSED, closed)
        self._queue.clear()
        if self._running_tasks:
            await asyncio.gather(*self._running_tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def load(self) -> Load:
        return Load(self._queued, self._queued_rows, self._running_batches, self._running_requests)

    # -- requests --------------------------------------------------------------------------

    async def submit(
        self,
        payload: T,
        *,
        rows: int = 1,
        key: Hashable = None,
        deadline: float | None = None,
        abandon_on: "asyncio.Future[Any] | None" = None,
    ) -> R:
        """Queue one request and wait for its result.

        `deadline` is on the event loop's monotonic clock (`loop.time()`). When `abandon_on`
        completes (the HTTP layer's "client disconnected" watcher) or the awaiting task is
        cancelled, the request leaves the queue and this raises CancelledError.
        """
        if self._closed or self._wakeup is None:
            raise BatcherClosedError(f"{self._name} is not accepting requests")
        if rows > self.policy.max_batch_size:
            raise ValueError(f"{rows} rows exceed max_batch_size {self.policy.max_batch_size}")
        if self._queued >= self.policy.max_queue_size:
            self._events.request_dropped(DropReason.REJECTED)
            raise QueueFullError(
                f"{self._name}: queue is full ({self.policy.max_queue_size} requests waiting)"
            )
        loop = asyncio.get_running_loop()
        item: _Pending[T, R] = _Pending(payload, rows, key, loop.time(), loop.create_future())
        if deadline is not None:
            item.timer = loop.call_at(deadline, self._expire, item)
        self._queue.append(item)
        self._queued += 1
        self._queued_rows += rows
        self._events.request_queued(rows)
        self._idle.clear()  # type: ignore[union-attr]
        self._wakeup.set()
        if abandon_on is not None:
            # Cancelling our own future (not the caller's task) makes the await below raise
            # without touching the task's cancellation state.
            abandon_on.add_done_callback(lambda _: item.future.cancel())
        try:
            return await item.future
        except asyncio.CancelledError:
            if item.state is _State.QUEUED:
                self._drop(item, DropReason.CANCELLED, None)
            raise

    def _expire(self, item: _Pending[T, R]) -> None:
        if item.state is _State.QUEUED:
            self._drop(item, DropReason.EXPIRED, DeadlineError("deadline passed while queued"))

    def _drop(self, item: _Pending[T, R], reason: DropReason, error: BaseException | None) -> None:
        """Take a queued request out; it stays in the deque as a shell until skipped."""
        item.state = _State.DROPPED
        item.payload = None  # release the arrays now, not when the shell is skipped
        if item.timer is not None:
            item.timer.cancel()
        self._queued -= 1
        self._queued_rows -= item.rows
        self._events.request_dropped(reason)
        if error is not None and not item.future.done():
            item.future.set_exception(error)
        # Shells are skipped lazily; compact when they outnumber live requests so a storm of
        # timeouts cannot grow the deque without bound.
        if len(self._queue) > 2 * self._queued + 64:
            self._queue = deque(i for i in self._queue if i.state is _State.QUEUED)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._queued == 0 and self._running_batches == 0 and self._idle is not None:
            self._idle.set()

    # -- the batching loop -----------------------------------------------------------------

    async def _batch_loop(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # an instance is idle
            try:
                items = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._execute(items))
            self._running_tasks.add(task)
            task.add_done_callback(self._running_tasks.discard)

    async def _next_batch(self) -> list[_Pending[T, R]]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            plan = self._plan(loop.time())
            if plan.ready:
                self._dequeue(plan.items)
                return plan.items
            # No await between planning and clearing, so no arrival can be missed.
            self._wakeup.clear()
            timer = loop.call_at(plan.wake_at, self._wakeup.set) if plan.items else None
            await self._wakeup.wait()
            if timer is not None:
                timer.cancel()

    def _plan(self, now: float) -> _Plan[T, R]:
        queue = self._queue
        while queue and queue[0].state is not _State.QUEUED:
            queue.popleft()
        plan: _Plan[T, R] = _Plan()
        if not queue:
            return plan
        policy = self.policy
        head = queue[0]
        rows = 0
        full = False
        for item in queue:
            if item.state is not _State.QUEUED or item.key != head.key:
                continue
            if rows + item.rows > policy.max_batch_size:
                full = True
                break
            plan.items.append(item)
            rows += item.rows
            if not policy.batching or rows == policy.max_batch_size:
                full = True
                break
        preferred_cut = self._preferred_prefix(plan.items)
        if preferred_cut is not None and (
            preferred_cut[1] == policy.preferred_batch_sizes[-1]  # the largest one
            or (preferred_cut[0] == len(plan.items) and not full)  # all that waits
        ):
            plan.items = plan.items[: preferred_cut[0]]
            plan.ready = True
            return plan
        lone = self._queued == 1
        waited_enough = now >= head.enqueued + policy.max_queue_delay_s
        plan.ready = full or lone or waited_enough
        if plan.ready and preferred_cut is not None:
            plan.items = plan.items[: preferred_cut[0]]
        plan.wake_at = head.enqueued + policy.max_queue_delay_s
        return plan

    def _preferred_prefix(self, items: list[_Pending[T, R]]) -> tuple[int, int] | None:
        """The longest FIFO prefix whose rows add up to a preferred size: (length, rows)."""
        preferred = self.policy.preferred_batch_sizes
        if not preferred:
            return None
        best: tuple[int, int] | None = None
        rows = 0
        for count, item in enumerate(items, start=1):
            rows += item.rows
            if rows in preferred:
                best = (count, rows)
        return best

    def _dequeue(self, items: list[_Pending[T, R]]) -> None:
        rows = 0
        for item in items:
            item.state = _State.RUNNING
            if item.timer is not None:
                item.timer.cancel()
            rows += item.rows
        self._queued -= len(items)
        self._queued_rows -= rows
        self._running_batches += 1
        self._running_requests += len(items)
        queue = self._queue
        if queue and queue[0] is items[0] and all(queue[i] is item for i, item in enumerate(items)):
            for _ in items:
                queue.popleft()
        else:  # the batch skipped requests of another shape: keep those, in order
            self._queue = deque(i for i in queue if i.state is _State.QUEUED)

    async def _execute(self, items: list[_Pending[T, R]]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue_seconds = tuple(started - item.enqueued for item in items)
        payloads = [item.payload for item in items]
        rows = sum(item.rows for item in items)
        for item in items:
            item.payload = None
        steps = StepTimes()
        failed = False
        try:
            ran = await loop.run_in_executor(self._executor, self._run_batch, payloads)  # type: ignore[arg-type]
            if len(ran.results) != len(items):
                raise BatchFailedError(
                    f"{self._name}: run_batch returned {len(ran.results)} results "
                    f"for {len(items)} requests"
                )
        except Exception as exc:
            failed = True
            error = exc if isinstance(exc, BatchFailedError) else BatchFailedError(str(exc))
            error.__cause__ = exc
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            steps = ran.steps
            for item, result in zip(items, ran.results, strict=True):
                if not item.future.done():  # the caller may have gone away meanwhile
                    item.future.set_result(result)
        finally:
            compute_seconds = loop.time() - started
            self._running_batches -= 1
            self._running_requests -= len(items)
            self._slots.release()
            self._check_idle()
        self._events.batch_finished(
            BatchRecord(
                len(items), rows, queue_seconds, compute_seconds, steps, failed, time.time()
            )
        )
