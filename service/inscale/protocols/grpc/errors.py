"""gRPC status codes for the core's errors: the gRPC protocol's one table."""

from collections.abc import Mapping

import grpc

from inscale.errors import (
    DeadlineExceeded,
    InscaleError,
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    Unsupported,
    lookup,
)

GRPC_STATUS: Mapping[type[InscaleError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,  # loading, failed, unloading, shutting down
    QueueFull: grpc.StatusCode.UNAVAILABLE,  # with a retry hint in the trailing metadata
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelExecutionError: grpc.StatusCode.INTERNAL,  # the message carries only the request id
}
# Errors whose message is sent as it is; for the others only the request id is.
_SAID = frozenset(GRPC_STATUS.values()) - {grpc.StatusCode.INTERNAL}


def code_for(exc: InscaleError) -> grpc.StatusCode:
    return lookup(exc, GRPC_STATUS, grpc.StatusCode.INTERNAL)


def message_for(exc: InscaleError, code: grpc.StatusCode, request_id: str) -> str:
    if code in _SAID:
        return exc.message
    return server_failed(request_id)


def server_failed(request_id: str) -> str:
    return f"the server failed to handle this request (request id {request_id})"
