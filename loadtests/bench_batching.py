"""Does dynamic batching pay? wide (batching on) vs wide-nobatch vs identity (HTTP-only ceiling).

One server pinned to one core, wrk pinned to another, one real row per request, and raw ONNX
Runtime on the server's core as the compute floor. Prints tables and the issue's three targets,
and writes every figure to JSON. A benchmark, not a test: numbers depend on the machine.

    .venv/bin/python loadtests/bench_batching.py --duration 10 --concurrency 1,8,32,64
"""

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench_models import WIDE_ONNX, build_repository
from bench_report import print_tables, targets_met

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
WRK_SCRIPT = HERE / "wrk_report.lua"
MODELS = ("wide", "wide-nobatch", "identity")
RAW_BATCH_SIZES = (1, 8, 32, 64)
Row = dict[str, Any]
TICK = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in these


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # taskset execs the server, so this is the server itself


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)]


def busy_seconds(cpus: list[int]) -> float:
    """CPU time the given cores have spent busy since boot, whoever used it."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.split(" ", 1)[0] in {f"cpu{c}" for c in cpus}:
            ticks = [int(t) for t in line.split()[1:9]]
            busy += sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy / TICK


def cpu_snapshot(server: Server, cpus: list[int]) -> list[float]:
    """Wall clock, busy time of the pinned cores, and CPU time of the server and of wrk."""
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once run_wrk has waited for it
    server_s = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads
    return [time.monotonic(), busy_seconds(cpus), server_s, usage.ru_utime + usage.ru_stime]


def cpu_use(before: list[float], after: list[float], cores: int) -> dict[str, float | None]:
    """Cores the server and wrk kept busy, and the share of their cores other work took.

    A server using more than its one pinned core has threads that set their own affinity,
    and then shares wrk's core; other work on a shared box skews every figure.
    """
    wall, busy, server, wrk = (a - b for a, b in zip(after, before, strict=True))
    others = max(0.0, (busy - server - wrk) / (wall * cores)) if cores else None
    return {"server_cores": server / wall, "wrk_cores": wrk / wall, "others_share": others}


def wait_for_port(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> int:
    """The server picks a free port (--port 0) and only says which in its startup log line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"server did not start; its log ({log}) ends:\n{log.read_text()[-2000:]}")


def wait_until_ready(base_url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"models not ready after {timeout_s:.0f}s")


@contextmanager
def running_server(repo: Path, cpu: int | None, log: Path) -> Iterator[Server]:
    prefix = [] if cpu is None else pin(cpu)
    cmd = [*prefix, sys.executable, "-m", "inscale", "serve", "--model-repository", str(repo)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--log-level", "info", "--log-format", "json"]
    with log.open("wb") as sink:
        # Own session: a Ctrl-C on the terminal reaches only us, and we stop the server in order.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=sink, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{wait_for_port(proc, log)}"
        wait_until_ready(base_url)
        yield Server(base_url, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(prefix: list[str], url: str, body: Path, connections: int, seconds: int) -> Row:
    cmd = [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(WRK_SCRIPT), url]
    env = {**os.environ, "WRK_BODY_FILE": str(body)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({shlex.join(cmd)}):\n{done.stdout}\n{done.stderr}")
    report: Row = json.loads(lines[-1])
    return report


def model_counters(base_url: str, model: str) -> Row:
    versions = httpx.get(f"{base_url}/models/{model}", timeout=10).json()["versions"]
    stats: Row = next(v["stats"] for v in versions if "stats" in v)
    return stats


def measure(
    server: Server, prefix: list[str], model: str, body: Path, conc: int, args: argparse.Namespace
) -> Row:
    """One warm-up run (fills queues, wakes threads), then the measured run between counters."""
    url = f"{server.url}/predict"
    if args.warmup:
        run_wrk(prefix, url, body, conc, args.warmup)
    cpus = [] if args.no_pin else [args.server_cpu, args.client_cpu]
    before, cpu_before = model_counters(server.url, model), cpu_snapshot(server, cpus)
    report = run_wrk(prefix, url, body, conc, args.duration)
    after, cpu_after = model_counters(server.url, model), cpu_snapshot(server, cpus)
    runs, rows = after["runs"] - before["runs"], after["rows"] - before["rows"]
    # Wall time from handing a batch to the worker thread until the event loop takes the result
    # back: raw ORT time plus thread hand-off, comparable with the raw ORT table.
    run_s = after["compute_seconds"] - before["compute_seconds"]
    return {
        "model": model,
        "concurrency": conc,
        "requests_per_s": report["requests"] / (report["duration_us"] / 1e6),
        "p50_ms": report["p50_us"] / 1e3,
        "p90_ms": report["p90_us"] / 1e3,
        "p99_ms": report["p99_us"] / 1e3,
        "errors": report["errors"],
        "runs": runs,
        "rows": rows,
        "mean_rows_per_run": rows / runs if runs else None,
        "server_ms_per_run": run_s * 1e3 / runs if runs else None,
        **cpu_use(cpu_before, cpu_after, len(cpus)),
        "wrk": report,
    }


def raw_ort(prefix: list[str], threads: int) -> Row:
    sizes = ",".join(map(str, RAW_BATCH_SIZES))
    cmd = [*prefix, sys.executable, str(HERE / "bench_models.py"), str(WIDE_ONNX)]
    cmd += ["--sample", str(SAMPLE), "--batch-sizes", sizes, "--intra-op-threads", str(threads)]
    # Its stderr goes straight to ours, so a failure shows ONNX Runtime's own message.
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    result: Row = json.loads(done.stdout)
    return result


def machine_info() -> Row:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu.group(1) if cpu else platform.processor(),
        # Other work on the box skews everything; the load average at start shows if there was.
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": wrk_version.splitlines()[0] if wrk_version else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="subset of " + ",".join(MODELS))
    parser.add_argument("--concurrency", default="1,8,32,64", help="wrk connections, per model")
    # wrk takes whole seconds only.
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="run without taskset")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per model, server and raw alike; 0 (default) is the server's "
        "default, whose threads pin themselves one per physical core, escaping taskset",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench_batching.json"))
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.duration < 1 or args.warmup < 0:
        parser.error("--duration must be at least 1 and --warmup at least 0 (seconds)")
    if unknown := set(args.models) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def check_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench_batching: wrk not found on PATH; install it (apt-get install wrk)")
    if args.no_pin:
        return
    if shutil.which("taskset") is None:
        sys.exit("bench_batching: taskset not found (util-linux); install it or pass --no-pin")
    allowed = os.sched_getaffinity(0)
    if {args.server_cpu, args.client_cpu} - allowed or args.server_cpu == args.client_cpu:
        sys.exit(
            f"bench_batching: --server-cpu/--client-cpu must be two different CPUs of "
            f"{sorted(allowed)}; or pass --no-pin"
        )


def run_http(args: argparse.Namespace, client_pin: list[str]) -> list[Row]:
    first_row = json.loads(SAMPLE.read_text())["inputs"][0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="inscale-bench-") as tmp:
        repo, log = Path(tmp) / "models", Path(tmp) / "server.log"
        build_repository(repo, args.models, args.intra_op_threads)
        bodies = {m: Path(tmp) / f"{m}.json" for m in args.models}
        for model, body in bodies.items():
            body.write_text(json.dumps({"model": model, "inputs": [first_row]}))
        server_cpu = None if args.no_pin else args.server_cpu
        with running_server(repo, server_cpu, log) as server:
            # Models compared at one concurrency run back to back, so drifting background load
            # on a shared machine hits both sides of a comparison alike.
            for conc in args.concurrency:
                for model, body in bodies.items():
                    print(f"  {model} c={conc} ...", flush=True)
                    rows.append(measure(server, client_pin, model, body, conc, args))
    return sorted(rows, key=lambda r: (args.models.index(r["model"]), r["concurrency"]))


def main() -> int:
    args = parse_args()
    check_tools(args)
    # A plain `kill` of the benchmark must still stop the server: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_pin = [] if args.no_pin else pin(args.server_cpu)
    client_pin = [] if args.no_pin else pin(args.client_cpu)
    machine = machine_info()  # before we add load of our own
    print("raw ONNX Runtime on the server core...", flush=True)
    raw = raw_ort(server_pin, args.intra_op_threads)  # before the server: a core of its own
    rows = run_http(args, client_pin)
    targets = targets_met(rows, raw)
    print_tables(rows, raw, targets)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine, "onnxruntime": raw["onnxruntime"]},
        "settings": settings,
        "raw_ort": raw,
        "http": rows,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
