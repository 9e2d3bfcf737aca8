"""Triton's perf_analyzer, from the venv `scripts/setup_perf_analyzer.sh` makes (set up on demand).

`scripts/dev test` runs the setup script before pytest; running pytest alone sets it up the
first time it is needed. `find_perf_analyzer` returns the reason when the binary cannot run
on this machine, so a test can skip with that reason.
"""

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # loadtests/harness/ -> the project root
SETUP = ROOT / "scripts" / "setup_perf_analyzer.sh"


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str] = field(repr=False)  # LD_LIBRARY_PATH names the venv's libcudart

    def command(self, url: str, model: str, *args: str, protocol: str = "http") -> list[str]:
        """`url`: the HTTP base URL or, for `protocol="grpc"`, the gRPC `host:port`."""
        if protocol not in ("http", "grpc"):
            raise ValueError(f"perf_analyzer speaks http or grpc, not {protocol!r}")
        host = url.removeprefix("http://")
        return [str(self.binary), "-m", model, "-u", host, "-i", protocol, *args]


def find_perf_analyzer() -> PerfAnalyzer | str:
    """The runnable binary, or why there is none here."""
    setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, check=False)
    if setup.returncode != 0:
        return f"{SETUP.name} failed: {setup.stderr.strip()[-2000:]}"
    venv = Path(setup.stdout.strip().splitlines()[-1])
    binary = venv / "bin" / "perf_analyzer"
    libraries = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    paths = [str(p) for p in libraries] + [os.environ.get("LD_LIBRARY_PATH", "")]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in paths if p)}
    try:
        probe = subprocess.run(
            [str(binary), "--version"], env=env, capture_output=True, text=True, timeout=30
        )
    except OSError as exc:
        return f"{binary} cannot be started: {exc}"
    if probe.returncode != 0:
        return f"{binary} cannot run here: {(probe.stderr or probe.stdout).strip()[-2000:]}"
    return PerfAnalyzer(binary, env)
