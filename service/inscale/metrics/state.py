"""Gauges of what is true now, per model version: queue, in flight, state, load time, size.

They are read from the registry and the batchers when sampled (at each scrape, and every
second per worker in multiprocess mode), so serving pays nothing for them.
"""

import contextlib
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge

from inscale import __version__
from inscale.metrics.process import memory_limit_bytes
from inscale.models.registry import ModelRegistry, ModelState
from inscale.run_cost import reported_sizes

MODEL_LABELS = ("model", "version")


class StateGauges:
    """Gauges of what is true now, read from the registry and the batchers at sample time.

    In multiprocess mode they are summed over live workers (`livesum`), except load time
    (the slowest worker) and sizes and limits (the same in every worker).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = MODEL_LABELS

        def gauge(
            name: str, doc: str, mode: Literal["livesum", "livemax"], extra: tuple[str, ...] = ()
        ) -> Gauge:
            return Gauge(name, doc, [*labels, *extra], registry=registry, multiprocess_mode=mode)

        self.queued = gauge(
            "inscale_queue_depth_requests", "Requests waiting in the queue.", "livesum"
        )
        self.capacity = gauge(
            "inscale_queue_capacity_requests",
            "Requests the queue holds before answering 503 (max_queue_size).",
            "livesum",
        )
        self.in_flight = gauge(
            "inscale_requests_in_flight",
            "Requests accepted by the batcher and not yet answered (queued or running).",
            "livesum",
        )
        self.state = gauge(
            "inscale_model_state",
            "1 for the state a model version is in (per worker process, summed).",
            "livesum",
            ("state",),
        )
        self.load_seconds = gauge(
            "inscale_model_load_duration_seconds",
            "Time the last load of a version took (sessions, checks, warm-up).",
            "livemax",
        )
        self.estimated_run = gauge(
            "inscale_estimated_run_duration_seconds",
            "The run time the batcher has learned for a batch size (what admission and the "
            "adaptive queue delay use): 1, powers of two, and max_batch_size; the slowest "
            "worker's with several.",
            "livemax",
            ("batch_size",),
        )
        self.size = gauge(
            "inscale_model_size_bytes",
            "Size of a version's files on disk, which its weights occupy once loaded "
            "(ONNX Runtime does not report a session's memory).",
            "livemax",
        )
        Gauge(
            "inscale_memory_limit_bytes",
            "Memory this server may use: the cgroup limit, or the machine's memory if lower.",
            registry=registry,
            multiprocess_mode="livemax",
        ).set(memory_limit_bytes())
        Gauge(
            "inscale_build_info",
            "Always 1; the inscale version as a label.",
            ["inscale_version"],
            registry=registry,
            multiprocess_mode="livemax",
        ).labels(__version__).set(1)
        self._seen: set[tuple[str, str]] = set()
        self._sizes: dict[tuple[str, str], list[str]] = {}  # estimated_run's batch sizes

    def sample(self, models: ModelRegistry) -> None:
        seen = set()
        for name in models.names():
            for entry in models.entries(name):
                key = (name, str(entry.version))
                seen.add(key)
                for state in ModelState:
                    self.state.labels(*key, state.value).set(entry.state is state)
                self.load_seconds.labels(*key).set(entry.load_seconds)
                self.size.labels(*key).set(entry.size_bytes)
                model = entry.model
                if model is None:
                    continue
                load = model.load()
                self.queued.labels(*key).set(load.queued)
                self.in_flight.labels(*key).set(load.in_flight)
                self.capacity.labels(*key).set(model.config.batching.max_queue_size)
                estimates = model.batcher.cost.report(reported_sizes(model.max_rows))
                for rows, seconds in estimates.items():
                    self.estimated_run.labels(*key, str(rows)).set(seconds)
                if estimates:
                    self._sizes[key] = [str(rows) for rows in estimates]
        for key in self._seen - seen:  # unloaded: zero first, so multiprocess sums drop it
            for gauge in (self.queued, self.capacity, self.in_flight, self.load_seconds, self.size):
                with contextlib.suppress(KeyError):
                    gauge.labels(*key).set(0)
                    gauge.remove(*key)
            for state in ModelState:
                with contextlib.suppress(KeyError):
                    self.state.labels(*key, state.value).set(0)
                    self.state.remove(*key, state.value)
            for size in self._sizes.pop(key, []):
                with contextlib.suppress(KeyError):
                    self.estimated_run.labels(*key, size).set(0)
                    self.estimated_run.remove(*key, size)
        self._seen = seen
