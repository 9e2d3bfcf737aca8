"""Did other work on the machine disturb a measurement? Time accounting plus work rate.

Two blind spots made a disturbed run print a clean table. Busy time of the pinned cores minus
our processes' CPU time only sees work the guest kernel schedules; on these virtual machines
(nested virtualization) the host preempts or slows a virtual CPU without reporting steal, and
the guest then believes the server ran for all of its core's time: "others" says 0% while
every CPU second does less work. And one threshold over both cores halves a disturbance of
one. So a window here judges, per measured core:

- other work in cores (not a share of two): busy time incl. steal, minus ours;
- steal, as the hypervisor reports it;
- the work-rate probe's CPU nanoseconds per iteration against the fastest seen on that core
  in this run: a core slower than that by more than `Limits.slowdown` was disturbed, however
  the time was accounted.

CPU pressure (PSI "some") and the server's run-queue waits are recorded too but not judged:
a server's event loop and its ONNX Runtime thread share one core by design and wait on each
other even on a quiet machine.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtests.harness import cpu
from loadtests.harness.processes import ROOT, pinned


@dataclass(frozen=True)
class Limits:
    """How much disturbance a measurement tolerates before it is repeated or flagged."""

    other_cores: float = 0.05  # cores of work that is not ours on the measured cores
    steal_share: float = 0.02  # of the measured cores' time
    slowdown: float = 0.15  # probe's CPU time per iteration over the run's fastest, minus 1


@dataclass
class Disturbance:
    """What one measured window saw. `reasons` is empty for a clean window."""

    wall_s: float
    server_cores: float
    ours_cores: float  # wrk, probes, perf_analyzer: our children other than the server
    other_cores: float
    steal_share: float
    pressure_some: float | None  # share of wall time some task waited for a core
    server_wait_share: float  # server threads' run-queue wait over wall time
    probe_ns: dict[int, float] = field(default_factory=dict)  # core: CPU ns per iteration
    slowdown: dict[int, float] = field(default_factory=dict)  # core: over the run's fastest
    reasons: list[str] = field(default_factory=list)

    @property
    def disturbed(self) -> bool:
        return bool(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"disturbed": self.disturbed}


@dataclass(frozen=True)
class _Snapshot:
    wall: float
    cores: cpu.CoreTimes
    server_s: float
    server_wait_s: float
    children_s: float
    pressure_s: float | None


def _snapshot(
    server_pids: Sequence[int], cpus: Sequence[int], idle_pids: Sequence[int]
) -> _Snapshot:
    return _Snapshot(
        time.monotonic(),
        cpu.core_times(cpus),
        sum(cpu.process_cpu_seconds(p) for p in server_pids),
        sum(cpu.process_run_delay_seconds(p) for p in server_pids),
        cpu.children_cpu_seconds() + sum(cpu.process_cpu_seconds(p) for p in idle_pids),
        cpu.cpu_pressure_some_seconds(),
    )


class Detector:
    """Measures windows on `cpus` (every core when empty) and judges them against `limits`.

    The probe's reference per core is the fastest median it has seen in this run, starting
    with `calibrate()`; `rejudge` applies the final reference to earlier windows.
    """

    def __init__(self, cpus: Sequence[int], limits: Limits = Limits(), probe: bool = True):
        self.cpus = list(cpus)
        self.limits = limits
        self.probe = probe and bool(self.cpus)
        self.fastest: dict[int, float] = {}

    def calibrate(self, seconds: float = 1.0, rounds: int = 2) -> dict[int, float]:
        """Probe each core alone a few times (before any server runs): the references."""
        for _ in range(rounds if self.probe else 0):
            for core, ns in self._run_probes(seconds, period_s=0.02).items():
                self.fastest[core] = min(ns, self.fastest.get(core, ns))
        return dict(self.fastest)

    @contextmanager
    def window(
        self, server_pids: Sequence[int], seconds: float, idle_pids: Sequence[int] = ()
    ) -> Iterator[list[Disturbance]]:
        """Measure the block inside (which should last about `seconds`); the yielded list
        holds the judged Disturbance once the block has finished. `idle_pids` are processes
        of ours that are not measured (a second server waiting its turn): their CPU time
        counts as ours, not as other work."""
        out: list[Disturbance] = []
        probes = self._start_probes(max(0.5, seconds - 0.3), period_s=0.1)
        before = _snapshot(server_pids, self.cpus, idle_pids)
        yield out
        after = _snapshot(server_pids, self.cpus, idle_pids)
        ns = self._finish_probes(probes)
        out.append(self._judge(self._figures(before, after, ns)))

    def rejudge(self, found: Disturbance) -> Disturbance:
        """The same figures judged against the fastest references of the whole run."""
        found.slowdown, found.reasons = {}, []
        return self._judge(found)

    def _figures(self, before: _Snapshot, after: _Snapshot, ns: dict[int, float]) -> Disturbance:
        wall = after.wall - before.wall
        busy = sum(after.cores.busy_s.values()) - sum(before.cores.busy_s.values())
        steal = sum(after.cores.steal_s.values()) - sum(before.cores.steal_s.values())
        server = after.server_s - before.server_s
        ours = after.children_s - before.children_s
        pressure = None
        if after.pressure_s is not None and before.pressure_s is not None:
            pressure = (after.pressure_s - before.pressure_s) / wall
        for core, value in ns.items():
            self.fastest[core] = min(value, self.fastest.get(core, value))
        return Disturbance(
            wall_s=wall,
            server_cores=server / wall,
            ours_cores=ours / wall,
            other_cores=max(0.0, busy - server - ours) / wall,
            steal_share=steal / (wall * max(1, len(after.cores.busy_s))),
            pressure_some=pressure,
            server_wait_share=(after.server_wait_s - before.server_wait_s) / wall,
            probe_ns=ns,
        )

    def _judge(self, found: Disturbance) -> Disturbance:
        limits = self.limits
        if found.other_cores > limits.other_cores:
            found.reasons.append(f"other work took {found.other_cores:.2f} cores")
        if found.steal_share > limits.steal_share:
            found.reasons.append(f"the hypervisor stole {found.steal_share:.0%}")
        for core, ns in found.probe_ns.items():
            found.slowdown[core] = ns / self.fastest.get(core, ns) - 1
            if found.slowdown[core] > limits.slowdown:
                found.reasons.append(f"core {core} ran {found.slowdown[core]:.0%} slower")
        return found

    def _start_probes(self, seconds: float, period_s: float) -> dict[int, subprocess.Popen[str]]:
        if not self.probe:
            return {}
        cmd = [sys.executable, "-m", "loadtests.harness.probe", "--seconds", f"{seconds:.2f}"]
        cmd += ["--period-ms", f"{period_s * 1e3:g}"]
        return {
            core: subprocess.Popen(
                [*pinned([core]), *cmd], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
            for core in self.cpus
        }

    def _finish_probes(self, probes: dict[int, subprocess.Popen[str]]) -> dict[int, float]:
        found = {}
        for core, proc in probes.items():
            out, _ = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"the work-rate probe on core {core} failed: {out}")
            found[core] = float(json.loads(out)["cpu_ns_per_iteration"])
        return found

    def _run_probes(self, seconds: float, period_s: float) -> dict[int, float]:
        return self._finish_probes(self._start_probes(seconds, period_s))


def score(found: Disturbance, limits: Limits) -> float:
    """How far past its limits a window went (at most 1 is clean): picks the least disturbed
    of several attempts."""
    parts = [found.other_cores / limits.other_cores, found.steal_share / limits.steal_share]
    parts += [s / limits.slowdown for s in found.slowdown.values()]
    return max(parts)
