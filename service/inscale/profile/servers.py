"""The `inscale serve` processes a sweep starts: one per trial, on loopback, pinned to the
server cores, serving a repository that holds only the model under test with the trial's
config. Every process started is tracked, so an interrupted sweep stops them all.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from inscale.drift.reference import REFERENCE_FILE
from inscale.model_folder import ToolError

HOST = "127.0.0.1"
_READY_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 20.0
_LOG_TAIL = 20  # lines of a failed server's log quoted in the trial's error


class ServerFailed(ToolError):
    """A trial's server did not start, or died while it was measured."""


def prepare_repository(folder: Path, model_dir: Path, version: int, config: dict[str, Any]) -> Path:
    """`folder/<model>/` with the version linked, not copied (models can be gigabytes), the
    trial's config.yaml, and the model's drift reference if it has one."""
    model = folder / model_dir.name
    model.mkdir(parents=True)
    (model / str(version)).symlink_to((model_dir / str(version)).resolve())
    (model / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # Served as it will be: with drift monitoring on when the model carries a reference.
    reference = model_dir / REFERENCE_FILE
    if reference.is_file():
        (model / REFERENCE_FILE).symlink_to(reference.resolve())
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """One running `inscale serve`."""

    def __init__(self, repository: Path, workers: int, cores: list[int], log: Path) -> None:
        self.port = free_port()
        self.cores = cores
        self._log = log
        command = [
            *[sys.executable, "-m", "inscale", "serve"],
            *["--model-repository", str(repository), "--host", HOST, "--port", str(self.port)],
            *["--grpc-port", "0", "--workers", str(workers), "--log-format", "text"],
            *["--log-level", "warning", "--control-api", "off"],
        ]
        with log.open("wb") as sink:
            # Its own session: Ctrl-C in the terminal reaches this process only, which then
            # stops the server (and its workers) in order rather than all at once.
            self.process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        # Set before the interpreter has started: threads and worker processes inherit it.
        os.sched_setaffinity(self.process.pid, cores)
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self) -> float:
        """Seconds from start to ready (every model loaded and warm)."""
        deadline = self.started + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"the server exited ({self.process.returncode}): {self.tail()}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return time.monotonic() - self.started
            time.sleep(0.1)
        raise ServerFailed(f"the server was not ready within {_READY_TIMEOUT_S:.0f} s")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerFailed(f"the server died ({self.process.returncode}): {self.tail()}")

    def model_totals(self, model: str) -> dict[str, float]:
        """The model's histogram sums and counts, summed over versions and workers."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") == model and sample.name.endswith(("_sum", "_count")):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def resident_mb(self) -> float:
        """Resident memory of the server and every process under it (the workers)."""
        return sum(_rss_kb(pid) for pid in _tree(self.process.pid)) / 1024

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self._log.read_text(errors="replace").splitlines()
            return " | ".join(lines[-_LOG_TAIL:]) or "(no output)"
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM (uvicorn drains and stops its workers), then SIGKILL to the whole group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


class Servers:
    """Every server a sweep started; `stop_all` on the way out, however it leaves."""

    def __init__(self) -> None:
        self._running: list[Server] = []

    def start(self, repository: Path, workers: int, cores: list[int], log: Path) -> Server:
        server = Server(repository, workers, cores, log)
        self._running.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        self._running.remove(server)

    def stop_all(self) -> None:
        while self._running:
            self._running.pop().stop()

    @contextlib.contextmanager
    def scope(self) -> Iterator["Servers"]:
        try:
            yield self
        finally:
            self.stop_all()


def _tree(pid: int) -> list[int]:
    found = [pid]
    for parent in found:  # grows as children are found: a breadth-first walk
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in task.read_text().split()]
    return found


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
