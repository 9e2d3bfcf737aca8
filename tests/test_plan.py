"""`inscale plan` on a recorded profile (tests/data/profile_results.json: digits-wide on one
core, five trials and a failed one, levels at concurrency 1, 4, 16, 32 and 64). Each figure
is worked out by hand here from the formula in inscale.plan.capacity, so a change of the
formula or of its documented constants fails a test."""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inscale.plan import command
from inscale.plan.capacity import Inputs, capacity_of, plan
from inscale.plan.errors import InfeasibleSlo
from inscale.plan.results import read_results
from support.kustomize import kustomize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tests" / "data" / "profile_results.json"
K8S = ROOT / "k8s"
Doc = dict[str, Any]


def plan_args(*extra: str, results: Path = RESULTS) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args([str(results), *extra])


def run_plan(
    capsys: pytest.CaptureFixture[str], *extra: str, results: Path = RESULTS
) -> tuple[int, str, str]:
    code = command.run(plan_args(*extra, results=results))
    out, err = capsys.readouterr()
    return code, out, err


def planned_json(capsys: pytest.CaptureFixture[str], *extra: str) -> Doc:
    code, out, err = run_plan(capsys, "--json", *extra)
    assert code == 0, err
    result: Doc = json.loads(out)
    return result


# --- the formula --------------------------------------------------------------------------


def test_the_recorded_profile_gives_what_the_formula_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = planned_json(capsys, "--rps", "50000", "--slo-p99-ms", "50")
    # Under 50 ms the best level is trial 3 (max_batch_size 128, max_queue_delay_ms 1) at
    # concurrency 32: 5,200 req/s at p99 13.6 ms (its 5,300 at 64 has p99 71 ms).
    assert (got["chosen"]["trial"], got["chosen"]["concurrency"]) == (3, 32)
    assert got["chosen"]["rps"] == 5200
    # Usable per replica: 5200 x (1 - 0.3) x 0.9 = 3276; 50000 / 3276 = 15.26 -> 16.
    assert got["usable_rps_per_replica"] == pytest.approx(3276.0)
    assert got["replicas"] == 16
    # One core per replica: the profile pinned every server to core 0.
    assert got["per_replica"]["cpu"] == 1
    # Memory: RSS 152.4 x 1.25 = 190.5 -> 3 x 64 = 192 Mi; limit 192 x 1.5 = 288 -> 5 x 64 = 320.
    assert got["per_replica"]["memory_request_mi"] == 192
    assert got["per_replica"]["memory_limit_mi"] == 320
    # In flight per pod: floor(32 x 0.7) = floor(22.4) = 22; maxReplicas max(2 x 16, 16 + 4) = 32.
    assert got["autoscaler"] == {"min_replicas": 16, "max_replicas": 32, "in_flight_target": 22}
    assert got["formula"] == (
        "replicas = max(2, ceil(50000 / (5200 x (1 - 0.3) x 0.9))) = max(2, ceil(15.26)) = 16"
    )
    assert got["model_config"] == {
        "batching": {"max_batch_size": 128, "max_queue_delay_ms": 1.0},
        "instances": 1,
        "runtime": {"intra_op_threads": 1},
    }


def test_a_stricter_slo_picks_a_lower_level_and_needs_more_replicas(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = planned_json(capsys, "--rps", "50000", "--slo-p99-ms", "8")
    # Under 8 ms only concurrency 16 of trial 3 is left of its curve: 4,700 req/s at 7.9 ms
    # (trial 1 reaches 8.9 ms and trial 2 8.1 ms at 16, so they stop at concurrency 4).
    assert (got["chosen"]["trial"], got["chosen"]["concurrency"]) == (3, 16)
    assert got["chosen"]["rps"] == 4700
    # 4700 x 0.7 x 0.9 = 2961; 50000 / 2961 = 16.89 -> 17 (16 under 50 ms).
    assert got["replicas"] == 17
    # floor(16 x 0.7) = floor(11.2) = 11; max(2 x 17, 17 + 4) = 34.
    assert got["autoscaler"] == {"min_replicas": 17, "max_replicas": 34, "in_flight_target": 11}


def test_headroom_and_balancing_efficiency_enter_the_formula(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = planned_json(
        capsys, "--rps", "50000", "--slo-p99-ms", "50", "--headroom", "0", "--lb-efficiency", "1"
    )
    # No headroom, no balancing loss: 50000 / 5200 = 9.62 -> 10; the whole knee, 32, in flight.
    assert got["replicas"] == 10
    assert got["autoscaler"]["in_flight_target"] == 32
    guaranteed = planned_json(
        capsys, "--rps", "50000", "--slo-p99-ms", "50", "--memory-limit-factor", "1"
    )
    assert guaranteed["per_replica"]["memory_limit_mi"] == 192  # = the request


def test_a_small_rate_gets_two_replicas_and_ties_go_to_the_config_with_less_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = planned_json(capsys, "--rps", "1000", "--slo-p99-ms", "50")
    # Every config serves 1,000 req/s with one replica (trial 5, the smallest, gives
    # 3420 x 0.63 = 2154.6), so all need the floor of 2; equal cores; trial 5 has the lowest
    # RSS (141.0 MB, trial 1 143.2) and wins. 141 x 1.25 = 176.25 -> 192 Mi.
    assert got["replicas"] == 2
    assert got["chosen"]["trial"] == 5
    assert got["per_replica"]["memory_request_mi"] == 192
    assert got["autoscaler"]["max_replicas"] == 6  # max(2 x 2, 2 + 4)


def test_a_level_with_errors_over_the_budget_does_not_count() -> None:
    results = read_results(RESULTS)
    trial_2 = next(t for t in results.trials if t.id == 2)
    # At concurrency 64, trial 2 met 50 ms (46 ms, 4,900 req/s) with 40 errors in 14,700
    # requests: 0.27% > 0.1%. Its capacity is therefore its 4,800 req/s at 32.
    capacity = capacity_of(trial_2, 50.0)
    assert capacity is not None
    assert (capacity.concurrency, capacity.rps) == (32, 4800)
    failed = next(t for t in results.trials if t.status == "failed")
    assert capacity_of(failed, 50.0) is None


def test_the_slo_is_judged_again_not_read_from_the_profile() -> None:
    results = read_results(RESULTS)
    assert results.slo_p99_ms == 50
    # Under 100 ms trial 3's 5,300 req/s at concurrency 64 (71 ms) counts. Its knee is 32:
    # the fewest in flight with 95% of 5,300 (5,035): 5,200 at 32; 4,700 at 16 is short.
    relaxed = plan(results, Inputs(rps=50000, slo_p99_ms=100))
    assert (relaxed.chosen.trial, relaxed.chosen.concurrency, relaxed.chosen.rps) == (3, 32, 5300)
    # 5300 x 0.63 = 3339; 50000 / 3339 = 14.97 -> 15; floor(32 x 0.7) = 22.
    assert (relaxed.replicas, relaxed.in_flight_target) == (15, 22)


# --- refusals -----------------------------------------------------------------------------


def test_an_slo_no_level_meets_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InfeasibleSlo):
        plan(read_results(RESULTS), Inputs(rps=50000, slo_p99_ms=1))
    code, out, err = run_plan(capsys, "--rps", "50000", "--slo-p99-ms", "1")
    assert code == 2
    assert out == ""
    assert "a p99 of 1 ms" in err
    assert "the lowest p99 seen was 1.4 ms (trial 1 at concurrency 1)" in err


def _broken(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "results.json"
    doc = json.loads(RESULTS.read_text())
    if how == "not json":
        path.write_text(RESULTS.read_text()[:500])
        return path
    if how == "schema 2":
        doc["schema"] = 2
    elif how == "no p99":
        del doc["trials"][0]["levels"][2]["p99_ms"]
    elif how == "unpinned":
        doc["machine"]["server_cores"] = []
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("not json", "not JSON"),
        ("schema 2", "not a results file of schema 1 (its 'schema' is 2)"),
        ("no p99", "trials.0.levels.2.p99_ms: Field required"),
        ("unpinned", "machine.server_cores is empty"),
    ],
)
def test_a_corrupt_or_foreign_results_file_is_a_clear_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, says: str
) -> None:
    path = _broken(tmp_path, how)
    code, out, err = run_plan(capsys, "--rps", "50000", "--slo-p99-ms", "50", results=path)
    assert code == 2
    assert out == ""
    assert err.startswith(f"inscale plan: {path}: ")
    assert says in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--headroom", "1", "--headroom must be at least 0 and below 1, got 1.0"),
        ("--lb-efficiency", "0", "--lb-efficiency must be above 0 and at most 1, got 0.0"),
        ("--rps", "-5", "--rps must be above 0, got -5.0"),
    ],
)
def test_out_of_range_options_are_refused(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    options = {"--rps": "50000", "--slo-p99-ms": "50", flag: value}
    code, _, err = run_plan(capsys, *[part for pair in options.items() for part in pair])
    assert code == 2
    assert says in err


# --- the overlay --------------------------------------------------------------------------


def write_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    folder = tmp_path / "overlay"
    code, _, err = run_plan(
        capsys, "--rps", "50000", "--slo-p99-ms", "50", "--overlay", str(folder), *extra
    )
    assert code == 0, err
    return folder


def _merge_patch(base: Doc, patch: Doc) -> None:
    """Strategic merge as these patches need it: maps merge, `containers` by name."""
    for key, value in patch.items():
        if key == "containers":
            for container in value:
                into = next(c for c in base[key] if c["name"] == container["name"])
                _merge_patch(into, container)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_patch(base[key], value)
        else:
            base[key] = value


def _json_patch(doc: Doc, ops: list[Doc]) -> None:
    for op in ops:
        *parents, last = [int(p) if p.isdigit() else p for p in op["path"].split("/")[1:]]
        where: Any = doc
        for part in parents:
            where = where[part]
        if op["op"] == "test":
            assert where[last] == op["value"], op
        else:
            assert op["op"] == "replace"
            where[last] = op["value"]


def render_by_hand(folder: Path) -> list[Doc]:
    """What `kubectl kustomize` gives, for machines without kubectl."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = [
        d for r in kustomization["resources"] for d in yaml.safe_load_all((folder / r).read_text())
    ]
    for entry in kustomization["patches"]:
        patch = yaml.safe_load((folder / entry["path"]).read_text())
        if "target" in entry:
            target = entry["target"]
            doc = next(d for d in docs if d["kind"] == target["kind"] and
                       d["metadata"]["name"] == target["name"])  # fmt: skip
            _json_patch(doc, patch)
        else:
            doc = next(d for d in docs if d["kind"] == patch["kind"] and
                       d["metadata"]["name"] == patch["metadata"]["name"])  # fmt: skip
            _merge_patch(doc, patch)
    return docs


def render(folder: Path) -> list[Doc]:
    rendered = kustomize(folder)
    return render_by_hand(folder) if rendered is None else rendered


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def base_docs() -> list[Doc]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


@pytest.mark.parametrize("renderer", [render, render_by_hand], ids=["kustomize", "by-hand"])
def test_the_overlay_renders_the_plan_over_k8s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], renderer: Any
) -> None:
    folder = write_overlay(tmp_path, capsys)
    docs = renderer(folder)
    base = base_docs()
    # Every base object is there, and only those.
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in base
    )
    deployment = find(docs, "Deployment", "inscale")
    assert deployment["spec"]["replicas"] == 16
    pod = deployment["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "inscale")
    assert server["resources"] == {
        "requests": {"cpu": "1", "memory": "192Mi"},
        "limits": {"cpu": "1", "memory": "320Mi"},
    }
    # The init container keeps its own resources.
    base_pod = find(base, "Deployment", "inscale")["spec"]["template"]["spec"]
    assert pod["initContainers"] == base_pod["initContainers"]
    hpa = find(docs, "HorizontalPodAutoscaler", "inscale")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (16, 32)
    in_flight, cpu = hpa["spec"]["metrics"]
    assert in_flight["pods"]["metric"]["name"] == "inscale_requests_in_flight"
    assert in_flight["pods"]["target"] == {"type": "AverageValue", "averageValue": "22"}
    base_hpa = find(base, "HorizontalPodAutoscaler", "inscale")
    assert cpu == base_hpa["spec"]["metrics"][1]  # the CPU metric as k8s/ has it
    assert hpa["spec"]["behavior"] == base_hpa["spec"]["behavior"]
    configs = find(docs, "ConfigMap", "inscale-model-config")["data"]
    wide = yaml.safe_load(configs["digits-wide.yaml"])
    assert wide["batching"] == {
        "max_batch_size": 128, "max_queue_size": 512, "max_queue_delay_ms": 1.0,
    }  # fmt: skip
    assert (wide["instances"], wide["runtime"]["intra_op_threads"]) == (1, 1)
    assert wide["runtime"]["allow_spinning"] is False  # the base's own keys stay
    base_configs = find(base, "ConfigMap", "inscale-model-config")["data"]
    assert configs["digits.yaml"] == base_configs["digits.yaml"]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_workers_other_than_the_base_s_go_to_the_settings_config_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(RESULTS.read_text())
    for trial in doc["trials"]:
        trial["config"]["workers"] = 2
    results = tmp_path / "results.json"
    results.write_text(json.dumps(doc))
    folder = tmp_path / "overlay"
    code, _, err = run_plan(
        capsys, "--rps", "50000", "--slo-p99-ms", "50", "--overlay", str(folder), results=results
    )
    assert code == 0, err
    settings = find(render(folder), "ConfigMap", "inscale-settings")["data"]
    assert settings["INSCALE_WORKERS"] == "2"
    assert settings["INSCALE_LOG_FORMAT"] == "json"  # the rest stays


def test_an_overlay_folder_plan_did_not_write_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "overlay"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text("# someone's own\n")
    code, _, err = run_plan(
        capsys, "--rps", "50000", "--slo-p99-ms", "50", "--overlay", str(folder)
    )
    assert code == 2
    assert "not empty and not written by `inscale plan` (kustomization.yaml)" in err
    assert (folder / "kustomization.yaml").read_text() == "# someone's own\n"


def test_a_plan_rewrites_its_own_overlay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_overlay(tmp_path, capsys)
    before = {p.name for p in folder.iterdir()}
    code, _, err = run_plan(
        capsys, "--rps", "100000", "--slo-p99-ms", "50", "--overlay", str(folder)
    )
    assert code == 0, err
    assert {p.name for p in folder.iterdir()} == before
    # 100000 / 3276 = 30.52 -> 31.
    assert find(render(folder), "Deployment", "inscale")["spec"]["replicas"] == 31
    assert math.ceil(100000 / (5200 * 0.7 * 0.9)) == 31


def test_the_command_runs_as_a_program_and_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inscale.plan.command", str(RESULTS),
         "--rps", "50000", "--slo-p99-ms", "50"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert (
        "max(2, ceil(50000 / (5200 x (1 - 0.3) x 0.9))) = max(2, ceil(15.26)) = 16"
        in (lines["replicas"])
    )
    assert "request 192Mi" in lines["memory per replica"]
    assert "limit 320Mi" in lines["memory per replica"]
    assert "in flight per pod 22" in lines["autoscaler"]
    assert "0.3: a replica is planned at 70% of capacity" in lines["headroom"]


def test_the_recorded_file_keeps_to_the_schema_it_stands_for() -> None:
    """The file is hand-made: its own `within_slo` and `best` must agree with the rule plan
    applies, or the tests above would check the formula against a file no profile writes."""
    doc = json.loads(RESULTS.read_text())
    results = read_results(RESULTS)
    for raw, trial in zip(doc["trials"], results.trials, strict=True):
        capacity = capacity_of(trial, doc["slo_p99_ms"])
        best = raw["best"]
        assert (capacity is None) == (best is None)
        if capacity is not None:
            # The profile's best level is where throughput peaks; plan's knee is at or before it.
            assert best["rps"] == capacity.rps
            assert capacity.concurrency <= best["concurrency"]
        for level in raw["levels"]:
            ok = level["p99_ms"] <= 50 and level["errors"] <= 0.001 * level["requests"]
            assert level["within_slo"] == ok
    assert doc["best"]["trial"] == 3
    assert doc["default"]["config"] == doc["trials"][0]["config"]


def test_a_base_not_shaped_like_k8s_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "overlay"
    code, _, err = run_plan(
        capsys, "--rps", "50000", "--slo-p99-ms", "50", "--overlay", str(folder),
        "--base", str(K8S / "gpu"),
    )  # fmt: skip
    assert code == 2
    assert f"--base {K8S / 'gpu'}: not shaped like k8s/" in err
    assert not folder.exists()


def test_an_answer_confirmed_side_by_side_is_planned_even_if_another_read_higher(
    tmp_path: Path,
) -> None:
    """A profile whose side-by-side check kept the defaults: plan sizes the defaults (trial
    1, 4,550 req/s), not trial 3, whose single run read 5,200."""
    document = json.loads(RESULTS.read_text())
    document["best"] = document["default"]
    document["confirmation"] = {"best_trial": 3, "default_trial": 1, "ratio": 0.97}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    planned = plan(read_results(path), Inputs(rps=50000, slo_p99_ms=50))
    assert planned.chosen.trial == 1 and planned.confirmed
    # 4550 x 0.7 x 0.9 = 2866.5; 50000 / 2866.5 = 17.44 -> 18.
    assert planned.replicas == 18
    unconfirmed = plan(read_results(RESULTS), Inputs(rps=50000, slo_p99_ms=50))
    assert unconfirmed.chosen.trial == 3 and not unconfirmed.confirmed
    # Trial 3 confirmed, but side by side at 4,000 req/s: planned at that, not its 5,200.
    document["best"] = next(
        {"trial": 3, **t["best"], "config": t["config"], "rss_mb": t["rss_mb"]}
        for t in document["trials"]
        if t["id"] == 3
    )
    document["confirmation"] = {
        "best_trial": 3, "default_trial": 1, "ratio": 1.1, "best_rps": 4000.0,
        "default_rps": 3636.0,
    }  # fmt: skip
    path.write_text(json.dumps(document))
    lowered = plan(read_results(path), Inputs(rps=50000, slo_p99_ms=50))
    assert lowered.chosen.trial == 3 and lowered.chosen.rps == 4000.0
    # 4000 x 0.63 = 2520; 50000 / 2520 = 19.84 -> 20.
    assert lowered.replicas == 20
