"""The batcher's overload rules: admission against the learned run cost, dropping requests
that can no longer meet their deadline, priority levels with a starvation bound, and the
adaptive queue delay under a latency objective.

The run cost is the batcher's real `RunCost`, taught with known figures (`teach`) before the
requests come; run_batch is a Recorder the test releases, so the queue's state is known at
each assertion. The few waits are generous bounds on behaviour (a wait that did or did not
happen), not measurements.
"""

import asyncio
import threading
from collections.abc import Sequence

import pytest
from test_batcher import Events, Recorder, wait_until_started

from inscale.batch_events import DropReason, Ran
from inscale.batcher import (
    Batcher,
    BatchPolicy,
    DeadlineError,
    LateError,
    OverloadedError,
    QueueFullError,
)


def policy(**overrides: object) -> BatchPolicy:
    values: dict[str, object] = {"max_batch_size": 4, "max_queue_delay_s": 0.0}
    values.update(overrides)
    return BatchPolicy(**values)  # type: ignore[arg-type]


def teach(batcher: Batcher[int, int], costs: dict[int, float], runs: int = 20) -> None:
    """Make the batcher's run cost know `rows -> seconds` (the key is None, as submitted)."""
    for _ in range(runs):
        for rows, seconds in costs.items():
            batcher.cost.observe(None, rows, seconds)


async def test_before_any_run_everything_is_admitted() -> None:
    run = Recorder(block=True)
    batcher: Batcher[int, int] = Batcher(run, policy(), Events())
    batcher.start()
    loop = asyncio.get_running_loop()
    assert batcher.estimate_finish(loop.time(), 1, None) is None
    first = asyncio.create_task(batcher.submit(1, deadline=loop.time() + 0.5))
    await wait_until_started(run)
    run.release.set()
    assert await first == 10
    await batcher.close()


async def test_a_request_that_cannot_finish_by_its_deadline_is_refused_at_once() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(), events)
    teach(batcher, {1: 0.03, 4: 0.06})
    batcher.start()
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    # 12 rows ahead: three full runs of 60 ms after the running one (about 30 ms left).
    queued = [asyncio.create_task(batcher.submit(i, rows=4)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    estimate = batcher.estimate_finish(loop.time(), 1, None)
    assert estimate is not None and 0.2 < estimate < 0.3
    with pytest.raises(OverloadedError, match=r"would finish in about 2\d\d\.\d ms"):
        await batcher.submit(9, deadline=loop.time() + 0.1)
    assert events.drops == [DropReason.SHED]
    assert events.queued == [1, 4, 4, 4], "the refused request never entered the queue"
    patient = asyncio.create_task(batcher.submit(8, deadline=loop.time() + 5))
    await asyncio.sleep(0)
    assert batcher.load().queued == 4, "a request that fits its deadline is admitted"
    run.release.set()
    assert await asyncio.gather(running, *queued, patient) == [0, 10, 20, 30, 80]
    await batcher.close()


async def test_the_latency_objective_is_a_deadline_when_it_is_sooner() -> None:
    run = Recorder(block=True)
    batcher: Batcher[int, int] = Batcher(run, policy(latency_slo_s=1.0), Events())
    teach(batcher, {1: 0.3, 4: 0.6})
    batcher.start()
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    queued = asyncio.create_task(batcher.submit(1, rows=4))  # about 0.3 + 0.6 s: admitted
    await asyncio.sleep(0)
    assert batcher.load().queued == 1
    with pytest.raises(OverloadedError):  # its own deadline (10 s) is far, the SLO is not
        await batcher.submit(9, deadline=loop.time() + 10)  # about 0.3 + 0.6 + 0.3 s
    run.release.set()
    assert list(await asyncio.gather(running, queued)) == [0, 10]
    await batcher.close()


async def test_a_queued_request_that_can_no_longer_make_its_deadline_is_dropped_unrun() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(), events)
    teach(batcher, {1: 0.1, 4: 0.2})
    batcher.start()
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    # Admitted: about 100 ms for the running run, 100 ms for its own, against 400 ms.
    late = asyncio.create_task(batcher.submit(1, deadline=loop.time() + 0.4))
    await asyncio.sleep(0.35)  # the running run overstays: 50 ms left, its run needs 100
    run.release.set()
    with pytest.raises(LateError):
        await late
    assert events.drops == [DropReason.LATE]
    assert await running == 0
    assert all(1 not in batch for batch in run.batches), "the late request never ran"
    await batcher.close()


async def test_higher_priority_is_batched_first() -> None:
    run = Recorder(block=True)
    batcher: Batcher[int, int] = Batcher(run, policy(max_batch_size=2, priority_levels=2), Events())
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    low = [asyncio.create_task(batcher.submit(i, level=1)) for i in (1, 2)]
    await asyncio.sleep(0)
    high = asyncio.create_task(batcher.submit(3, level=0))
    await asyncio.sleep(0)
    run.release.set()
    await asyncio.gather(running, *low, high)
    assert run.batches == [[0], [3, 1], [2]]
    await batcher.close()


async def test_a_starving_low_priority_request_goes_first() -> None:
    run = Recorder(block=True)
    batcher: Batcher[int, int] = Batcher(
        run, policy(max_batch_size=2, priority_levels=2, max_starvation_s=0.05), Events()
    )
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    low = asyncio.create_task(batcher.submit(1, level=1))
    await asyncio.sleep(0.1)  # past the starvation bound
    high = [asyncio.create_task(batcher.submit(i, level=0)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    run.release.set()
    await asyncio.gather(running, low, *high)
    assert run.batches[1] == [1, 2], "the starving request leads the next batch"
    await batcher.close()


async def test_a_full_queue_pushes_out_the_newest_lower_priority_request() -> None:
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(max_queue_size=2, priority_levels=2), events)
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await wait_until_started(run)
    older = asyncio.create_task(batcher.submit(1, level=1))
    newer = asyncio.create_task(batcher.submit(2, level=1))
    await asyncio.sleep(0)
    high = asyncio.create_task(batcher.submit(3, level=0))
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="higher priority"):
        await newer
    assert events.drops == [DropReason.PREEMPTED]
    with pytest.raises(QueueFullError, match="queue is full"):  # nothing lower to push out
        await batcher.submit(4, level=1)
    run.release.set()
    assert list(await asyncio.gather(running, older, high)) == [0, 10, 30]
    await batcher.close()


async def test_priority_levels_are_checked() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder(), policy(priority_levels=2), Events())
    batcher.start()
    with pytest.raises(ValueError, match=r"priority level 2 outside 0\.\.1"):
        await batcher.submit(1, level=2)
    await batcher.close()


class Timed:
    """run_batch that records each batch and takes the time the taught cost says."""

    def __init__(self, fixed_s: float, per_row_s: float) -> None:
        self.batches: list[list[int]] = []
        self.fixed_s, self.per_row_s = fixed_s, per_row_s
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, payloads: Sequence[int]) -> Ran[int]:
        self.hold.wait(10)
        self.batches.append(list(payloads))
        threading.Event().wait(self.fixed_s + self.per_row_s * len(payloads))
        return Ran([p * 10 for p in payloads])


async def _mean_batch(slo_s: float | None) -> float:
    """256 requests arrive about 2 ms apart at a model whose runs cost 8 ms plus 0.2 ms a
    row; the mean rows per run.

    Milliseconds, not tenths: a busy machine's timer overshoots by a fraction of a
    millisecond, which at 1 ms gaps slowed arrivals until they no longer outpaced the runs.
    """
    run = Timed(0.008, 0.0002)
    batcher: Batcher[int, int] = Batcher(
        run, policy(max_batch_size=8, latency_slo_s=slo_s), Events()
    )
    teach(batcher, {1: 0.0082, 8: 0.0096})
    batcher.start()
    sent = []
    for i in range(256):
        sent.append(asyncio.create_task(batcher.submit(i)))
        await asyncio.sleep(0.002)
    assert await asyncio.gather(*sent) == [i * 10 for i in range(256)]
    await batcher.close()
    return 256 / len(run.batches)


async def test_with_an_objective_a_batch_waits_for_rows_while_arrivals_outpace_runs() -> None:
    # Greedy (no objective): an idle instance takes what arrived during the last run, about
    # four rows. With an objective far off, the instance always busy, a run of 8 costing
    # little more than a run of 1, and rows coming faster than runs end: batches wait to fill.
    greedy = await _mean_batch(None)
    adaptive = await _mean_batch(1.0)
    assert adaptive >= 5.0, (greedy, adaptive)  # full batches once the busy share is seen
    assert adaptive >= 1.25 * greedy, (greedy, adaptive)


async def test_with_an_objective_a_lone_request_after_a_burst_is_not_held_back() -> None:
    run = Timed(0.0, 0.0)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(max_batch_size=8, latency_slo_s=20.0), events)
    teach(batcher, {1: 0.02, 8: 0.025})
    batcher.start()
    burst = [asyncio.create_task(batcher.submit(i)) for i in range(64)]
    await asyncio.gather(*burst)
    await asyncio.sleep(0.3)  # the burst is over
    # A wait would last up to seconds under a 20 s objective; a lone request runs at once.
    assert await asyncio.wait_for(batcher.submit(99), timeout=2) == 990
    assert events.records[-1].queue_seconds[0] < 1.0
    await batcher.close()


async def test_a_closed_loop_client_is_not_made_to_wait_for_arrivals_that_cannot_come() -> None:
    # Eight callers that each send again only when answered: after all eight are queued no
    # more can arrive, so a wait ends at the first period that sees no arrival.
    run = Timed(0.002, 0.0001)
    batcher: Batcher[int, int] = Batcher(
        run, policy(max_batch_size=32, latency_slo_s=20.0), Events()
    )
    teach(batcher, {1: 0.0021, 32: 0.0052})

    async def client(n: int) -> None:
        for i in range(10):
            await batcher.submit(n * 100 + i)

    batcher.start()
    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(8))), timeout=5)
    await batcher.close()


def test_deadline_error_family() -> None:
    assert issubclass(LateError, DeadlineError)


async def test_an_idle_batcher_runs_one_request_whatever_the_estimate_says() -> None:
    # A cost learned under conditions that are gone (CPU contention, a slow spell) must not
    # refuse everything forever: with nothing queued or running, one request runs, and its
    # run is measured again. Others arriving meanwhile are judged by the estimate.
    run = Recorder(block=True)
    events = Events()
    batcher: Batcher[int, int] = Batcher(run, policy(latency_slo_s=0.1), events)
    teach(batcher, {1: 1.0, 4: 1.2})
    batcher.start()
    probe = asyncio.create_task(batcher.submit(1))
    await wait_until_started(run)
    with pytest.raises(OverloadedError):
        await batcher.submit(2)
    run.release.set()
    assert await probe == 10
    assert events.drops == [DropReason.SHED]
    assert batcher.cost.estimate(None, 1) is not None
    await batcher.close()
