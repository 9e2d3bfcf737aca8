"""The gRPC service through the plain generated stub, health, reflection, metrics and imports.

tritonclient always sends tensors raw, so the typed `contents` form is sent here with
`service_pb2_grpc.GRPCInferenceServiceStub` on a `grpc.insecure_channel`, as a Go or Java
client with generated stubs would.
"""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor

from support.grpc_server import GrpcServer, running_grpc_server
from support.onnx_models import add_model, identity, two_in_two_out
from support.v2 import DATATYPES, v2_infer_body, wait_for

T = 10.0  # seconds: every call is bounded
SERVICE = "inference.GRPCInferenceService"
ELEMENTS = {name: elem for name, elem, _ in DATATYPES}
NUMPY = {name: np.dtype(numpy) for name, _, numpy in DATATYPES}
# (datatype, its typed field, values of a [2, 3] tensor): extremes of each range.
TYPED = [
    ("INT8", "int_contents", [-128, -1, 0, 1, 100, 127]),
    ("INT32", "int_contents", [-(2**31), -5, 0, 7, 2**30, 2**31 - 1]),
    ("UINT64", "uint64_contents", [0, 1, 2**32, 2**63, 2**64 - 2, 2**64 - 1]),
    ("FP64", "fp64_contents", [-1e300, -0.5, 0.0, 1.25, 3e-300, 1e300]),
    ("BOOL", "bool_contents", [True, False, False, True, True, False]),
    (
        "BYTES",
        "bytes_contents",
        [b"", b"a", "h\u00e9llo".encode(), "\u65e5".encode(), b"x" * 40, b"\t"],
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    repo = tmp_path_factory.mktemp("grpc-service")
    for datatype, _, _ in TYPED:
        add_model(repo, f"id_{datatype.lower()}", identity(ELEMENTS[datatype], ("N", 3)))
    add_model(repo, "pair", two_in_two_out())
    add_model(repo, "metered", identity())  # only the metrics test sends to it
    add_model(repo, "probed", identity())  # only the health test unloads it
    with running_grpc_server(repo) as running:
        yield running


@pytest.fixture
def stub(server: GrpcServer) -> Iterator[Any]:
    with grpc.insecure_channel(server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_request(model: str, array: np.ndarray, name: str = "x", rid: str = "") -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name=name, datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(np.ascontiguousarray(array, np.float32).tobytes())
    return request


def output_array(response: Any, index: int, datatype: str) -> np.ndarray:
    shape = list(response.outputs[index].shape)
    raw = response.raw_output_contents[index]
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(shape)  # type: ignore[no-any-return]
    return np.frombuffer(raw, dtype=NUMPY[datatype]).reshape(shape)


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The error a call fails with (a `grpc.Call` too: code, details, trailing metadata)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=T, **kwargs)
    return caught.value


# -- typed contents and errors, through the generated stub --------------------------------


@pytest.mark.parametrize(("datatype", "field", "values"), TYPED, ids=[t[0] for t in TYPED])
def test_typed_contents_are_answered_raw(
    stub: Any, datatype: str, field: str, values: list[Any]
) -> None:
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}", id="typed")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    getattr(tensor.contents, field).extend(values)
    response = stub.ModelInfer(request, timeout=T)
    assert response.id == "typed"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", datatype, [2, 3])
    ]
    assert not response.outputs[0].HasField("contents")  # answers travel raw, as Triton's do
    got = output_array(response, 0, datatype)
    if datatype == "BYTES":
        assert got.ravel().tolist() == values
    else:
        np.testing.assert_array_equal(got, np.array(values, dtype=NUMPY[datatype]).reshape(2, 3))


def test_errors_have_the_http_messages_and_a_failed_run_only_its_request_id(
    stub: Any, server: GrpcServer
) -> None:
    unknown = rpc_error(stub.ModelInfer, raw_request("no-such-model", np.zeros((1, 4))))
    assert (unknown.code(), unknown.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'no-such-model'",
    )

    wrong = rpc_error(stub.ModelInfer, raw_request("metered", np.zeros((2, 5))))
    http = httpx.post(
        f"{server.url}/v2/models/metered/infer", json=v2_infer_body("x", [[0.0] * 5] * 2), timeout=T
    )
    assert http.status_code == 400
    assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong.details() == http.json()["error"]
    assert wrong.details() == "input 'x': expected shape [-1, 4], got [2, 5] (axis 1 must be 4)"

    request = service_pb2.ModelInferRequest(model_name="pair")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(
        [1, 2, 3]
    )
    request.inputs.add(name="idx", datatype="INT64", shape=[1, 2]).contents.int64_contents.extend(
        [0, 7]
    )
    failed = rpc_error(stub.ModelInfer, request, metadata=[("x-request-id", "grpc-fail-1")])
    assert failed.code() == grpc.StatusCode.INTERNAL
    assert failed.details() == "the server failed to handle this request (request id grpc-fail-1)"
    assert dict(failed.trailing_metadata())["x-request-id"] == "grpc-fail-1"
    wait_for(
        lambda: any(
            r.get("request_id") == "grpc-fail-1" and r.get("level") == "error"
            for r in server.process.log_records()
        ),
        "the failure in the server log",
    )
    del request.inputs[1].contents.int64_contents[:]
    request.inputs[1].contents.int64_contents.extend([2, 0])
    assert list(output_array(stub.ModelInfer(request, timeout=T), 1, "FP32").ravel()) == [3.0, 1.0]


def test_a_stream_answers_a_failed_request_with_its_id_and_goes_on(stub: Any) -> None:
    requests = [
        raw_request("metered", np.full((1, 4), 1.0), rid="one"),
        raw_request("metered", np.zeros((1, 3)), rid="bad"),
        raw_request("metered", np.full((2, 4), 3.0), rid="three"),
    ]
    answers = {a.infer_response.id: a for a in stub.ModelStreamInfer(iter(requests), timeout=T)}
    assert sorted(answers) == ["bad", "one", "three"]
    assert (
        answers["bad"].error_message
        == "input 'x': expected shape [-1, 4], got [1, 3] (axis 1 must be 4)"
    )
    assert answers["bad"].infer_response.model_name == "metered"
    assert answers["one"].error_message == answers["three"].error_message == ""
    np.testing.assert_array_equal(
        output_array(answers["three"].infer_response, 0, "FP32"), np.full((2, 4), 3.0)
    )


# -- health and reflection ------------------------------------------------------------------


def test_health_reports_the_server_and_each_model(server: GrpcServer) -> None:
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    with grpc.insecure_channel(server.target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # its stub types no methods

        def status(service: str) -> Any:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=T).status

        # Health follows readiness within its refresh period (0.5 s), not at the same instant.
        wait_for(lambda: status("") == serving, "overall SERVING", timeout_s=5)
        assert status(SERVICE) == serving
        assert status("probed") == serving
        unknown = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="no-such-model"))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        # A model unloaded over HTTP stops serving over gRPC's health too, and comes back.
        unload = httpx.post(f"{server.url}/v2/repository/models/probed/unload", timeout=T)
        assert unload.status_code == 200
        wait_for(lambda: status("probed") == not_serving, "probed NOT_SERVING", timeout_s=5)
        assert status("") == serving  # the other models still serve
        assert (
            httpx.post(f"{server.url}/v2/repository/models/probed/load", timeout=T).status_code
            == 200
        )
        wait_for(lambda: status("probed") == serving, "probed SERVING again", timeout_s=5)


def test_reflection_lists_and_describes_the_services(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        listed, described = list(reflection.ServerReflectionInfo(iter(asks), timeout=T))
    services = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {
        m.name for f in files if f.package == "inference" for s in f.service for m in s.method
    }
    assert {"ModelInfer", "ModelStreamInfer", "ModelConfig", "RepositoryModelLoad"} <= methods


# -- metrics --------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=T).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    """How much every series of `name` whose labels include `labels` moved, summed."""
    wanted = set(labels.items())
    return sum(
        value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == name and wanted <= key[1]
    )


def test_grpc_series_by_method_and_code_and_per_model_series_as_for_http(
    stub: Any, server: GrpcServer
) -> None:
    start = scrape(server.url)
    for _ in range(3):
        stub.ModelInfer(raw_request("metered", np.ones((2, 4))), timeout=T)
    rpc_error(stub.ModelInfer, raw_request("metered", np.ones((2, 3))))
    list(stub.ModelStreamInfer(iter([raw_request("metered", np.ones((1, 4)))] * 2), timeout=T))
    grpc_done = scrape(server.url)
    grpc_series = "inscale_grpc_requests_total"
    assert moved(start, grpc_done, grpc_series, method="ModelInfer", code="OK") == 3
    assert moved(start, grpc_done, grpc_series, method="ModelInfer", code="INVALID_ARGUMENT") == 1
    assert moved(start, grpc_done, grpc_series, method="ModelStreamInfer", code="OK") == 2
    duration = "inscale_grpc_request_duration_seconds_count"
    assert moved(start, grpc_done, duration, method="ModelInfer", code="OK") == 3
    assert moved(start, grpc_done, duration, method="ModelInfer", code="INVALID_ARGUMENT") == 1
    assert (
        moved(start, grpc_done, "inscale_grpc_request_duration_seconds_sum", method="ModelInfer")
        > 0
    )
    model = {"model": "metered"}
    assert moved(start, grpc_done, "inscale_requests_total", outcome="success", **model) == 5
    assert moved(start, grpc_done, "inscale_requests_total", outcome="bad_input", **model) == 1

    # One request over each protocol moves the per-model series by the same amounts.
    before = scrape(server.url)
    stub.ModelInfer(raw_request("metered", np.ones((2, 4))), timeout=T)
    middle = scrape(server.url)
    body = v2_infer_body("x", [[1.0] * 4] * 2)
    assert (
        httpx.post(f"{server.url}/v2/models/metered/infer", json=body, timeout=T).status_code == 200
    )
    after = scrape(server.url)
    for name in (
        "inscale_requests_total",
        "inscale_inference_rows_total",
        "inscale_model_runs_total",
        "inscale_request_duration_seconds_count",
        "inscale_batch_size_rows_sum",
    ):
        by_grpc, by_http = moved(before, middle, name, **model), moved(middle, after, name, **model)
        assert by_grpc == by_http > 0, name
    assert moved(middle, after, grpc_series) == 0  # HTTP is not counted as gRPC


# -- one process, both sets of stubs ---------------------------------------------------------

IMPORTS = {
    "tritonclient first": "import tritonclient.grpc, tritonclient.grpc.aio\nimport inscale.app\n",
    "inscale first": "import inscale.app\nimport tritonclient.grpc, tritonclient.grpc.aio\n",
}
CHECK = """
from google.protobuf import descriptor_pool
from inscale.protocols.grpc.stubs import model_config_pb2, service_pb2, service_pb2_grpc
assert service_pb2 is tritonclient.grpc.service_pb2
assert service_pb2_grpc is tritonclient.grpc.service_pb2_grpc
assert model_config_pb2 is tritonclient.grpc.model_config_pb2
service = descriptor_pool.Default().FindServiceByName("inference.GRPCInferenceService")
assert service.methods_by_name["ModelInfer"].input_type.full_name == "inference.ModelInferRequest"
message = service_pb2.ModelInferRequest(model_name="m").SerializeToString()
assert tritonclient.grpc.service_pb2.ModelInferRequest.FromString(message).model_name == "m"
print("one set of stubs")
"""


@pytest.mark.parametrize("order", list(IMPORTS))
def test_inscale_and_tritonclient_grpc_share_one_set_of_stubs(order: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", IMPORTS[order] + CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the project root: the installed packages, as a user's process has
    )
    assert result.returncode == 0, result.stderr
    assert "duplicate" not in result.stderr.lower()
    assert result.stdout.strip() == "one set of stubs"
