"""The generic batcher, driven with plain Python payloads and a run_batch we control.

Timing is controlled with threading events inside run_batch (the batch in flight waits until
the test releases it), so the queue's state is known when the assertions run.
"""

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Sequence

import pytest

from inscale.batch_events import BatchRecord, DropReason, Ran, StepTimes
from inscale.batcher import (
    INLINE_AFTER,
    INLINE_MAX_NS,
    Batcher,
    BatchFailedError,
    BatchPolicy,
    DeadlineError,
    QueueFullError,
)


class Recorder:
    """run_batch that records each batch, optionally blocking until released."""

    def __init__(self, block: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, payloads: Sequence[int]) -> Ran[int]:
        self.batches.append(list(payloads))
        self.started.set()
        self.release.wait(10)
        return Ran([p * 10 for p in payloads], StepTimes(1, 2, 3))


class Events:
    """The batcher's event stream, recorded."""

    def __init__(self) -> None:
        self.queued: list[int] = []
        self.records: list[BatchRecord] = []
        self.drops: list[DropReason] = []

    def request_queued(self, rows: int) -> None:
        self.queued.append(rows)

    def batch_finished(self, record: BatchRecord) -> None:
        self.records.append(record)

    def request_dropped(self, reason: DropReason) -> None:
        self.drops.append(reason)


def policy(**overrides: object) -> BatchPolicy:
    values: dict[str, object] = {"max_batch_size": 8, "max_queue_delay_s": 30.0}
    values.update(overrides)
    return BatchPolicy(**values)  # type: ignore[arg-type]


async def wait_until_started(recorder: Recorder) -> None:
    await asyncio.to_thread(recorder.started.wait, 10)
    recorder.started.clear()


async def test_requests_queued_behind_a_running_batch_are_merged_in_order() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(max_batch_size=4), events)
    batcher.start()
    first = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 5)]
    await asyncio.sleep(0)  # let the submits enqueue
    assert batcher.load().queued == 4
    run.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [10, 20, 30, 40]
    assert run.batches == [[0], [1, 2, 3, 4]]
    assert len(events.records) == 2
    await batcher.close()


async def test_a_lone_request_runs_at_once_despite_a_long_queue_delay() -> None:
    run = Recorder()
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(max_queue_delay_s=3600.0), events)
    batcher.start()
    # With a one-hour delay, only the "lone request on an idle instance" rule can finish this.
    assert await asyncio.wait_for(batcher.submit(7), timeout=5) == 70
    await batcher.close()


async def test_partial_batch_waits_for_the_delay_then_runs() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(
        run, policy(max_batch_size=8, max_queue_delay_s=0.05), events
    )
    batcher.start()
    first = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    run.release.set()
    await first
    # Two requests queued (not lone, not full): they go together once the delay has passed.
    assert await asyncio.gather(*queued) == [10, 20]
    assert run.batches[1] == [1, 2]
    await batcher.close()


async def test_rows_never_exceed_max_batch_size_and_requests_are_not_split() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(max_batch_size=5), events)
    batcher.start()
    first = asyncio.create_task(batcher.submit(0, rows=1))
    await wait_until_started(run)
    tasks = [asyncio.create_task(batcher.submit(i, rows=2)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    run.release.set()
    await asyncio.gather(first, *tasks)
    assert run.batches[1:] == [[1, 2], [3]]  # 2+2 rows, then 2 more: never 6 rows in one run
    with pytest.raises(ValueError, match="exceed max_batch_size"):
        await batcher.submit(9, rows=6)
    await batcher.close()


async def test_requests_with_different_keys_never_share_a_batch() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(max_batch_size=3), events)
    batcher.start()
    first = asyncio.create_task(batcher.submit(0, key="a"))
    await wait_until_started(run)
    tasks = [asyncio.create_task(batcher.submit(i, key="ab"[i % 2])) for i in range(1, 7)]
    await asyncio.sleep(0)
    run.release.set()
    await asyncio.gather(first, *tasks)
    # Even payloads are key a, odd key b: each batch is full (3 rows) and of one key.
    assert run.batches[1:] == [[1, 3, 5], [2, 4, 6]]
    await batcher.close()


async def test_preferred_batch_size_is_cut_as_soon_as_it_can_be_formed() -> None:
    run = Recorder(block=True)
    batcher: Batcher[int, int] = Batcher(
        run, policy(max_batch_size=8, preferred_batch_sizes=(2, 4)), Events()
    )
    batcher.start()
    first = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
    await asyncio.sleep(0)
    run.release.set()
    await asyncio.gather(first, *tasks)
    # Six queued: the largest preferred size (4) goes first, then the remaining two (also
    # preferred), well before the 30 s delay.
    assert run.batches[1:] == [[1, 2, 3, 4], [5, 6]]
    await batcher.close()


async def test_full_queue_rejects_at_once() -> None:
    run = Recorder(block=True)
    observer = Events()
    batcher: Batcher[int, int] = Batcher(
        run, policy(max_queue_size=2, max_queue_delay_s=0.0), observer
    )
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="queue is full"):
        await batcher.submit(3)
    assert observer.drops == [DropReason.REJECTED]
    assert observer.queued == [1, 1, 1], "a rejected request was never queued"
    run.release.set()
    await asyncio.gather(running, *queued)
    await batcher.close()


async def occupied_batcher() -> tuple[Recorder, Events, Batcher[int, int], "asyncio.Task[int]"]:
    """A batcher whose one instance is running request 0 until `run.release` is set."""
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(), events)
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    return run, events, batcher, running


async def test_request_still_queued_at_its_deadline_fails_and_is_never_run() -> None:
    run, events, batcher, running = await occupied_batcher()
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineError):
        await batcher.submit(1, deadline=loop.time() + 0.05)
    load = batcher.load()
    assert events.drops == [DropReason.EXPIRED]
    assert (load.queued, load.queued_rows, load.running_batches) == (0, 0, 1)
    run.release.set()
    await running
    assert all(1 not in batch for batch in run.batches)
    await batcher.close()


async def test_queued_requests_expire_each_at_its_own_deadline_in_any_order() -> None:
    # One timer stands for the soonest deadline: a later request with a sooner deadline must
    # re-arm it, and each expiry must arm the next.
    run, events, batcher, running = await occupied_batcher()
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadlines = {1: 0.30, 2: 0.05, 3: 0.15}
    waiting = {
        n: asyncio.create_task(batcher.submit(n, deadline=start + d)) for n, d in deadlines.items()
    }
    kept = asyncio.create_task(batcher.submit(4))  # no deadline: runs once the instance frees
    ended: dict[int, float] = {}

    def note_end(n: int) -> Callable[[object], object]:
        return lambda _: ended.setdefault(n, loop.time() - start)

    for n, task in waiting.items():
        task.add_done_callback(note_end(n))
    for task in waiting.values():
        with pytest.raises(DeadlineError):
            await task
    assert sorted(ended, key=ended.__getitem__) == [2, 3, 1]
    for n, took in ended.items():
        assert deadlines[n] - 0.002 <= took < deadlines[n] + 0.1, ended
    assert events.drops == [DropReason.EXPIRED] * 3
    run.release.set()
    assert (await running, await kept) == (0, 40)
    assert [p for b in run.batches for p in b] == [0, 4]
    await batcher.close()


class Answer:
    """A result that can be watched for being freed."""

    def __init__(self, value: int) -> None:
        self.value = value


async def test_deadlines_of_requests_that_ran_hold_neither_them_nor_their_results() -> None:
    # Every request carries a deadline far away; once run, its heap entry waits until it
    # surfaces or the heap is compacted, and it must not keep the answer alive meanwhile.
    def run(payloads: Sequence[int]) -> Ran[Answer]:
        return Ran([Answer(p * 10) for p in payloads], StepTimes(1, 2, 3))

    batcher: Batcher[int, Answer] = Batcher(run, policy(max_batch_size=4), Events())
    batcher.start()
    loop = asyncio.get_running_loop()
    freed: list[weakref.ref[Answer]] = []
    for round_ in range(50):
        answers = await asyncio.gather(
            *(batcher.submit(n, deadline=loop.time() + 60) for n in range(4))
        )
        assert [a.value for a in answers] == [0, 10, 20, 30], round_
        freed += [weakref.ref(a) for a in answers]
        del answers
        assert len(batcher._deadlines) <= 2 * 4 + 64 + 4
    gc.collect()
    # All but the last round's (the loop may still hold the last batch a moment): a heap
    # holding its requests strongly would keep up to 64 more.
    assert all(ref() is None for ref in freed[:-4])
    await batcher.close()
    assert batcher._expiry is None  # closing stops the deadline timer


async def test_abandoned_request_leaves_the_queue_and_others_are_served() -> None:
    run = Recorder(block=True)
    observer = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(), observer)
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    gone: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    leaving = asyncio.create_task(batcher.submit(1, abandon_on=gone))
    staying = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    gone.set_result(None)  # the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert observer.drops == [DropReason.CANCELLED]
    assert batcher.load().queued == 1
    run.release.set()
    assert await running == 0
    assert await staying == 20
    assert [p for b in run.batches for p in b] == [0, 2]
    await batcher.close()


async def test_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    def run(payloads: Sequence[int]) -> Ran[int]:
        if -1 in payloads:
            raise RuntimeError("boom")
        return Ran(list(payloads))

    observer = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(), observer)
    batcher.start()
    with pytest.raises(BatchFailedError, match="boom"):
        await batcher.submit(-1)
    assert await batcher.submit(5) == 5
    assert [(r.failed, r.requests) for r in observer.records] == [(True, 1), (False, 1)]
    assert observer.records[0].steps == StepTimes(), "a failed run reports no step times"
    await batcher.close()


async def test_result_count_mismatch_is_a_batch_failure() -> None:
    batcher: Batcher[int, int] = Batcher(lambda payloads: Ran([]), policy(), Events())
    batcher.start()
    with pytest.raises(BatchFailedError, match="returned 0 results for 1 requests"):
        await batcher.submit(1)
    await batcher.close()


async def test_instances_run_batches_in_parallel() -> None:
    both_running = threading.Barrier(2, timeout=10)

    def run(payloads: Sequence[int]) -> Ran[int]:
        both_running.wait()  # deadlocks (BrokenBarrierError) unless two runs overlap
        return Ran(list(payloads))

    batcher: Batcher[int, int] = Batcher(run, policy(instances=2, max_batch_size=1), Events())
    batcher.start()
    assert list(await asyncio.gather(batcher.submit(1), batcher.submit(2))) == [1, 2]
    await batcher.close()


async def test_drain_finishes_queued_work_and_refuses_new_requests() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(), events)
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    queued = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    draining = asyncio.create_task(batcher.drain(timeout_s=10))
    await asyncio.sleep(0)
    assert not draining.done()
    run.release.set()
    assert await draining is True
    assert (await running, await queued) == (0, 10)
    assert batcher.closed
    await batcher.close()


async def test_events_carry_rows_queue_times_and_step_times() -> None:
    observer = Events()
    batcher: Batcher[int, int] = Batcher(Recorder(), policy(), observer)
    batcher.start()
    await batcher.submit(1, rows=3)
    assert observer.queued == [3]
    (record,) = observer.records
    assert (record.requests, record.rows, record.failed) == (1, 3, False)
    assert record.steps == StepTimes(1, 2, 3)
    assert record.finished_unix > 0
    assert len(record.queue_seconds) == 1 and record.queue_seconds[0] >= 0
    assert record.compute_seconds >= 0
    await batcher.close()


class Timed:
    """run_batch that records the thread each run ran on and reports the step times given."""

    def __init__(self, infer_ns: int) -> None:
        self.infer_ns = infer_ns
        self.threads: list[int] = []

    def __call__(self, payloads: Sequence[int]) -> Ran[int]:
        self.threads.append(threading.get_ident())
        return Ran(list(payloads), StepTimes(1_000, self.infer_ns, 1_000))


async def _sequential(batcher: Batcher[int, int], count: int, key: object = None) -> None:
    for i in range(count):
        assert await batcher.submit(i, key=key) == i


async def test_consistently_short_runs_move_to_the_loop_thread_and_a_long_one_moves_back() -> None:
    loop_thread = threading.get_ident()
    run = Timed(infer_ns=5_000)  # 7 us of steps: far below the hand-off to a worker
    batcher: Batcher[int, int] = Batcher(run, policy(), Events())
    batcher.start()
    await _sequential(batcher, INLINE_AFTER + 3)
    on_loop = [t == loop_thread for t in run.threads]
    assert on_loop == [False] * INLINE_AFTER + [True] * 3
    # Another shape starts in the pool again: its runs have not been seen yet.
    await _sequential(batcher, 1, key="other")
    assert run.threads[-1] != loop_thread
    # One slow run (it ran on the loop) sends its shape back to the pool at once.
    run.infer_ns = INLINE_MAX_NS * 10
    await _sequential(batcher, 2)
    assert [t == loop_thread for t in run.threads[-2:]] == [True, False]
    await batcher.close()


async def test_runs_stay_in_the_pool_when_their_time_is_unknown_or_untrusted() -> None:
    loop_thread = threading.get_ident()
    # No step times reported: nothing is known of the run's cost.
    unmeasured_threads: list[int] = []

    def run(payloads: Sequence[int]) -> Ran[int]:
        unmeasured_threads.append(threading.get_ident())
        return Ran(list(payloads))

    batcher: Batcher[int, int] = Batcher(run, policy(), Events())
    batcher.start()
    await _sequential(batcher, INLINE_AFTER + 2)
    await batcher.close()
    # Admission off: the model's run time depends on its values, so no run is trusted short.
    timed = Timed(infer_ns=5_000)
    untrusted: Batcher[int, int] = Batcher(timed, policy(admission=False), Events())
    untrusted.start()
    await _sequential(untrusted, INLINE_AFTER + 2)
    await untrusted.close()
    assert len(unmeasured_threads) == len(timed.threads) == INLINE_AFTER + 2
    assert loop_thread not in unmeasured_threads + timed.threads
