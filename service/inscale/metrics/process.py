"""Process figures for multiprocess mode, and the memory limit the alerts compare against.

prometheus-client's process and GC collectors describe the process that answers the scrape.
With `--workers N` that is a different worker each time, so each worker instead writes its own
figures into the shared files under the same metric names: memory and open files summed over
live workers, CPU seconds and GC counts as counters that add up over all workers.
"""

import gc
import os
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.multiprocess import mark_process_dead

_GAUGES: dict[str, Literal["livesum", "livemin"]] = {  # how workers combine
    "process_virtual_memory_bytes": "livesum",
    "process_resident_memory_bytes": "livesum",
    "process_open_fds": "livesum",
    "process_max_fds": "livemin",
    "process_start_time_seconds": "livemin",
}


class ProcessPublisher:
    """Copies this worker's /proc figures and GC counts into multiprocess metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = ProcessCollector(registry=None)
        self._gauges = {
            name: Gauge(name, f"{name} (live workers)", registry=registry, multiprocess_mode=mode)
            for name, mode in _GAUGES.items()
        }
        self._cpu = Counter(
            "process_cpu_seconds", "CPU time of all workers, user and system.", registry=registry
        )
        gc_doc = "of all workers, by generation"
        self._gc = [
            Counter(f"python_gc_{what}", f"{doc} {gc_doc}", ["generation"], registry=registry)
            for what, doc in (
                ("objects_collected", "Objects collected during GC"),
                ("objects_uncollectable", "Uncollectable objects found during GC"),
                ("collections", "Times a generation was collected"),
            )
        ]
        self._last_cpu = 0.0
        self._last_gc = [(0, 0, 0) for _ in gc.get_stats()]

    def publish(self) -> None:
        for family in self._source.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    self._cpu.inc(max(0.0, sample.value - self._last_cpu))
                    self._last_cpu = sample.value
                elif sample.name in self._gauges:
                    self._gauges[sample.name].set(sample.value)
        for generation, stats in enumerate(gc.get_stats()):
            now = (stats["collected"], stats["uncollectable"], stats["collections"])
            for counter, value, last in zip(self._gc, now, self._last_gc[generation], strict=True):
                if value > last:
                    counter.labels(str(generation)).inc(value - last)
            self._last_gc[generation] = now


class WorkerRoster:
    """The worker processes writing into one multiprocess folder, so that the live gauges of a
    worker that died (uvicorn restarts a crashed one) stop counting in the sums.

    Each worker leaves a file named by its pid in a subfolder; whoever finds a pid no longer
    alive hands it to prometheus-client's `mark_process_dead`, which removes its gauge files.
    """

    def __init__(self, directory: Path, pid: int) -> None:
        self._directory = directory
        self._pid = pid
        self._members = directory / "inscale-workers"
        self._members.mkdir(exist_ok=True)
        (self._members / str(pid)).touch()

    def forget_dead(self) -> None:
        for member in self._members.iterdir():
            if member.name.isdigit() and not _alive(int(member.name)):
                self._forget(int(member.name))

    def leave(self) -> None:
        """At this worker's exit."""
        self._forget(self._pid)

    def _forget(self, pid: int) -> None:
        mark_process_dead(pid, str(self._directory))  # type: ignore[no-untyped-call]
        (self._members / str(pid)).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def memory_limit_bytes() -> int:
    """The cgroup memory limit (v2 or v1), or the machine's memory when that is lower."""
    limits = [_machine_memory()]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    known = [limit for limit in limits if limit > 0]
    return min(known) if known else 0


def _machine_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
