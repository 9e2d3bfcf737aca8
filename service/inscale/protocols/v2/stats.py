"""The statistics extension: per model version, counts and cumulative nanoseconds.

Every field perf_analyzer reads is always present (it fetches statistics around each
measurement window when `statistics` is advertised). Where the figures come from:

- `success`, `fail`: requests that reached the batcher, timed from their arrival at the
  protocol layer to their result; a request refused by validation never gets that far;
- `queue`: every request that ran, and the time it waited in the queue (the batcher's);
- `compute_input|infer|output`: per successful request, the merge, `session.run` and split
  times of the batch it ran in; `batch_stats` has the same per batch size, once per run;
- `inference_count` counts rows and `execution_count` model runs, so their ratio is the mean
  batch size; `last_inference` is when the last run finished, in ms since the epoch;
- `cache_hit`, `cache_miss`: always zero, there is no response cache;
- `admission` is inscale's own (clients that do not know it ignore it): the latency
  objective, the learned run time per batch size, requests admitted, and requests refused
  or dropped by reason. gRPC's statistics message has no place for it.
"""

from typing import Any

from inscale.models.version import ModelVersion
from inscale.statistics import StepTotals


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _steps(times: StepTotals) -> dict[str, dict[str, int]]:
    return {
        "compute_input": _duration(times.count, times.input_ns),
        "compute_infer": _duration(times.count, times.infer_ns),
        "compute_output": _duration(times.count, times.output_ns),
    }


def model_stats(model: ModelVersion, *, admission: bool = True) -> dict[str, Any]:
    """One model version's entry; `admission=False` leaves out inscale's own field (the gRPC
    message has none)."""
    stats = model.statistics()
    sizes = sorted(stats.per_batch_size.items())
    entry = {
        "name": model.name,
        "version": str(model.version),
        "last_inference": int(stats.last_run_unix * 1000),
        "inference_count": sum(size * times.count for size, times in sizes),
        "execution_count": sum(times.count for _, times in sizes),
        "inference_stats": {
            "success": _duration(stats.done_ok.count, stats.done_ok.ns),
            "fail": _duration(stats.done_failed.count, stats.done_failed.ns),
            "queue": _duration(stats.succeeded + stats.failed, round(stats.queue_seconds * 1e9)),
            **_steps(stats.per_request),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [{"batch_size": size, **_steps(times)} for size, times in sizes],
    }
    if admission:
        entry["admission"] = model.admission_report()
    return entry
