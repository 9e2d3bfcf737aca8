"""Every Prometheus metric family inscale exports, on a registry passed in (never the global).

Per model version (`inscale.metrics.model`, a consumer of the version's event stream): requests
by outcome, end-to-end time, rows and model runs, queue and compute time, batch size. Read
from the registry and the batchers when scraped (`inscale.metrics.state`), so serving pays
nothing for them: queue depth, requests in flight, state, load time and size. Per HTTP route
and status: `inscale.metrics.http`. Only prometheus-client's public API is used.

With `--workers N` each worker writes its values into files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus-client's multiprocess mode) and refreshes its current values every second, so
whichever worker answers a scrape reports all.
"""

import asyncio
import os
from collections.abc import Callable, Sequence
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

from inscale.metrics.drift import DriftGauges
from inscale.metrics.gpu import gpu_collector
from inscale.metrics.model import ModelMetrics
from inscale.metrics.process import ProcessPublisher, WorkerRoster
from inscale.metrics.series import (
    CounterFamily,
    CounterLike,
    HistogramFamily,
    HistogramLike,
    LocalCounter,
    LocalHistogram,
)
from inscale.metrics.state import MODEL_LABELS, StateGauges
from inscale.models.registry import ModelRegistry

# 100 us to 10 s, about three buckets per decade.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SAMPLE_INTERVAL_S = 1.0  # multiprocess mode: how often a worker refreshes its current values


CounterMaker = Callable[[str, str, Sequence[str]], CounterFamily]
HistogramMaker = Callable[[str, str, Sequence[str], Sequence[float]], HistogramFamily]


def _local_counter(registry: CollectorRegistry) -> CounterMaker:
    return lambda name, doc, labels: LocalCounter(name, doc, labels, registry)


def _local_histogram(registry: CollectorRegistry) -> HistogramMaker:
    return lambda name, doc, labels, buckets: LocalHistogram(name, doc, labels, registry, buckets)


def _client_counter(registry: CollectorRegistry) -> CounterMaker:
    return lambda name, doc, labels: Counter(name, doc, labels, registry=registry)


def _client_histogram(registry: CollectorRegistry) -> HistogramMaker:
    return lambda name, doc, labels, buckets: Histogram(
        name, doc, labels, registry=registry, buckets=buckets
    )


class Metrics:
    """Owns every metric object; created by the app factory, one per process."""

    def __init__(self, registry: CollectorRegistry, multiprocess_dir: Path | None = None) -> None:
        # `*_created` series would double the series of every counter and histogram for a
        # start time Prometheus already has (process_start_time_seconds). A library-wide
        # switch, so it is flipped here, when the app is built, not at import.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.multiprocess_dir = multiprocess_dir
        self._models: dict[tuple[str, int], ModelMetrics] = {}
        # One process: plain numbers behind a custom collector (`inscale.metrics.series`);
        # several workers: prometheus-client's objects, whose values live in shared files.
        counter, histogram = (
            (_local_counter(registry), _local_histogram(registry))
            if multiprocess_dir is None
            else (_client_counter(registry), _client_histogram(registry))
        )
        labels = MODEL_LABELS
        self.requests = counter(
            "inscale_requests",
            "Requests for a model, by outcome: success, rejected (queue full), overloaded "
            "(admission: estimated to finish after its deadline), preempted (pushed out of a "
            "full queue by a higher priority), late (dropped before its run, its deadline no "
            "longer reachable), timeout, bad_input, model_error, cancelled, unavailable.",
            [*labels, "outcome"],
        )
        self.admitted = counter(
            "inscale_admitted_requests",
            "Requests admitted into a model's queue (a request split into chunks counts once "
            "per chunk).",
            labels,
        )
        self.rows = counter(
            "inscale_inference_rows",
            "Rows (inferences) computed by model runs; a request carries one or more rows.",
            labels,
        )
        self.runs = counter("inscale_model_runs", "Model runs (executions of one batch).", labels)
        self.duration = histogram(
            "inscale_request_duration_seconds",
            "End-to-end time of answered inference requests, from their arrival at the "
            "protocol layer to their result (any protocol).",
            labels,
            LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "inscale_queue_duration_seconds",
            "Time a request waited in the queue before its batch started running.",
            labels,
            LATENCY_BUCKETS,
        )
        self.compute_time = histogram(
            "inscale_compute_duration_seconds",
            "Time one model run took (merge, ONNX Runtime, split), observed once per run.",
            labels,
            LATENCY_BUCKETS,
        )
        self.batch_size = histogram(
            "inscale_batch_size_rows",
            "Rows per model run.",
            labels,
            BATCH_SIZE_BUCKETS,
        )
        self.http_requests = counter(
            "inscale_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
        )
        self.http_duration = histogram(
            "inscale_http_request_duration_seconds",
            "HTTP request time by method, route template and status.",
            ["method", "route", "status"],
            LATENCY_BUCKETS,
        )
        self.grpc_requests = counter(
            "inscale_grpc_requests",
            "gRPC calls by method and status code (a streamed inference counts once per "
            "request in the stream).",
            ["method", "code"],
        )
        self.grpc_duration = histogram(
            "inscale_grpc_request_duration_seconds",
            "gRPC call time by method and status code.",
            ["method", "code"],
            LATENCY_BUCKETS,
        )
        self._state = StateGauges(registry)
        self._drift = DriftGauges(registry)
        if multiprocess_dir is None:
            ProcessCollector(registry=registry)
            GCCollector(registry=registry)
            PlatformCollector(registry=registry)
            self._exposition = registry
            self._process: ProcessPublisher | None = None
            self._roster: WorkerRoster | None = None
        else:
            # The values live in files; a registry of its own reads them all at each scrape.
            self._exposition = CollectorRegistry()
            MultiProcessCollector(self._exposition, str(multiprocess_dir))  # type: ignore[no-untyped-call]
            PlatformCollector(registry=self._exposition)
            self._process = ProcessPublisher(registry)
            self._roster = WorkerRoster(multiprocess_dir, os.getpid())
        gpu = gpu_collector()
        if gpu is not None:  # device-wide, not per process: asked live at each scrape
            self._exposition.register(gpu)

    def http(self, method: str, route: str, status: str) -> tuple[CounterLike, HistogramLike]:
        """The children for one HTTP label set; the middleware keeps them."""
        return (
            self.http_requests.labels(method, route, status),
            self.http_duration.labels(method, route, status),
        )

    def grpc(self, method: str, code: str) -> tuple[CounterLike, HistogramLike]:
        """The children for one gRPC method and status code; the servicer keeps them."""
        return self.grpc_requests.labels(method, code), self.grpc_duration.labels(method, code)

    def model(self, name: str, version: int) -> ModelMetrics:
        """The consumer of a version's events (the registry's metrics factory); one per
        version, kept across reloads so its series carry on."""
        found = self._models.get((name, version))
        if found is None:
            found = self._models[(name, version)] = ModelMetrics(
                (name, str(version)),
                requests=self.requests,
                admitted=self.admitted,
                rows=self.rows,
                runs=self.runs,
                duration=self.duration,
                queue_time=self.queue_time,
                compute_time=self.compute_time,
                batch_size=self.batch_size,
            )
        return found

    def sample(self, models: ModelRegistry) -> None:
        """Refresh this process's current values from the batchers and the registry."""
        self._state.sample(models)
        self._drift.sample(models)
        if self._process is not None:
            self._process.publish()

    def render(self, models: ModelRegistry) -> bytes:
        """The text exposition for a scrape."""
        self.sample(models)
        return generate_latest(self._exposition)

    async def refresh_forever(self, models: ModelRegistry) -> None:
        """Multiprocess mode only: keep this worker's files current for the other workers."""
        if self._roster is None:
            return
        while True:
            self.sample(models)
            self._roster.forget_dead()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def close(self) -> None:
        """At worker exit: this worker's live gauges stop counting in the sums."""
        if self._roster is not None:
            self._roster.leave()
