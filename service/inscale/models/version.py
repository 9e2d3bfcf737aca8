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

import numpy as np

from inscale import batch_arrays
from inscale.batch_arrays import Arrays, PadRule
from inscale.batch_events import Load, Ran, StepTimes
from inscale.batcher import Batcher, BatchPolicy
from inscale.events import Fanout, ModelEvents
from inscale.models.config import ModelConfig
from inscale.models.session import OrtSession
from inscale.signature import Signature, sample_inputs
from inscale.statistics import Snapshot, VersionStatistics
from inscale.validation import InputRules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
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
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.signature = signature
        self.providers = sessions[0].providers
        self.batching = config.batching.enabled and signature.batchable
        self.max_rows = config.batching.max_batch_size if signature.batchable else 1
        self.timeout_s = config.timeout_ms / 1000
        self.rules = InputRules(
            signature, signature.batchable, self.max_rows, {r.input: r.axis for r in pads}
        )
        self._pads = pads
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
                max_queue_delay_s=config.batching.max_queue_delay_ms / 1000,
                preferred_batch_sizes=tuple(config.batching.preferred_batch_sizes),
                max_queue_size=config.batching.max_queue_size,
                instances=config.instances,
                batching=self.batching,
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
        results = batch_arrays.split(outputs, parts, [r.rows for r in requests], self._pads)
        t3 = time.perf_counter_ns()
        return Ran(results, StepTimes(t1 - t0, t2 - t1, t3 - t2))

    # -- lifecycle and introspection -------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()

    async def drain(self, timeout_s: float | None) -> bool:
        return await self.batcher.drain(timeout_s)

    async def close(self) -> None:
        await self.batcher.close()

    def load(self) -> Load:
        return self.batcher.load()

    def statistics(self) -> Snapshot:
        return self._statistics.snapshot()

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
