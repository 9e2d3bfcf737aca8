"""The best config against the defaults, side by side: the sweep's answer checked once more.

A sweep measures each config once, minutes apart; on a shared or throttled machine two runs
of one config can differ by more than two configs do. So at the end both servers run at once
(idle between turns) and take alternating turns at the best config's concurrency, the order
flipping every round, and the ratio reported is the median of the per-round ratios, which
drift in the machine's speed hits on both sides alike.
"""

import asyncio
import statistics
from typing import Any

from inscale.profile.load import run_interruptibly, run_load
from inscale.profile.servers import HOST, ServerFailed, Servers
from inscale.profile.trial import Setup, start_server


def confirm(
    setup: Setup,
    best: dict[str, Any],
    default: dict[str, Any],
    rounds: int,
    servers: Servers,
    loop: asyncio.AbstractEventLoop,
) -> dict[str, Any]:
    """Median throughput of each in `rounds` interleaved turns, and the median ratio."""
    concurrency = int(best["concurrency"])
    started = {
        side: start_server(setup, f"confirm-{side}", point["config"], servers)
        for side, point in (("best", best), ("default", default))
    }
    turns: list[dict[str, float]] = []
    try:
        for server in started.values():
            server.wait_ready()
        for number in range(rounds):
            order = ["best", "default"] if number % 2 == 0 else ["default", "best"]
            turn: dict[str, float] = {}
            for side in order:
                server = started[side]
                request = setup.payload.request(HOST, server.port)
                load = run_load(
                    HOST, server.port, request, concurrency, setup.warmup_s, setup.trial_s
                )
                result = run_interruptibly(loop, load)
                server.check_alive()
                turn[f"{side}_rps"] = round(result.rps, 1)
                turn[f"{side}_p99_ms"] = round(result.percentile(99), 3)
            turns.append(turn)
    except ServerFailed as exc:
        return {"error": exc.message, "rounds": turns}
    finally:
        for server in started.values():
            servers.stop(server)
    ratios = [t["best_rps"] / t["default_rps"] for t in turns if t["default_rps"] > 0]
    return {
        "best_trial": best["trial"],
        "default_trial": default["trial"],
        "concurrency": concurrency,
        "rounds": turns,
        "best_rps": statistics.median(t["best_rps"] for t in turns),
        "default_rps": statistics.median(t["default_rps"] for t in turns),
        "ratio": round(statistics.median(ratios), 3) if ratios else None,
    }
