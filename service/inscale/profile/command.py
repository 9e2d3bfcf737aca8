"""`inscale profile MODEL_DIR`: measure how a model scales through the real server, search
the config that serves the most under a p99 objective, and write the answer as a config.

The sweep: the model's own config first, then configs the strategy proposes (`search.py`),
each a server pinned to `--cores` driven by the load generator on the other cores (`trial.py`),
until the strategy is done or `--budget-s` would be passed. After every trial the checkpoint
is written; at the end results.json, the report and its plots, and config.yaml for the best
config (`--apply` installs it in the model's folder, keeping the previous one).
"""

import asyncio
import datetime
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from inscale import __version__
from inscale.model_folder import (
    ToolError,
    ask_server_to_load,
    cpu_session,
    read_config,
    version_file,
)
from inscale.models.config import CONFIG_FILENAMES, ModelConfig, find_config_file
from inscale.profile import checkpoint
from inscale.profile.confirm import confirm
from inscale.profile.load import new_event_loop
from inscale.profile.payload import build_payload
from inscale.profile.search import History, choose
from inscale.profile.servers import Servers
from inscale.profile.space import KNOBS, Config, Space, build_space, config_of, describe
from inscale.profile.space import model_config_with as knobs_into
from inscale.profile.trial import Setup, run_trial, trial_cost_s
from inscale.signature import signature_of

# The side-by-side check must show at least this gain for the sweep's winner to replace the
# defaults; short runs on a shared machine differ by more than that on their own.
CONFIRM_GAIN = 0.02
DEFAULT_SLO_MS = 50.0  # when neither the flag nor the model's latency_slo_ms gives one
RESULTS = "results.json"
BEST_CONFIG = "config.yaml"
_STARTUP_GUESS_S = 3.0  # a trial's start-up, until the first one is measured


@dataclass
class Options:
    model_dir: Path
    out: Path
    version: int | None = None
    cores: list[int] | None = None  # None: the first core this process may use
    load_cores: list[int] | None = None  # None: the rest of the cores this process may use
    slo_p99_ms: float | None = None
    strategy: str = "auto"
    budget_s: float = 600.0
    trial_s: float = 3.0
    warmup_s: float = 1.0
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 32, 64])
    space: dict[str, list[float]] = field(default_factory=dict)  # knob -> values, overrides
    protocol: str = "predict"
    rows: int = 1
    seed: int = 0
    confirm_rounds: int = 4
    apply: bool = False
    server: str | None = None
    token: str | None = None


def parse_cores(text: str) -> list[int]:
    """`0`, `0-3`, `0,2,4-5`, as taskset's list form."""
    cores: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cores.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ToolError(f"--cores {text!r} is not a core list such as 0, 0-3 or 0,2") from None
    if not cores:
        raise ToolError(f"--cores {text!r} names no core")
    return sorted(cores)


def run(options: Options, progress: TextIO = sys.stderr) -> dict[str, Any]:
    """The whole sweep; returns the results as results.json holds them."""
    version, model_file = version_file(options.model_dir, options.version)
    model = read_config(options.model_dir)
    server_cores, load_cores = _cores(options)
    slo_ms = options.slo_p99_ms or model.latency_slo_ms or DEFAULT_SLO_MS
    _check_levels(options)
    space = build_space(len(server_cores), model, options.space)
    default = config_of(model, len(server_cores))
    space = _with(space, default)  # the defaults are always measured, and can be stepped from
    strategy = choose(options.strategy, space, default, options.seed)
    payload = build_payload(
        options.model_dir,
        options.model_dir.name,
        version,
        signature_of(cpu_session(model_file)),
        options.rows,
        options.protocol,
    )
    identity = checkpoint.sweep_identity(
        model_file,
        version=version,
        server_cores=server_cores,
        concurrency=options.concurrency,
        trial_s=options.trial_s,
        warmup_s=options.warmup_s,
        slo_p99_ms=slo_ms,
        protocol=options.protocol,
        rows=options.rows,
        space=space.as_json(),
        strategy=strategy.name,
    )
    trials = checkpoint.open_folder(options.out, identity)
    if trials:
        print(f"resuming: {len(trials)} trial(s) already measured in {options.out}", file=progress)
    started = time.monotonic()
    spent_before = sum(t.get("elapsed_s", 0.0) for t in trials)
    stopped = "done"
    confirmation: dict[str, Any] | None = None
    own_affinity = os.sched_getaffinity(0)
    work = Path(tempfile.mkdtemp(prefix="inscale-profile-"))
    logs = options.out / "logs"
    logs.mkdir(exist_ok=True)
    setup = Setup(
        model_dir=options.model_dir,
        version=version,
        model=model,
        payload=payload,
        server_cores=server_cores,
        concurrency=options.concurrency,
        warmup_s=options.warmup_s,
        trial_s=options.trial_s,
        slo_p99_ms=slo_ms,
        work=work,
    )
    show = _Progress(progress, space, strategy.name, options.budget_s)
    loop = new_event_loop()
    # SIGTERM takes Ctrl-C's way out, so its servers are stopped too.
    terminate = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if load_cores:
            os.sched_setaffinity(0, load_cores)  # the load generator: this process
        with Servers().scope() as servers:
            while True:
                history = _history(trials)
                config = strategy.propose(history)
                if config is None:
                    break
                spent = spent_before + time.monotonic() - started
                # The defaults are measured whatever the budget: without them there is
                # nothing to compare with. After that a trial starts only if it can end in time.
                ahead = _next_trial_s(setup, trials) + _confirm_s(setup, trials, options)
                if trials and spent + ahead > options.budget_s:
                    stopped = "budget"
                    break
                trial_id = len(trials) + 1
                show.trial_starts(trial_id, config, spent)
                began = time.monotonic()
                record = run_trial(setup, trial_id, config, servers, loop, show.level_done)
                record["is_default"] = config == default
                record["elapsed_s"] = round(time.monotonic() - began, 2)
                _keep_log(work, logs, trial_id)
                trials.append(record)
                checkpoint.save(options.out, identity, trials)
                show.trial_done(record, trials)
            spent = spent_before + time.monotonic() - started
            if spent + _confirm_s(setup, trials, options) <= options.budget_s:
                confirmation = _confirm(options, setup, trials, servers, loop, progress)
    except KeyboardInterrupt:
        stopped = "interrupted"
        print("\ninterrupted: every server stopped; run again to resume", file=progress)
    finally:
        signal.signal(signal.SIGTERM, terminate)
        loop.close()
        os.sched_setaffinity(0, own_affinity)
        shutil.rmtree(work, ignore_errors=True)
    elapsed = spent_before + time.monotonic() - started
    results = _results(options, version, model_file, server_cores, load_cores, slo_ms, space)
    results.update(strategy=strategy.name, elapsed_s=round(elapsed, 1), stopped=stopped)
    results["trials"] = trials
    summarize(results)
    results["confirmation"] = confirmation
    if confirmation and confirmation.get("ratio") is not None:
        results["sweep_best"] = results["best"]
        if confirmation["ratio"] < 1 + CONFIRM_GAIN:
            # Side by side the sweep's winner was no better: the defaults stay the answer
            # (fewer processes or instances, and nothing to change).
            results["best"] = results["default"]
    payload_note = {"rows_source": payload.source, "path": payload.path}
    results["request"] = payload_note
    _write(options.out, results, model)
    if options.apply:
        results["applied"] = apply(options, results, model)
        _write(options.out, results, model)
    return results


def _cores(options: Options) -> tuple[list[int], list[int]]:
    allowed = sorted(os.sched_getaffinity(0))
    server = options.cores or allowed[:1]
    outside = sorted(set(server) - set(allowed))
    if outside:
        raise ToolError(
            f"--cores {','.join(map(str, outside))}: not a core this process may use "
            f"({_ranges(allowed)})"
        )
    load = options.load_cores
    if load is None:
        load = [core for core in allowed if core not in server]
    elif set(load) - set(allowed):
        raise ToolError("--load-cores: not all of them are cores this process may use")
    return server, load


def _ranges(cores: list[int]) -> str:
    return ",".join(map(str, cores))


def _check_levels(options: Options) -> None:
    if not options.concurrency or min(options.concurrency) < 1:
        raise ToolError("--concurrency must list levels of at least 1")
    options.concurrency = sorted(set(options.concurrency))
    if options.trial_s <= 0 or options.warmup_s < 0 or options.budget_s <= 0:
        raise ToolError("--trial-s and --budget-s must be positive, --warmup-s not negative")
    if options.rows < 1:
        raise ToolError("--rows must be at least 1")
    if options.confirm_rounds < 0:
        raise ToolError("--confirm-rounds must be 0 (off) or more")


def _with(space: Space, config: Config) -> Space:
    values = {k: sorted({*space.values[k], config[k]}) for k in KNOBS}
    return Space(values)


def _history(trials: list[dict[str, Any]]) -> History:
    history: History = []
    for trial in trials:
        config = {k: float(trial["config"][k]) for k in KNOBS}
        history.append((config, score(trial)))
    return history


def score(trial: dict[str, Any]) -> float:
    """Throughput under the objective; 0 for a failed trial or one with no level inside."""
    best = trial.get("best")
    return float(best["rps"]) if best else 0.0


def _next_trial_s(setup: Setup, trials: list[dict[str, Any]]) -> float:
    """The next trial's expected length: the longest so far (every level run), or the
    formula's estimate from the measured start-up."""
    full = [t["elapsed_s"] for t in trials if len(t["levels"]) == len(setup.concurrency)]
    if full:
        return float(max(full))
    startups = [t["startup_s"] for t in trials if t.get("startup_s")]
    return trial_cost_s(setup, max(startups, default=_STARTUP_GUESS_S))


def _confirm_s(setup: Setup, trials: list[dict[str, Any]], options: Options) -> float:
    """What the side-by-side check at the end will take: two start-ups, two turns a round."""
    if options.confirm_rounds == 0:
        return 0.0
    startups = [t["startup_s"] for t in trials if t.get("startup_s")]
    startup = max(startups, default=_STARTUP_GUESS_S)
    return 2 * startup + options.confirm_rounds * 2 * (setup.warmup_s + setup.trial_s + 0.2)


def _confirm(
    options: Options,
    setup: Setup,
    trials: list[dict[str, Any]],
    servers: Servers,
    loop: asyncio.AbstractEventLoop,
    progress: TextIO,
) -> dict[str, Any] | None:
    """Best against default, interleaved, when they differ (`confirm.py` says why)."""
    ranked: dict[str, Any] = {"trials": trials}
    summarize(ranked)
    best, default = ranked["best"], ranked["default"]
    if options.confirm_rounds == 0 or best is None or default is None:
        return None
    if best["trial"] == default["trial"]:
        return None
    print(
        f"confirming: trial {best['trial']} against the defaults (trial {default['trial']}), "
        f"{options.confirm_rounds} interleaved rounds at concurrency {best['concurrency']}",
        file=progress,
    )
    checked = confirm(setup, best, default, options.confirm_rounds, servers, loop)
    if checked.get("ratio") is not None:
        print(
            f"confirmed: {checked['best_rps']:.0f} against {checked['default_rps']:.0f} req/s, "
            f"{checked['ratio']:.2f}x (median of the rounds' ratios)",
            file=progress,
        )
    return checked


def _keep_log(work: Path, logs: Path, trial_id: int) -> None:
    log = work / f"trial-{trial_id}" / "server.log"
    if log.is_file():
        shutil.copyfile(log, logs / f"trial-{trial_id}.log")


def _results(
    options: Options,
    version: int,
    model_file: Path,
    server_cores: list[int],
    load_cores: list[int],
    slo_ms: float,
    space: Space,
) -> dict[str, Any]:
    return {
        "schema": 1,
        "model": options.model_dir.name,
        "version": version,
        "model_file": str(model_file.resolve()),
        "made_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inscale_version": __version__,
        "machine": _machine(server_cores, load_cores),
        "slo_p99_ms": slo_ms,
        "protocol": options.protocol,
        "rows_per_request": options.rows,
        "trial_s": options.trial_s,
        "warmup_s": options.warmup_s,
        "concurrency": options.concurrency,
        "space": space.as_json(),
        "budget_s": options.budget_s,
    }


def _machine(server_cores: list[int], load_cores: list[int]) -> dict[str, Any]:
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pages = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model_name,
        "server_cores": server_cores,
        "load_cores": load_cores,
        "memory_total_mb": round(pages / 2**20, 1),
    }


def summarize(results: dict[str, Any]) -> None:
    """The best config, the default's figures beside it, and the Pareto frontier."""
    trials = [t for t in results["trials"] if t["status"] == "ok"]

    def headline(trial: dict[str, Any] | None) -> dict[str, Any] | None:
        if trial is None or trial.get("best") is None:
            return None
        return {
            "trial": trial["id"],
            "config": trial["config"],
            **trial["best"],
            "rss_mb": trial["rss_mb"],
        }

    feasible = [t for t in trials if t.get("best")]
    best = max(feasible, key=score, default=None)
    default = next((t for t in trials if t.get("is_default")), None)
    results["best"] = headline(best)
    results["default"] = headline(default)
    results["frontier"] = frontier(trials)


def frontier(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both throughput and p99, by p99 ascending."""
    points = [
        {
            "trial": t["id"],
            "concurrency": lv["concurrency"],
            "rps": lv["rps"],
            "p99_ms": lv["p99_ms"],
        }
        for t in trials
        for lv in t["levels"]
        if lv["p99_ms"] is not None and lv["requests"] > 0
    ]
    points.sort(key=lambda p: (p["p99_ms"], -p["rps"]))
    kept: list[dict[str, Any]] = []
    for point in points:
        if not kept or point["rps"] > kept[-1]["rps"]:
            kept.append(point)
    return kept


def _write(out: Path, results: dict[str, Any], model: ModelConfig) -> None:
    (out / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    best = results["best"]
    if best is not None:
        (out / BEST_CONFIG).write_text(config_text(results, model))
    from inscale.profile.report import write_report  # matplotlib: only once there is a report

    write_report(out, results)


def config_text(results: dict[str, Any], model: ModelConfig) -> str:
    best = results["best"]
    config = best["config"]
    cores = results["machine"]["server_cores"]
    workers = int(config["workers"])
    head = [
        f"# Made by inscale profile ({results['made_at']}): {describe(config)}",
        f"# served {best['rps']:.0f} req/s at p99 {best['p99_ms']:.1f} ms "
        f"(objective {results['slo_p99_ms']:g} ms) at concurrency {best['concurrency']}, "
        f"on {len(cores)} core(s).",
        f"# Serve with: inscale serve --workers {workers} (on {len(cores)} core(s), e.g. "
        f"taskset -c {_ranges(cores)}); workers are a server flag, not a model setting.",
    ]
    body = yaml.safe_dump(knobs_into(model, config), sort_keys=False)
    return "\n".join(head) + "\n" + body


def apply(options: Options, results: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """Write the best config into the model's folder, the previous file kept beside it; with
    `--server`, ask the server to load the folder again."""
    if results["best"] is None:
        raise ToolError("--apply: no config met the objective, so none was written")
    folder = options.model_dir
    previous = find_config_file(folder)
    backup = None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    if previous is not None:
        backup = previous.with_name(f"{previous.name}.{stamp}.bak")
        shutil.copy2(previous, backup)
    partial = folder / f".config.yaml.{stamp}.partial"
    partial.write_text(config_text(results, model))
    os.replace(partial, folder / "config.yaml")
    for name in CONFIG_FILENAMES:  # one config file per folder: the backup keeps the other
        other = folder / name
        if name != "config.yaml" and other.exists():
            other.unlink()
    applied: dict[str, Any] = {
        "config": str(folder / "config.yaml"),
        "backup": None if backup is None else str(backup),
        "loaded": False,
    }
    if options.server is not None:
        ask_server_to_load(options.server, folder.name, options.token, "config.yaml written")
        applied["loaded"] = True
    return applied


class _Progress:
    """One line per trial, with what is done, what is best and what is left."""

    def __init__(self, out: TextIO, space: Space, strategy: str, budget_s: float) -> None:
        self._out = out
        self._space = space
        self._strategy = strategy
        self._budget_s = budget_s
        self._spent = 0.0

    def trial_starts(self, trial_id: int, config: Config, spent: float) -> None:
        self._spent = spent
        left = max(0.0, self._budget_s - spent)
        total = f"/{self._space.size}" if self._strategy == "grid" else ""
        self._write(
            f"trial {trial_id}{total} [{self._strategy}, {_duration(left)} of budget left] "
            f"{describe(config)}: "
        )

    def level_done(self, level: dict[str, Any]) -> None:
        mark = "" if level["within_slo"] else "!"
        self._write(f"c{level['concurrency']}={level['rps']:.0f}{mark} ")

    def trial_done(self, record: dict[str, Any], trials: list[dict[str, Any]]) -> None:
        if record["status"] != "ok":
            self._write(f"failed: {record['error']}\n")
            return
        best = max(trials, key=score)
        mine = record["best"]
        figure = "none within the objective" if mine is None else f"{mine['rps']:.0f} req/s"
        top = (
            f"best so far {score(best):.0f} req/s (trial {best['id']})"
            if score(best) > 0
            else "nothing within the objective yet"
        )
        self._write(f"-> {figure}; {top}\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def _duration(seconds: float) -> str:
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def summary_text(results: dict[str, Any]) -> str:
    """What the terminal shows at the end: the answer, in three lines."""
    done = len(results["trials"])
    lines = [f"{done} trial(s), {results['elapsed_s']:.0f} s, stopped: {results['stopped']}"]
    best, default = results["best"], results["default"]
    objective = f"p99 <= {results['slo_p99_ms']:g} ms"
    if best is None:
        lines.append(f"no config met the objective ({objective})")
        return "\n".join(lines)
    lines.append(
        f"best: {describe(best['config'])}: {best['rps']:.0f} req/s at p99 "
        f"{best['p99_ms']:.1f} ms ({objective}), concurrency {best['concurrency']}"
    )
    if default is None:
        lines.append(f"default config: nothing within the objective ({objective})")
    else:
        ratio = best["rps"] / default["rps"] if default["rps"] else math.inf
        lines.append(f"default config: {default['rps']:.0f} req/s; best is {ratio:.2f}x")
        check = results.get("confirmation")
        if check and check.get("ratio") is not None:
            kept = " (so the defaults stay the answer)" if best == default else ""
            lines.append(
                f"side by side, {len(check['rounds'])} interleaved rounds: trial "
                f"{check['best_trial']} at {check['ratio']:.2f}x the default{kept}"
            )
    return "\n".join(lines)
