"""A work-rate probe: a fixed amount of pure computation, timed, a few times a second.

Time accounting cannot see a core that runs slower while the kernel believes it runs our
process: a hypervisor preempting the virtual CPU without reporting steal (nested
virtualization), a busy hyperthread sibling, a host thread emulating another guest's disk.
What does see it is work per CPU second. The probe runs the same loop of `--iterations`
integer operations every `--period-ms` (about 0.2 ms of work every 100 ms: 0.2% of the core)
and records, per run, CPU nanoseconds per iteration (a slower core) and wall time over CPU
time (a core shared with another runnable task). Run pinned with taskset, it prints one JSON
line when `--seconds` have passed:

    taskset -c 0 python -m loadtests.harness.probe --seconds 5
"""

import argparse
import json
import statistics
import time


def spin(iterations: int) -> int:
    """The fixed work: an integer recurrence whose data fits in registers and L1."""
    x = 1
    for _ in range(iterations):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x


def sample(iterations: int) -> tuple[float, float]:
    """CPU nanoseconds per iteration, and wall over CPU time, for one run of `spin`."""
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    spin(iterations)
    cpu_ns, wall_ns = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    return cpu_ns / iterations, wall_ns / max(cpu_ns, 1)


def run(seconds: float, period_s: float, iterations: int) -> dict[str, float | int]:
    spin(iterations)  # warm the interpreter's caches before the first sample counts
    per_iter: list[float] = []
    stretch: list[float] = []
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        ns, ratio = sample(iterations)
        per_iter.append(ns)
        stretch.append(ratio)
        next_at += period_s
        time.sleep(max(0.0, next_at - time.monotonic()))
    quantiles = statistics.quantiles(stretch, n=10) if len(stretch) > 1 else stretch * 9
    return {
        "samples": len(per_iter),
        "cpu_ns_per_iteration": statistics.median(per_iter),
        "wall_over_cpu": statistics.median(stretch),
        "wall_over_cpu_p90": quantiles[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Work-rate probe; pin it with taskset.")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--period-ms", type=float, default=100)
    parser.add_argument("--iterations", type=int, default=4000)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.period_ms / 1e3, args.iterations)))


if __name__ == "__main__":
    main()
