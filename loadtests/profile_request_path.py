"""Where does a request's time go? py-spy samples a pinned server under closed-loop wrk.

One server on `--server-cpu`, wrk on `--client-cpu` at `--connections` connections, the
`identity` model by default (its run costs next to nothing, so what is left is the HTTP path
every request pays). py-spy (`--native`: C frames of uvloop, httptools and numpy too) records
the server's collapsed stacks; this prints the frames that hold the most samples, by self time
(where the CPU is) and inclusive time (what a frame and everything it calls costs), as shares
of the server's busy samples, and writes them and the raw stacks to `--out`.

    .venv/bin/python -m loadtests.profile_request_path --seconds 10
    .venv/bin/python -m loadtests.profile_request_path --model wide --path v2

A profiler slows what it samples (py-spy pauses the process at each sample): read the shares,
not the rate wrk reports while profiling.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import machine, wrk
from loadtests.harness.processes import ROOT, pinned
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

# Frames that only mean "waiting": the loop's poll and the worker threads' idle waits.
_IDLE = ("epoll_wait", "select", "poll (", "_wait_for_tstate_lock", "wait (threading.py")


_LINE = re.compile(r":\d+\)$")


def collapsed(path: Path) -> Counter[str]:
    """py-spy's raw output: one `frame;frame;... count` line per distinct stack."""
    stacks: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def busy(stacks: Counter[str]) -> Counter[str]:
    """The stacks of the thread that runs the event loop, without its idle poll."""
    kept: Counter[str] = Counter()
    for stack, count in stacks.items():
        leaf = stack.rsplit(";", 1)[-1]
        if any(mark in leaf for mark in _IDLE):
            continue
        kept[stack] += count
    return kept


def shares(stacks: Counter[str]) -> tuple[Counter[str], Counter[str], int]:
    """Samples per line where the CPU was (self), per function on the stack (inclusive), and
    the total."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for stack, count in stacks.items():
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        # Inclusive by function (its lines merged); a recursive one counts once per sample.
        for function in {_LINE.sub(")", frame) for frame in frames}:
            inclusive[function] += count
    return own, inclusive, total


def table(title: str, counts: Counter[str], total: int, top: int) -> str:
    lines = [f"### {title}", "", "| share | frame |", "|---|---|"]
    for frame, count in counts.most_common(top):
        lines.append(f"| {count / total:.1%} | `{frame[:140]}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="identity", choices=("identity", "wide"))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--native", action="store_true", help="C frames too (pauses the server at each sample)"
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "profile")
    args = parser.parse_args()
    for tool in ("py-spy", "wrk", "taskset"):
        if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
            parser.error(f"{tool} is not installed (scripts/dev setup installs it)")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "stacks.txt"
    with tempfile.TemporaryDirectory(prefix="inscale-profile-") as tmp:
        repo = Path(tmp) / "models"
        build_repository(repo, [args.model], 1)
        body = one_row_bodies(Path(tmp), [args.model])[args.model]
        with inscale_server(
            Path(tmp) / "server.log", model_repository=repo, cpus=[args.server_cpu]
        ) as server:
            url = f"{server.url}/predict"
            client = [args.client_cpu]
            wrk.run(url, body, connections=args.connections, seconds=2, cpus=client)
            # --gil: only the thread holding the GIL, the one whose time bounds the rate.
            record = [*pinned(client), spy, "record", "--gil", "--pid", str(server.pid)]
            record += ["--rate", str(args.rate), "--duration", str(args.seconds)]
            record += ["--format", "raw", "--output", str(raw)]
            record += ["--native"] if args.native else ["--nonblocking"]
            result: dict[str, wrk.WrkReport] = {}

            def load() -> None:
                result["wrk"] = wrk.run(
                    url, body, connections=args.connections, seconds=args.seconds + 2, cpus=client
                )

            loader = threading.Thread(target=load)
            loader.start()
            done = subprocess.run(record, capture_output=True, text=True, timeout=args.seconds + 60)
            loader.join()
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
    own, inclusive, total = shares(busy(collapsed(raw)))
    if total == 0:
        print("py-spy recorded no busy samples", file=sys.stderr)
        return 1
    report = "\n\n".join(
        [
            f"{args.model} at {args.connections} connections, {total} busy samples "
            f"(wrk under the profiler: {result['wrk'].requests_per_s:.0f} requests/s)",
            table("Self time", own, total, args.top),
            table("Inclusive time", inclusive, total, args.top),
        ]
    )
    print(report)
    (args.out / "report.md").write_text(report + "\n")
    write_results(
        args.out / "profile.json",
        machine.facts(),
        model=args.model,
        connections=args.connections,
        busy_samples=total,
        self_share={f: c / total for f, c in own.most_common(args.top)},
        inclusive_share={f: c / total for f, c in inclusive.most_common(args.top)},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
