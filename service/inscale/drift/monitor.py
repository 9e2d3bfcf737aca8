"""One model version's drift monitor: samples served rows, bins them, scores the window.

The request path pays only `offer`, called by the worker thread after a batch has run: a
binomial draw of how many of the batch's rows to keep, and a copy of those rows (a few
microseconds per batch). `update`, once a second on the event loop's background task, bins what
was kept into the sliding window and recomputes every score, so a scrape or `GET /models/{name}`
only reads numbers already made. What waits to be binned is bounded (`MAX_PENDING_ROWS`); past
it rows are dropped and counted, never queued without limit.
"""

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inscale.drift import scores
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
        sizes = [f.expected.size for f in features]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self._window = Window(int(self._offsets[-1]), config.window_s)
        self._input_tensors = sorted({f.tensor for f in self._inputs})
        self._output_tensors = sorted({f.tensor for f in self._outputs})
        self._tensors = [*self._input_tensors, *self._output_tensors]
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._dropped = 0
        self._gaps: list[int] = []
        self._gap_at = 0
        self._gap = self._next_gap() - 1  # rows to pass before the next kept one
        self._task: asyncio.Task[None] | None = None
        self._snapshot = self._score()

    # -- the request path (worker thread) --------------------------------------------------

    def offer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Keep a `sample` share of a finished batch's rows for the next update.

        Each row is kept with probability `sample`, independently: the gap to the next kept
        row is drawn from the geometric distribution, so a batch with no row to keep (most of
        them, at 5%) costs one subtraction, and the generator is asked only once per kept row.
        """
        rows = len(next(iter(feeds.values())))
        if self._gap >= rows:
            self._gap -= rows  # a race between instances only nudges the sampling rate
            return
        with self._lock:
            picked = []
            index = self._gap
            while index < rows:
                picked.append(index)
                index += self._next_gap()
            self._gap = index - rows
            if self._pending_rows + len(picked) > MAX_PENDING_ROWS:
                self._dropped += len(picked)
                return
            # One row (most batches that keep any): a slice copied is several times cheaper
            # than fancy indexing. Either way a copy, never a view holding the batch alive.
            rows_of = slice(picked[0], picked[0] + 1) if len(picked) == 1 else picked
            taken = {name: feeds[name][rows_of].copy() for name in self._input_tensors}
            for name in self._output_tensors:
                taken[name] = outputs[name][rows_of].copy()
            self._pending.append(taken)
            self._pending_rows += len(picked)

    def _next_gap(self) -> int:
        """Rows from one kept row to the next: geometric, drawn 1,024 at a time (a generator
        call per row would cost more than the copy)."""
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
            counts = np.concatenate(
                [f.count(columns[f.tensor][:, f.index]) for f in self._inputs + self._outputs]
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
        per = []
        for i, feature in enumerate(features):
            observed = counts[self._offsets[i] : self._offsets[i + 1]]
            per.append(
                Score(
                    feature.name,
                    scores.psi(observed, feature.expected),
                    scores.ks(observed, feature.expected),
                )
            )
        inputs = per[: len(self._inputs)]
        ranked = sorted(inputs, key=lambda s: s.psi, reverse=True)
        outputs: dict[str, Score] = {}
        shares: dict[str, dict[str, float]] = {}
        for feature, score in zip(self._outputs, per[len(self._inputs) :], strict=True):
            worst = outputs.get(feature.tensor)
            if worst is None or score.psi > worst.psi:
                outputs[feature.tensor] = Score(feature.tensor, score.psi, score.ks)
            if feature.classes:
                offset = self._offsets[features.index(feature)]
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
