"""CPU time from /proc: per process, per core, stolen by the hypervisor, waited for.

Linux counts core time in clock ticks (/proc/stat) and a process's time in ticks too
(/proc/PID/stat); run-queue waits come in nanoseconds (/proc/PID/task/TID/schedstat) and
pressure in microseconds (/proc/pressure/cpu). Everything here returns seconds.
"""

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid: int) -> float:
    """`process_cpu_seconds` of a process and every live descendant (e.g. server workers)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += process_cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended between listing and reading
    return total


def process_run_delay_seconds(pid: int) -> float:
    """Time the process's live threads spent runnable but waiting for a core."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a thread that ended between listing and reading
    return total / 1e9


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have been waited for (wrk, perf_analyzer)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CoreTimes:
    """Since boot, per core: time not idle (steal included: a stolen tick was not ours to
    use) and time stolen by the hypervisor."""

    busy_s: dict[int, float]
    steal_s: dict[int, float]


def core_times(cpus: Sequence[int]) -> CoreTimes:
    """For `cpus`; every core of the machine when `cpus` is empty."""
    wanted = {f"cpu{c}": c for c in cpus}
    busy: dict[int, float] = {}
    steal: dict[int, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name = line.split(" ", 1)[0]
        if not name.startswith("cpu") or name == "cpu" or (wanted and name not in wanted):
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        ticks = [int(t) for t in line.split()[1:9]]
        core = int(name[3:])
        busy[core] = (sum(ticks) - ticks[3] - ticks[4]) / TICK
        steal[core] = ticks[7] / TICK
    return CoreTimes(busy, steal)


def cpu_pressure_some_seconds() -> float | None:
    """Wall time in which some runnable task waited for a core (PSI), or None without PSI."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    some = next(line for line in text.splitlines() if line.startswith("some"))
    return int(some.rsplit("total=", 1)[1]) / 1e6
