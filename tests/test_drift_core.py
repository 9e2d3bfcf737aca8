"""The drift arithmetic on known numbers: bins, PSI and KS against numpy by hand, the sliding
window forgetting what is older than it, and the monitor's sampling bounds."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inscale.datatypes import from_onnx
from inscale.drift import bins, scores
from inscale.drift.monitor import MAX_PENDING_ROWS, DriftMonitor
from inscale.drift.reference import Reference, build, load
from inscale.drift.window import SLOTS, Window
from inscale.models.config import DriftConfig
from inscale.signature import Signature, TensorSpec


def spec(name: str, onnx_type: str, shape: tuple[int | None, ...]) -> TensorSpec:
    datatype = from_onnx(onnx_type)
    assert datatype is not None
    return TensorSpec(name, datatype, shape, tuple(None for _ in shape))


SIGNATURE = Signature(
    inputs=(spec("x", "tensor(float)", (None, 3)),),
    outputs=(spec("label", "tensor(int64)", (None,)), spec("score", "tensor(float)", (None, 1))),
)


def test_edges_are_quantiles_and_few_values_get_a_bin_each() -> None:
    values = np.arange(100, dtype=np.float64)
    edges = bins.make_edges(values, 4)
    assert edges.tolist() == pytest.approx(np.quantile(values, [0.25, 0.5, 0.75]).tolist())
    assert bins.counts(values, edges).tolist() == [25, 25, 25, 25]
    discrete = bins.make_edges(np.array([0.0] * 90 + [1.0] * 10))
    assert discrete[:2].tolist() == [0.0, 1.0] and discrete[2] > 1.0
    # Below the smallest, each value, above the largest: a new value either way is seen.
    assert bins.counts(np.array([-1.0, 0.0, 0.0, 1.0, 5.0]), discrete).tolist() == [1, 2, 1, 1]
    constant = bins.make_edges(np.full(50, 3.0))
    assert bins.counts(np.array([2.0, 3.0, 4.0]), constant).tolist() == [1, 1, 1]


def test_many_columns_binned_at_once_count_as_each_column_alone() -> None:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(5000, 6))
    rows[rng.random(rows.shape) < 0.01] = np.nan
    rows[0, 1], rows[1, 1], rows[2, 4] = np.inf, -np.inf, np.inf
    edges = [
        bins.make_edges(rng.normal(size=400), 10),
        bins.make_edges(rng.normal(size=400), 4),
        np.zeros(0),  # a column with no finite reference value: one bin
        bins.make_edges(np.array([0.0, 1.0, 1.0])),  # few values: a bin each
    ]
    columns = [0, 1, 3, 4]
    offsets = np.concatenate([[0], np.cumsum([e.size + 1 for e in edges])])
    flat = np.zeros(int(offsets[-1]) + 2, dtype=np.int64)  # two bins no column owns
    counter = bins.ColumnCounter(columns, edges, offsets[:-1].tolist())
    counter.ROWS_AT_ONCE = 1500  # several chunks, the last a short one
    counter.add(rows, flat)
    for j, (column, cut) in enumerate(zip(columns, edges, strict=True)):
        alone = bins.counts(rows[:, column], cut)
        assert flat[offsets[j] : offsets[j + 1]].tolist() == alone.tolist(), j
    assert flat[-2:].tolist() == [0, 0]


def test_scores_of_many_features_at_once_equal_each_feature_alone() -> None:
    rng = np.random.default_rng(3)
    sizes = [4, 1, 7, 3, 10]
    expected = [rng.dirichlet(np.ones(n)) for n in sizes]
    observed = [rng.integers(0, 30, size=n) for n in sizes]
    observed[0][:] = 0  # a feature with no rows yet scores 0
    observed[2][3] = 0  # an empty bin, floored
    segments = scores.Segments(np.concatenate(expected), np.array(sizes))
    psi, ks = segments.scores(np.concatenate(observed))
    for i, (o, e) in enumerate(zip(observed, expected, strict=True)):
        total = o.sum()
        if total == 0:
            assert psi[i] == ks[i] == 0.0
            continue
        a = np.maximum(o / total, scores.SHARE_FLOOR)
        r = np.maximum(e, scores.SHARE_FLOOR)
        assert psi[i] == pytest.approx(float(np.sum((a - r) * np.log(a / r))), abs=1e-12)
        hand_ks = float(np.max(np.abs(np.cumsum(o / total) - np.cumsum(e))))
        assert ks[i] == pytest.approx(hand_ks, abs=1e-12)


def test_psi_and_ks_equal_the_formulas_by_hand() -> None:
    expected = np.array([0.25, 0.25, 0.25, 0.25])
    observed = np.array([10, 20, 30, 40])
    a = observed / observed.sum()
    hand_psi = float(np.sum((a - expected) * np.log(a / expected)))
    hand_ks = float(np.max(np.abs(np.cumsum(a) - np.cumsum(expected))))
    assert scores.psi(observed, expected) == pytest.approx(hand_psi, abs=1e-12)
    assert scores.ks(observed, expected) == pytest.approx(hand_ks, abs=1e-12)
    assert scores.psi(np.array([25, 25, 25, 25]), expected) == 0.0
    # An empty bin is floored, not infinite.
    floor = scores.SHARE_FLOOR
    empty = scores.psi(np.array([0, 50, 25, 25]), expected)
    a = np.array([floor, 0.5, 0.25, 0.25])
    assert empty == pytest.approx(float(np.sum((a - expected) * np.log(a / expected))))
    assert scores.psi(np.zeros(4), expected) == 0.0


def test_the_window_forgets_slots_older_than_its_length() -> None:
    now = [1000.0]
    window = Window(2, window_s=30.0, clock=lambda: now[0])
    window.add(np.array([1, 0]), 1)
    now[0] += 15
    window.add(np.array([0, 2]), 2)
    assert window.totals()[0].tolist() == [1, 2] and window.totals()[1] == 3
    now[0] += 15 + 30 / SLOTS  # the first add is now older than the window
    counts, rows = window.totals()
    assert counts.tolist() == [0, 2] and rows == 2
    now[0] += 100
    assert window.totals()[1] == 0
    assert window.covered_s() == 30.0


def written_reference(folder: Path) -> tuple[dict[str, Any], Reference]:
    """A reference of 2,000 normal rows, in five bins per feature, written and read back."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    outputs: dict[str, np.ndarray] = {
        "label": (x[:, 0] > 0).astype(np.int64),
        "score": x[:, :1] * 2,
    }
    document = build(SIGNATURE, {"x": x}, outputs, "synthetic", "now", bin_count=5)
    path = folder / "drift_reference.json"
    path.write_text(json.dumps(document))
    return document, load(path, SIGNATURE)


def test_a_monitor_scores_served_rows_as_numpy_does(tmp_path: Path) -> None:
    document, ref = written_reference(tmp_path)
    monitor = DriftMonitor(ref, DriftConfig(sample=1.0, window_s=60, top_k=2))
    served = np.random.default_rng(1).normal(loc=0.5, size=(300, 3)).astype(np.float32)
    label = (served[:, 0] > 0.2).astype(np.int64)
    score = served[:, :1] * 2
    for start in range(0, 300, 30):
        rows = slice(start, start + 30)
        monitor.offer({"x": served[rows]}, {"label": label[rows], "score": score[rows]})
    monitor.update()
    window = monitor.snapshot()
    assert window.rows == 300 and window.features == 3
    by_hand = {}
    for feature in document["inputs"][0]["features"]:
        edges = np.asarray(feature["edges"])
        expected = np.asarray(feature["shares"])
        column = served[:, feature["index"]].astype(np.float64)
        observed = np.bincount(
            np.searchsorted(edges, column, side="right"), minlength=edges.size + 1
        )
        a = np.maximum(observed / observed.sum(), 1e-4)
        e = np.maximum(expected, 1e-4)
        psi = float(np.sum((a - e) * np.log(a / e)))
        ks = float(np.max(np.abs(np.cumsum(observed / observed.sum()) - np.cumsum(expected))))
        by_hand[feature["name"]] = (psi, ks)
    worst = max(by_hand, key=lambda name: by_hand[name][0])
    assert window.input_worst is not None and window.input_worst.name == worst
    assert window.input_worst.psi == pytest.approx(by_hand[worst][0], abs=1e-6)
    assert window.input_mean_psi == pytest.approx(
        np.mean([v[0] for v in by_hand.values()]), abs=1e-6
    )
    assert [s.name for s in window.top_inputs] == sorted(by_hand, key=lambda n: -by_hand[n][0])[:2]
    for s in window.top_inputs:
        assert (s.psi, s.ks) == pytest.approx(by_hand[s.name], abs=1e-6)
    # The class output: the predicted-class shares, and PSI against the reference's shares.
    classes = document["outputs"][0]
    share_1 = float(label.mean())
    assert window.prediction_shares["label"] == pytest.approx(
        {"0": 1 - share_1, "1": share_1, "other": 0.0}
    )
    a = np.maximum(np.array([1 - share_1, share_1, 0.0]), 1e-4)
    e = np.maximum(np.append(classes["shares"], 0.0), 1e-4)
    label_score = next(s for s in window.outputs if s.name == "label")
    assert label_score.psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), abs=1e-6)


def test_sampling_keeps_about_its_share_and_never_more_than_the_bound(tmp_path: Path) -> None:
    _, ref = written_reference(tmp_path)
    monitor = DriftMonitor(ref, DriftConfig(sample=0.05, window_s=60))
    rows = np.zeros((32, 3), dtype=np.float32)
    outputs: dict[str, np.ndarray] = {
        "label": np.zeros(32, dtype=np.int64),
        "score": np.zeros((32, 1), np.float32),
    }
    for _ in range(4000):  # whole batches are kept: about 200, so within 20% at 3 sigma
        monitor.offer({"x": rows}, outputs)
    monitor.update()
    kept = monitor.snapshot().rows
    assert kept % 32 == 0 and 0.04 * 128_000 < kept < 0.06 * 128_000
    full = DriftMonitor(ref, DriftConfig(sample=1.0, window_s=60))
    for _ in range(MAX_PENDING_ROWS // 32 + 10):
        full.offer({"x": rows}, outputs)
    full.update()
    window = full.snapshot()
    assert window.rows <= MAX_PENDING_ROWS and window.dropped_rows > 0


def test_no_row_yet_is_no_score_rather_than_a_perfect_one(tmp_path: Path) -> None:
    _, ref = written_reference(tmp_path)
    monitor = DriftMonitor(ref, DriftConfig(sample=0.05, window_s=60))
    monitor.update()
    window = monitor.snapshot()
    assert window.rows == 0 and window.input_worst is None
    assert window.top_inputs == [] and window.outputs == [] and window.prediction_shares == {}
    shown = window.as_json()
    assert shown["input_worst"] is None and shown["input_mean_psi"] is None
