"""The processes a load test starts: inscale replicas and a load balancer, always stopped.

Each runs in its own session so a Ctrl-C on the terminal reaches only the script, which then
stops them in order (SIGTERM, so a server drains; SIGKILL after a grace period).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in these


@dataclass(frozen=True)
class Started:
    """A running process and the loopback URL it answers on."""

    url: str
    pid: int  # taskset execs its command, so this is the process itself
    log: Path


def pinned(cpus: Sequence[int] | None) -> list[str]:
    """`taskset -c` prefix for a command (and every thread and child it starts)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot, whoever used it: with a script's own
    processes' CPU time it shows how much other work shared the machine."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK  # minus idle and iowait


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def wait_ready(
    url: str, timeout_s: float = 120, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll /health/ready until it answers 200 (through a balancer too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s")


@contextmanager
def inscale_server(
    log: Path,
    *,
    model_repository: Path | None = None,
    cpus: Sequence[int] | None = None,
    extra: Sequence[str] = (),
) -> Iterator[Started]:
    """`inscale serve` on a free loopback port, pinned to `cpus`, ready when this yields.

    The port is chosen here, so no startup line is needed to learn it and the server logs
    only warnings: a load test should measure serving, not logging.
    """
    port = free_port()
    cmd = [*pinned(cpus), sys.executable, "-m", "inscale", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-format", "json", "--log-level", "warning"]
    if model_repository is not None:
        cmd += ["--model-repository", str(model_repository)]
    cmd += list(extra)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=sink, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc=proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; the server's log ends:\n{_tail(log)}") from exc
        yield Started(url, proc.pid, log)
    finally:
        _stop(proc)


@contextmanager
def inscale_replicas(
    count: int,
    logs: Path,
    *,
    model_repository: Path | None = None,
    cpus: Sequence[int] = (),
    extra: Sequence[str] = (),
) -> Iterator[list[Started]]:
    """`count` servers; replica i is pinned to cpus[i % len(cpus)] (unpinned if no cpus)."""
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                inscale_server(
                    logs / f"replica-{i}.log",
                    model_repository=model_repository,
                    cpus=[cpus[i % len(cpus)]] if cpus else None,
                    extra=extra,
                )
            )
            for i in range(count)
        ]
        yield replicas


def haproxy_config(port: int, backends: Sequence[str]) -> str:
    """HTTP mode, keep-alive to the replicas, least-connections balancing (each replica gets
    the next request when it has the fewest open, which follows a replica's speed), and a
    readiness check so a replica that is not ready gets no traffic. The check is patient
    (5 s, three misses): on a machine shared with other work a busy replica can take over a
    second to answer, and taking it out would turn the step into fast 503s. One thread: it
    shares a core with the load generator."""
    servers = "\n".join(
        f"    server r{i} {url.removeprefix('http://')} check inter 2s fall 3 rise 1"
        for i, url in enumerate(backends)
    )
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout check 5s
    option http-keep-alive
    http-reuse always

frontend inscale
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /health/ready
{servers}
"""


@contextmanager
def haproxy(
    backends: Sequence[str], workdir: Path, cpus: Sequence[int] | None = None
) -> Iterator[Started]:
    """haproxy (Debian's package) as a plain foreground process on a free loopback port."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy is missing: apt-get install haproxy (scripts/dev test does)")
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, backends))
    check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejected {config}:\n{check.stderr.decode()}")
    log = workdir / "haproxy.log"
    with log.open("wb") as sink:
        # -db: stay in the foreground, no daemon, so stopping this process stops haproxy.
        proc = subprocess.Popen(
            [*pinned(cpus), binary, "-db", "-f", str(config)],
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=30, proc=proc)
        yield Started(url, proc.pid, log)
    finally:
        _stop(proc, grace_s=5)
