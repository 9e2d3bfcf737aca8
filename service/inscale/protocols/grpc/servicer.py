"""`inference.GRPCInferenceService`: each RPC reads its message, asks the core (the data plane,
its registry, the control operations) and encodes the answer.

Model metadata, config and statistics are the same documents the V2 HTTP routes serve
(`inscale.protocols.v2.config_json`, `stats`), turned into the protocol's messages by
protobuf's own JSON mapping, so the two transports cannot drift apart. Errors are the core's
exceptions; how every call runs (request id, status codes, metrics, refusal at shutdown) is
`calls.Calls`.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from inscale import __version__, control
from inscale.errors import InscaleError, InvalidInput, ModelNotFound, ModelNotReady
from inscale.logs import MAX_ID_LENGTH, new_request_id, request_id
from inscale.metrics.prometheus import Metrics
from inscale.models.registry import ModelState
from inscale.models.repository import parse_version
from inscale.models.version import ModelVersion
from inscale.protocols.grpc import codec
from inscale.protocols.grpc.calls import Calls, Context, Failed, metadata_value
from inscale.protocols.grpc.errors import server_failed
from inscale.protocols.grpc.stubs import model_config_pb2, service_pb2_grpc
from inscale.protocols.grpc.stubs import service_pb2 as pb
from inscale.protocols.v2 import config_json, stats
from inscale.server_state import ServerState

log = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK
_UNIMPLEMENTED = {
    "SystemSharedMemoryStatus": "system shared memory",
    "SystemSharedMemoryRegister": "system shared memory",
    "SystemSharedMemoryUnregister": "system shared memory",
    "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory",
    "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "tracing",
    "LogSettings": "log settings",
}


_END = object()  # stream marker: the client sent its last request
_CLOSING = object()  # stream marker: the server began to shut down


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, state: ServerState, metrics: Metrics | None) -> None:
        self._state = state
        self._plane = state.plane
        self._calls = Calls(metrics)

    def begin_shutdown(self) -> None:
        """New calls are refused with UNAVAILABLE from now on; open streams stop reading,
        answer what they took, then end with UNAVAILABLE."""
        self._calls.begin_shutdown()

    async def drained(self, quiet_s: float) -> None:
        await self._calls.drained(quiet_s)

    def _model(self, name: str, version: str) -> ModelVersion:
        if not name:
            raise InvalidInput("a model name is required")
        return self._plane.model(name, parse_version(version))

    # -- server and model metadata ----------------------------------------------------------

    async def ServerLive(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            return pb.ServerLiveResponse(live=True)

        return await self._calls.serve("ServerLive", context, handle)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            return pb.ServerReadyResponse(ready=self._state.ready())

        return await self._calls.serve("ServerReady", context, handle)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            try:
                self._model(request.name, request.version)
            except (ModelNotFound, ModelNotReady):
                # Not an error, as Triton answers: clients poll this until a model is ready.
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._calls.serve("ModelReady", context, handle)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            return pb.ServerMetadataResponse(
                name="inscale", version=__version__, extensions=list(config_json.EXTENSIONS)
            )

        return await self._calls.serve("ServerMetadata", context, handle)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            model = self._model(request.name, request.version)
            ready = [
                e.version
                for e in self._plane.registry.entries(model.name)
                if e.state is ModelState.READY
            ]
            document = config_json.model_metadata(model, ready)
            return json_format.ParseDict(document, pb.ModelMetadataResponse())

        return await self._calls.serve("ModelMetadata", context, handle)

    async def ModelConfig(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            model = self._model(request.name, request.version)
            config = json_format.ParseDict(
                config_json.model_config(model), model_config_pb2.ModelConfig()
            )
            return pb.ModelConfigResponse(config=config)

        return await self._calls.serve("ModelConfig", context, handle)

    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            registry = self._plane.registry
            if not request.name:
                names = registry.names()
            elif request.version:
                names = []
                models = [self._model(request.name, request.version)]
            else:
                names = [request.name]
            if not request.name or not request.version:
                models = [e.model for n in names for e in registry.entries(n) if e.model]
            document = {"model_stats": [stats.model_stats(m, admission=False) for m in models]}
            return json_format.ParseDict(document, pb.ModelStatisticsResponse())

        return await self._calls.serve("ModelStatistics", context, handle)

    # -- model repository ---------------------------------------------------------------------

    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            rows = control.repository_index(self._plane.registry, request.ready)
            response = pb.RepositoryIndexResponse()
            for row in rows:
                response.models.add(
                    name=row.name, version=row.version, state=row.state, reason=row.reason
                )
            return response

        return await self._calls.serve("RepositoryIndex", context, handle)

    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            self._state.control.check(metadata_value(context, "authorization"))
            await control.load(self._plane.registry, request.model_name, request.parameters)
            return pb.RepositoryModelLoadResponse()

        return await self._calls.serve("RepositoryModelLoad", context, handle)

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            self._state.control.check(metadata_value(context, "authorization"))
            await control.unload(self._plane.registry, request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._calls.serve("RepositoryModelUnload", context, handle)

    # -- inference ----------------------------------------------------------------------------

    async def _infer(self, request: Any, context: Context, started: float) -> Any:
        model = self._model(request.model_name, request.model_version)
        parsed = self._plane.decode(model, lambda rules: codec.decode_request(request, rules))
        timeout_s = parsed.timeout_s
        remaining = context.time_remaining()  # the gRPC deadline bounds the batcher's
        if remaining is not None:
            timeout_s = remaining if timeout_s is None else min(timeout_s, remaining)
        results = await self._plane.infer(
            model, parsed.arrays, started=started, timeout_s=timeout_s, priority=parsed.priority
        )
        return codec.encode_response(model.name, model.version, parsed, results, model.signature)

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        started = time.perf_counter()
        return await self._calls.serve(
            "ModelInfer", context, lambda: self._infer(request, context, started)
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Bidirectional: each request runs as it arrives; answers go back in the order they
        complete, each with its request's `id`. A failed request is answered with its
        `error_message` and the stream goes on, as Triton does."""
        answers: asyncio.Queue[Any] = asyncio.Queue()  # answers, and the two markers
        tasks: set[asyncio.Task[None]] = set()  # strong references while they run
        taken = 0  # requests read so far

        async def answer(request: Any) -> None:
            answers.put_nowait(await self._stream_one(request, context))

        async def read() -> None:
            nonlocal taken
            try:
                async for request in request_iterator:
                    taken += 1
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except asyncio.CancelledError:
                raise  # the server is closing: `_CLOSING` says so
            except Exception as exc:  # the client's half of the stream broke
                log.warning("gRPC stream: reading requests failed: %s", exc)
            answers.put_nowait(_END)

        async def close() -> None:
            await self._calls.closing.wait()
            reader.cancel()  # read no more; what was taken is still answered
            answers.put_nowait(_CLOSING)

        if self._calls.closing.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self._calls.enter()
        reader = asyncio.create_task(read())
        closer = asyncio.create_task(close())
        sent = 0
        ended = closing = False
        try:
            while not ((ended or closing) and sent == taken):
                item = await answers.get()
                if item is _END:
                    ended = True
                elif item is _CLOSING:
                    closing = True
                else:
                    sent += 1
                    yield item
        finally:
            reader.cancel()
            closer.cancel()
            self._calls.leave()
        if closing and not ended:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")

    async def _stream_one(self, request: Any, context: Context) -> Any:
        started = time.perf_counter()
        rid = request.id[:MAX_ID_LENGTH] or new_request_id()
        token = request_id.set(rid)
        code = _OK
        try:
            response = await self._infer(request, context, started)
            return pb.ModelStreamInferResponse(infer_response=response)
        except (InscaleError, Failed) as exc:
            code, message = self._calls.failure(exc, rid)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("gRPC stream request crashed")
            message = server_failed(rid)
        finally:
            request_id.reset(token)
            self._calls.record("ModelStreamInfer", code, time.perf_counter() - started)
        echo = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        return pb.ModelStreamInferResponse(error_message=message, infer_response=echo)


def _unimplemented(method: str, feature: str) -> Callable[..., Awaitable[Any]]:
    async def rpc(self: InferenceServicer, request: Any, context: Context) -> Any:
        async def handle() -> Any:
            raise Failed(
                grpc.StatusCode.UNIMPLEMENTED, f"{method}: inscale does not implement {feature}"
            )

        return await self._calls.serve(method, context, handle)

    rpc.__name__ = method
    return rpc


for _method, _feature in _UNIMPLEMENTED.items():
    setattr(InferenceServicer, _method, _unimplemented(_method, _feature))
