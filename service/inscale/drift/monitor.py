"""One model version's drift monitor: samples served rows, bins them, scores the window.

The request path pays only `offer`, called by the worker thread after a batch has run: one
subtraction for a batch not kept, a copy of each tensor for the `sample` share that is.
`update`, once a second on the event loop's background task, bins what was kept into the
sliding window and recomputes every score, so a scrape or `GET /models/{name}` only reads
numbers already made. What waits to be binned is bounded (`MAX_PENDING_ROWS`); past it rows are
dropped and counted, never queued without limit.
"""

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inscale.drift import bins, scores
from inscale.drift.reference import Feature, Reference
from inscale.drift.window import Window
from inscale.models.config import DriftConfig

log = logging.getLogger(__name__)

MAX_PENDING_ROWS = 20_000
UPDATE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Score:
    name: str
    psi: float
    ks: float


@dataclass(frozen=True)
class DriftSnapshot:
    """The scores of the current window."""

    rows: int
    window_s: float
    covered_s: float
    input_worst: Score | None
    input_mean_psi: float
    top_inputs: list[Score]  # the top_k input features by PSI, worst first
    outputs: list[Score]  # per output tensor (a binned one: its worst column)
    prediction_shares: dict[str, dict[str, float]]  # class output -> class -> share
    features: int
    dropped_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def score(s: Score) -> dict[str, Any]:
            return {"feature": s.name, "psi": round(s.psi, 6), "ks": round(s.ks, 6)}

        return {
            "rows": self.rows,
            "window_s": self.window_s,
            "covered_s": round(self.covered_s, 1),
            "features": self.features,
            "input_worst": None if self.input_worst is None else score(self.input_worst),
            "input_mean_psi": None if self.rows == 0 else round(self.input_mean_psi, 6),
            "top_inputs": [score(s) for s in self.top_inputs],
            "outputs": [
                {"output": s.name, "psi": round(s.psi, 6), "ks": round(s.ks, 6)}
                for s in self.outputs
            ],
            "prediction_shares": self.prediction_shares,
            "dropped_rows": self.dropped_rows,
        }


def select(reference: Reference, wanted: list[str] | str) -> list[Feature]:
    """The input features a config's `features` names: all, input names, feature names."""
    if wanted == "all":
        return list(reference.inputs)
    names = set(wanted)
    chosen = [f for f in reference.inputs if f.name in names or f.tensor in names]
    known = {f.name for f in reference.inputs} | {f.tensor for f in reference.inputs}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"drift.features names {', '.join(unknown)}, not in the reference")
    return chosen


class DriftMonitor:
    def __init__(self, reference: Reference, config: DriftConfig, seed: int = 0) -> None:
        self.reference = reference
        self.config = config
        self._inputs = select(reference, config.features)
        self._outputs = list(reference.outputs)
        features = self._inputs + self._outputs
        # Every feature's bins side by side in one flat array: the window's, the scores'.
        self._segments = scores.Segments(
            np.concatenate([f.expected for f in features]), [f.expected.size for f in features]
        )
        self._width = int(self._segments.sizes.sum())
        self._window = Window(self._width, config.window_s)
        self._input_tensors = sorted({f.tensor for f in self._inputs})
        self._output_tensors = sorted({f.tensor for f in self._outputs})
        self._tensors = [*self._input_tensors, *self._output_tensors]
        # Binned columns are counted a tensor at a time; class labels one by one (a few).
        starts = self._segments.starts.tolist()
        self._classes: list[tuple[Feature, int]] = []
        binned: dict[str, list[tuple[Feature, int]]] = {}
        for feature, start in zip(features, starts, strict=True):
            if feature.classes:
                self._classes.append((feature, start))
            else:
                binned.setdefault(feature.tensor, []).append((feature, start))
        self._counters = {
            tensor: bins.ColumnCounter(
                [f.index for f, _ in columns],
                [f.edges for f, _ in columns],
                [o for _, o in columns],
            )
            for tensor, columns in binned.items()
        }
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._dropped = 0
        self._gaps: list[int] = []
        self._gap_at = 0
        self._gap = self._next_gap()  # batches until the next kept one (this one included)
        self._task: asyncio.Task[None] | None = None
        self._snapshot = self._score()

    # -- the request path (worker thread) --------------------------------------------------

    def offer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Keep a `sample` share of finished batches, whole, for the next update.

        Each batch is kept with probability `sample`, so each row is too, and the window's
        shares are the served ones in expectation. Batches rather than rows: the batch count to
        the next kept one is drawn from the geometric distribution, so a batch not kept (95% of
        them at the default) costs one subtraction, and a kept one one copy per tensor. Picking
        rows inside every batch cost a lock, a loop and a slice per kept row, on about half the
        batches at 16 rows each: most of what monitoring added to a request.
        """
        self._gap -= 1
        if self._gap > 0:
            return  # a race between instances only nudges the sampling rate
        rows = len(next(iter(feeds.values())))
        # A copy, never a view holding the batch (or a request's body) alive.
        taken = {name: feeds[name].copy() for name in self._input_tensors}
        for name in self._output_tensors:
            taken[name] = outputs[name].copy()
        with self._lock:  # the draws' buffer is shared by the version's instances
            self._gap = self._next_gap()
            if self._pending_rows + rows > MAX_PENDING_ROWS:
                self._dropped += rows
                return
            self._pending.append(taken)
            self._pending_rows += rows

    def _next_gap(self) -> int:
        """Batches from one kept batch to the next: geometric, drawn 1,024 at a time (a
        generator call per kept batch would cost more than the copy)."""
        if self._gap_at == len(self._gaps):
            self._gaps = self._rng.geometric(self.config.sample, 1024).tolist()
            self._gap_at = 0
        gap: int = self._gaps[self._gap_at]
        self._gap_at += 1
        return gap

    # -- off the request path ----------------------------------------------------------------

    def update(self) -> None:
        """Bin what was kept into the window, then rescore it."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        if pending:
            merged = {name: np.concatenate([p[name] for p in pending]) for name in self._tensors}
            rows = len(next(iter(merged.values())))
            columns = {name: array.reshape(rows, -1) for name, array in merged.items()}
            counts = np.zeros(self._width, dtype=np.int64)
            for tensor, counter in self._counters.items():
                counter.add(columns[tensor], counts)
            for feature, offset in self._classes:
                size = feature.expected.size
                counts[offset : offset + size] += feature.count(
                    columns[feature.tensor][:, feature.index]
                )
            self._window.add(counts, rows)
        self._snapshot = self._score()

    def _score(self) -> DriftSnapshot:
        counts, rows = self._window.totals()
        if rows == 0:
            # No row yet is no score, not a perfect one: the gauges and `/models` show none.
            return DriftSnapshot(
                rows=0,
                window_s=self.config.window_s,
                covered_s=self._window.covered_s(),
                input_worst=None,
                input_mean_psi=0.0,
                top_inputs=[],
                outputs=[],
                prediction_shares={},
                features=len(self._inputs),
                dropped_rows=self._dropped,
            )
        features = self._inputs + self._outputs
        psi, ks = self._segments.scores(counts)
        per = [
            Score(feature.name, p, k)
            for feature, p, k in zip(features, psi.tolist(), ks.tolist(), strict=True)
        ]
        inputs = per[: len(self._inputs)]
        ranked = sorted(inputs, key=lambda s: s.psi, reverse=True)
        outputs: dict[str, Score] = {}
        shares: dict[str, dict[str, float]] = {}
        for feature, score in zip(self._outputs, per[len(self._inputs) :], strict=True):
            worst = outputs.get(feature.tensor)
            if worst is None or score.psi > worst.psi:
                outputs[feature.tensor] = Score(feature.tensor, score.psi, score.ks)
        for feature, offset in self._classes:
            observed = counts[offset : offset + feature.expected.size]
            total = max(int(observed.sum()), 1)
            names = [_class_name(c) for c in feature.edges.tolist()] + ["other"]
            shares[feature.tensor] = {
                n: float(c) / total for n, c in zip(names, observed, strict=True)
            }
        return DriftSnapshot(
            rows=rows,
            window_s=self.config.window_s,
            covered_s=self._window.covered_s(),
            input_worst=ranked[0] if ranked else None,
            input_mean_psi=float(np.mean([s.psi for s in inputs])) if inputs else 0.0,
            top_inputs=ranked[: self.config.top_k],
            outputs=list(outputs.values()),
            prediction_shares=shares,
            features=len(self._inputs),
            dropped_rows=self._dropped,
        )

    def snapshot(self) -> DriftSnapshot:
        return self._snapshot

    def start(self) -> None:
        """The background updates, on the running loop (the version's start, in the loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(UPDATE_INTERVAL_S)
            try:
                self.update()
            except Exception:  # a bug here must not stop serving: say so, keep going
                log.exception("drift update failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _class_name(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
