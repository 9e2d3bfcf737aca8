"""Ask a server's `grpc.health.v1.Health` service, as Kubernetes' gRPC probes and
grpc_health_probe do: service "" is the server's readiness, a model's name that model's."""

import time

import grpc
from grpc_health.v1 import health_pb2

CHECK = "/grpc.health.v1.Health/Check"


def health_status(target: str, service: str = "", timeout_s: float = 5) -> str:
    """The status name (`SERVING`, `NOT_SERVING`, ...) one Check answers; raises on an error."""
    with grpc.insecure_channel(target) as channel:
        # The method by its full name, as a probe calls it (the typing stubs give the
        # generated HealthStub no methods).
        check = channel.unary_unary(
            CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


def wait_serving(target: str, service: str = "", timeout_s: float = 60) -> None:
    """Poll until Check answers SERVING, as a probe would; fail with the last answer.

    The server refreshes its health statuses from its state twice a second, so SERVING can
    lag HTTP readiness by that much; before the port is open the call fails with UNAVAILABLE.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            last = health_status(target, service, timeout_s=2)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        if last == "SERVING":
            return
        time.sleep(0.2)
    raise AssertionError(f"gRPC health of {service!r} at {target} never SERVING: {last}")
