"""A real server with its gRPC port open, for the tests of the gRPC protocol.

Test servers start with `--grpc-port 0` (off); these helpers pick a free loopback port, pass
`--grpc-port N` (later flags win) and wait for the line the server logs once gRPC listens.
"""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.server import ServerProcess, running_server


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick; closed before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class GrpcServer:
    process: ServerProcess
    port: int

    @property
    def target(self) -> str:
        """What `grpc.insecure_channel` and tritonclient.grpc take."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The same server's HTTP base URL."""
        return self.process.url


def wait_for_log(process: ServerProcess, text: str, count: int = 1, timeout_s: float = 30) -> None:
    """Wait until `text` appears in `count` log lines (or the process exits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(text in line for line in list(process.log_lines)) >= count:
            return
        if process.proc is not None and process.proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"never logged {text!r} {count} time(s):\n{process.log_text()}")


@contextmanager
def running_grpc_server(
    repo: Path | None,
    *extra: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
    listeners: int = 1,
) -> Iterator[GrpcServer]:
    """`running_server` with gRPC on `port` (a free one by default).

    `listeners` is how many "gRPC server listening" lines to wait for: one per worker.
    """
    port = free_port() if port is None else port
    with running_server(repo, *extra, "--grpc-port", str(port), env=env, ready=ready) as process:
        wait_for_log(process, f"gRPC server listening on 127.0.0.1:{port}", listeners)
        yield GrpcServer(process, port)
