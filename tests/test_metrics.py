"""Metrics move exactly as requests, rows, runs and failures happen (in process, real batcher).

A `Batcher` with a run_batch we hold on a threading event puts requests in a known state;
`Metrics.model(...)` consumes the batcher's events, as a model version wires it in the server
(the data plane's own events are sent to it directly here).
"""

import asyncio
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from inscale.batch_events import Ran
from inscale.batcher import Batcher, BatchFailedError, BatchPolicy, DeadlineError, QueueFullError
from inscale.metrics.gpu import GpuCollector, gpu_collector
from inscale.metrics.model import Outcome
from inscale.metrics.process import memory_limit_bytes
from inscale.metrics.prometheus import LATENCY_BUCKETS, Metrics

LABELS = {"model": "m", "version": "3"}


class Gate:
    """run_batch for int payloads; the first `held` batches wait until released."""

    def __init__(self, held: int = 1, fail: bool = False) -> None:
        self.held = held
        self.fail = fail
        self.started = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def __call__(self, payloads: Sequence[int]) -> Ran[int]:
        self.batches.append(len(payloads))
        if len(self.batches) <= self.held:
            self.started.set()
            self.release.wait(10)
        if self.fail:
            raise RuntimeError("model exploded")
        return Ran(list(payloads))


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, {**LABELS, **labels})
    return 0.0 if found is None else found


def outcome(metrics: Metrics, which: Outcome) -> float:
    return value(metrics, "inscale_requests_total", outcome=which.value)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def make_batcher(metrics: Metrics, gate: Gate, **policy: Any) -> Batcher[int, int]:
    settings: dict[str, Any] = {"max_batch_size": 9, "max_queue_delay_s": 30.0, **policy}
    batcher: Batcher[int, int] = Batcher(gate, BatchPolicy(**settings), metrics.model("m", 3))
    batcher.start()
    return batcher


async def hold_first(batcher: Batcher[int, int], gate: Gate) -> "asyncio.Task[int]":
    first = asyncio.create_task(batcher.submit(0, rows=3))
    await asyncio.to_thread(gate.started.wait, 10)
    return first


async def queue(batcher: Batcher[int, int], count: int, **kwargs: Any) -> list["asyncio.Task[int]"]:
    target = batcher.load().queued + count
    tasks = [asyncio.create_task(batcher.submit(i, rows=3, **kwargs)) for i in range(count)]
    while batcher.load().queued < target:
        await asyncio.sleep(0)
    return tasks


async def test_ten_requests_of_three_rows_in_four_runs(metrics: Metrics) -> None:
    gate = Gate()
    batcher = make_batcher(metrics, gate)
    first = await hold_first(batcher, gate)  # run 1: one request alone
    rest = await queue(batcher, 9)  # then 3 runs of 3 requests (9 rows each)
    gate.release.set()
    await asyncio.gather(first, *rest)
    await batcher.close()
    assert gate.batches == [1, 3, 3, 3]
    assert value(metrics, "inscale_inference_rows_total") == 30
    assert value(metrics, "inscale_model_runs_total") == 4
    assert outcome(metrics, Outcome.SUCCESS) == 10
    assert value(metrics, "inscale_batch_size_rows_count") == 4
    assert value(metrics, "inscale_batch_size_rows_sum") == 30
    assert value(metrics, "inscale_batch_size_rows_bucket", le="2.0") == 0
    assert value(metrics, "inscale_batch_size_rows_bucket", le="4.0") == 1  # the lone 3 rows
    assert value(metrics, "inscale_batch_size_rows_bucket", le="16.0") == 4  # and three of 9
    assert value(metrics, "inscale_queue_duration_seconds_count") == 10  # one per request
    assert value(metrics, "inscale_compute_duration_seconds_count") == 4  # one per run
    for failure in set(Outcome) - {Outcome.SUCCESS}:
        assert outcome(metrics, failure) == 0  # present from the start, at zero


async def test_a_failed_run_counts_each_of_its_requests_as_model_error(metrics: Metrics) -> None:
    gate = Gate(fail=True)
    batcher = make_batcher(metrics, gate)
    first = await hold_first(batcher, gate)
    rest = await queue(batcher, 3)  # 9 rows: a full batch, cut at once
    gate.release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, BatchFailedError) for r in results)
    assert outcome(metrics, Outcome.MODEL_ERROR) == 4
    assert outcome(metrics, Outcome.SUCCESS) == 0
    assert value(metrics, "inscale_model_runs_total") == 2  # runs count, failed or not
    assert value(metrics, "inscale_inference_rows_total") == 12


async def test_rejected_timed_out_and_cancelled_requests(metrics: Metrics) -> None:
    gate = Gate()
    batcher = make_batcher(metrics, gate, max_queue_size=2)
    first = await hold_first(batcher, gate)
    waiting = await queue(batcher, 1)
    [leaving] = await queue(batcher, 1)  # the queue is full now
    with pytest.raises(QueueFullError):
        await batcher.submit(99, rows=3)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineError):
        await batcher.submit(7, rows=3, deadline=loop.time() + 0.01)
    gate.release.set()
    await asyncio.gather(first, *waiting)
    await batcher.close()
    assert outcome(metrics, Outcome.REJECTED) == 1
    assert outcome(metrics, Outcome.TIMEOUT) == 1
    assert outcome(metrics, Outcome.CANCELLED) == 1
    assert outcome(metrics, Outcome.SUCCESS) == 2
    assert value(metrics, "inscale_queue_duration_seconds_count") == 2  # only requests that ran


def test_data_plane_events_count_latency_and_bad_input(metrics: Metrics) -> None:
    model = metrics.model("m", 3)
    assert metrics.model("m", 3) is model  # children are looked up once
    model.request_done(True, 0.0003)
    model.request_done(False, 0.0001)  # a failure's outcome comes from the batcher's events
    model.request_refused()
    assert value(metrics, "inscale_request_duration_seconds_count") == 1
    assert value(metrics, "inscale_request_duration_seconds_bucket", le="0.00025") == 0
    assert value(metrics, "inscale_request_duration_seconds_bucket", le="0.0005") == 1
    assert outcome(metrics, Outcome.BAD_INPUT) == 1
    assert outcome(metrics, Outcome.SUCCESS) == 0  # success is counted from the run


def test_latency_histogram_resolves_100_us_to_10_s(metrics: Metrics) -> None:
    model = metrics.model("m", 3)
    for seconds in (0.00009, 0.0002, 9.0, 12.0):
        model.request_done(True, seconds)
    bucket = "inscale_request_duration_seconds_bucket"
    assert value(metrics, bucket, le="0.0001") == 1  # the fastest request has its own bucket
    assert value(metrics, bucket, le="0.00025") == 2
    assert value(metrics, bucket, le="5.0") == 2
    assert value(metrics, bucket, le="10.0") == 3  # a 9 s request is still resolved
    assert value(metrics, bucket, le="+Inf") == 4  # and only one past 10 s is not
    assert len(LATENCY_BUCKETS) >= 12, "about three buckets per decade"


def test_the_registry_is_the_one_passed_in() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.model("m", 3).request_refused()
    assert outcome(first, Outcome.BAD_INPUT) == 1
    assert outcome(second, Outcome.BAD_INPUT) == 0  # nothing shared between the two


def test_memory_limit_is_known() -> None:
    assert memory_limit_bytes() > 0


# -- GPU: absent without one; the collector itself checked against a stand-in NVML ---------


def test_without_a_gpu_no_gpu_series_are_exported() -> None:
    """On a machine without NVML or a GPU the series are absent, not zero."""
    if gpu_collector() is not None:
        pytest.skip("a GPU is present here: the absent-GPU case cannot be observed")
    exposition = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    assert "inscale_build_info" in exposition  # the exposition itself is there
    assert "inscale_gpu" not in exposition


class FakeNvml:
    """The handful of pynvml calls the collector makes, for two GPUs."""

    def __init__(self, count: int = 2, init_error: bool = False) -> None:
        self.count = count
        self.init_error = init_error

    def nvmlInit(self) -> None:
        if self.init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        if handle == 1:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(used=3 * 2**30, total=16 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=42, memory=7)


def test_gpu_collector_reports_each_device_by_uuid() -> None:
    collector = gpu_collector(FakeNvml())
    assert isinstance(collector, GpuCollector)
    registry = CollectorRegistry()
    registry.register(collector)
    gpu0 = {"gpu_uuid": "GPU-0"}
    assert registry.get_sample_value("inscale_gpu_memory_used_bytes", gpu0) == 3 * 2**30
    assert registry.get_sample_value("inscale_gpu_memory_total_bytes", gpu0) == 16 * 2**30
    assert registry.get_sample_value("inscale_gpu_utilization_ratio", gpu0) == 0.42
    # A device NVML cannot read is left out, not reported as zero.
    assert registry.get_sample_value("inscale_gpu_memory_used_bytes", {"gpu_uuid": "GPU-1"}) is None


def test_gpu_collector_is_absent_when_nvml_fails_or_finds_no_device() -> None:
    assert gpu_collector(FakeNvml(init_error=True)) is None
    assert gpu_collector(FakeNvml(count=0)) is None


@pytest.mark.gpu
def test_real_gpu_reports_memory() -> None:
    collector = gpu_collector()
    if collector is None:
        pytest.skip("no GPU here (or nvidia-ml-py not installed): NVML metrics are absent")
    registry = CollectorRegistry()
    registry.register(collector)
    samples = [s for m in registry.collect() for s in m.samples]
    assert any(s.name == "inscale_gpu_memory_total_bytes" and s.value > 0 for s in samples)
