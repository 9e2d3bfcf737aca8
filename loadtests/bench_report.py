"""What bench_batching.py's figures mean: the issue's three targets, and the printed tables.

Rows are dicts as bench_batching.measure returns them; raw is bench_models.py's JSON output.
"""

from typing import Any

Row = dict[str, Any]
TARGET_CONCURRENCY = 32  # the issue's targets are stated at this concurrency (and at 1)
BUSY_BOX = 0.05  # share of the server's core taken by others that makes a run suspect


def find(rows: list[Row], model: str, conc: int) -> Row | None:
    return next((r for r in rows if r["model"] == model and r["concurrency"] == conc), None)


def target_throughput(rows: list[Row]) -> Row:
    c = TARGET_CONCURRENCY
    on, off = find(rows, "wide", c), find(rows, "wide-nobatch", c)
    name = f"c={c}: wide req/s >= 4x wide-nobatch, and lower p99"
    if on is None or off is None:
        return {"target": name, "passed": None, "detail": f"needs wide and wide-nobatch at c={c}"}
    ratio = on["requests_per_s"] / off["requests_per_s"]
    detail = (
        f"{on['requests_per_s']:.0f} vs {off['requests_per_s']:.0f} req/s = {ratio:.2f}x; "
        f"p99 {on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms"
    )
    passed = ratio >= 4 and on["p99_ms"] < off["p99_ms"]
    return {"target": name, "passed": passed, "ratio": ratio, "detail": detail}


def target_idle_latency(rows: list[Row]) -> Row:
    on, off = find(rows, "wide", 1), find(rows, "wide-nobatch", 1)
    name = "c=1: wide p50 within 10% of wide-nobatch p50"
    if on is None or off is None:
        return {"target": name, "passed": None, "detail": "needs wide and wide-nobatch at c=1"}
    ratio = on["p50_ms"] / off["p50_ms"]
    # One-sided: the risk is batching holding a lone request back; being faster is no failure.
    detail = f"p50 {on['p50_ms']:.3f} vs {off['p50_ms']:.3f} ms = {ratio:.3f}x"
    return {"target": name, "passed": ratio <= 1.10, "ratio": ratio, "detail": detail}


def target_ceiling(rows: list[Row], raw: Row) -> Row:
    c = TARGET_CONCURRENCY
    on, http = find(rows, "wide", c), find(rows, "identity", c)
    raw_c = next((b for b in raw["batches"] if b["batch_size"] == c), None)
    name = f"c={c}: wide req/s >= 85% of 1/(HTTP-only per request + raw compute per row)"
    if on is None or http is None or raw_c is None:
        return {"target": name, "passed": None, "detail": f"needs wide and identity at c={c}"}
    http_us = 1e6 / http["requests_per_s"]
    limit = 1e6 / (http_us + raw_c["us_per_row"])
    share = on["requests_per_s"] / limit
    detail = (
        f"{on['requests_per_s']:.0f} req/s vs limit {limit:.0f} (HTTP {http_us:.0f} us/req"
        f" + ORT {raw_c['us_per_row']:.1f} us/row) = {share:.0%}"
    )
    return {"target": name, "passed": share >= 0.85, "share": share, "detail": detail}


def print_tables(rows: list[Row], raw: Row, targets: list[Row]) -> None:
    print(
        f"\n{'model':<14}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'rows/run':>10}{'run ms':>8}{'errors':>8}{'srv cores':>11}{'others':>8}"
    )
    for r in rows:
        print(
            f"{r['model']:<14}{r['concurrency']:>5}{r['requests_per_s']:>10.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{_maybe(r['mean_rows_per_run'], '10.2f')}"
            f"{_maybe(r['server_ms_per_run'], '8.2f')}{r['errors']:>8}"
            f"{r['server_cores']:>11.2f}{_maybe(r['others_share'], '8.0%')}"
        )
    print(f"\nraw ONNX Runtime {raw['onnxruntime']}, digits-wide, server core")
    print(f"{'batch':>6}{'median ms':>11}{'us/row':>9}{'cores':>7}")
    for b in raw["batches"]:
        print(
            f"{b['batch_size']:>6}{b['median_ms']:>11.3f}{b['us_per_row']:>9.1f}{b['cores']:>7.2f}"
        )
    print("\ntargets (this run, side by side)")
    for t in targets:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[t["passed"]]
        print(f"  {verdict}  {t['target']}\n        {t['detail']}")
    if any(r["errors"] for r in rows):
        print("\nwarning: some runs had errors; their figures are suspect (see the JSON)")
    _warn_cpu(rows, raw)


def _warn_cpu(rows: list[Row], raw: Row) -> None:
    print("\nsrv cores: CPU the server used / wall time; others: share of the two pinned cores")
    print("that neither the server nor wrk used (other work on the machine)")
    if any((r["others_share"] or 0) > BUSY_BOX for r in rows):
        print(f"warning: others over {BUSY_BOX:.0%} in some runs; rerun on a quiet machine")
    if any(r["server_cores"] > 1.1 for r in rows) or any(b["cores"] > 1.1 for b in raw["batches"]):
        print(
            "warning: ONNX Runtime used more than the one core it was pinned to: its intra-op\n"
            "threads (intra_op_threads 0: one per physical core) set their own CPU affinity,\n"
            "escaping taskset, so the server shares wrk's core and raw ORT is not one core"
        )


def _maybe(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return f"{'-':>{width}}" if value is None else f"{value:{spec}}"


def targets_met(rows: list[Row], raw: Row) -> list[Row]:
    return [target_throughput(rows), target_idle_latency(rows), target_ceiling(rows, raw)]
