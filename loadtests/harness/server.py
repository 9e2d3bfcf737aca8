"""An `inscale serve` process on a loopback port, pinned to cores, ready when it yields.

The source it runs is explicit: this tree's `service/inscale`, or an older checkout's source
root holding either the `inscale` package or the package's former name `service` (same
`serve` flags). The child's `PYTHONPATH` is exactly that root, and `python -P` keeps the
working folder off `sys.path`, so a baseline server cannot import this tree's package or the
other way round; `check_source` proves it before a measurement depends on it.
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtests.harness.processes import ROOT, Started, pinned, spawned, tail, wait_http_ok

_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Source:
    """A source root and the import package in it that has `python -m PACKAGE serve`."""

    root: Path
    package: str

    @classmethod
    def of(cls, root: Path) -> "Source":
        """The package a checkout's source root holds: `inscale`, or the old `service`."""
        root = root.resolve()
        for package in ("inscale", "service"):
            if (root / package / "__main__.py").is_file():
                return cls(root, package)
        raise ValueError(f"{root} holds neither inscale/__main__.py nor service/__main__.py")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # gRPC off unless asked for (`--grpc-port N` in the server's flags wins): its default
        # port would be shared by every server a tool starts. Older packages ignore it.
        return {**env, "PYTHONPATH": str(self.root), "INSCALE_GRPC_PORT": "0", **(extra or {})}


CURRENT = Source(ROOT / "service", "inscale")


def check_source(source: Source) -> Path:
    """Where the package resolves with the server's environment; fails unless inside its root."""
    code = f"import importlib.util; print(importlib.util.find_spec({source.package!r}).origin)"
    done = subprocess.run(
        [sys.executable, "-P", "-c", code],
        env=source.env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    origin = Path(done.stdout.strip() or "/nonexistent").resolve()
    if done.returncode != 0 or not origin.is_relative_to(source.root):
        raise RuntimeError(
            f"{source.package} resolves to {origin}, outside {source.root}: {done.stderr.strip()}"
        )
    return origin


def _port_from_log(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> int:
    """With `--port 0` the server picks a free port and says which in its startup line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _RUNNING.search(log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the server did not start; its log ({log}) ends:\n{tail(log)}")


@contextmanager
def inscale_server(
    log: Path,
    *,
    model_repository: Path | None = None,
    cpus: Sequence[int] | None = None,
    source: Source = CURRENT,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120,
) -> Iterator[Started]:
    """`python -m PACKAGE serve` on 127.0.0.1 (`--port 0`), ready (models loaded) when this
    yields, stopped on exit. Logs at info level only for the startup line that names the
    port: access logs stay off, so a benchmark measures serving, not logging."""
    cmd = [*pinned(cpus), sys.executable, "-P", "-m", source.package, "serve"]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--log-format", "json", "--log-level", "info"]
    if model_repository is not None:
        cmd += ["--model-repository", str(model_repository)]
    cmd += list(extra)
    with spawned(cmd, log, cwd=log.parent, env=source.env(env)) as proc:
        url = f"http://127.0.0.1:{_port_from_log(proc, log, 60)}"
        try:
            wait_http_ok(f"{url}/health/ready", ready_timeout_s, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; the server's log ends:\n{tail(log)}") from exc
        yield Started(url, proc.pid, log)
