"""Dynamic batching of concurrent requests, generic over the payload.

Requests wait in bounded FIFO queues, one per priority level (level 0 first). A loop takes an
idle instance slot, then cuts a batch from the queue when one of these holds, checked in this
order:

1. the rows waiting (compatible with the head request) fill `max_batch_size`; or a prefix of
   them adds up to the largest preferred batch size; or all of them add up to a smaller
   preferred size;
2. without a latency objective: the head request is alone in the queue (an idle instance
   runs it at once, so a lone request is never held back by `max_queue_delay`), or
   `max_queue_delay` has passed since it was queued;
3. with a latency objective (`latency_slo_s`): waiting is not worth it. It is only while
   the instances have been nearly always busy (throughput is what is short), more than a row
   is due during a run of the rows waiting, a fuller batch is clearly cheaper per row, and
   even a full batch started later still ends within `WAIT_SHARE` of the objective; all of
   it is decided again at every arrival (see `_wait_until`).

Otherwise it waits for the next arrival or the time the rule names. Under load the instances
are busy, requests pile up meanwhile, and the next idle instance takes them all: batch size
follows load without a timer on the fast path.

The head request is the oldest of the highest non-empty priority level, unless the oldest of
a lower level has waited `max_starvation_s`: then it goes first, so low priority still
progresses under sustained high-priority load. A batch takes rows by level, then age.

Admission (Clockwork's rule: never queue work that cannot finish in time): a request whose
estimated finish (the rows queued ahead of it at its level or above, run in full batches on
the instances, after the soonest running batch ends, each run delayed by the event loop's
recent lag in getting to it) is past its deadline is refused at once
with `OverloadedError`, and a queued request whose deadline a run can no longer meet is
dropped before it runs. The cost of a run per batch size is learned online (`RunCost`); before
the first run there is no estimate and everything is admitted. The deadline is the caller's,
or `latency_slo_s` after arrival if that is sooner. A full queue refuses a request, unless a
lower priority level has one queued: its newest request is pushed out instead.

Requests are only merged when their keys are equal (the caller makes the key from the
non-batch dims), so arrays of different shapes never meet. `run_batch` is synchronous and
runs in a thread pool with one thread per instance: ONNX Runtime releases the GIL, so the
event loop keeps accepting while a batch computes. A shape and size whose runs have all been
shorter than the hand-off to the pool and back (`INLINE_AFTER` of them in a row, each within
`INLINE_MAX_NS` by the steps `run_batch` reports) runs on the loop's thread instead.

What happens to requests is reported as events (`BatchEvents`: queued, dropped with a reason,
batch finished with its times) to one listener the caller gives; the batcher keeps no
counters of its own, only what is in it now (`load()`), which its own rules need.

This module imports nothing from the rest of inscale but its own event types
(`inscale.batch_events`) and cost model (`inscale.run_cost`); its errors are its own.
"""

import asyncio
import enum
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from inscale.batch_events import BatchEvents, BatchRecord, DropReason, Load, Ran, StepTimes
from inscale.run_cost import RunCost

T = TypeVar("T")
R = TypeVar("R")

# With a latency objective, a forming batch may wait only while even a full batch started at
# the end of the wait still ends within this share of the objective after the head request
# arrived: the rest is kept for the protocol layers and the tail.
WAIT_SHARE = 0.5
# ... and only when the fuller batch is expected to cost at least this much less per row.
MIN_GAIN = 0.2
# The arrival rate the wait rule uses forgets with this time constant: a burst is forgotten
# within a few tenths of a second, so a lone client after it is not held back.
RATE_WINDOW_S = 0.02
# Runs between refreshes of admission's quick bound (see `_refresh_run_bound`).
BOUND_EVERY = 8
# Weight of a new sample in the mean dispatch lag (see `_lag`), and how fast it fades when
# no batch runs to measure it.
LAG_ALPHA = 0.2
LAG_WINDOW_S = 0.1
# With a latency objective, a batch waits for rows only while the instances have been busy
# this share of the recent past (time constant BUSY_WINDOW_S): below it greedy batching keeps
# up and waiting would cost latency for no throughput.
BUSY_TO_WAIT = 0.95
BUSY_WINDOW_S = 0.05
# A batch runs on the event loop's own thread, not the pool's, once this many runs in a row
# of its shape and size took at most INLINE_MAX_NS in `run_batch`'s steps: handing a run to a
# worker thread and its result back costs tens of microseconds (about 85 on one loaded
# core), more than such a run. One slower run sends that shape and size back to the pool.
INLINE_AFTER = 9
INLINE_MAX_NS = 30_000


class BatcherError(Exception):
    """Base of the batcher's own errors."""


class QueueFullError(BatcherError):
    """The queue is at `max_queue_size` (or a higher priority request took this one's place)."""


class OverloadedError(BatcherError):
    """Admission: the request could not finish before its deadline, so it was not queued."""

    def __init__(self, message: str, estimate_s: float) -> None:
        super().__init__(message)
        self.estimate_s = estimate_s  # when it would have finished, from now


class DeadlineError(BatcherError):
    """The request's deadline passed while it was queued."""


class LateError(DeadlineError):
    """The request was dropped before its run: the run could no longer end by its deadline."""


class BatcherClosedError(BatcherError):
    pass


class BatchFailedError(BatcherError):
    """`run_batch` raised; every request of that batch gets this, with the cause chained."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # rows per run
    max_queue_delay_s: float  # used when there is no latency objective
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # requests, all levels together
    instances: int = 1
    batching: bool = True  # False: every request runs alone
    latency_slo_s: float | None = None  # the end-to-end objective; None: greedy batching
    priority_levels: int = 1  # level 0 is served first
    max_starvation_s: float = 0.5  # a lower level's oldest request waits at most this long
    admission: bool = True  # refuse and drop by the learned run cost (False: deadlines only)


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
    deadline: float  # math.inf when none
    level: int
    future: asyncio.Future[R]
    state: _State = _State.QUEUED
    probe: bool = False  # admitted to an idle batcher whatever the estimate (see `_admit`)
    # Its entry in the deadline heap, [deadline, order, self], while it is queued. Leaving the
    # queue empties the entry's last slot, so an entry left behind holds nothing.
    entry: "list[Any] | None" = None

    def leave_queue(self, state: "_State") -> None:
        self.state = state
        entry = self.entry
        if entry is not None:
            entry[2] = None
            self.entry = None

    def abandon(self, _: object) -> None:
        # Cancelling our own future (not the caller's task) makes `submit`'s await raise
        # without touching the task's cancellation state.
        self.future.cancel()


@dataclass(slots=True)
class _Plan(Generic[T, R]):
    items: list[_Pending[T, R]] = field(default_factory=list)
    ready: bool = False
    wake_at: float = 0.0
    late: list[_Pending[T, R]] = field(default_factory=list)
    estimate: float | None = None  # the learned cost of running `items`


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
        # The run cost learned from this batcher's runs (and the owner's warm-up).
        self.cost = RunCost()
        self._queues: list[deque[_Pending[T, R]]] = [deque() for _ in range(policy.priority_levels)]
        self._level_rows = [0] * policy.priority_levels  # rows queued per level
        self._queued = 0
        self._queued_rows = 0
        self._running_batches = 0
        self._running_requests = 0
        self._running_ends: list[float] = []  # estimated end of each running batch
        # How late the event loop gets to the next batch when one ends with work queued:
        # under load it is busy reading and answering requests, so queued work drains slower
        # than the runs alone say. A mean of recent lags, 0 while nothing waits.
        self._lag = 0.0
        self._lag_at = 0.0  # it fades from here (see `_lag_now`)
        self._backlog_since: float | None = None  # a slot freed with requests queued
        self._run_bound: float | None = None  # see `_refresh_run_bound`
        self._runs = 0
        self._busy = 0.0  # instances busy, decayed to `_busy_at` (only with an SLO)
        self._busy_at = 0.0
        self._rate = 0.0  # arrivals in rows/s, decayed to `_rate_at` (only with an SLO)
        self._rate_at = 0.0
        self._arrivals = (
            0  # requests queued so far: tells a wait that saw one from one that did not
        )
        # Deadlines of queued requests, soonest first, with one timer for the soonest: a
        # timer per request cost about 3% of a request's CPU (issue 12's profile). The
        # entries of requests that left the queue (emptied: see `_Pending.entry`) stay until
        # they surface or the heap is compacted.
        self._deadlines: list[list[Any]] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = math.inf
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `start` ran on
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._running_tasks: set[asyncio.Task[None]] = set()
        # (key, rows) -> consecutive runs within INLINE_MAX_NS (see INLINE_AFTER). Bounded:
        # keys are the model's shapes, rows at most max_batch_size.
        self._short_runs: dict[tuple[Hashable, int], int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._slots = asyncio.Semaphore(self.policy.instances)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(self.policy.instances, thread_name_prefix=self._name)
        # Kept: `asyncio.get_running_loop()` calls getpid() on Python 3.11, a system call,
        # and every request asked for the loop twice.
        loop = self._loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._batch_loop())

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
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for queue in self._queues:
            for item in queue:
                if item.state is _State.QUEUED:
                    closed = BatcherClosedError(f"{self._name} is shutting down")
                    self._drop(item, DropReason.CLOSED, closed)
            queue.clear()
        if self._running_tasks:
            await asyncio.gather(*self._running_tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def time(self) -> float:
        """Now on the clock deadlines are given in (the event loop's)."""
        loop = self._loop
        return (asyncio.get_running_loop() if loop is None else loop).time()

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
        level: int = 0,
        abandon_on: "asyncio.Future[Any] | None" = None,
    ) -> R:
        """Queue one request and wait for its result.

        `deadline` is on the event loop's monotonic clock (`loop.time()`); the latency
        objective, if sooner, replaces it. `level` is the priority level (0 is served first).
        When `abandon_on` completes (the HTTP layer's "client disconnected" watcher) or the
        awaiting task is cancelled, the request leaves the queue and this raises
        CancelledError.
        """
        loop = self._loop
        if self._closed or loop is None:
            raise BatcherClosedError(f"{self._name} is not accepting requests")
        policy = self.policy
        if rows > policy.max_batch_size:
            raise ValueError(f"{rows} rows exceed max_batch_size {policy.max_batch_size}")
        if not 0 <= level < policy.priority_levels:
            raise ValueError(f"priority level {level} outside 0..{policy.priority_levels - 1}")
        now = loop.time()
        due = math.inf if deadline is None else deadline
        if policy.latency_slo_s is not None:
            due = min(due, now + policy.latency_slo_s)
            self._count_arrival(now, rows)
        if self._queued >= policy.max_queue_size and not self._make_room(level):
            self._events.request_dropped(DropReason.REJECTED)
            raise QueueFullError(f"queue is full ({policy.max_queue_size} requests waiting)")
        probe = False
        if due != math.inf and policy.admission:
            probe = self._admit(now, rows, key, level, due)
        item: _Pending[T, R] = _Pending(
            payload, rows, key, now, due, level, loop.create_future(), probe=probe
        )
        if due != math.inf:
            self._watch_deadline(item)
        self._queues[level].append(item)
        self._queued += 1
        self._queued_rows += rows
        self._level_rows[level] += rows
        self._arrivals += 1
        self._events.request_queued(rows)
        self._idle.clear()  # type: ignore[union-attr]
        self._wakeup.set()  # type: ignore[union-attr]
        if abandon_on is not None:
            abandon_on.add_done_callback(item.abandon)
        try:
            return await item.future
        except asyncio.CancelledError:
            if item.state is _State.QUEUED:
                self._drop(item, DropReason.CANCELLED, None)
            raise
        finally:
            if abandon_on is not None:
                # It may be a keep-alive connection's future, outliving this request: without
                # this, the connection would collect a callback per request it carried.
                abandon_on.remove_done_callback(item.abandon)

    def estimate_finish(self, now: float, rows: int, key: Hashable, level: int = 0) -> float | None:
        """Seconds from `now` until a request of `rows` rows submitted now would finish, or
        None while nothing has run yet. Rows queued at its level or above go first, in full
        batches shared over the instances, after the soonest running batch ends; each run,
        and the answer, also waits the event loop's recent dispatch lag."""
        policy = self.policy
        ahead = rows + (
            self._queued_rows
            if level == len(self._queues) - 1
            else sum(self._level_rows[: level + 1])
        )
        full, rest = divmod(ahead, policy.max_batch_size)
        cost = self.cost
        work = 0.0
        if full:
            per_full = cost.estimate(key, policy.max_batch_size)
            if per_full is None:
                return None
            work = full * per_full
        if rest:
            per_rest = cost.estimate(key, rest)
            if per_rest is None:
                return None
            work += per_rest
        lag = self._lag_now(now)
        work += (full + (1 if rest else 0)) * lag
        wait = 0.0
        if self._running_batches >= policy.instances and self._running_ends:
            wait = max(0.0, min(self._running_ends) - now)
        return wait + work / policy.instances + lag

    def _admit(self, now: float, rows: int, key: Hashable, level: int, due: float) -> bool:
        """Refuse the request (OverloadedError) if it cannot finish by `due`. True when it is
        admitted as a probe: an idle batcher runs one request whatever the estimate says, so
        a cost learned under conditions that are gone (say, CPU contention) is measured
        again rather than refusing everything forever."""
        if self._queued == 0 and self._running_batches == 0:
            return True
        # Most requests are far from their deadline: a bound from a few attributes admits them
        # without the estimate's lookups (it runs for every request).
        bound = self._run_bound
        if bound is None:
            bound = self._refresh_run_bound(key)
            if bound is None:
                return False  # nothing has run yet
        ahead = self._queued_rows + rows
        runs = ahead // self.policy.max_batch_size + 2  # the running one, and a partial one
        lag = self._lag_now(now)
        if runs * (bound + lag) / self.policy.instances + lag < due - now:
            return False
        estimate = self.estimate_finish(now, rows, key, level)
        if estimate is not None and now + estimate > due:
            self._events.request_dropped(DropReason.SHED)
            raise OverloadedError(
                "the request would finish in about "
                f"{estimate * 1000:.1f} ms, after its deadline in {(due - now) * 1000:.1f} ms",
                estimate,
            )
        return False

    def _lag_now(self, now: float) -> float:
        """The dispatch lag, faded with time since it was last measured: with nothing run
        (everything refused) it is not measured, and a stale high lag must not keep refusing."""
        return self._lag * math.exp((self._lag_at - now) / LAG_WINDOW_S)

    def _count_short(self, shape: tuple[Hashable, int], steps: StepTimes) -> None:
        """Count a run toward running its shape inline. Only a run whose steps were measured
        counts (a `run_batch` that reports none never runs inline), and only where the
        learned cost is trusted at all: a model with admission off is one whose run time
        depends on its values, and one long run on the loop's thread would stall everything."""
        took = steps.input_ns + steps.infer_ns + steps.output_ns
        if self.policy.admission and steps.infer_ns > 0 and took <= INLINE_MAX_NS:
            self._short_runs[shape] = self._short_runs.get(shape, 0) + 1
        else:
            self._short_runs[shape] = 0

    def _refresh_run_bound(self, key: Hashable) -> float | None:
        """Twice the learned cost of a full batch: more than any one run takes (twice, for
        sizes whose medians are not yet in order)."""
        full = self.cost.estimate(key, self.policy.max_batch_size)
        self._run_bound = None if full is None else 2 * full
        return self._run_bound

    def _make_room(self, level: int) -> bool:
        """The queue is full: push out the newest request of the lowest level below `level`
        that has one queued. False when there is none (then the new request is refused)."""
        for lower in range(len(self._queues) - 1, level, -1):
            queue = self._queues[lower]
            while queue:
                item = queue.pop()
                if item.state is _State.QUEUED:
                    error = QueueFullError(
                        "queue is full; a higher priority request took this one's place"
                    )
                    self._drop(item, DropReason.PREEMPTED, error)
                    return True
        return False

    def _count_arrival(self, now: float, rows: int) -> None:
        self._rate = (
            self._rate * math.exp((self._rate_at - now) / RATE_WINDOW_S) + rows / RATE_WINDOW_S
        )
        self._rate_at = now

    def _arrival_rate(self, now: float) -> float:
        """Rows per second arriving lately, not counting one row: a lone request after a
        quiet spell is evidence of no rate at all, not of one row per `RATE_WINDOW_S`."""
        decayed = self._rate * math.exp((self._rate_at - now) / RATE_WINDOW_S)
        return max(0.0, decayed - 1 / RATE_WINDOW_S)

    def _count_busy(self, now: float, seconds: float) -> None:
        decay = math.exp((self._busy_at - now) / BUSY_WINDOW_S)
        self._busy = self._busy * decay + seconds / BUSY_WINDOW_S
        self._busy_at = now

    def _utilization(self, now: float) -> float:
        """Instances busy on average over the recent past (runs as they end)."""
        return self._busy * math.exp((self._busy_at - now) / BUSY_WINDOW_S)

    def _watch_deadline(self, item: _Pending[T, R]) -> None:
        heap = self._deadlines
        if len(heap) > 2 * self._queued + 64:
            # Mostly emptied entries: keep the queued requests', so the heap stays within a
            # few times the queue.
            heap[:] = [entry for entry in heap if entry[2] is not None]
            heapq.heapify(heap)
        # A list, not a tuple, so that leaving the queue can empty it; lists order as tuples
        # do, and the order number (unique) settles ties before the request is compared.
        entry = item.entry = [item.deadline, self._arrivals, item]
        heapq.heappush(heap, entry)
        if item.deadline < self._expiry_at:
            self._arm(item.deadline)

    def _arm(self, at: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = self._loop.call_at(at, self._expire)  # type: ignore[union-attr]
        self._expiry_at = at

    def _expire(self) -> None:
        """The soonest deadline is due: drop every queued request whose deadline it reached
        (a timer may fire a moment early by the loop's clock; it stands for its deadline)."""
        self._expiry = None
        now = max(self._loop.time(), self._expiry_at)  # type: ignore[union-attr]
        self._expiry_at = math.inf
        heap = self._deadlines
        while heap:
            deadline, _, item = heap[0]
            if item is not None and deadline > now:
                break
            heapq.heappop(heap)
            if item is not None:
                self._drop(item, DropReason.EXPIRED, DeadlineError("deadline passed while queued"))
        if heap:
            self._arm(heap[0][0])

    def _drop(self, item: _Pending[T, R], reason: DropReason, error: BaseException | None) -> None:
        """Take a queued request out; it stays in its deque as a shell until skipped."""
        item.leave_queue(_State.DROPPED)
        item.payload = None  # release the arrays now, not when the shell is skipped
        self._queued -= 1
        self._queued_rows -= item.rows
        self._level_rows[item.level] -= item.rows
        self._events.request_dropped(reason)
        if error is not None and not item.future.done():
            item.future.set_exception(error)
        # Shells are skipped lazily; compact when they outnumber live requests so a storm of
        # timeouts cannot grow the deque without bound.
        queue = self._queues[item.level]
        if len(queue) > 2 * self._queued + 64:
            self._queues[item.level] = deque(i for i in queue if i.state is _State.QUEUED)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._queued == 0 and self._running_batches == 0 and self._idle is not None:
            self._idle.set()

    # -- the batching loop -----------------------------------------------------------------

    async def _batch_loop(self) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # an instance is idle
            freed = self._backlog_since
            self._backlog_since = None
            now = loop.time()
            lag = 0.0 if freed is None else now - freed
            faded = self._lag_now(now)
            self._lag = faded + LAG_ALPHA * (lag - faded)
            self._lag_at = now
            try:
                items, expected = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._execute(items, expected))
            self._running_tasks.add(task)
            task.add_done_callback(self._running_tasks.discard)

    async def _next_batch(self) -> tuple[list[_Pending[T, R]], float | None]:
        assert self._wakeup is not None and self._loop is not None
        loop = self._loop
        patient = True
        while True:
            plan = self._plan(loop.time(), patient)
            if plan.late:
                late = LateError("the request could no longer finish before its deadline")
                for item in plan.late:
                    self._drop(item, DropReason.LATE, late)
                continue  # plan again without them
            if plan.ready:
                self._dequeue(plan.items)
                return plan.items, plan.estimate
            # No await between planning and clearing, so no arrival can be missed.
            self._wakeup.clear()
            timer = loop.call_at(plan.wake_at, self._wakeup.set) if plan.items else None
            arrivals = self._arrivals
            waiting_since = loop.time()
            await self._wakeup.wait()
            if timer is not None:
                timer.cancel()
                if self.policy.latency_slo_s is not None:
                    # The instance was held for a forming batch, not idle for want of work:
                    # counted as busy, or waiting would talk itself out of waiting.
                    now = loop.time()
                    self._count_busy(now, now - waiting_since)
            # A wait for rows that did not come is not repeated: the rows expected were the
            # arrival rate's guess, and the callers queued may be all there are.
            patient = self._arrivals != arrivals

    def _head(self, now: float) -> _Pending[T, R] | None:
        """The request the next batch is built around (see the module's docstring)."""
        head = None
        for queue in self._queues:
            while queue and queue[0].state is not _State.QUEUED:
                queue.popleft()
            if queue and head is None:
                head = queue[0]
        if head is None or len(self._queues) == 1:
            return head
        starving = [
            q[0]
            for q in self._queues[head.level + 1 :]
            if q and now - q[0].enqueued >= self.policy.max_starvation_s
        ]
        return min(starving, key=lambda item: item.enqueued) if starving else head

    def _plan(self, now: float, patient: bool = True) -> _Plan[T, R]:
        plan: _Plan[T, R] = _Plan()
        head = self._head(now)
        if head is None:
            return plan
        policy = self.policy
        items = plan.items
        items.append(head)
        rows = head.rows
        full = not policy.batching or rows == policy.max_batch_size
        if not full:
            for queue in self._queues:
                for item in queue:
                    if item is head or item.state is not _State.QUEUED or item.key != head.key:
                        continue
                    if rows + item.rows > policy.max_batch_size:
                        full = True
                        break
                    items.append(item)
                    rows += item.rows
                    if rows == policy.max_batch_size:
                        full = True
                        break
                if full:
                    break
        estimate = plan.estimate = self.cost.estimate(head.key, rows)
        if estimate is not None and policy.admission:
            ends = now + estimate + self._lag_now(now)  # the answer waits the loop's lag too
            plan.late = [item for item in items if item.deadline < ends and not item.probe]
            if plan.late:
                return plan
        preferred_cut = self._preferred_prefix(items)
        if preferred_cut is not None and (
            preferred_cut[1] == policy.preferred_batch_sizes[-1]  # the largest one
            or (preferred_cut[0] == len(items) and not full)  # all that waits
        ):
            del items[preferred_cut[0] :]
            plan.ready = True
            return plan
        if policy.latency_slo_s is not None:
            wait_until = (
                None if full or not patient else self._wait_until(now, head, rows, estimate)
            )
            plan.ready = wait_until is None
            plan.wake_at = now if wait_until is None else wait_until
        else:
            lone = self._queued == 1
            waited_enough = now >= head.enqueued + policy.max_queue_delay_s
            plan.ready = full or lone or waited_enough
            plan.wake_at = head.enqueued + policy.max_queue_delay_s
        if plan.ready and preferred_cut is not None:
            del items[preferred_cut[0] :]
        return plan

    def _wait_until(
        self, now: float, head: _Pending[T, R], rows: int, cost_now: float | None
    ) -> float | None:
        """With a latency objective: until when to wait for more rows, or None to run now.

        Waiting pays only when the instances are nearly always busy (otherwise throughput is
        not short and a wait only adds latency), more than a row is due during a run of the
        rows waiting (otherwise a lone client would wait on us), the rows expected meanwhile
        make a run clearly cheaper per row, and a full batch started after the wait still
        ends within `WAIT_SHARE` of the objective (and before the head's deadline). Each wait
        lasts until about two arrivals are due; one that sees none ends the waiting.
        """
        policy = self.policy
        assert policy.latency_slo_s is not None
        if cost_now is None:
            return None
        if self._utilization(now) < BUSY_TO_WAIT * policy.instances:
            return None  # throughput is not what is short: a wait would only add latency
        rate = self._arrival_rate(now)
        if rate * cost_now < 1:  # not even one more row is due during a run of these
            return None
        cost = self.cost
        cost_full = cost.estimate(head.key, policy.max_batch_size)
        assert cost_full is not None  # known whenever cost_now is
        latest_start = (
            min(head.enqueued + policy.latency_slo_s * WAIT_SHARE, head.deadline) - cost_full
        )
        budget = latest_start - now
        if budget <= 0:
            return None
        more = min(policy.max_batch_size - rows, rate * budget)
        if more < 1:
            return None
        cost_more = cost.estimate(head.key, rows + int(more))
        assert cost_more is not None
        if cost_more / (rows + int(more)) > (1 - MIN_GAIN) * cost_now / rows:
            return None
        return now + min(budget, more / rate, 2 / rate)

    def _preferred_prefix(self, items: list[_Pending[T, R]]) -> tuple[int, int] | None:
        """The longest prefix whose rows add up to a preferred size: (length, rows)."""
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
        levels = set()
        for item in items:
            item.leave_queue(_State.RUNNING)
            rows += item.rows
            self._level_rows[item.level] -= item.rows
            levels.add(item.level)
        self._queued -= len(items)
        self._queued_rows -= rows
        self._running_batches += 1
        self._running_requests += len(items)
        for level in levels:
            queue = self._queues[level]
            taken = [item for item in items if item.level == level]
            if len(taken) <= len(queue) and all(queue[i] is item for i, item in enumerate(taken)):
                for _ in taken:
                    queue.popleft()
            else:  # the batch skipped requests of another shape: keep those, in order
                self._queues[level] = deque(i for i in queue if i.state is _State.QUEUED)

    async def _execute(self, items: list[_Pending[T, R]], expected: float | None) -> None:
        """Run one batch; `expected` is what its run is estimated to take (None: unknown)."""
        assert self._slots is not None and self._loop is not None
        loop = self._loop
        started = loop.time()
        # From a list, not a generator: tuple(generator) allocates 10 slots and shrinks, so
        # every batch left one tuple on CPython's free list of its size (+4 MB of RSS).
        queue_seconds = tuple([started - item.enqueued for item in items])
        payloads = [item.payload for item in items]
        rows = sum(item.rows for item in items)
        key = items[0].key
        for item in items:
            item.payload = None
        end = started + (expected if expected is not None else 0.0)
        self._running_ends.append(end)
        steps = StepTimes()
        failed = False
        shape = (key, rows)
        try:
            if self._short_runs.get(shape, 0) >= INLINE_AFTER:
                ran = self._run_batch(payloads)  # type: ignore[arg-type]
            else:
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
            self._count_short(shape, steps)
            for item, result in zip(items, ran.results, strict=True):
                if not item.future.done():  # the caller may have gone away meanwhile
                    item.future.set_result(result)
        finally:
            ended = loop.time()
            compute_seconds = ended - started
            if self.policy.latency_slo_s is not None:
                self._count_busy(ended, compute_seconds)
            self._running_ends.remove(end)
            self._running_batches -= 1
            self._running_requests -= len(items)
            if self._queued:
                self._backlog_since = loop.time()
            self._slots.release()
            self._check_idle()
        if not failed:
            self.cost.observe(key, rows, compute_seconds)
            self._runs += 1
            bound = self._run_bound
            # Refreshed now and then, and at once when a run outgrows it (it must stay above).
            if bound is None or compute_seconds * 2 > bound or self._runs % BOUND_EVERY == 0:
                self._refresh_run_bound(key)
        self._events.batch_finished(
            BatchRecord(
                len(items), rows, queue_seconds, compute_seconds, steps, failed, time.time()
            )
        )
