"""Every Prometheus metric inscale exports, on a registry passed in (never the global one).

Per model version, from the batcher (as a `BatchObserver`) and the registry: requests by
outcome, rows and model runs, queue and compute time, batch size, queue depth and requests in
flight, load time, state and size. The HTTP middleware adds end-to-end latency and bad input
per model (see `service/http/metrics_http.py`). The hot path never calls `.labels()`: the
children of a model version are made once, and observations go to lock-free local tallies
(`service/tallies.py`) that are flushed into prometheus-client before each scrape.

Current values (queue depth, in flight, state) are read from the batchers and the registry
when scraped, so serving pays nothing for them. With `--workers N` each worker writes its
values into files in `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode) and
flushes and refreshes them every second, so whichever worker answers a scrape reports all.
"""

import asyncio
import contextlib
import enum
import os
from contextvars import ContextVar
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from inscale.batcher import BatchRecord, DropReason
from inscale.metrics.gpu import gpu_collector
from inscale.metrics.process import ProcessPublisher, forget_dead_workers
from inscale.metrics.state import MODEL_LABELS, StateGauges
from inscale.metrics.tallies import Spread, Tally
from inscale.models.registry import ModelRegistry

# 100 us to 10 s, about three buckets per decade.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SAMPLE_INTERVAL_S = 1.0  # multiprocess mode: how often a worker refreshes its current values


class Outcome(enum.StrEnum):
    """How a request for a model ended: the `outcome` label of `inscale_requests_total`."""

    SUCCESS = "success"
    REJECTED = "rejected"  # queue full (503)
    TIMEOUT = "timeout"  # deadline passed while queued (504)
    BAD_INPUT = "bad_input"  # 400 after the request named a known model
    MODEL_ERROR = "model_error"  # the model run raised (500)
    CANCELLED = "cancelled"  # the client went away while queued


_DROPPED = {
    DropReason.REJECTED: Outcome.REJECTED,
    DropReason.EXPIRED: Outcome.TIMEOUT,
    DropReason.CANCELLED: Outcome.CANCELLED,
}


class ModelMetrics:
    """The labelled children of one model version, and its batcher's observer."""

    __slots__ = (
        "_bad_input",
        "_batch_size",
        "_compute",
        "_dropped",
        "_duration",
        "_model_error",
        "_queue",
        "_rows",
        "_runs",
        "_success",
    )

    def __init__(self, metrics: "Metrics", labels: tuple[str, str]) -> None:
        outcomes = {o: metrics.tally(metrics.requests.labels(*labels, o.value)) for o in Outcome}
        self._success = outcomes[Outcome.SUCCESS]
        self._model_error = outcomes[Outcome.MODEL_ERROR]
        self._bad_input = outcomes[Outcome.BAD_INPUT]
        self._dropped = {reason: outcomes[outcome] for reason, outcome in _DROPPED.items()}
        self._rows = metrics.tally(metrics.rows.labels(*labels))
        self._runs = metrics.tally(metrics.runs.labels(*labels))
        self._duration = metrics.spread(metrics.duration.labels(*labels), LATENCY_BUCKETS)
        self._queue = metrics.spread(metrics.queue_time.labels(*labels), LATENCY_BUCKETS)
        self._compute = metrics.spread(metrics.compute_time.labels(*labels), LATENCY_BUCKETS)
        self._batch_size = metrics.spread(metrics.batch_size.labels(*labels), BATCH_SIZE_BUCKETS)

    # BatchObserver: called on the event loop, once per model run and once per dropped request.

    def batch_finished(self, record: BatchRecord) -> None:
        self._runs.inc()
        self._rows.inc(record.rows)
        self._batch_size.observe(record.rows)
        self._compute.observe(record.compute_seconds)
        observe = self._queue.observe
        for seconds in record.queue_seconds:
            observe(seconds)
        (self._model_error if record.failed else self._success).inc(record.requests)

    def request_dropped(self, reason: DropReason) -> None:
        self._dropped[reason].inc()

    # Called by the HTTP middleware when an inference request for this version is answered.

    def request_answered(self, status: int, seconds: float) -> None:
        if status < 400:
            self._duration.observe(seconds)
        elif status == 400:
            self._bad_input.inc()


class Exchange:
    """One HTTP request in progress: the model version it resolved to, if any."""

    __slots__ = ("model",)

    def __init__(self) -> None:
        self.model: ModelMetrics | None = None


class Metrics:
    """Owns every metric object; created by the app factory, one per process."""

    def __init__(self, registry: CollectorRegistry, multiprocess_dir: Path | None = None) -> None:
        # `*_created` series would double the series of every counter and histogram for a
        # start time Prometheus already has (process_start_time_seconds). A library-wide
        # switch, so it is flipped here, when the app is built, not at import.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.multiprocess_dir = multiprocess_dir
        # Set by the HTTP middleware for each request, filled in by `model_resolved`.
        self.exchange: ContextVar[Exchange | None] = ContextVar("inscale_exchange", default=None)
        self._models: dict[tuple[str, int], ModelMetrics] = {}
        self._pending: list[Tally | Spread] = []
        labels = MODEL_LABELS
        self.requests = Counter(
            "inscale_requests",
            "Requests for a model, by outcome: success, rejected (queue full), timeout, "
            "bad_input, model_error, cancelled.",
            [*labels, "outcome"],
            registry=registry,
        )
        self.rows = Counter(
            "inscale_inference_rows",
            "Rows (inferences) computed by model runs; a request carries one or more rows.",
            labels,
            registry=registry,
        )
        self.runs = Counter(
            "inscale_model_runs", "Model runs (executions of one batch).", labels, registry=registry
        )
        self.duration = Histogram(
            "inscale_request_duration_seconds",
            "End-to-end time of answered inference requests, from the first byte read "
            "to the last byte sent.",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_time = Histogram(
            "inscale_queue_duration_seconds",
            "Time a request waited in the queue before its batch started running.",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.compute_time = Histogram(
            "inscale_compute_duration_seconds",
            "Time one model run took (merge, ONNX Runtime, split), observed once per run.",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "inscale_batch_size_rows",
            "Rows per model run.",
            labels,
            registry=registry,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.http_requests = Counter(
            "inscale_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "inscale_http_request_duration_seconds",
            "HTTP request time by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._state = StateGauges(registry)
        if multiprocess_dir is None:
            ProcessCollector(registry=registry)
            GCCollector(registry=registry)
            PlatformCollector(registry=registry)
            self._exposition = registry
            self._process: ProcessPublisher | None = None
        else:
            # The values live in files; a registry of its own reads them all at each scrape.
            self._exposition = CollectorRegistry()
            MultiProcessCollector(self._exposition, str(multiprocess_dir))  # type: ignore[no-untyped-call]
            PlatformCollector(registry=self._exposition)
            self._process = ProcessPublisher(registry)
        gpu = gpu_collector()
        if gpu is not None:  # device-wide, not per process: asked live at each scrape
            self._exposition.register(gpu)

    def tally(self, child: Counter) -> Tally:
        found = Tally(child)
        self._pending.append(found)
        return found

    def spread(self, child: Histogram, bounds: tuple[float, ...]) -> Spread:
        found = Spread(child, bounds)
        self._pending.append(found)
        return found

    def http(self, method: str, route: str, status: str) -> tuple[Tally, Spread]:
        """The children for one HTTP label set; the middleware keeps them."""
        return (
            self.tally(self.http_requests.labels(method, route, status)),
            self.spread(self.http_duration.labels(method, route, status), LATENCY_BUCKETS),
        )

    def flush(self) -> None:
        """Hand the counts gathered on the hot path to prometheus-client (on the event loop)."""
        for pending in self._pending:
            pending.flush()

    def model(self, name: str, version: int) -> ModelMetrics:
        """The children for a model version (also the registry's batch observer factory)."""
        found = self._models.get((name, version))
        if found is None:
            found = self._models[(name, version)] = ModelMetrics(self, (name, str(version)))
        return found

    def model_resolved(self, name: str, version: int) -> None:
        """Registry hook: the HTTP request in progress, if any, is for this model version."""
        exchange = self.exchange.get()
        if exchange is not None:
            exchange.model = self.model(name, version)

    def sample(self, models: ModelRegistry) -> None:
        """Refresh this process's current values from the batchers and the registry."""
        self.flush()
        self._state.sample(models)
        if self._process is not None:
            self._process.publish()

    def render(self, models: ModelRegistry) -> bytes:
        """The text exposition for a scrape."""
        self.sample(models)
        return generate_latest(self._exposition)

    async def refresh_forever(self, models: ModelRegistry) -> None:
        """Multiprocess mode only: keep this worker's files current for the other workers."""
        if self.multiprocess_dir is None:
            return
        while True:
            self.sample(models)
            forget_dead_workers(self.multiprocess_dir)
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def close(self) -> None:
        """At worker exit: count what is pending; live gauges stop counting in the sums."""
        self.flush()
        if self.multiprocess_dir is not None:
            with contextlib.suppress(OSError):
                forget_dead_workers(self.multiprocess_dir, also=os.getpid())
