"""One loaded model version: its ONNX Runtime sessions, its batcher, and the run between them.

`run_batch` runs in the batcher's worker thread: merge the requests' arrays, run them on a free
session, split the outputs. Everything about a request before and after that (validation,
deadlines, errors, outcome) is the data plane's (`inscale.dataplane`).
"""

import logging
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inscale import batch_arrays
from inscale.batch_arrays import Arrays, PadRule
from inscale.batch_events import DropReason, Load, Ran, StepTimes
from inscale.batcher import Batcher, BatchPolicy
from inscale.drift.monitor import DriftMonitor
from inscale.events import Fanout, ModelEvents
from inscale.models.config import ModelConfig
from inscale.models.session import OrtSession
from inscale.run_cost import reported_sizes
from inscale.signature import Signature, sample_inputs
from inscale.statistics import Snapshot, VersionStatistics
from inscale.validation import InputRules

log = logging.getLogger(__name__)

# How a request can be refused or dropped for lack of capacity or time (not bad input,
# not the client leaving): what the admission report counts.
SHED_REASONS = (
    DropReason.REJECTED,
    DropReason.SHED,
    DropReason.PREEMPTED,
    DropReason.LATE,
    DropReason.EXPIRED,
)


@dataclass(slots=True)  # not frozen: see RequestedOutput in inscale.protocols.v2.codec
class Request:
    """What the batcher carries for one request."""

    arrays: Arrays
    rows: int


class ModelVersion:
    """Serves one version of one model. Built by `inscale.models.loading.load_version`."""

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        sessions: list[OrtSession],
        signature: Signature,
        pads: list[PadRule],
        metrics: ModelEvents | None,
        drift: DriftMonitor | None = None,
        drift_note: str | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.signature = signature
        self.providers = sessions[0].providers
        self.batching = config.batching.enabled and signature.batchable
        batching = config.batching
        self.max_rows = batching.max_batch_size if signature.batchable else 1  # per run
        # Per request: the data plane splits one with more rows than a run takes.
        self.max_request_rows = batching.max_request_rows if signature.batchable else 1
        self.timeout_s = config.timeout_ms / 1000
        self.rules = InputRules(
            signature, signature.batchable, self.max_request_rows, {r.input: r.axis for r in pads}
        )
        self._pads = pads
        self.drift = drift
        self._drift_note = drift_note  # why drift is off, when it is
        self._sessions: queue.SimpleQueue[OrtSession] = queue.SimpleQueue()
        for session in sessions:
            self._sessions.put(session)
        self._statistics = VersionStatistics()
        # The one stream every counter of this version is built from (see inscale.events).
        self.events: ModelEvents = (
            self._statistics if metrics is None else Fanout(self._statistics, metrics)
        )
        self.batcher: Batcher[Request, Arrays] = Batcher(
            self._run_batch,
            BatchPolicy(
                max_batch_size=self.max_rows,
                max_queue_delay_s=batching.max_queue_delay_ms / 1000,
                preferred_batch_sizes=tuple(batching.preferred_batch_sizes),
                max_queue_size=batching.max_queue_size,
                instances=config.instances,
                batching=self.batching,
                latency_slo_s=None
                if config.latency_slo_ms is None
                else config.latency_slo_ms / 1000,
                priority_levels=batching.priority_levels,
                max_starvation_s=batching.max_starvation_ms / 1000,
                admission=batching.admission,
            ),
            self.events,
            name=f"{name}:{version}",
        )

    def key(self, arrays: Arrays) -> tuple[tuple[int, ...], ...]:
        """Requests merge only if every non-batch dim agrees, variable-length axes aside."""
        key = []
        for spec in self.signature.inputs:
            shape = list(arrays[spec.name].shape[1:])
            axis = self.rules.variable_axes.get(spec.name)
            if axis is not None:
                shape[axis - 1] = -1
            key.append(tuple(shape))
        return tuple(key)

    def _run_batch(self, requests: Sequence[Request]) -> Ran[Arrays]:
        """Runs in a worker thread: merge, run on a free session, split."""
        t0 = time.perf_counter_ns()
        parts = [r.arrays for r in requests]
        feeds = batch_arrays.merge(parts, self._pads)
        t1 = time.perf_counter_ns()
        session = self._sessions.get()
        try:
            outputs = session.run(feeds)
        finally:
            self._sessions.put(session)
        t2 = time.perf_counter_ns()
        if self.drift is not None:
            self.drift.offer(feeds, outputs)
        results = batch_arrays.split(outputs, parts, [r.rows for r in requests], self._pads)
        t3 = time.perf_counter_ns()
        return Ran(results, StepTimes(t1 - t0, t2 - t1, t3 - t2))

    # -- lifecycle and introspection -------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()
        if self.drift is not None:
            self.drift.start()

    async def drain(self, timeout_s: float | None) -> bool:
        return await self.batcher.drain(timeout_s)

    async def close(self) -> None:
        await self.batcher.close()
        if self.drift is not None:
            await self.drift.close()

    def load(self) -> Load:
        return self.batcher.load()

    def statistics(self) -> Snapshot:
        return self._statistics.snapshot()

    def admission_report(self) -> dict[str, Any]:
        """What admission works from and what it decided, for `GET /models/{name}` and the
        V2 statistics: the objective, the learned run time per batch size, and the
        requests admitted and refused or dropped by reason."""
        stats = self._statistics.snapshot()
        estimates = self.batcher.cost.report(reported_sizes(self.max_rows))
        return {
            "latency_slo_ms": self.config.latency_slo_ms,
            "priority_levels": self.config.batching.priority_levels,
            "estimated_run_ms": {str(rows): s * 1000 for rows, s in estimates.items()},
            "admitted": stats.submitted,
            "shed": {reason.value: stats.dropped[reason] for reason in SHED_REASONS},
        }

    def drift_report(self) -> dict[str, Any]:
        """For `GET /models/{name}`: the reference's origin and the current window's scores,
        or why drift is off."""
        if self.drift is None:
            return {"enabled": False, "reason": self._drift_note or "no reference profile"}
        return {
            "enabled": True,
            "sample": self.drift.config.sample,
            "reference": self.drift.reference.describe(),
            **self.drift.snapshot().as_json(),
        }

    def warm_up(self) -> None:
        """Run one row, each preferred batch size and a full batch on every session before
        serving; the times seed the batcher's run cost, so admission has an estimate from
        the first request."""
        if any(spec.datatype.name == "BF16" for spec in self.signature.inputs):
            # numpy has no bfloat16, so no sample can be made; the first request warms up.
            log.warning("model %s: BF16 inputs, warm-up skipped", self.name)
            return
        sizes = [1]
        if self.batching:
            sizes = sorted({1, *self.config.batching.preferred_batch_sizes, self.max_rows})
        rng = np.random.default_rng(0)
        sessions = [self._sessions.get() for _ in range(self.config.instances)]
        cost = self.batcher.cost
        try:
            for session in sessions:
                for rows in sizes:
                    rows = min(rows, self.max_rows)
                    feeds = sample_inputs(self.signature, rows, rng)
                    for _ in range(2):  # the first run of a size allocates: time the second
                        started = time.perf_counter()
                        session.run(feeds)
                    cost.observe(self.key(feeds), rows, time.perf_counter() - started)
        finally:
            for session in sessions:
                self._sessions.put(session)
