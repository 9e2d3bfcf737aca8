"""One trial: a server with one config, stepped through the concurrency levels.

Each level is a warm-up and a measured window of closed-loop load. The server's own metrics
are read before and after the window, so each level also says where the time went: queue time
per request, compute time per model run, and rows per run. Levels go up until p99 passes the
objective (every level past it would only be worse), or errors appear.
"""

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inscale.models.config import ModelConfig
from inscale.profile.load import LoadResult, run_interruptibly, run_load
from inscale.profile.payload import Payload
from inscale.profile.servers import HOST, Server, ServerFailed, Servers, prepare_repository
from inscale.profile.space import Config, model_config_with

ERROR_SHARE = 0.001  # errors above this share of a level's requests fail the objective

_QUEUE = "inscale_queue_duration_seconds"
_COMPUTE = "inscale_compute_duration_seconds"
_ROWS = "inscale_batch_size_rows"


@dataclass(frozen=True)
class Setup:
    """What every trial of a sweep shares."""

    model_dir: Path
    version: int
    model: ModelConfig
    payload: Payload
    server_cores: list[int]
    concurrency: list[int]
    warmup_s: float
    trial_s: float
    slo_p99_ms: float
    work: Path  # scratch: each trial's repository and server log


def start_server(setup: Setup, name: str, config: Config, servers: Servers) -> Server:
    """A server for `config`, its scratch repository and log in `work/name/`."""
    folder = setup.work / name
    repository = prepare_repository(
        folder / "repository",
        setup.model_dir,
        setup.version,
        model_config_with(setup.model, config),
    )
    return servers.start(
        repository, int(config["workers"]), setup.server_cores, folder / "server.log"
    )


def run_trial(
    setup: Setup,
    trial_id: int,
    config: Config,
    servers: Servers,
    loop: asyncio.AbstractEventLoop,
    on_level: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """The trial's record, as results.json holds it; a server that fails is a failed trial,
    not a failed sweep."""
    record: dict[str, Any] = {
        "id": trial_id,
        "config": config,
        "status": "ok",
        "error": None,
        "startup_s": None,
        "rss_mb": None,
        "levels": [],
        "best": None,
    }
    server = start_server(setup, f"trial-{trial_id}", config, servers)
    try:
        record["startup_s"] = round(server.wait_ready(), 3)
        request = setup.payload.request(HOST, server.port)
        rss = 0.0
        for concurrency in setup.concurrency:
            before = server.model_totals(setup.model_dir.name)
            load = run_load(HOST, server.port, request, concurrency, setup.warmup_s, setup.trial_s)
            result = run_interruptibly(loop, load)
            server.check_alive()
            after = server.model_totals(setup.model_dir.name)
            rss = max(rss, server.resident_mb())
            level = _level(result, before, after, setup.slo_p99_ms)
            record["levels"].append(level)
            on_level(level)
            if not level["within_slo"]:
                break
        record["rss_mb"] = round(rss, 1)
    except ServerFailed as exc:
        record["status"] = "failed"
        record["error"] = exc.message
    finally:
        servers.stop(server)
    record["best"] = best_level(record["levels"])
    return record


def _level(
    result: LoadResult, before: dict[str, float], after: dict[str, float], slo_p99_ms: float
) -> dict[str, Any]:
    def mean(name: str, scale: float) -> float | None:
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        return None if count <= 0 else round(total / count * scale, 4)

    p99 = result.percentile(99)
    answered = result.requests + result.errors
    within = (
        result.requests > 0
        and not math.isnan(p99)
        and p99 <= slo_p99_ms
        and result.errors <= ERROR_SHARE * answered
    )
    return {
        "concurrency": result.concurrency,
        "requests": result.requests,
        "errors": result.errors,
        "rps": round(result.rps, 1),
        "p50_ms": _ms(result.percentile(50)),
        "p90_ms": _ms(result.percentile(90)),
        "p99_ms": _ms(p99),
        "max_ms": _ms(result.percentile(100)),
        "queue_ms": mean(_QUEUE, 1000.0),
        "compute_ms": mean(_COMPUTE, 1000.0),
        "rows_per_run": mean(_ROWS, 1.0),
        "within_slo": within,
    }


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def best_level(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The level with the highest throughput inside the objective."""
    inside = [level for level in levels if level["within_slo"]]
    if not inside:
        return None
    top = max(inside, key=lambda level: level["rps"])
    return {"concurrency": top["concurrency"], "rps": top["rps"], "p99_ms": top["p99_ms"]}


def trial_cost_s(setup: Setup, startup_s: float) -> float:
    """A full trial's expected length, for the budget: start-up, every level, shutdown."""
    return startup_s + len(setup.concurrency) * (setup.warmup_s + setup.trial_s + 0.2) + 1.0
