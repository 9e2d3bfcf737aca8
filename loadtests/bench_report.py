"""What bench_batching's figures mean: the issue's three targets, the tables, the ratios.

Rows are dicts as bench_batching.measure returns them; raw is bench_models' JSON output. A
cell wrk measured nothing in (no request, or a latency of 0 on a saturated machine) is
invalid: it is shown as such and left out of every target and ratio, never divided by.
"""

from typing import Any

from loadtests.harness.wrk import WrkReport

Row = dict[str, Any]
TARGET_CONCURRENCY = 32  # the issue's targets are stated at this concurrency (and at 1)
RATIO_FIGURES = ("requests_per_s", "p50_ms", "p99_ms")


def invalid_reason(report: WrkReport) -> str | None:
    """Why a wrk report cannot be compared with another, or None if it can."""
    if report.requests == 0 or report.duration_us <= 0:
        return "wrk completed no request"
    if min(report.p50_us, report.p99_us) <= 0:
        return f"wrk reported a latency of 0 (p50 {report.p50_us} us, p99 {report.p99_us} us)"
    return None


def find(rows: list[Row], model: str, conc: int) -> Row | None:
    """The valid row for a cell; None if it is missing or invalid."""
    return next(
        (
            r
            for r in rows
            if r["model"] == model and r["concurrency"] == conc and not r.get("invalid")
        ),
        None,
    )


def target_throughput(rows: list[Row]) -> Row:
    c = TARGET_CONCURRENCY
    on, off = find(rows, "wide", c), find(rows, "wide-nobatch", c)
    name = f"c={c}: wide req/s >= 4x wide-nobatch, and lower p99"
    if on is None or off is None:
        detail = f"needs valid wide and wide-nobatch cells at c={c}"
        return {"target": name, "passed": None, "detail": detail}
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
        return {"target": name, "passed": None, "detail": "needs valid wide, wide-nobatch at c=1"}
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
        return {"target": name, "passed": None, "detail": f"needs valid wide, identity at c={c}"}
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
        f"{'rows/run':>10}{'run ms':>8}{'errors':>8}{'srv cores':>11}{'other':>7}{'slow':>6}"
        f"  disturbed"
    )
    for r in rows:
        slowdown = max(r["disturbance"]["slowdown"].values(), default=None)
        flag = "INVALID" if r.get("invalid") else "DISTURBED" if r["disturbed"] else ""
        print(
            f"{r['model']:<14}{r['concurrency']:>5}{r['requests_per_s']:>10.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{_maybe(r['mean_rows_per_run'], '10.2f')}"
            f"{_maybe(r['server_ms_per_run'], '8.2f')}{r['errors']:>8}"
            f"{r['server_cores']:>11.2f}{r['other_cores']:>7.2f}{_maybe(slowdown, '6.0%')}"
            f"  {flag}"
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
    print("\nsrv cores: CPU the server used / wall time; other: cores of the two pinned cores")
    print("that neither the server nor our other processes used; slow: the slowest pinned core's")
    print("work rate against the fastest seen in this run (work-rate probe)")
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


def ratios(current: list[Row], baseline: list[Row]) -> list[Row]:
    """current / baseline per cell for req/s, p50 and p99; None where a side is invalid."""
    out = []
    for b in baseline:
        a = find(current, b["model"], b["concurrency"])
        valid = a is not None and not b.get("invalid")
        row: Row = {"model": b["model"], "concurrency": b["concurrency"]}
        for figure in RATIO_FIGURES:
            ok = valid and a is not None and b[figure] > 0
            row[figure] = a[figure] / b[figure] if ok and a is not None else None
        row["disturbed"] = bool(b["disturbed"] or (a is not None and a["disturbed"]))
        out.append(row)
    return out


def print_ratios(rows: list[Row]) -> None:
    print("\ncurrent / baseline, same run, cells interleaved (req/s: higher is better)")
    print(f"{'model':<14}{'conc':>5}{'req/s':>8}{'p50':>8}{'p99':>8}  disturbed")
    for r in rows:
        cells = "".join(_maybe(r[f], "8.3f") for f in RATIO_FIGURES)
        flag = "DISTURBED" if r["disturbed"] else ""
        print(f"{r['model']:<14}{r['concurrency']:>5}{cells}  {flag}")


def warn_disturbed(rows: list[Row]) -> None:
    """Loudly, after all tables: which cells stayed disturbed or invalid, and why."""
    bad = [r for r in rows if r["disturbed"] or r.get("invalid")]
    if not bad:
        print("\nno cell was disturbed by other work (every figure above is clean)")
        return
    print(f"\nWARNING: {len(bad)} of {len(rows)} cells are DISTURBED or INVALID even after")
    print("repeats; their figures are not comparable (other work on the machine):")
    for r in bad:
        why = r.get("invalid") or "; ".join(r["disturbance"]["reasons"])
        side = f"{r['side']} " if r.get("side") else ""
        print(f"  {side}{r['model']} c={r['concurrency']} ({r['attempts']} attempts): {why}")
