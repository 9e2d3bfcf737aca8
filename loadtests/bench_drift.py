"""What drift monitoring costs a request, in process, with no HTTP and no load generator.

Over HTTP the difference sits inside the machine's noise (wrk A/B turns on these VMs move by
±15% a round; `bench_ab --model digits --baseline-config 'drift: {enabled: false}'` measures
it that way). Here two loaded copies of the bundled digits, one with drift on at the default
sample and one with it off, each take `--clients` concurrent submitters straight into the
batcher (the same batches, the same worker thread, the same background updates), in
alternating turns on one event loop; the figure is the median of the per-round ratios of the
process's CPU time per request, which the hypervisor's steal does not move.

    .venv/bin/python -m loadtests.bench_drift --rounds 20
"""

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from inscale.models.config import load_model_config
from inscale.models.loading import load_version
from inscale.models.version import ModelVersion, Request
from inscale.settings import BUNDLED_REPOSITORY
from loadtests.harness import machine
from loadtests.harness.results import write_results

OUT = Path(__file__).resolve().parent / "results" / "drift_cost.json"


def _version(folder: Path, config: str) -> ModelVersion:
    model = folder / "digits"
    shutil.copytree(BUNDLED_REPOSITORY / "digits", model)
    (model / "config.yaml").write_text(config + "\n")
    return load_version("digits", 1, model / "1" / "model.onnx", load_model_config(model), ["cpu"])


def _timed(model: ModelVersion) -> dict[str, float]:
    """Wall time inside the monitor's two entry points, summed (the bench's own wrapper,
    nothing in the server): what drift itself takes, beside the CPU ratio."""
    monitor = model.drift
    assert monitor is not None
    spent: dict[str, float] = {}
    for name in ("offer", "update"):
        inner = getattr(monitor, name)

        def wrapped(*args: Any, _inner: Any = inner, _name: str = name) -> None:
            started = time.perf_counter()
            _inner(*args)
            spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - started

        setattr(monitor, name, wrapped)
    return spent


async def _turn(
    model: ModelVersion, rows: np.ndarray, clients: int, seconds: float
) -> tuple[float, int]:
    """CPU seconds per request over `seconds` of `clients` submitting back to back, and the
    requests served."""
    done = 0
    stop = time.monotonic() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        index = offset
        while time.monotonic() < stop:
            row = rows[index % len(rows) : index % len(rows) + 1]
            arrays = {"input": row}
            await model.batcher.submit(Request(arrays, 1), key=model.key(arrays))
            done += 1
            index += clients

    started = time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return (time.process_time() - started) / max(done, 1), done


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        on = _version(Path(scratch) / "on", f"drift: {{sample: {args.sample:g}}}")
        off = _version(Path(scratch) / "off", args.off_config)
        assert on.drift is not None
        with np.load(BUNDLED_REPOSITORY / "digits" / "samples.npz") as data:
            rows = data["input"]
        spent = _timed(on)
        for model in (on, off):
            model.start()
        try:
            for model in (on, off):
                await _turn(model, rows, args.clients, 1.0)  # warm-up
            ratios = []
            on_requests = 0
            spent.clear()
            for number in range(args.rounds):
                order = [(on, "on"), (off, "off")]
                if number % 2:
                    order.reverse()
                cost = {}
                for model, side in order:
                    cost[side], served = await _turn(model, rows, args.clients, args.seconds)
                    if side == "on":
                        on_requests += served
                ratios.append(cost["on"] / cost["off"])
                print(
                    f"round {number + 1}: on {cost['on'] * 1e6:.1f} µs, off "
                    f"{cost['off'] * 1e6:.1f} µs CPU per request, ratio {ratios[-1]:.3f}",
                    flush=True,
                )
            assert on.drift is not None
            kept = on.drift.snapshot().rows
        finally:
            for model in (on, off):
                await model.close()
    inside_us = {name: t / max(on_requests, 1) * 1e6 for name, t in spent.items()}
    return {
        "inside_monitor_us_per_request": inside_us,
        "sample": args.sample,
        "off_config": args.off_config,
        "clients": args.clients,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "rows_in_window_at_end": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sample", type=float, default=0.05)
    parser.add_argument(
        "--off-config",
        default="drift: {enabled: false}",
        help="the other side's config.yaml (give the on side's to calibrate: an A/A run)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    figures = asyncio.run(_main(args))
    print(f"inside the monitor, per request: {figures['inside_monitor_us_per_request']}")
    print(
        f"\ndrift on / off, CPU per request, median of {args.rounds} rounds: "
        f"{figures['median_ratio']:.4f} (sample {args.sample}, {args.clients} clients; "
        f"{figures['rows_in_window_at_end']} rows in the window at the end)"
    )
    write_results(args.out, machine.facts(), **figures)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
