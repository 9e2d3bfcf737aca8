"""One wrk run (one thread, `wrk_report.lua`), parsed into a typed report."""

import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.harness.processes import pinned

SCRIPT = Path(__file__).resolve().parents[1] / "wrk_report.lua"  # POSTs $WRK_BODY_FILE


@dataclass(frozen=True)
class WrkReport:
    """What wrk_report.lua prints, latencies in microseconds."""

    requests: int
    duration_us: int
    errors: int  # socket errors plus every non-2xx answer
    non2xx: int
    mean_us: float
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def ok_per_s(self) -> float:
        ok = self.requests - self.errors
        return ok / (self.duration_us / 1e6) if self.duration_us else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(stdout: str) -> WrkReport:
    """The last JSON line wrk_report.lua printed (wrk's own text report comes before it)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise ValueError("no JSON line from wrk_report.lua in wrk's output")
    raw = json.loads(lines[-1])
    fields = WrkReport.__dataclass_fields__
    return WrkReport(**{k: v for k, v in raw.items() if k in fields})


def run(
    url: str,
    body: Path,
    *,
    connections: int,
    seconds: int,
    cpus: Sequence[int] | None = None,
    timeout_s: float = 10,
) -> WrkReport:
    """`wrk -t1` POSTing `body` to `url` for whole `seconds` (wrk takes no fractions)."""
    cmd, env = command(url, body, connections=connections, seconds=seconds, cpus=cpus)
    cmd[cmd.index("--timeout") + 1] = f"{timeout_s:g}s"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    return report(cmd, done.returncode, done.stdout, done.stderr)


def command(
    url: str, body: Path, *, connections: int, seconds: int, cpus: Sequence[int] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The wrk command line and environment of `run`, for a caller that starts wrk itself
    (and must stop it, e.g. a long soak interrupted)."""
    cmd = [*pinned(cpus), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    cmd += ["--timeout", "10s", "-s", str(SCRIPT), url]
    return cmd, {**os.environ, "WRK_BODY_FILE": str(body)}


def report(cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> WrkReport:
    """A finished wrk's report; a clear error with its output when it failed."""
    try:
        if returncode != 0:
            raise ValueError(f"exit {returncode}")
        return parse(stdout)
    except ValueError as exc:
        raise RuntimeError(f"wrk failed ({exc}; {shlex.join(cmd)}):\n{stdout}\n{stderr}") from exc
