"""How every gRPC call runs, whatever its method: its request id, the core's errors as status
codes (`errors.GRPC_STATUS`), its count and time by method and code, and, once shutdown has
begun, its refusal with UNAVAILABLE while the calls already running finish."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from inscale.errors import InscaleError, QueueFull
from inscale.logs import MAX_ID_LENGTH, new_request_id, request_id
from inscale.metrics.prometheus import Metrics
from inscale.metrics.series import CounterLike, HistogramLike
from inscale.protocols.grpc.errors import code_for, message_for, server_failed

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_OK = grpc.StatusCode.OK


class Failed(Exception):
    """An RPC ends with this status (raised inside `serve`, turned into an abort there)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Calls:
    """The state and rules every call of one server shares."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, grpc.StatusCode], tuple[CounterLike, HistogramLike]] = {}
        self._closing = asyncio.Event()  # set when the server begins to shut down
        self._active = 0  # calls running in our code
        self._entered = 0  # calls that ever reached our code
        self._idle = asyncio.Event()
        self._idle.set()

    def begin_shutdown(self) -> None:
        """New calls are refused with UNAVAILABLE from now on; open streams stop reading,
        answer what they took, then end with UNAVAILABLE."""
        self._closing.set()

    async def drained(self, quiet_s: float) -> None:
        """Returns once no call runs in our code and none has arrived for `quiet_s`.

        After `begin_shutdown` new calls are refused at once, but grpcio may still hold calls
        it read and has not handed over yet; waiting for a quiet moment lets them reach us
        (and be refused with UNAVAILABLE) instead of being cancelled by grpcio's stop().
        """
        while True:
            await self._idle.wait()
            seen = self._entered
            await asyncio.sleep(quiet_s)
            if self._entered == seen and self._idle.is_set():
                return

    def enter(self) -> None:
        self._active += 1
        self._entered += 1
        self._idle.clear()

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def serve(
        self,
        method: str,
        context: Context,
        handle: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run one RPC: its request id, its errors as status codes, its count and time."""
        started = time.perf_counter()
        rid = request_id_of(context)
        token = request_id.set(rid)
        code = _OK
        trailing = [("x-request-id", rid)]
        self.enter()
        try:
            if self._closing.is_set():
                # Refused here rather than left to grpcio's stop(), which would cancel it:
                # UNAVAILABLE tells the client to retry elsewhere, CANCELLED does not.
                raise Failed(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            response = await handle()
            context.set_trailing_metadata(trailing)
            return response
        except (InscaleError, Failed) as exc:
            code, message = self.failure(exc, rid)
            if isinstance(exc, QueueFull):
                trailing.append(("retry-after", str(exc.retry_after_s)))
            context.set_trailing_metadata(trailing)
            await context.abort(code, message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client went away, or the server stopped
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("gRPC %s crashed", method)
            context.set_trailing_metadata(trailing)
            await context.abort(code, server_failed(rid))
        finally:
            self.leave()
            request_id.reset(token)
            self.record(method, code, time.perf_counter() - started)

    def failure(self, exc: Exception, rid: str) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, Failed):
            return exc.code, exc.message
        assert isinstance(exc, InscaleError)
        code = code_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.error("gRPC request failed: %s", exc.message, exc_info=exc)
        return code, message_for(exc, code, rid)

    def record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        if self._metrics is None:
            return
        children = self._children.get((method, code))
        if children is None:
            children = self._children[(method, code)] = self._metrics.grpc(method, code.name)
        count, duration = children
        count.inc()
        duration.observe(seconds)

    @property
    def closing(self) -> asyncio.Event:
        """Set when the server begins to shut down."""
        return self._closing


def metadata_value(context: Context, key: str) -> str | None:
    """A call's metadata entry (keys arrive in lower case), or None."""
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


def request_id_of(context: Context) -> str:
    rid = metadata_value(context, "x-request-id")
    return rid[:MAX_ID_LENGTH] if rid else new_request_id()
