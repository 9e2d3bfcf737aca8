"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending the same
request again as soon as its answer is in, for a warm-up and then a measured window.

Why our own and not wrk or perf_analyzer: it needs nothing installed, speaks to every route
the same way, and costs little next to the server. It is an asyncio protocol with the request
bytes built once, a response parsed only as far as its status line and Content-Length, and one
clock read per answer, so one core drives several times what one inscale core serves
(`loadtests/bench_profile_load.py` compares its figures with wrk's on the same server).

Latency is measured from the write of a request to the last byte of its answer, for requests
written inside the window; throughput counts 200 answers completed inside it. Closed loop means
the concurrency is the number of requests in flight, which is what `inscale plan` turns into
the autoscaler's in-flight target.
"""

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

T = TypeVar("T")
# What stops a sweep: Ctrl-C, and SIGTERM (a CI job's timeout, `kill`).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_HEAD_END = b"\r\n\r\n"
_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    window_s: float
    requests: int  # 200 answers completed in the window
    errors: int  # other answers, and connections that failed, in the window
    latencies_ms: np.ndarray  # of the 200 answers, in the order they completed

    @property
    def rps(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies_ms) == 0:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))


class _Clock:
    """The window every connection records into."""

    def __init__(self, warmup_s: float, window_s: float) -> None:
        now = time.perf_counter_ns()
        self.opens = now + int(warmup_s * 1e9)
        self.closes = self.opens + int(window_s * 1e9)
        self.latencies: list[int] = []
        self.requests = 0
        self.errors = 0


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending `request` back to back until the window closes."""

    def __init__(self, request: bytes, clock: _Clock, finished: asyncio.Future[None]) -> None:
        self._request = request
        self._clock = clock
        self._finished = finished
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._sent_ns = 0
        self._need = -1  # bytes of the whole answer, once its head is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent_ns = time.perf_counter_ns()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._need < 0:
                head_end = self._buffer.find(_HEAD_END)
                if head_end < 0:
                    return
                self._need = head_end + 4 + _content_length(self._buffer[:head_end])
            if len(self._buffer) < self._need:
                return
            status_ok = self._buffer.startswith(b"HTTP/1.1 200")
            del self._buffer[: self._need]
            self._need = -1
            self._answered(status_ok)
            if self._finished.done():
                return

    def _answered(self, ok: bool) -> None:
        now = time.perf_counter_ns()
        clock = self._clock
        if self._sent_ns >= clock.opens and now <= clock.closes:
            if ok:
                clock.requests += 1
                clock.latencies.append(now - self._sent_ns)
            else:
                clock.errors += 1
        if now >= clock.closes:
            self._done()
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        # The server closed the connection (a drain, a refusal): it counts as an error once,
        # and this connection's share of the load ends; the others go on.
        if not self._finished.done():
            self._clock.errors += 1
            self._finished.set_result(None)

    def _done(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)
        if self._transport is not None:
            self._transport.close()


def _content_length(head: bytearray) -> int:
    lowered = bytes(head).lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = lowered.find(b"\r\n", at + 2)
    return int(lowered[at + 17 : end if end >= 0 else None])


def http_request(
    host: str, port: int, path: str, body: bytes, content_type: str, headers: dict[str, str]
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


async def run_load(
    host: str, port: int, request: bytes, concurrency: int, warmup_s: float, window_s: float
) -> LoadResult:
    """`concurrency` connections, back to back for `warmup_s` + `window_s` seconds."""
    loop = asyncio.get_running_loop()
    clock = _Clock(warmup_s, window_s)
    finished: list[asyncio.Future[None]] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for _ in range(concurrency):
            future: asyncio.Future[None] = loop.create_future()
            transport, _protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda f=future: _Connection(request, clock, f),  # type: ignore[misc]
                    host,
                    port,
                ),
                _CONNECT_TIMEOUT_S,
            )
            finished.append(future)
            transports.append(transport)
        # Every connection ends at the window's close; a stuck answer cannot hold the run.
        _done, stuck = await asyncio.wait(finished, timeout=warmup_s + window_s + 10.0)
        clock.errors += len(stuck)
    finally:
        for opened in transports:
            with contextlib.suppress(Exception):
                opened.close()
    latencies = np.asarray(clock.latencies, dtype=np.float64) / 1e6
    return LoadResult(concurrency, window_s, clock.requests, clock.errors, latencies)


def run_interruptibly(loop: asyncio.AbstractEventLoop, load: Coroutine[Any, Any, T]) -> T:
    """Run `load` on `loop`; Ctrl-C (or SIGTERM) cancels it and comes out as KeyboardInterrupt.

    Python raises KeyboardInterrupt wherever the main thread happens to be, and inside a
    protocol callback the event loop reports it as a transport error and carries on; so while
    the loop runs, SIGINT cancels the load task instead (its connections close on the way out).
    """
    task = loop.create_task(load)

    def cancel(_signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(task.cancel)

    previous = {stop: signal.signal(stop, cancel) for stop in STOP_SIGNALS}
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when present (the server's own loop, a dependency of uvicorn[standard]): the
    load generator's cost per request is then a fraction of asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
