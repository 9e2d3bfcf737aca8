"""`inscale profile`'s report writer on hand-made results (the shape of results.json).

The figures are made up but shaped like a real sweep on two cores: a default config, a
bigger batch that wins, two instances that win at low load, a long queue delay that never
meets the objective, and a config whose server failed to start.
"""

import copy
import csv
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from inscale.profile import report
from inscale.profile.report import write_report

SLO = 50.0
PLOTS = {
    "frontier.png",
    "best_vs_concurrency.png",
    "rows_per_run.png",
    "memory.png",
    "compute_scaling.png",
}


def level(
    concurrency: int, rps: float, p99: float, rows: float, compute: float, queue: float = 0.1
) -> dict[str, Any]:
    requests = round(rps * 3)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": 0,
        "rps": rps,
        "p50_ms": round(p99 * 0.5, 2),
        "p90_ms": round(p99 * 0.8, 2),
        "p99_ms": p99,
        "max_ms": round(p99 * 1.5, 2),
        "queue_ms": queue,
        "compute_ms": compute,
        "rows_per_run": rows,
        "within_slo": p99 <= SLO,
    }


def config(batch: int, delay: float, instances: int, threads: int, workers: int) -> dict[str, Any]:
    return {
        "max_batch_size": batch,
        "max_queue_delay_ms": delay,
        "instances": instances,
        "intra_op_threads": threads,
        "workers": workers,
    }


def trial(
    id: int,
    conf: dict[str, Any],
    levels: list[dict[str, Any]],
    rss: float | None,
    best: dict[str, Any] | None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "config": conf,
        "is_default": id == 1,
        "status": "failed" if error else "ok",
        "error": error,
        "startup_s": 1.8,
        "rss_mb": rss,
        "levels": levels,
        "best": best,
    }


def results() -> dict[str, Any]:
    default = config(32, 0.0, 1, 1, 1)
    big_batch = config(128, 1.0, 1, 1, 1)
    two_instances = config(8, 0.0, 2, 1, 1)
    long_delay = config(32, 60.0, 2, 2, 2)
    trials = [
        trial(1, default, [
            level(1, 1000.0, 1.6, 1.0, 0.6),
            level(4, 2800.0, 3.0, 2.5, 0.9),
            level(16, 4200.0, 9.0, 8.0, 1.6),
            level(32, 4500.0, 18.0, 15.0, 2.4),
            level(64, 4600.0, 40.0, 28.0, 3.8),
        ], 150.0, {"concurrency": 64, "rps": 4600.0, "p99_ms": 40.0}),
        trial(2, big_batch, [
            level(1, 700.0, 2.5, 1.0, 0.6),
            level(4, 2600.0, 3.5, 3.5, 1.0),
            level(16, 5200.0, 8.0, 14.0, 2.2),
            level(32, 6100.0, 15.0, 30.0, 4.1),
            level(64, 6400.0, 55.0, 60.0, 7.5),  # the most throughput, past the objective
        ], 152.0, {"concurrency": 32, "rps": 6100.0, "p99_ms": 15.0}),
        trial(3, two_instances, [
            level(1, 1100.0, 1.4, 1.0, 0.55),
            level(4, 3000.0, 2.8, 1.8, 0.8),
            level(16, 3900.0, 12.0, 7.5, 1.5),
            level(32, 4000.0, 35.0, 8.0, 1.6),
            level(64, 4000.0, 70.0, 8.0, 1.6),
        ], 210.0, {"concurrency": 32, "rps": 4000.0, "p99_ms": 35.0}),
        trial(4, long_delay, [  # every request waits out the 60 ms delay: never within the SLO
            level(1, 16.0, 63.0, 1.0, 0.7, queue=60.0),
            level(4, 64.0, 63.0, 4.0, 1.1, queue=60.0),
            level(16, 250.0, 64.0, 16.0, 2.5, queue=60.0),
            level(32, 490.0, 66.0, 32.0, 4.6, queue=60.0),
            level(64, 950.0, 70.0, 32.0, 4.7, queue=61.0),
        ], 420.0, None),
        trial(5, config(32, 0.0, 4, 1, 2), [], None, None,
              error="server did not start within 60 s\nMemoryError: cannot allocate session"),
    ]  # fmt: skip
    return {
        "schema": 1,
        "model": "digits-wide",
        "version": 1,
        "model_file": "/models/digits-wide/1/model.onnx",
        "made_at": "2026-12-01T19:30:00Z",
        "inscale_version": "0.1.0",
        "machine": {
            "cpus": 2,
            "cpu_model": "AMD EPYC 7B13",
            "server_cores": [0],
            "load_cores": [1],
            "memory_total_mb": 7900.0,
        },
        "slo_p99_ms": SLO,
        "protocol": "predict",
        "rows_per_request": 1,
        "strategy": "grid",
        "trial_s": 3.0,
        "concurrency": [1, 4, 16, 32, 64],
        "space": {
            "max_batch_size": [8, 32, 128],
            "max_queue_delay_ms": [0.0, 1.0, 60.0],
            "instances": [1, 2, 4],
            "intra_op_threads": [1, 2],
            "workers": [1, 2],
        },
        "budget_s": 600.0,
        "elapsed_s": 412.3,
        "stopped": "budget",
        "trials": trials,
        "best": {"trial": 2, "config": big_batch, "concurrency": 32, "rps": 6100.0,
                 "p99_ms": 15.0, "rss_mb": 152.0},
        "default": {"trial": 1, "config": default, "concurrency": 64, "rps": 4600.0,
                    "p99_ms": 40.0, "rss_mb": 150.0},
        # By hand from the levels above: each point has more throughput than any point of
        # lower p99. (3, 1) 1100 at 1.4 ms; (3, 4) 3000 at 2.8; (2, 16) 5200 at 8; (2, 32)
        # 6100 at 15; (2, 64) 6400 at 55, outside the objective but still on the frontier.
        "frontier": [
            {"trial": 3, "concurrency": 1, "rps": 1100.0, "p99_ms": 1.4},
            {"trial": 3, "concurrency": 4, "rps": 3000.0, "p99_ms": 2.8},
            {"trial": 2, "concurrency": 16, "rps": 5200.0, "p99_ms": 8.0},
            {"trial": 2, "concurrency": 32, "rps": 6100.0, "p99_ms": 15.0},
            {"trial": 2, "concurrency": 64, "rps": 6400.0, "p99_ms": 55.0},
        ],
    }  # fmt: skip


HAND_FRONTIER = {(3, 1), (3, 4), (2, 16), (2, 32), (2, 64)}


def assert_real_image(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 600 and height >= 400, (path.name, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=width * height)
        assert colours is not None and len(colours) > 20, f"{path.name} is nearly one colour"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_hand_frontier_is_the_pareto_frontier_of_the_levels() -> None:
    """Guards the fixture itself: the frontier the other tests check against is right."""
    points = [
        (t["id"], lv["concurrency"], lv["rps"], lv["p99_ms"])
        for t in results()["trials"]
        for lv in t["levels"]
    ]
    pareto = {
        (trial, c)
        for trial, c, rps, p99 in points
        if not any(r >= rps and p <= p99 and (r, p) != (rps, p99) for _, _, r, p in points)
    }
    assert pareto == HAND_FRONTIER


def test_writes_the_report_csv_and_five_real_plots(tmp_path: Path) -> None:
    written = write_report(tmp_path / "out", results())

    names = {p.name for p in written}
    assert names == {"report.md", "results.csv", *PLOTS}
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in written)
    for name in PLOTS:
        assert_real_image(tmp_path / "out" / name)


def test_csv_has_a_row_per_trial_and_level_with_the_frontier_flags(tmp_path: Path) -> None:
    write_report(tmp_path, results())
    rows = read_csv(tmp_path / "results.csv")

    # Four trials measured five levels each; the failed one measured none.
    assert [(r["trial"], r["concurrency"]) for r in rows] == [
        (str(t), str(c)) for t in (1, 2, 3, 4) for c in (1, 4, 16, 32, 64)
    ]
    flagged = {(int(r["trial"]), int(r["concurrency"])) for r in rows if r["on_frontier"] == "true"}
    assert flagged == HAND_FRONTIER
    assert {r["on_frontier"] for r in rows} == {"true", "false"}
    row = next(r for r in rows if (r["trial"], r["concurrency"]) == ("2", "32"))
    assert row["max_batch_size"] == "128" and row["max_queue_delay_ms"] == "1.0"
    assert row["instances"] == "1" and row["intra_op_threads"] == "1" and row["workers"] == "1"
    assert float(row["rps"]) == 6100.0 and float(row["p99_ms"]) == 15.0
    assert float(row["p50_ms"]) == 7.5 and float(row["max_ms"]) == 22.5
    assert row["errors"] == "0" and float(row["rows_per_run"]) == 30.0
    assert float(row["compute_ms"]) == 4.1 and float(row["rss_mb"]) == 152.0
    assert row["within_slo"] == "true"
    assert [r["within_slo"] for r in rows if r["trial"] == "4"] == ["false"] * 5


def test_report_names_the_best_config_and_its_ratio_to_the_default(tmp_path: Path) -> None:
    write_report(tmp_path, results())
    text = (tmp_path / "report.md").read_text()

    assert text.startswith("# Profile of `digits-wide` version 1")
    answer = text.split("## Answer", 1)[1].split("##", 1)[0]
    # 6100 / 4600 = 1.326...
    assert "**1.33x the default**" in answer
    assert (
        "is trial 2 (max_batch_size=128, max_queue_delay_ms=1, instances=1, intra_op_threads=1, "
        "workers=1): 6,100 requests/s at p99 15.0 ms (concurrency 32, 152 MiB resident)" in answer
    )
    assert "the default**, trial 1 (max_batch_size=32" in answer
    assert "4,600 requests/s at p99 40.0 ms (concurrency 64, 150 MiB resident)" in answer
    assert "It changes max_batch_size 32 → 128, max_queue_delay_ms 0 → 1." in answer
    # The setting: machine, cores, objective, strategy, budget and how it stopped.
    for expected in (
        "2 CPUs, AMD EPYC 7B13",
        "server on core 0, load generator on core 1",
        "p99 ≤ 50 ms",
        "grid, 5 trials run of 108 configs (1 failed)",
        "412 s of a 600 s budget; stopped at the budget",
    ):
        assert expected in text, expected


def test_trials_table_is_sorted_by_best_throughput_under_the_slo(tmp_path: Path) -> None:
    write_report(tmp_path, results())
    text = (tmp_path / "report.md").read_text()
    table = text.split("## Trials", 1)[1].split("##", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]

    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| 2", "| 1 (default)", "| 3", "| 4", "| 5",
    ]  # fmt: skip
    assert rows[1].endswith("| 6,100 | 15.0 | 32 | 152 | **best** |")
    assert rows[4].endswith("| — | — | — | 420 | no level within SLO |")
    assert rows[5].endswith("| — | failed |")


def test_report_embeds_each_plot_with_what_to_read_and_lists_failures(tmp_path: Path) -> None:
    write_report(tmp_path, results())
    text = (tmp_path / "report.md").read_text()

    for name in PLOTS:
        assert f"]({name})" in text
    frontier = text.split("## Pareto frontier", 1)[1].split("##", 1)[0]
    assert frontier.count("\n| 2 |") == 3 and frontier.count("\n| 3 |") == 2
    assert "| 2 | batch=128 delay=1 inst=1 thr=1 wrk=1 | 64 | 6,400 | 55.0 | no |" in frontier
    failed = text.split("## Failed trials", 1)[1]
    assert "Trial 5 (max_batch_size=32, max_queue_delay_ms=0, instances=4" in failed
    assert "MemoryError: cannot allocate session" in failed
    assert "Not drawn" not in text


def test_all_failed_still_writes_a_report_that_says_nothing_was_measured(tmp_path: Path) -> None:
    data = results()
    for t in data["trials"]:
        t.update(status="failed", error=f"trial {t['id']}: port in use", levels=[], best=None)
        t["rss_mb"] = None
    data.update(best=None, default=None, frontier=[], stopped="done")

    written = write_report(tmp_path, data)

    assert {p.name for p in written} == {"report.md", "results.csv"}
    text = (tmp_path / "report.md").read_text()
    assert "Nothing was measured: every trial failed" in text
    assert text.count("Not drawn:") == 5
    assert "trial 3: port in use" in text
    assert read_csv(tmp_path / "results.csv") == []
    assert (tmp_path / "results.csv").read_text().startswith("trial,max_batch_size,")


def test_no_trial_run_at_all(tmp_path: Path) -> None:
    data = results()
    data.update(trials=[], best=None, default=None, frontier=[], stopped="interrupted")

    write_report(tmp_path, data)

    text = (tmp_path / "report.md").read_text()
    assert "Nothing was measured: no trial ran" in text
    assert "interrupted; the best is the best found so far" in text
    assert "## Trials" not in text


def test_nothing_within_the_slo_names_the_lowest_p99(tmp_path: Path) -> None:
    data = results()
    data.update(slo_p99_ms=1.0, best=None, default=None)
    for t in data["trials"]:
        t["best"] = None
        for lv in t["levels"]:
            lv["within_slo"] = False

    written = write_report(tmp_path, data)

    text = (tmp_path / "report.md").read_text()
    assert "No config met the objective (p99 ≤ 1 ms)" in text
    assert "lowest p99 measured was 1.40 ms (trial 3 at concurrency 1)" in text
    # The default's curve is still worth a look when nothing met the objective.
    assert "best_vs_concurrency.png" in {p.name for p in written}


def test_the_default_as_best_says_so(tmp_path: Path) -> None:
    data = results()
    data["best"] = copy.deepcopy(data["default"])

    write_report(tmp_path, data)

    text = (tmp_path / "report.md").read_text()
    assert "**The default config was the best found**: trial 1 (" in text
    assert "x the default" not in text


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_no_ratio_when_the_default_is_infeasible_or_failed(tmp_path: Path, status: str) -> None:
    data = results()
    data["default"] = None
    first = data["trials"][0]
    first["best"] = None
    if status == "failed":
        first.update(status="failed", error="crashed", levels=[])
    else:
        for lv in first["levels"]:
            lv["within_slo"] = False

    write_report(tmp_path, data)

    answer = (tmp_path / "report.md").read_text().split("## Answer", 1)[1].split("##", 1)[0]
    assert "The best config found under the objective (p99 ≤ 50 ms) is trial 2 (" in answer
    expected = "failed" if status == "failed" else "met the objective at no concurrency tried"
    assert f"The default config {expected}" in answer and "no ratio" in answer


def test_many_trials_get_a_colour_bar_instead_of_a_legend(tmp_path: Path) -> None:
    """Fourteen trials: the plots still draw (a colour bar of trial ids keeps the legend short)."""
    data = results()
    template = data["trials"][1]
    for i in range(6, 16):
        extra = copy.deepcopy(template)
        extra.update(id=i, is_default=False)
        for lv in extra["levels"]:
            lv["rps"] *= 0.5 + i / 40
        data["trials"].append(extra)

    written = write_report(tmp_path, data)

    assert {p.name for p in written} >= PLOTS
    assert_real_image(tmp_path / "frontier.png")
    assert_real_image(tmp_path / "rows_per_run.png")


def test_levels_with_no_model_run_do_not_break_the_plots(tmp_path: Path) -> None:
    """A window with no model run reads rows 0 and compute 0: no log axis of zero, no crash."""
    data = results()
    for lv in data["trials"][0]["levels"]:
        lv.update(rows_per_run=0.0, compute_ms=0.0)

    written = write_report(tmp_path, data)

    assert {p.name for p in written} >= PLOTS
    assert_real_image(tmp_path / "compute_scaling.png")
    assert_real_image(tmp_path / "rows_per_run.png")


def test_without_matplotlib_the_report_says_so_and_draws_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server image has no matplotlib: the sweep's report must still be written."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    written = report.write_report(tmp_path, results())
    assert [p.name for p in written] == ["report.md", "results.csv"]
    text = (tmp_path / "report.md").read_text()
    assert "Not drawn: matplotlib is not installed" in text
    assert not list(tmp_path.glob("*.png"))
