"""The batcher's cost per request in CPU instructions, this tree against another checkout.

On machines whose speed drifts by tens of percent within a minute, a change of a few percent on
the request path is lost in wall-clock noise. Instructions are not: valgrind's callgrind counts
the same for the same work however fast the machine runs. Each side runs `--clients` concurrent
`Batcher.submit` calls per round on uvloop (a deadline on each, as the data plane gives one),
against a `run_batch` that returns at once, so what is counted is the batcher and the asyncio
machinery around it: queueing, deadlines, the batch cut, the futures and the wake-ups. Each
side runs twice, at `--rounds` and at `--rounds` x 5, and the difference is divided by the
extra requests, which takes out the interpreter's start and imports. System calls are not
counted (callgrind counts user-space instructions), so a change that saves one reads smaller
here than it is.

    .venv/bin/python -m loadtests.bench_batcher_instructions --baseline-src ../old/service

Needs valgrind (`apt-get install valgrind`). Prints a table and writes `--out` (JSON).
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.harness import machine
from loadtests.harness.results import write_results
from loadtests.harness.server import CURRENT, Source, check_source

# What each side runs: the batcher alone, imported from the side's source root. An old tree's
# batcher has the same `Batcher`, `BatchPolicy` and event-listener shape (its package aside).
_PROGRAM = """
import asyncio, sys
import uvloop
from {package}.batcher import Batcher, BatchPolicy
from {package}.batch_events import Ran, StepTimes

class Events:
    def request_queued(self, rows): pass
    def batch_finished(self, record): pass
    def request_dropped(self, reason): pass

def run(payloads):
    return Ran(list(payloads), StepTimes(1, 1, 1))

async def main(rounds, clients):
    batcher = Batcher(run, BatchPolicy(max_batch_size=clients, max_queue_delay_s=0.0), Events())
    batcher.start()
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        answers = await asyncio.gather(
            *(batcher.submit(n, deadline=loop.time() + 30) for n in range(clients))
        )
        assert answers == list(range(clients))
    await batcher.close()

uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(source: Source, rounds: int, clients: int) -> int:
    """User-space instructions of one run of the program on `source`."""
    with tempfile.TemporaryDirectory(prefix="inscale-callgrind-") as tmp:
        program = Path(tmp) / "batcher_rounds.py"
        program.write_text(_PROGRAM.format(package=source.package))
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out"]
        cmd += [sys.executable, "-P", str(program), str(rounds), str(clients)]
        # A fixed hash seed: with a random one, dict and set layouts (and so the counts)
        # differ from run to run by up to a tenth.
        env = source.env({"PYTHONHASHSEED": "0"})
        done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=1800)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        sys.exit(f"bench_batcher_instructions: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(source: Source, rounds: int, clients: int) -> float:
    short = instructions(source, rounds, clients)
    long = instructions(source, rounds * 5, clients)
    return (long - short) / (rounds * 4 * clients)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, help="another checkout's source root")
    parser.add_argument("--clients", type=int, default=32, help="concurrent submits per round")
    parser.add_argument("--rounds", type=int, default=50, help="rounds of the shorter run")
    parser.add_argument("--out", type=Path, default=Path("results/bench_batcher_instructions.json"))
    args = parser.parse_args()
    if args.clients < 1 or args.rounds < 1:
        parser.error("--clients and --rounds must be positive")
    if shutil.which("valgrind") is None:
        sys.exit("bench_batcher_instructions: valgrind not found; apt-get install valgrind")
    sides = {"current": CURRENT}
    if args.baseline_src is not None:
        sides["baseline"] = Source.of(args.baseline_src)
    for source in sides.values():
        check_source(source)
    counts = {
        name: per_request(source, args.rounds, args.clients) for name, source in sides.items()
    }
    print(f"{'side':10} {'instructions per request':>26}")
    for name, count in counts.items():
        print(f"{name:10} {count:26,.0f}")
    ratio = None
    if "baseline" in counts:
        ratio = counts["current"] / counts["baseline"]
        print(f"current / baseline: {ratio:.3f}")
    write_results(
        args.out,
        machine.facts(),
        settings={"clients": args.clients, "rounds": args.rounds},
        sources={name: str(source.root) for name, source in sides.items()},
        instructions_per_request=counts,
        ratio=ratio,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
