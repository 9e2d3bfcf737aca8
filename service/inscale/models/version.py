"""One loaded model version: its ONNX Runtime sessions, its batcher, and the glue between.

`infer` is the whole serving path below HTTP: validate against the signature, queue in the
batcher, and (in a worker thread) merge, run and split. Errors from the batcher are turned
into the core's own errors here, at the boundary.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inscale import batch_arrays
from inscale.batch_arrays import Arrays, PadRule
from inscale.batcher import (
    Batcher,
    BatcherClosedError,
    BatcherStats,
    BatchFailedError,
    BatchObserver,
    BatchPolicy,
    DeadlineError,
    QueueFullError,
)
from inscale.errors import (
    ConfigError,
    DeadlineExceeded,
    ModelExecutionError,
    ModelNotReady,
    QueueFull,
)
from inscale.models.config import ModelConfig
from inscale.models.session import Session, open_session
from inscale.models.signature import Signature, check_inputs, sample_inputs, signature_of

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepTimes:
    """Cumulative nanoseconds of the three steps of a run, and how many runs or requests."""

    count: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass(slots=True)
class RunStats:
    """Per-request and per-batch-size step times (what the V2 statistics extension reports)."""

    per_request: StepTimes = field(default_factory=StepTimes)
    per_batch_size: dict[int, StepTimes] = field(default_factory=dict)


@dataclass(slots=True)
class RequestStats:
    """Requests that reached the batcher and how they ended, with cumulative nanoseconds from
    queueing to result (the V2 statistics extension's `success` and `fail`)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0


@dataclass(frozen=True, slots=True)
class _Request:
    arrays: Arrays
    rows: int


class ModelRunner:
    """Serves one version of one model. Create with `load`, then `start` on the event loop."""

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        sessions: list[Session],
        signature: Signature,
        pads: list[PadRule],
        observer: BatchObserver | None,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.signature = signature
        self.providers = sessions[0].providers
        self._batchable = signature.batchable  # read on every request: computed once
        self.batching = config.batching.enabled and self._batchable
        self._pads = pads
        self._variable_axes = {rule.input: rule.axis for rule in pads}
        self._sessions: queue.SimpleQueue[Session] = queue.SimpleQueue()
        for session in sessions:
            self._sessions.put(session)
        self._stats_lock = threading.Lock()
        self._run_stats = RunStats()
        self._request_stats = RequestStats()
        self.max_rows = config.batching.max_batch_size if signature.batchable else 1
        self.batcher: Batcher[_Request, Arrays] = Batcher(
            self._run_batch,
            BatchPolicy(
                max_batch_size=self.max_rows,
                max_queue_delay_s=config.batching.max_queue_delay_ms / 1000,
                preferred_batch_sizes=tuple(config.batching.preferred_batch_sizes),
                max_queue_size=config.batching.max_queue_size,
                instances=config.instances,
                batching=self.batching,
            ),
            name=f"{name}:{version}",
            observer=observer,
        )

    # -- serving ---------------------------------------------------------------------------

    async def infer(
        self,
        arrays: Arrays,
        timeout_s: float | None = None,
        abandon_on: "asyncio.Future[Any] | None" = None,
    ) -> Arrays:
        """Run one request (one or more rows); the deadline is the model's unless shorter."""
        rows = check_inputs(
            self.signature,
            arrays,
            batchable=self._batchable,
            max_rows=self.max_rows,
            variable_axes=self._variable_axes,
        )
        limit = self.config.timeout_ms / 1000
        timeout = limit if timeout_s is None else min(timeout_s, limit)
        deadline = asyncio.get_running_loop().time() + timeout
        started = time.perf_counter_ns()
        succeeded = False
        try:
            result = await self.batcher.submit(
                _Request(arrays, rows),
                rows=rows,
                key=self._key(arrays),
                deadline=deadline,
                abandon_on=abandon_on,
            )
            succeeded = True
            return result
        except QueueFullError as exc:
            raise QueueFull(f"model '{self.name}' is overloaded: {exc}") from exc
        except DeadlineError as exc:
            raise DeadlineExceeded(
                f"model '{self.name}': request timed out after {timeout * 1000:g} ms in the queue"
            ) from exc
        except BatchFailedError as exc:
            raise ModelExecutionError(f"model '{self.name}' failed: {exc}") from exc
        except BatcherClosedError as exc:
            raise ModelNotReady(f"model '{self.name}' is shutting down") from exc
        finally:
            self._count_request(succeeded, time.perf_counter_ns() - started)

    def _count_request(self, succeeded: bool, elapsed_ns: int) -> None:
        stats = self._request_stats  # only the event loop's thread writes these
        if succeeded:
            stats.success_count += 1
            stats.success_ns += elapsed_ns
        else:
            stats.fail_count += 1
            stats.fail_ns += elapsed_ns

    def _key(self, arrays: Arrays) -> tuple[tuple[int, ...], ...]:
        """Requests merge only if every non-batch dim agrees, variable-length axes aside."""
        key = []
        for spec in self.signature.inputs:
            shape = list(arrays[spec.name].shape[1:])
            axis = self._variable_axes.get(spec.name)
            if axis is not None:
                shape[axis - 1] = -1
            key.append(tuple(shape))
        return tuple(key)

    def _run_batch(self, requests: Sequence[_Request]) -> list[Arrays]:
        """Runs in a worker thread: merge, run on a free session, split."""
        t0 = time.perf_counter_ns()
        feeds = batch_arrays.merge([r.arrays for r in requests], self._pads)
        t1 = time.perf_counter_ns()
        session = self._sessions.get()
        try:
            outputs = session.run(feeds)
        finally:
            self._sessions.put(session)
        t2 = time.perf_counter_ns()
        results = batch_arrays.split(
            outputs, [r.arrays for r in requests], [r.rows for r in requests], self._pads
        )
        t3 = time.perf_counter_ns()
        self._record(sum(r.rows for r in requests), len(requests), t1 - t0, t2 - t1, t3 - t2)
        return results

    def _record(self, rows: int, requests: int, inp: int, infer: int, out: int) -> None:
        with self._stats_lock:
            per_request = self._run_stats.per_request
            per_request.count += requests
            per_request.input_ns += inp * requests
            per_request.infer_ns += infer * requests
            per_request.output_ns += out * requests
            size = self._run_stats.per_batch_size.setdefault(rows, StepTimes())
            size.count += 1
            size.input_ns += inp
            size.infer_ns += infer
            size.output_ns += out

    # -- lifecycle and introspection -------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()

    async def drain(self, timeout_s: float | None) -> bool:
        return await self.batcher.drain(timeout_s)

    async def close(self) -> None:
        await self.batcher.close()

    def batcher_stats(self) -> BatcherStats:
        return self.batcher.stats()

    def request_stats(self) -> RequestStats:
        s = self._request_stats
        return RequestStats(s.success_count, s.success_ns, s.fail_count, s.fail_ns)

    def run_stats(self) -> RunStats:
        with self._stats_lock:
            per_size = {
                size: StepTimes(t.count, t.input_ns, t.infer_ns, t.output_ns)
                for size, t in self._run_stats.per_batch_size.items()
            }
            r = self._run_stats.per_request
            return RunStats(StepTimes(r.count, r.input_ns, r.infer_ns, r.output_ns), per_size)

    def warm_up(self) -> None:
        """Run each preferred batch size (and one row) on every session before serving."""
        if any(spec.datatype.name == "BF16" for spec in self.signature.inputs):
            # numpy has no bfloat16, so no sample can be made; the first request warms up.
            log.warning("model %s: BF16 inputs, warm-up skipped", self.name)
            return
        sizes = sorted({1, *self.config.batching.preferred_batch_sizes}) if self.batching else [1]
        rng = np.random.default_rng(0)
        sessions = [self._sessions.get() for _ in range(self.config.instances)]
        try:
            for session in sessions:
                for rows in sizes:
                    session.run(sample_inputs(self.signature, min(rows, self.max_rows), rng))
        finally:
            for session in sessions:
                self._sessions.put(session)


def load_runner(
    name: str,
    version: int,
    path: Path,
    config: ModelConfig,
    default_providers: Sequence[str],
    observer: BatchObserver | None = None,
) -> ModelRunner:
    """Open sessions, check the config against the graph, and warm up. Blocking."""
    specs = config.provider_specs()
    requested: list[tuple[str, dict[str, object]]] = (
        [(p.name, dict(p.options)) for p in specs]
        if specs is not None
        else [(p, {}) for p in default_providers]
    )
    sessions = [open_session(path, config.runtime, requested) for _ in range(config.instances)]
    signature = signature_of(sessions[0].inner)
    pads = _pad_rules(name, signature, config)
    runner = ModelRunner(name, version, config, sessions, signature, pads, observer)
    if config.warmup:
        runner.warm_up()
    log.info(
        "loaded model %s version %d on %s (batching %s)",
        name,
        version,
        runner.providers[0],
        "on" if runner.batching else "off",
    )
    return runner


def _pad_rules(name: str, signature: Signature, config: ModelConfig) -> list[PadRule]:
    rules = []
    for input_name, pad in config.padding.items():
        spec = signature.input(input_name)
        if spec is None:
            raise ConfigError(f"model '{name}': padding names unknown input '{input_name}'")
        if pad.axis >= len(spec.shape):
            raise ConfigError(f"model '{name}': input '{input_name}' has no axis {pad.axis} to pad")
        outputs = dict(pad.outputs)
        symbol = spec.dim_names[pad.axis]
        for out in signature.outputs:
            for axis, dim_name in enumerate(out.dim_names):
                if symbol is not None and dim_name == symbol and out.name not in outputs:
                    outputs[out.name] = axis
        unknown = set(outputs) - {o.name for o in signature.outputs}
        if unknown:
            raise ConfigError(f"model '{name}': padding trims unknown output '{min(unknown)}'")
        rules.append(PadRule(input_name, pad.axis, pad.value, outputs))
    return rules
