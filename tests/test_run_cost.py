"""The learned run cost: the line it fits, and what it does with outliers and drift."""

import pytest

from inscale.run_cost import WINDOW, RunCost, reported_sizes


def test_nothing_is_known_before_the_first_run() -> None:
    assert RunCost().estimate("k", 8) is None
    assert RunCost().report([1, 2]) == {}


def test_two_sizes_give_the_line_through_them() -> None:
    cost = RunCost()
    for _ in range(3):
        cost.observe("k", 1, 0.0012)
        cost.observe("k", 11, 0.0032)
    # 1 ms fixed plus 0.2 ms a row.
    assert cost.estimate("k", 6) == pytest.approx(0.0022)
    assert cost.estimate("k", 32) == pytest.approx(0.0074)


def test_one_size_is_scaled_through_the_origin_until_another_is_seen() -> None:
    cost = RunCost()
    cost.observe("k", 4, 0.004)
    assert cost.estimate("k", 8) == pytest.approx(0.008)


def test_a_lone_outlier_does_not_move_the_estimate() -> None:
    cost = RunCost()
    for _ in range(WINDOW):
        cost.observe("k", 8, 0.001)
    cost.observe("k", 8, 0.050)  # a garbage-collection pause
    assert cost.estimate("k", 8) == pytest.approx(0.001)


def test_a_lasting_change_is_followed_within_a_few_runs() -> None:
    cost = RunCost()
    for _ in range(WINDOW):
        cost.observe("k", 8, 0.001)
    for _ in range(WINDOW // 2 + 1):
        cost.observe("k", 8, 0.003)  # the machine got three times slower
    assert cost.estimate("k", 8) == pytest.approx(0.003)


def test_an_unseen_shape_borrows_the_most_run_shape() -> None:
    cost = RunCost()
    for _ in range(5):
        cost.observe("common", 1, 0.002)
    cost.observe("rare", 1, 0.009)
    assert cost.estimate("never", 1) == pytest.approx(0.002)
    assert cost.report([1]) == {1: pytest.approx(0.002)}


def test_meaningless_observations_are_ignored() -> None:
    cost = RunCost()
    cost.observe("k", 0, 0.1)
    cost.observe("k", 4, 0.0)
    assert cost.estimate("k", 4) is None


def test_reported_sizes_are_bounded() -> None:
    assert reported_sizes(1) == [1]
    assert reported_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert reported_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert len(reported_sizes(65536)) == 17
