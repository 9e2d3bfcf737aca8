"""Drift gauges per model version, read from each version's drift monitor when sampled.

The monitor has already scored its window (once a second, off the request path), so sampling
copies numbers. Series per version are bounded: top_k input features (at most 100) by name for
PSI and KS, one per output tensor for each, one per class of each class output (the reference's
classes plus "other", at most 257), and five without a feature label. Features that leave the
top k are removed, so the label sets do not grow with time. In multiprocess mode each worker
scores the rows it served; the gauges show the worst worker (`livemax`), and rows are summed.
"""

import contextlib
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge

from inscale.metrics.state import MODEL_LABELS
from inscale.models.registry import ModelRegistry


class DriftGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(
            name: str,
            doc: str,
            extra: tuple[str, ...] = (),
            mode: Literal["livemax", "livesum"] = "livemax",
        ) -> Gauge:
            labels = [*MODEL_LABELS, *extra]
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        self.feature_psi = gauge(
            "inscale_drift_feature_psi",
            "Population stability index of an input feature's window against the reference "
            "(the top_k features by PSI): under 0.1 stable, over 0.25 a shift.",
            ("feature",),
        )
        self.feature_ks = gauge(
            "inscale_drift_feature_ks",
            "Kolmogorov-Smirnov statistic on the bins of an input feature (the top_k by PSI).",
            ("feature",),
        )
        self.input_score = gauge(
            "inscale_drift_input_score",
            "The worst input feature's PSI over every monitored feature.",
        )
        self.input_mean = gauge(
            "inscale_drift_input_mean_psi", "The mean PSI over every monitored input feature."
        )
        self.output_psi = gauge(
            "inscale_drift_output_psi",
            "PSI of an output against the reference: the predicted-class distribution of a "
            "class output, the worst column of a float output.",
            ("output",),
        )
        self.output_ks = gauge(
            "inscale_drift_output_ks",
            "Kolmogorov-Smirnov statistic on the bins of an output.",
            ("output",),
        )
        self.prediction_share = gauge(
            "inscale_drift_prediction_share",
            "Share of each predicted class in the window (class outputs; other: a class the "
            "reference never saw).",
            ("output", "class"),
        )
        self.rows = gauge(
            "inscale_drift_window_rows",
            "Sampled rows in the drift window (summed over workers).",
            mode="livesum",
        )
        self.window = gauge(
            "inscale_drift_window_seconds", "How much of the drift window has elapsed."
        )
        self._series: dict[Gauge, set[tuple[str, ...]]] = {}

    def sample(self, models: ModelRegistry) -> None:
        seen: dict[Gauge, set[tuple[str, ...]]] = {}

        def put(metric: Gauge, labels: tuple[str, ...], value: float) -> None:
            metric.labels(*labels).set(value)
            seen.setdefault(metric, set()).add(labels)

        for name in models.names():
            for entry in models.entries(name):
                model = entry.model
                if model is None or model.drift is None:
                    continue
                key = (name, str(entry.version))
                window = model.drift.snapshot()
                put(self.rows, key, window.rows)
                put(self.window, key, window.covered_s)
                if window.rows == 0:
                    continue  # no row scored yet: no score series, rather than zeros
                put(self.input_mean, key, window.input_mean_psi)
                if window.input_worst is not None:
                    put(self.input_score, key, window.input_worst.psi)
                for score in window.top_inputs:
                    put(self.feature_psi, (*key, score.name), score.psi)
                    put(self.feature_ks, (*key, score.name), score.ks)
                for score in window.outputs:
                    put(self.output_psi, (*key, score.name), score.psi)
                    put(self.output_ks, (*key, score.name), score.ks)
                for output, shares in window.prediction_shares.items():
                    for label, share in shares.items():
                        put(self.prediction_share, (*key, output, label), share)
        for metric, before in self._series.items():
            for labels in before - seen.get(metric, set()):
                with contextlib.suppress(KeyError):
                    metric.labels(*labels).set(0)  # multiprocess: drop out of the max first
                    metric.remove(*labels)
        self._series = seen
