"""Child processes of a benchmark: pinned, in their own session, always stopped.

A child in its own session does not get the terminal's Ctrl-C; the script stops it in order
instead (SIGTERM so a server drains, SIGKILL after a grace period), so no server outlives it.
"""

import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the repository


@dataclass(frozen=True)
class Started:
    """A running process and the loopback URL it answers on."""

    url: str
    pid: int  # taskset execs its command, so this is the process itself
    log: Path


def pinned(cpus: Sequence[int] | None) -> list[str]:
    """`taskset -c` prefix for a command (and every thread and child it starts)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def free_port() -> int:
    """A loopback port free right now (another process may take it before it is bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def spawned(
    cmd: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    grace_s: float = 20,
) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd` with stdout and stderr in `log`, in its own session; stopped on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=sink, stderr=sink, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop(proc, grace_s)


def wait_http_ok(
    url: str, timeout_s: float = 120, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s")
