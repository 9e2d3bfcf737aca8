"""haproxy (Debian's package) in front of inscale replicas, as a plain foreground process."""

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from loadtests.harness.processes import Started, free_port, pinned, spawned, wait_http_ok


def config(port: int, backends: Sequence[str]) -> str:
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
    """On a free loopback port, ready (a replica answers through it) when this yields."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy is missing: apt-get install haproxy (scripts/dev test does)")
    port = free_port()
    path = workdir / "haproxy.cfg"
    path.write_text(config(port, backends))
    check = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejected {path}:\n{check.stderr.decode()}")
    log = workdir / "haproxy.log"
    # -db: stay in the foreground, no daemon, so stopping this process stops haproxy.
    with spawned([*pinned(cpus), binary, "-db", "-f", str(path)], log, grace_s=5) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health/ready", 30, proc)
        yield Started(url, proc.pid, log)
