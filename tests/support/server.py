"""A real `inscale serve` process on a free loopback port, always stopped by the test."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.log_lines: list[str] = []
        self._port_found = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> None:
        cmd = [sys.executable, "-m", "inscale", "serve", "--host", "127.0.0.1", "--port", "0"]
        # gRPC is off unless a test asks for it (`--grpc-port N` among its args wins): the
        # default port, 8001, would be shared by every server a session starts.
        # The control API is open (load and unload allowed) unless a test asks otherwise: the
        # server's own default, off, is tested in tests/test_control_api.py.
        cmd += ["--grpc-port", "0", "--control-api", "open", "--log-format", "json", *self.args]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._port_found.wait(timeout_s):
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log_text())

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log_lines.append(line)
            found = _RUNNING.search(line)
            if found:
                self.port = int(found.group(1))
                self._port_found.set()

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("server never became ready:\n" + self.log_text())

    def log_text(self) -> str:
        return "".join(self.log_lines)

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_lines:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


@contextmanager
def running_server(
    repo: Path | None, *extra: str, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[ServerProcess]:
    args = (["--model-repository", str(repo)] if repo is not None else []) + list(extra)
    server = ServerProcess(args, env)
    server.start()
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        server.stop()
