"""What every benchmark and load test needs, written once.

- `processes`: free loopback ports, `taskset` prefixes, starting a process in its own session
  and stopping it (SIGTERM, then SIGKILL), waiting for an HTTP readiness route.
- `server`: an `inscale serve` process (this tree's, or an older checkout's) pinned to cores.
- `wrk`: one wrk run with `wrk_report.lua`, parsed.
- `cpu`: CPU time from /proc (processes, cores, steal, pressure, run-queue waits).
- `disturbance`: did other work on the machine disturb a measurement, and how much.
- `probe`: the low-duty work-rate probe `disturbance` runs on each measured core.
- `machine`: facts about the machine a figure was measured on.
- `prometheus`: Debian's prometheus as a plain process on a loopback port.
"""
