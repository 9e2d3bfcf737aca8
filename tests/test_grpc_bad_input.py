"""Malformed gRPC requests sent with the raw generated stub: the code, the message, and that
serving goes on.

tritonclient checks some things before it sends (datatypes, shapes against the data it was
given), so these cases are built as protobuf messages and sent with `service_pb2_grpc`'s stub,
as a Go or Java client would. Where the problem is the one the V2 HTTP suite
(tests/test_v2_bad_input.py) sends, the message is the same word for word; where the wire
form differs (the field that carried the data), the message names the gRPC field.
"""

import re
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from support.grpc_server import GrpcServer, running_grpc_server
from support.onnx_models import add_model, busy, identity, two_in_two_out
from support.v2 import bf16_model, model_counters, wait_for

BODY_LIMIT = 64 * 1024
FLOATS_1x4 = np.arange(4, dtype=np.float32).tobytes()
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
Stub = Any  # service_pb2_grpc.GRPCInferenceServiceStub: generated, untyped


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    repo = tmp_path_factory.mktemp("grpc-bad-input")
    add_model(repo, "identity", identity())
    add_model(repo, "pair", two_in_two_out())
    add_model(repo, "bulk", identity(), config={"batching": {"max_request_rows": 8}})
    add_model(repo, "strings", identity(TensorProto.STRING, ("N", 2)))
    add_model(repo, "int8", identity(TensorProto.INT8, ("N", 2)))
    add_model(repo, "uint8", identity(TensorProto.UINT8, ("N", 2)))
    add_model(repo, "uint16", identity(TensorProto.UINT16, ("N", 2)))
    add_model(repo, "half", identity(TensorProto.FLOAT16, ("N", 2)))
    add_model(repo, "bf16", bf16_model())
    add_model(
        repo,
        "busy",
        busy(),
        config={
            "runtime": {"intra_op_threads": 1},
            # No admission: its run time is chosen per request, not by its rows.
            "batching": {"max_batch_size": 8, "max_queue_size": 2, "admission": False},
            "timeout_ms": 60_000,
        },
    )
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    # A retry hint that is not the default (1), so the queue-full test shows it is read.
    env = {"INSCALE_RETRY_AFTER_S": "7"}
    with running_grpc_server(repo, "--max-body-bytes", str(BODY_LIMIT), env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(server: GrpcServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as chan:
        grpc.channel_ready_future(chan).result(timeout=20)
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> Iterator[Stub]:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    yield stub
    # Whatever a test sent, the server still answers a valid request.
    assert_serves(stub)


def assert_serves(stub: Stub) -> None:
    response = stub.ModelInfer(infer("identity", tensor("x", "FP32", [1, 4]), raw=[FLOATS_1x4]))
    assert [o.name for o in response.outputs] == ["y"]
    assert response.raw_output_contents == [FLOATS_1x4]


# -- building requests ------------------------------------------------------------------------


def tensor(
    name: str,
    datatype: str,
    shape: Sequence[int],
    parameters: dict[str, Any] | None = None,
    **contents: Any,
) -> Any:
    """An input; `contents` fills the typed fields (`fp32_contents=[...]`)."""
    return pb.ModelInferRequest.InferInputTensor(
        name=name,
        datatype=datatype,
        shape=shape,
        parameters=parameters or {},
        contents=pb.InferTensorContents(**contents) if contents else None,
    )


def infer(
    model: str,
    *inputs: Any,
    raw: Sequence[bytes] = (),
    outputs: Sequence[str | tuple[str, dict[str, Any]]] = (),
    version: str = "",
    **parameters: Any,
) -> Any:
    """A `ModelInferRequest`; `parameters` are `InferParameter` keyword arguments by name."""
    wanted = [(o, {}) if isinstance(o, str) else o for o in outputs]
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        raw_input_contents=raw,
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n, parameters=p) for n, p in wanted
        ],
        parameters={k: pb.InferParameter(**v) for k, v in parameters.items()},
    )


def x(shape: Sequence[int] = (1, 4), datatype: str = "FP32", **extra: Any) -> Any:
    return tensor("x", datatype, shape, **extra)


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30, **kwargs)
    return caught.value


def expect(error: grpc.RpcError, code: grpc.StatusCode, message: str) -> None:
    assert isinstance(error, grpc.Call)
    assert (error.code(), error.details()) == (code, message)


# (case id, request, code, the whole message). The messages also shared with HTTP's V2 suite
# are copied from it: a difference here is a difference between the transports.
SHAPE_RAW = "raw_input_contents"
CASES: list[tuple[str, Any, grpc.StatusCode, str]] = [
    # -- the same problems as over HTTP, the same messages
    (
        "unknown input",
        infer("identity", tensor("z", "FP32", [1, 4]), raw=[FLOATS_1x4]),
        INVALID,
        "unknown input 'z'; the model's inputs are: x",
    ),
    (
        "missing input",
        infer("pair", x([1, 3]), raw=[FLOATS_1x4[:12]]),
        INVALID,
        "missing input 'idx'",
    ),
    (
        "input twice",
        infer("identity", x(), x(), raw=[FLOATS_1x4, FLOATS_1x4]),
        INVALID,
        "input 'x' appears twice",
    ),
    (
        "wrong datatype",
        infer("identity", x(datatype="INT32"), raw=[FLOATS_1x4]),
        INVALID,
        "input 'x': expected datatype FP32, got INT32",
    ),
    (
        "unknown datatype",
        infer("identity", x(datatype="FP8"), raw=[FLOATS_1x4]),
        INVALID,
        "input 'x': unknown datatype \"FP8\" (expected one of BOOL, UINT8, UINT16, UINT32, "
        "UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES, BF16)",
    ),
    (
        "no datatype",
        infer("identity", x(datatype=""), raw=[FLOATS_1x4]),
        INVALID,
        "input 'x': unknown datatype \"\" (expected one of BOOL, UINT8, UINT16, UINT32, "
        "UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES, BF16)",
    ),
    (
        "BF16 to an FP32 model",
        infer("identity", x(datatype="BF16"), raw=[FLOATS_1x4[:8]]),
        INVALID,
        "input 'x': expected datatype FP32, got BF16; this model cannot take BF16",
    ),
    (
        "shape off the declared dims",
        infer("identity", x([2, 3]), raw=[FLOATS_1x4 + FLOATS_1x4[:8]]),
        INVALID,
        "input 'x': expected shape [-1, 4], got [2, 3] (axis 1 must be 4)",
    ),
    (
        "negative dim",
        infer("identity", x([1, -4]), raw=[b""]),
        INVALID,
        "input 'x': \"shape\" must be an array of non-negative integers",
    ),
    (
        "element count off the shape",
        infer("identity", x([2, 4], fp32_contents=[1.0] * 7)),
        INVALID,
        "input 'x': shape [2, 4] has 8 elements but contents.fp32_contents has 7",
    ),
    (
        "huge declared shape in contents",
        infer("identity", x([10**15, 4], fp32_contents=[1.0] * 4)),
        INVALID,
        "input 'x': shape [1000000000000000, 4] has 4000000000000000 elements but "
        "contents.fp32_contents has 4",
    ),
    (
        "raw bytes off the shape",
        infer("identity", x(), raw=[FLOATS_1x4[:12]]),
        INVALID,
        "input 'x': raw_input_contents is 12 bytes but shape [1, 4] of FP32 needs 16 bytes",
    ),
    (
        "huge declared shape in raw",
        infer("identity", x([2**40, 4]), raw=[FLOATS_1x4]),
        INVALID,
        "input 'x': raw_input_contents is 16 bytes but shape [1099511627776, 4] of FP32 needs "
        "17592186044416 bytes",
    ),
    (
        "BYTES element past the end",
        infer(
            "strings",
            x([1, 2], "BYTES"),
            raw=[length_prefixed(b"ab") + struct.pack("<I", 100) + b"abc"],
        ),
        INVALID,
        "input 'x': BYTES element 1 claims 100 bytes but only 3 remain",
    ),
    (
        "BYTES elements beyond the shape",
        infer("strings", x([1, 2], "BYTES"), raw=[length_prefixed(b"ab", b"", b"c")]),
        INVALID,
        "input 'x': binary data has 5 bytes after the 2 BYTES elements that shape [1, 2] holds",
    ),
    (
        "BYTES elements short of the shape",
        infer("strings", x([1, 3], "BYTES"), raw=[length_prefixed(b"abcdefgh", b"")]),
        INVALID,
        "input 'x': binary data holds 2 BYTES elements but shape [1, 3] needs 3",
    ),
    (
        "BYTES huge shape",
        infer("strings", x([10**9, 2], "BYTES"), raw=[length_prefixed(b"ab")]),
        INVALID,
        "input 'x': shape [1000000000, 2] needs 2000000000 BYTES elements but the 6 bytes of "
        "binary data cannot hold that many",
    ),
    (
        "BYTES not UTF-8 in raw",
        infer("strings", x([1, 2], "BYTES"), raw=[length_prefixed(b"ok", b"\xff\xfe")]),
        INVALID,
        "input 'x': BYTES element 1 is not valid UTF-8, which ONNX Runtime string tensors need",
    ),
    (
        "BYTES not UTF-8 in contents",
        infer("strings", x([1, 2], "BYTES", bytes_contents=[b"ok", b"\xff\xfe"])),
        INVALID,
        "input 'x': BYTES element 1 is not valid UTF-8, which ONNX Runtime string tensors need",
    ),
    (
        "unknown output",
        infer("identity", x(), raw=[FLOATS_1x4], outputs=["nope"]),
        INVALID,
        "unknown output 'nope'; the model's outputs are: y",
    ),
    (
        "output twice",
        infer("identity", x(), raw=[FLOATS_1x4], outputs=["y", "y"]),
        INVALID,
        "output 'y' is requested twice",
    ),
    (
        "timeout negative",
        infer("identity", x(), raw=[FLOATS_1x4], timeout={"int64_param": -5}),
        INVALID,
        'the "timeout" parameter (microseconds) must be a non-negative integer, got -5',
    ),
    (
        "timeout a string",
        infer("identity", x(), raw=[FLOATS_1x4], timeout={"string_param": "soon"}),
        INVALID,
        'the "timeout" parameter (microseconds) must be a non-negative integer, got "soon"',
    ),
    (
        "timeout a fraction",
        infer("identity", x(), raw=[FLOATS_1x4], timeout={"double_param": 1.5}),
        INVALID,
        'the "timeout" parameter (microseconds) must be a non-negative integer, got 1.5',
    ),
    (
        "timeout with no value",
        infer("identity", x(), raw=[FLOATS_1x4], timeout={}),
        INVALID,
        'the "timeout" parameter (microseconds) must be a non-negative integer, got null',
    ),
    (
        "priority a string",
        infer("identity", x(), raw=[FLOATS_1x4], priority={"string_param": "high"}),
        INVALID,
        'the "priority" parameter must be a non-negative integer, got "high"',
    ),
    (
        "priority a boolean",
        infer("identity", x(), raw=[FLOATS_1x4], priority={"bool_param": True}),
        INVALID,
        'the "priority" parameter must be a non-negative integer, got true',
    ),
    (
        "rank past 64",
        infer("identity", x([1] * 70), raw=[FLOATS_1x4]),
        INVALID,
        "input 'x': shape has 70 dims; at most 64 are supported",
    ),
    (
        "too many rows",
        infer("bulk", x([9, 4]), raw=[FLOATS_1x4 * 9]),
        INVALID,
        "the request has 9 rows; this model takes at most 8 per request (its max_request_rows)",
    ),
    (
        "no inputs",
        infer("identity"),
        INVALID,
        '"inputs" must be a non-empty array of input tensors',
    ),
    (
        "shared memory input",
        infer("identity", x(parameters={"shared_memory_region": {"string_param": "r"}})),
        UNIMPLEMENTED,
        "input 'x': shared memory is not supported",
    ),
    (
        "shared memory output",
        infer(
            "identity",
            x(),
            raw=[FLOATS_1x4],
            outputs=[("y", {"shared_memory_region": pb.InferParameter(string_param="r")})],
        ),
        UNIMPLEMENTED,
        "output 'y': the shared_memory_region parameter is not supported",
    ),
    (
        "classification",
        infer(
            "identity",
            x(),
            raw=[FLOATS_1x4],
            outputs=[("y", {"classification": pb.InferParameter(int64_param=2)})],
        ),
        UNIMPLEMENTED,
        "output 'y': the classification parameter is not supported",
    ),
    # -- problems only gRPC's form of a request can have
    (
        "more raw contents than inputs",
        infer("identity", x(), raw=[FLOATS_1x4, FLOATS_1x4]),
        INVALID,
        "raw_input_contents has 2 entries but the request has 1 inputs; send every input raw, "
        "in order, or none",
    ),
    (
        "fewer raw contents than inputs",
        infer("pair", x([1, 3]), tensor("idx", "INT64", [1, 2]), raw=[FLOATS_1x4[:12]]),
        INVALID,
        "raw_input_contents has 1 entries but the request has 2 inputs; send every input raw, "
        "in order, or none",
    ),
    (
        "raw and contents",
        infer("identity", x(fp32_contents=[1, 2, 3, 4]), raw=[FLOATS_1x4]),
        INVALID,
        "input 'x' has both contents and raw_input_contents",
    ),
    (
        "neither raw nor contents",
        infer("identity", x()),
        INVALID,
        "input 'x' has neither contents nor raw_input_contents",
    ),
    (
        "FP16 in typed contents",
        infer("half", x([1, 2], "FP16", fp32_contents=[1, 2])),
        INVALID,
        "input 'x': FP16 data has no typed contents field; send it in raw_input_contents",
    ),
    (
        "BF16 in typed contents",
        infer("bf16", x([1, 2], "BF16", fp32_contents=[1, 2])),
        INVALID,
        "input 'x': BF16 data has no typed contents field; send it in raw_input_contents",
    ),
    (
        "contents in the wrong typed field",
        infer("identity", x(int_contents=[1, 2, 3, 4])),
        INVALID,
        "input 'x': datatype FP32 travels in contents.fp32_contents, but the request fills "
        "contents.int_contents",
    ),
    (
        "INT8 above its range",
        infer("int8", x([1, 2], "INT8", int_contents=[1, 300])),
        INVALID,
        "input 'x': values outside the range of int8",
    ),
    (
        "INT8 below its range",
        infer("int8", x([1, 2], "INT8", int_contents=[-200, 1])),
        INVALID,
        "input 'x': values outside the range of int8",
    ),
    (
        "UINT8 above its range",
        infer("uint8", x([1, 2], "UINT8", uint_contents=[1, 300])),
        INVALID,
        "input 'x': values outside the range of uint8",
    ),
    (
        "UINT16 above its range",
        infer("uint16", x([1, 2], "UINT16", uint_contents=[70_000, 1])),
        INVALID,
        "input 'x': values outside the range of uint16",
    ),
]


@pytest.mark.parametrize(
    ("request_message", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_infer_requests(
    stub: Stub, request_message: Any, code: grpc.StatusCode, message: str
) -> None:
    expect(rpc_error(stub.ModelInfer, request_message), code, message)


def test_malformed_requests_on_a_stream_are_answered_in_it(stub: Stub) -> None:
    """Each bad request on a stream gets its message in `error_message`; the stream goes on
    and a good request after them all is answered."""
    requests = [pb.ModelInferRequest() for _ in CASES]
    for index, (request, case) in enumerate(zip(requests, CASES, strict=True)):
        request.CopyFrom(case[1])
        request.id = f"bad-{index}"
    good = infer("identity", x(), raw=[FLOATS_1x4])
    good.id = "good"
    answers = list(stub.ModelStreamInfer(iter([*requests, good]), timeout=30))
    errors = {a.infer_response.id: a.error_message for a in answers}
    assert errors == {**{f"bad-{i}": c[3] for i, c in enumerate(CASES)}, "good": ""}
    [answer] = [a for a in answers if a.infer_response.id == "good"]
    assert answer.infer_response.raw_output_contents == [FLOATS_1x4]


# -- models and versions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "version", "code", "message"),
    [
        ("nope", "", grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ("identity", "9", grpc.StatusCode.NOT_FOUND, "model 'identity' has no version 9"),
        ("", "", INVALID, "a model name is required"),
        ("identity", "abc", INVALID, "model version 'abc' is not a positive integer"),
        ("identity", "0", INVALID, "model version '0' is not a positive integer"),
        ("identity", "-1", INVALID, "model version '-1' is not a positive integer"),
        ("identity", "1.0", INVALID, "model version '1.0' is not a positive integer"),
        ("identity", " 1", INVALID, "model version ' 1' is not a positive integer"),
        ("identity", "\u0661", INVALID, "model version '\u0661' is not a positive integer"),
    ],
)
def test_unknown_model_or_bad_version(
    stub: Stub, model: str, version: str, code: grpc.StatusCode, message: str
) -> None:
    request = infer(model, x(), raw=[FLOATS_1x4], version=version)
    expect(rpc_error(stub.ModelInfer, request), code, message)


@pytest.mark.parametrize(
    ("method", "request_message", "message"),
    [
        ("ModelMetadata", pb.ModelMetadataRequest(name="nope"), "unknown model 'nope'"),
        ("ModelConfig", pb.ModelConfigRequest(name="nope"), "unknown model 'nope'"),
        ("ModelStatistics", pb.ModelStatisticsRequest(name="nope"), "unknown model 'nope'"),
    ],
)
def test_other_rpcs_on_an_unknown_model_are_not_found(
    stub: Stub, method: str, request_message: Any, message: str
) -> None:
    expect(rpc_error(getattr(stub, method), request_message), grpc.StatusCode.NOT_FOUND, message)


def test_model_ready_is_false_not_an_error_for_unknown_models_and_versions(stub: Stub) -> None:
    # As Triton answers: clients poll ModelReady until a model is ready.
    assert stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="identity", version="4")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="identity")).ready is True


def test_model_that_failed_to_load_is_unavailable_saying_what_http_says(
    stub: Stub, server: GrpcServer
) -> None:
    error = rpc_error(stub.ModelInfer, infer("broken", x(), raw=[FLOATS_1x4]))
    assert isinstance(error, grpc.Call)
    over_http = httpx.post(
        f"{server.url}/v2/models/broken/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]},
    )
    assert over_http.status_code == 503
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == over_http.json()["error"]
    assert "model 'broken'" in error.details() and "UNAVAILABLE" in error.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready is False


def test_model_failure_is_internal_with_only_the_request_id(stub: Stub) -> None:
    """GatherElements with an index out of range fails inside ONNX Runtime."""
    request = infer(
        "pair",
        x([1, 3]),
        tensor("idx", "INT64", [1, 2]),
        raw=[FLOATS_1x4[:12], np.array([[5, 5]], dtype=np.int64).tobytes()],
    )
    error = rpc_error(stub.ModelInfer, request, metadata=[("x-request-id", "grpc-bad-7")])
    expect(
        error,
        grpc.StatusCode.INTERNAL,
        "the server failed to handle this request (request id grpc-bad-7)",
    )
    assert isinstance(error, grpc.Call)
    assert ("x-request-id", "grpc-bad-7") in tuple(error.trailing_metadata() or ())


@pytest.mark.parametrize(
    ("method", "request_message", "feature"),
    [
        ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(), "system shared memory"),
        (
            "SystemSharedMemoryRegister",
            pb.SystemSharedMemoryRegisterRequest(name="r", key="/r", byte_size=16),
            "system shared memory",
        ),
        (
            "SystemSharedMemoryUnregister",
            pb.SystemSharedMemoryUnregisterRequest(),
            "system shared memory",
        ),
        ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest(), "CUDA shared memory"),
        (
            "CudaSharedMemoryRegister",
            pb.CudaSharedMemoryRegisterRequest(name="r", device_id=0, byte_size=16),
            "CUDA shared memory",
        ),
        (
            "CudaSharedMemoryUnregister",
            pb.CudaSharedMemoryUnregisterRequest(),
            "CUDA shared memory",
        ),
        ("TraceSetting", pb.TraceSettingRequest(), "tracing"),
        ("LogSettings", pb.LogSettingsRequest(), "log settings"),
    ],
)
def test_unimplemented_rpcs_say_so(
    stub: Stub, method: str, request_message: Any, feature: str
) -> None:
    expect(
        rpc_error(getattr(stub, method), request_message),
        UNIMPLEMENTED,
        f"{method}: inscale does not implement {feature}",
    )


# -- sizes and memory ----------------------------------------------------------------------------


def test_message_over_the_size_limit_is_refused_by_grpc(stub: Stub) -> None:
    """`--max-body-bytes` is gRPC's receive limit: grpcio refuses the message before our code
    sees it, with its own wording."""
    rows = BODY_LIMIT // len(FLOATS_1x4) + 1
    request = infer("identity", x([rows, 4]), raw=[FLOATS_1x4 * rows])
    error = rpc_error(stub.ModelInfer, request)
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # grpcio's words (1.85 prefixes "SERVER: "), with the message's size and the limit.
    wording = (
        rf"(SERVER: )?Received message larger than max \({request.ByteSize()} vs\. {BODY_LIMIT}\)"
    )
    assert re.fullmatch(wording, error.details()), error.details()


def test_message_under_the_size_limit_is_served(stub: Stub) -> None:
    text = b"x" * (BODY_LIMIT // 2 - 1024)
    request = infer("strings", x([1, 2], "BYTES"), raw=[length_prefixed(text, b"y")])
    assert request.ByteSize() < BODY_LIMIT
    response = stub.ModelInfer(request, timeout=30)
    assert response.raw_output_contents == [length_prefixed(text, b"y")]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


HUGE_SHAPES = [
    infer("identity", x([2**40, 4]), raw=[FLOATS_1x4]),
    infer("identity", x([2**62, 2**62]), raw=[FLOATS_1x4]),
    infer("identity", x([10**15, 4], fp32_contents=[1.0] * 4)),
    infer("strings", x([10**9, 2], "BYTES"), raw=[length_prefixed(b"ab")]),
    infer("strings", x([10**9, 2], "BYTES", bytes_contents=[b"ab"])),
]


def test_huge_declared_shapes_allocate_nothing(stub: Stub, server: GrpcServer) -> None:
    """A shape that promises terabytes costs a multiplication: had the server allocated for
    any of these it would have died or grown by gigabytes."""
    assert server.process.proc is not None
    pid = server.process.proc.pid
    for request in HUGE_SHAPES:  # warm up: first-use allocations are not growth
        assert rpc_error(stub.ModelInfer, request).code() == INVALID
    before = rss_bytes(pid)
    for i in range(100):
        error = rpc_error(stub.ModelInfer, HUGE_SHAPES[i % len(HUGE_SHAPES)])
        assert error.code() == INVALID
    growth = rss_bytes(pid) - before
    assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"


# -- a full queue, a request past its timeout ---------------------------------------------------

HOLD_WORK = 3000  # about a second of compute on one thread


def busy_request(value: float, work: int, **parameters: Any) -> Any:
    return infer(
        "busy",
        x(),
        tensor("work", "INT64", [1]),
        raw=[np.full(4, value, np.float32).tobytes(), np.array([work], np.int64).tobytes()],
        **parameters,
    )


@pytest.fixture
def held(stub: Stub, server: GrpcServer) -> Iterator["Future[Any]"]:
    """`busy`'s only instance, occupied by a request that runs about a second."""
    url = server.url
    wait_for(lambda: model_counters(url, "busy")["running"] == 0, "busy to be idle")
    holder: Future[Any] = stub.ModelInfer.future(busy_request(-1, HOLD_WORK), timeout=60)
    wait_for(lambda: model_counters(url, "busy")["running"] == 1, "the holder to run")
    yield holder
    assert len(holder.result().raw_output_contents) == 1


def test_full_queue_is_unavailable_with_a_retry_hint(
    stub: Stub, held: "Future[Any]", server: GrpcServer
) -> None:
    queued = [stub.ModelInfer.future(busy_request(i, 0), timeout=60) for i in range(2)]
    wait_for(lambda: model_counters(server.url, "busy")["queued"] == 2, "two queued")
    error = rpc_error(stub.ModelInfer, busy_request(9, 0))
    expect(
        error,
        grpc.StatusCode.UNAVAILABLE,
        "model 'busy' is overloaded: queue is full (2 requests waiting)",
    )
    assert isinstance(error, grpc.Call)
    assert ("retry-after", "7") in tuple(error.trailing_metadata() or ())
    assert [len(f.result().raw_output_contents) for f in queued] == [1, 1]


def test_timeout_parameter_is_the_request_deadline(stub: Stub, held: "Future[Any]") -> None:
    request = busy_request(1, 0, timeout={"int64_param": 50_000})
    expect(
        rpc_error(stub.ModelInfer, request),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "model 'busy': request timed out after 50 ms in the queue",
    )


@pytest.mark.parametrize("method", ["RepositoryModelLoad", "RepositoryModelUnload"])
def test_a_model_name_too_long_for_the_file_system_is_invalid_argument(
    stub: Stub, method: str
) -> None:
    request_type = getattr(pb, f"{method}Request")
    error = rpc_error(getattr(stub, method), request_type(model_name="y" * 5000))
    expect(
        error,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"model name '{'y' * 200}...' (5000 characters) is too long: a folder name takes at "
        "most 255 bytes",
    )
