"""What do binary tensors save over JSON on the Open Inference Protocol (V2)?

Two payloads: a 64-feature FP32 batch of 32 rows, and one 1 MiB FP32 tensor (262,144 floats).
Each in binary, in JSON with real values, and in JSON with random bit patterns, which is what
perf_analyzer sends unless given data: about one float in 256 is then NaN or Infinity, which
strict JSON cannot carry, so the server parses those bodies with Python's json instead of orjson
(5x slower). In the codec figures every such body holds NaN; perf_analyzer's own data repeats
one row per batch, and its 64-float row happens to hold none (its first NaN is element 298),
while its 1 MiB tensor holds many.

1. codec: the server's decode of a request and encode of its response, in process, per request
   (the model is an Identity, so the response carries the same tensor back);
2. end to end: requests/s through Triton's perf_analyzer against a real server over HTTP, the
   server pinned to one core and perf_analyzer to another.

Prints a table and writes every figure to JSON. A benchmark, not a test.

    .venv/bin/python -m loadtests.bench_v2_codec                 # both parts
    .venv/bin/python -m loadtests.bench_v2_codec --skip-e2e      # codec only, a few seconds
"""

import argparse
import csv
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, save
from onnx.helper import make_model, make_opsetid

from inscale.datatypes import BY_NAME
from inscale.protocols.v2 import codec
from inscale.signature import Signature, TensorSpec
from inscale.validation import InputRules
from loadtests.harness import machine
from loadtests.harness.disturbance import Detector
from loadtests.harness.perf_analyzer import find_perf_analyzer
from loadtests.harness.processes import ROOT, pinned
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

Row = dict[str, Any]
# name: (model, rows per request, features per row, perf_analyzer requests per window)
CASES = {"32x64 FP32": ("wide64", 32, 64, 500), "1 MiB FP32": ("mib", 1, 262_144, 40)}
JSON, JSON_BITS, BINARY = "json", "json, random bits", "binary"


def signature(features: int) -> Signature:
    def spec(name: str) -> TensorSpec:
        return TensorSpec(name, BY_NAME["FP32"], (None, features), ("N", None))

    return Signature((spec("x"),), (spec("y"),))


def json_body(values: np.ndarray) -> bytes:
    """What tritonclient sends with binary_data=False: flat data, JSON outputs."""
    document = {
        "inputs": [
            {
                "name": "x",
                "shape": list(values.shape),
                "datatype": "FP32",
                "data": values.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    return json.dumps(document).encode()  # NaN and Infinity as bare words, as Triton writes them


def request_bodies(values: np.ndarray, bits: np.ndarray) -> dict[str, tuple[bytes, int | None]]:
    """JSON with real values; JSON with random bit patterns (perf_analyzer's default data,
    which holds NaN and Infinity); and binary (a JSON header plus the raw bytes)."""
    shape = list(values.shape)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        JSON: (json_body(values), None),
        JSON_BITS: (json_body(bits), None),
        BINARY: (header + values.tobytes(), len(header)),
    }


def per_call_us(call: Callable[[], object], min_seconds: float) -> float:
    """Best of five runs of a loop lasting at least `min_seconds`: microseconds per call."""
    loops, elapsed = 1, 0.0
    while elapsed < min_seconds / 5:
        started = time.perf_counter()
        for _ in range(loops):
            call()
        elapsed = time.perf_counter() - started
        loops *= 2
    best = elapsed / (loops // 2)
    for _ in range(4):
        started = time.perf_counter()
        for _ in range(loops // 2):
            call()
        best = min(best, (time.perf_counter() - started) / (loops // 2))
    return best * 1e6


def codec_rows(min_seconds: float) -> list[Row]:
    rows: list[Row] = []
    rng = np.random.default_rng(0)
    for case, (_, batch, features, _) in CASES.items():
        values = rng.standard_normal((batch, features)).astype(np.float32)
        bits = rng.integers(0, 2**32, (batch, features), dtype=np.uint32).view(np.float32)
        model = signature(features)
        rules = InputRules(model, batchable=True, max_rows=batch, variable_axes={})
        for encoding, (body, header_length) in request_bodies(values, bits).items():
            request = codec.decode_request(body, header_length, rules)
            expected = bits if encoding == JSON_BITS else values
            np.testing.assert_array_equal(request.arrays["x"], expected)
            results = {"y": request.arrays["x"]}
            answer, _ = codec.encode_response("m", 1, request, results, model)
            decode_us = per_call_us(
                partial(codec.decode_request, body, header_length, rules), min_seconds
            )
            encode_us = per_call_us(
                partial(codec.encode_response, "m", 1, request, results, model), min_seconds
            )
            rows.append(
                {
                    "case": case,
                    "encoding": encoding,
                    "request_bytes": len(body),
                    "response_bytes": len(answer),
                    "decode_us": decode_us,
                    "encode_us": encode_us,
                    "total_us": decode_us + encode_us,
                }
            )
    return rows


def identity_model(path: Path, features: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
    )
    model = make_model(graph, opset_imports=[make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))


def input_data(path: Path, batch: int, features: int) -> Path:
    """Real (finite) values for perf_analyzer's --input-data: one row per step."""
    rows = np.random.default_rng(1).standard_normal((batch, features)).astype(np.float32)
    path.write_text(json.dumps({"data": [{"x": row.tolist()} for row in rows]}))
    return path


def e2e_rows(args: argparse.Namespace, workdir: Path) -> list[Row]:
    tool = find_perf_analyzer()
    if isinstance(tool, str):
        raise SystemExit(f"perf_analyzer cannot run here: {tool}")
    repo = workdir / "repo"
    for model, _, features, _ in CASES.values():
        identity_model(repo / model / "1" / "model.onnx", features)
    rows: list[Row] = []
    client = [] if args.no_pin else pinned([args.client_cpu])
    server_cpus = None if args.no_pin else [args.server_cpu]
    # Accounting only: perf_analyzer runs for as long as it needs, so no probe.
    detector = Detector([] if args.no_pin else [args.server_cpu, args.client_cpu], probe=False)
    log = workdir / "server.log"
    with inscale_server(log, model_repository=repo, cpus=server_cpus) as server:
        for case, (model, batch, features, per_window) in CASES.items():
            data = input_data(workdir / f"{model}.json", batch, features)
            for encoding in (JSON, JSON_BITS, BINARY):
                report = workdir / f"{model}-{len(rows)}.csv"
                wire = "binary" if encoding == BINARY else "json"
                count = max(per_window // 4, 10) if encoding == JSON_BITS else per_window
                measure = [
                    "-b", str(batch),
                    "--concurrency-range", str(args.concurrency),
                    "--measurement-mode", "count_windows",
                    "--measurement-request-count", str(count),
                    "--stability-percentage", str(args.stability),
                    "--input-tensor-format", wire,
                    "--output-tensor-format", wire,
                    "-f", str(report),
                ]  # fmt: skip
                if encoding != JSON_BITS:  # perf_analyzer's own data is random bit patterns
                    measure += ["--input-data", str(data)]
                command = [*client, *tool.command(server.url, model, *measure)]
                with detector.window([server.pid], 0) as seen:
                    done = subprocess.run(
                        command, env=tool.env, capture_output=True, text=True, timeout=900
                    )
                use = seen[0]
                row: Row = {"case": case, "encoding": encoding, "concurrency": args.concurrency}
                if done.returncode != 0:  # recorded, not fatal: the other cases still run
                    problem = [ln for ln in done.stdout.splitlines() if "error" in ln.lower()]
                    row["error"] = (problem or done.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"perf_analyzer failed on {case} {encoding}: {row['error']}")
                    rows.append(row)
                    continue
                with report.open() as f:
                    (measured,) = list(csv.DictReader(f))
                inferences = float(measured["Inferences/Second"])
                row |= {
                    "requests_per_s": inferences / batch,
                    "rows_per_s": inferences,
                    "p50_ms": float(measured["p50 latency"]) / 1e3,
                    "p99_ms": float(measured["p99 latency"]) / 1e3,
                    # Cores busy over the whole run (set-up included): which side is the limit.
                    "server_cores": use.server_cores,
                    "client_cores": use.ours_cores,
                    "other_cores": use.other_cores,
                    "disturbance": use.as_dict(),
                }
                rows.append(row)
    return rows


def print_table(codec_figures: list[Row], e2e: list[Row]) -> None:
    by_key = {(r["case"], r["encoding"]): r for r in e2e}
    print(
        f"{'case':<12} {'encoding':<18} {'request B':>11} {'response B':>11} "
        f"{'decode us':>10} {'encode us':>10} {'codec us':>9} {'e2e req/s':>10} {'p50 ms':>7} "
        f"{'srv cores':>9} {'client':>6}"
    )
    for r in codec_figures:
        end = by_key.get((r["case"], r["encoding"]), {})
        end = end if "requests_per_s" in end else {}
        rps = f"{end['requests_per_s']:>10.1f}" if end else f"{'-':>10}"
        p50 = f"{end['p50_ms']:>7.2f}" if end else f"{'-':>7}"
        cores = f"{end['server_cores']:>9.2f} {end['client_cores']:>6.2f}" if end else ""
        print(
            f"{r['case']:<12} {r['encoding']:<18} "
            f"{r['request_bytes']:>11,} {r['response_bytes']:>11,} "
            f"{r['decode_us']:>10.1f} {r['encode_us']:>10.1f} {r['total_us']:>9.1f} "
            f"{rps} {p50} {cores}"
        )
    for case in CASES:
        pair = {r["encoding"]: r for r in codec_figures if r["case"] == case}
        ratio = pair[JSON]["total_us"] / pair[BINARY]["total_us"]
        line = f"{case}: binary decode+encode is {ratio:.0f}x cheaper than JSON"
        ends = {r["encoding"]: r for r in e2e if r["case"] == case and "requests_per_s" in r}
        if BINARY in ends and JSON in ends:
            speedup = ends[BINARY]["requests_per_s"] / ends[JSON]["requests_per_s"]
            line += f"; end to end {speedup:.1f}x the requests/s"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-e2e", action="store_true", help="only the in-process codec figures")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="codec: time per figure")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stability", type=int, default=50, help="perf_analyzer: percent")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_v2_codec.json")
    args = parser.parse_args()
    facts = machine.facts()  # before the run: other work on the box skews every figure
    codec_figures = codec_rows(args.min_seconds)
    e2e: list[Row] = []
    if not args.skip_e2e:
        with tempfile.TemporaryDirectory(prefix="bench-v2-") as tmp:
            e2e = e2e_rows(args, Path(tmp))
    print_table(codec_figures, e2e)
    write_results(args.out, facts, codec=codec_figures, end_to_end=e2e)


if __name__ == "__main__":
    main()
