"""The gRPC server: `grpc.aio` on the HTTP server's event loop, with the inference service,
the standard health service and reflection.

It runs in the same process and event loop as HTTP and calls the same data plane, so HTTP and
gRPC requests for one model are batched together. With `--workers N` every worker binds the
same port with `SO_REUSEPORT` and the kernel spreads connections over them, as the HTTP side
shares its listening socket; with one worker the option is off, so a port already taken is an
error at start, not a silent share.

Health (`grpc.health.v1.Health`): the empty service name and the inference service report
whether the server is ready, and each model's name whether it has a ready version, so
Kubernetes' gRPC probes and `grpc_health_probe` work. It is refreshed from the server's state
every `HEALTH_REFRESH_S` and turned to NOT_SERVING the moment shutdown begins.
"""

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from inscale.metrics.prometheus import Metrics
from inscale.models.registry import ModelState
from inscale.protocols.grpc.servicer import InferenceServicer
from inscale.protocols.grpc.stubs import service_pb2, service_pb2_grpc
from inscale.server_state import ServerState

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_REFRESH_S = 0.1  # a few microseconds each: readiness shows within 0.1 s
QUIET_S = 0.1  # at shutdown: no call for this long means grpcio holds none for us
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    def __init__(self, state: ServerState, metrics: Metrics | None) -> None:
        settings = state.settings
        self._state = state
        self._address = f"{settings.host}:{settings.grpc_port}"
        self._grace_s = settings.shutdown_grace_s
        self._servicer = InferenceServicer(state, metrics)
        self._health = health.aio.HealthServicer()
        self._server = grpc.aio.server(
            options=[
                # A message larger than the HTTP body limit is refused by gRPC itself.
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self._refresher: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._statuses: dict[str, int] = {}  # service name -> status last set

    async def start(self) -> None:
        try:
            port = self._server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC cannot listen on {self._address}: {exc}") from exc
        await self._server.start()
        await self._refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())
        # Tests and tools read the port from this line (as from uvicorn's for HTTP).
        log.info("gRPC server listening on %s", self._address.rsplit(":", 1)[0] + f":{port}")

    def begin_shutdown(self) -> None:
        """On SIGTERM: refuse new RPCs, let running ones finish within the grace, end streams.

        Called from the signal handler (on the event loop's thread); the work runs as a task.
        """
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def stop(self) -> None:
        self.begin_shutdown()
        assert self._stopping is not None
        await self._stopping

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace_s
        if self._refresher is not None:
            self._refresher.cancel()
        await self._health.enter_graceful_shutdown()  # everything NOT_SERVING, at once
        # Our code refuses new calls with UNAVAILABLE while the running ones finish; only
        # then does grpcio stop, so it has (nearly) nothing left to cancel.
        self._servicer.begin_shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._servicer.drained(QUIET_S), self._grace_s)
        await self._server.stop(max(0.0, deadline - loop.time()))
        log.info("gRPC server stopped")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            with contextlib.suppress(Exception):  # a health refresh must never stop serving
                await self._refresh()

    async def _refresh(self) -> None:
        overall = _SERVING if self._state.ready() else _NOT_SERVING
        wanted: dict[str, int] = {"": overall, SERVICE_NAME: overall}
        registry = self._state.plane.registry
        for name in registry.names():
            ready = any(e.state is ModelState.READY for e in registry.entries(name))
            wanted[name] = _SERVING if ready else _NOT_SERVING
        for gone in self._statuses.keys() - wanted.keys():  # unloaded since the last refresh
            wanted[gone] = _NOT_SERVING
        for service, status in wanted.items():
            if self._statuses.get(service) != status:  # only changes reach the servicer
                await self._health.set(service, status)
        self._statuses = wanted
