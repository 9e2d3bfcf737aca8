"""Malformed V2 requests over raw HTTP: the status, the message, and that serving goes on.

Every case here is refused before anything is queued; each test then checks that a valid
request still succeeds, so no bad request can wedge the server.
"""

import gzip
import json
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto

from support.onnx_models import add_model, busy, identity, two_in_two_out
from support.server import ServerProcess, running_server
from support.v2 import model_counters, wait_for

BODY_LIMIT = 64 * 1024
FLOATS_1x4 = np.arange(4, dtype=np.float32).tobytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("v2-bad-input")
    add_model(repo, "identity", identity())
    add_model(repo, "pair", two_in_two_out())
    add_model(repo, "strings", identity(TensorProto.STRING, ("N", 2)))
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
    # A Retry-After that is not the default (1), so the 503 test shows the setting is read.
    env = {"INSCALE_MAX_BODY_BYTES": str(BODY_LIMIT), "INSCALE_RETRY_AFTER_S": "7"}
    with running_server(repo, env=env) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
        # Whatever a test sent, the server still answers a valid request.
        ok = c.post("/v2/models/identity/infer", json=fp32("x", [[1, 2, 3, 4]]))
        assert ok.status_code == 200, ok.text
        assert ok.json()["outputs"][0]["data"] == [1, 2, 3, 4]


def fp32(name: str, rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    tensor = {"name": name, "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
    return {"inputs": [{**tensor, **extra}]}


def binary_input(name: str, shape: list[int], datatype: str, size: int) -> dict[str, Any]:
    return {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


def with_binary(header: dict[str, Any], binary: bytes, length: int | None = None) -> dict[str, Any]:
    """httpx arguments for a JSON header followed by binary data."""
    text = json.dumps(header).encode()
    size = len(text) if length is None else length
    return {
        "content": text + binary,
        "headers": {"Inference-Header-Content-Length": str(size)},
    }


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def expect(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": message}


# (case id, model, httpx arguments, status, the whole error message)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "unknown input",
        "identity",
        {"json": fp32("z", [[1, 2, 3, 4]])},
        400,
        "unknown input 'z'; the model's inputs are: x",
    ),
    (
        "missing input",
        "pair",
        {"json": fp32("x", [[1, 2, 3]])},
        400,
        "missing input 'idx'",
    ),
    (
        "input twice",
        "identity",
        {"json": {"inputs": fp32("x", [[1, 2, 3, 4]])["inputs"] * 2}},
        400,
        "input 'x' appears twice",
    ),
    (
        "wrong datatype",
        "identity",
        {
            "json": {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}
                ]
            }
        },
        400,
        "input 'x': expected datatype FP32, got INT32",
    ),
    (
        "unknown datatype",
        "identity",
        {
            "json": {
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP8", "data": [1, 2, 3, 4]}]
            }
        },
        400,
        "input 'x': unknown datatype \"FP8\" (expected one of BOOL, UINT8, UINT16, UINT32, "
        "UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES, BF16)",
    ),
    (
        "BF16 to an FP32 model",
        "identity",
        {
            "json": {
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "BF16", "data": [1, 2, 3, 4]}]
            }
        },
        400,
        "input 'x': expected datatype FP32, got BF16; this model cannot take BF16",
    ),
    (
        "shape off the declared dims",
        "identity",
        {"json": fp32("x", [[1, 2, 3], [4, 5, 6]])},
        400,
        "input 'x': expected shape [-1, 4], got [2, 3] (axis 1 must be 4)",
    ),
    (
        "shape not a list of counts",
        "identity",
        {"json": {"inputs": [{"name": "x", "shape": [1, -4], "datatype": "FP32", "data": []}]}},
        400,
        "input 'x': \"shape\" must be an array of non-negative integers",
    ),
    (
        "element count off the shape",
        "identity",
        {
            "json": {
                "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 7}]
            }
        },
        400,
        "input 'x': shape [2, 4] has 8 elements but data has 7",
    ),
    (
        "huge declared shape in JSON",
        "identity",
        {
            "json": {
                "inputs": [
                    {"name": "x", "shape": [10**15, 4], "datatype": "FP32", "data": [1.0] * 4}
                ]
            }
        },
        400,
        "input 'x': shape [1000000000000000, 4] has 4000000000000000 elements but data has 4",
    ),
    (
        "ragged rows",
        "identity",
        {
            "json": {
                "inputs": [
                    {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [1]]}
                ]
            }
        },
        400,
        "input 'x': rows differ in length or mix types",
    ),
    (
        "strings for a float input",
        "identity",
        {
            "json": {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}
                ]
            }
        },
        400,
        "input 'x': expected numbers, got strings",
    ),
    (
        "binary_data_size off the shape",
        "identity",
        with_binary({"inputs": [binary_input("x", [1, 4], "FP32", 12)]}, FLOATS_1x4[:12]),
        400,
        "input 'x': binary_data_size is 12 bytes but shape [1, 4] of FP32 needs 16 bytes",
    ),
    (
        "huge declared shape in binary",
        "identity",
        with_binary({"inputs": [binary_input("x", [2**40, 4], "FP32", 16)]}, FLOATS_1x4),
        400,
        "input 'x': binary_data_size is 16 bytes but shape [1099511627776, 4] of FP32 needs "
        "17592186044416 bytes",
    ),
    (
        "binary past the end of the body",
        "identity",
        with_binary({"inputs": [binary_input("x", [1, 4], "FP32", 16)]}, FLOATS_1x4[:8]),
        400,
        "input 'x': binary_data_size 16 goes past the end of the body (8 bytes of binary data left)",
    ),
    (
        "binary nobody claims",
        "identity",
        with_binary({"inputs": [binary_input("x", [1, 4], "FP32", 16)]}, FLOATS_1x4 * 2),
        400,
        "the body has 16 bytes of binary data that no input claims",
    ),
    (
        "JSON header length past the end",
        "identity",
        with_binary({"inputs": [binary_input("x", [1, 4], "FP32", 16)]}, FLOATS_1x4, length=10_000),
        400,
        "Inference-Header-Content-Length is 10000 but the body has only ",
    ),
    (
        "JSON header length not a number",
        "identity",
        {"json": fp32("x", [[1, 2, 3, 4]]), "headers": {"Inference-Header-Content-Length": "ten"}},
        400,
        "Inference-Header-Content-Length 'ten' is not a byte count",
    ),
    (
        "JSON header length cutting the JSON",
        "identity",
        with_binary({"inputs": [binary_input("x", [1, 4], "FP32", 16)]}, FLOATS_1x4, length=20),
        400,
        "the JSON header is not valid JSON: ",
    ),
    (
        "data and binary_data_size",
        "identity",
        with_binary(
            {"inputs": [{**binary_input("x", [1, 4], "FP32", 16), "data": [1, 2, 3, 4]}]},
            FLOATS_1x4,
        ),
        400,
        "input 'x' has both data and binary_data_size",
    ),
    (
        "no data at all",
        "identity",
        {"json": {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}},
        400,
        "input 'x' has neither data nor binary_data_size",
    ),
    (
        "BYTES element past the end",
        "strings",
        with_binary(
            {"inputs": [binary_input("x", [1, 2], "BYTES", 13)]},
            length_prefixed(b"ab") + struct.pack("<I", 100) + b"abc",
        ),
        400,
        "input 'x': BYTES element 1 claims 100 bytes but only 3 remain",
    ),
    (
        "BYTES elements beyond the shape",
        "strings",
        with_binary(
            {"inputs": [binary_input("x", [1, 2], "BYTES", 15)]},
            length_prefixed(b"ab", b"", b"c"),
        ),
        400,
        "input 'x': binary data has 5 bytes after the 2 BYTES elements that shape [1, 2] holds",
    ),
    (
        "BYTES elements short of the shape",
        "strings",
        with_binary(
            {"inputs": [binary_input("x", [1, 3], "BYTES", 16)]},
            length_prefixed(b"abcdefgh", b""),
        ),
        400,
        "input 'x': binary data holds 2 BYTES elements but shape [1, 3] needs 3",
    ),
    (
        "BYTES huge shape",
        "strings",
        with_binary(
            {"inputs": [binary_input("x", [10**9, 2], "BYTES", 6)]}, length_prefixed(b"ab")
        ),
        400,
        "input 'x': shape [1000000000, 2] needs 2000000000 BYTES elements but the 6 bytes of "
        "binary data cannot hold that many",
    ),
    (
        "BYTES not UTF-8",
        "strings",
        with_binary(
            {"inputs": [binary_input("x", [1, 2], "BYTES", 12)]},
            length_prefixed(b"ok", b"\xff\xfe"),
        ),
        400,
        "input 'x': BYTES element 1 is not valid UTF-8, which ONNX Runtime string tensors need",
    ),
    (
        "unknown output",
        "identity",
        {"json": {**fp32("x", [[1, 2, 3, 4]]), "outputs": [{"name": "nope"}]}},
        400,
        "unknown output 'nope'; the model's outputs are: y",
    ),
    (
        "output twice",
        "identity",
        {"json": {**fp32("x", [[1, 2, 3, 4]]), "outputs": [{"name": "y"}, {"name": "y"}]}},
        400,
        "output 'y' is requested twice",
    ),
    (
        "binary_data not a boolean",
        "identity",
        {
            "json": {
                **fp32("x", [[1, 2, 3, 4]]),
                "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}],
            }
        },
        400,
        "output 'y': the \"binary_data\" parameter must be true or false",
    ),
    (
        "timeout not a count",
        "identity",
        {"json": {**fp32("x", [[1, 2, 3, 4]]), "parameters": {"timeout": -5}}},
        400,
        'the "timeout" parameter (microseconds) must be a non-negative integer, got -5',
    ),
    (
        "priority not a count",
        "identity",
        {"json": {**fp32("x", [[1, 2, 3, 4]]), "parameters": {"priority": "high"}}},
        400,
        'the "priority" parameter must be a non-negative integer, got "high"',
    ),
    (
        "too many rows",
        "identity",
        {"json": fp32("x", [[1, 2, 3, 4]] * 4097)},
        400,
        "the request has 4097 rows; this model takes at most 4096 per request (its max_request_rows)",
    ),
    (
        "not JSON",
        "identity",
        {"content": b"{inputs: nope"},
        400,
        "the request body is not valid JSON: ",
    ),
    (
        "not an object",
        "identity",
        {"json": [1, 2, 3]},
        400,
        'the request body must be a JSON object with "inputs"',
    ),
    (
        "no inputs",
        "identity",
        {"json": {"inputs": []}},
        400,
        '"inputs" must be a non-empty array of input tensors',
    ),
    (
        "empty body",
        "identity",
        {"content": b""},
        400,
        'the request body is empty; a JSON object with "inputs" is expected',
    ),
    (
        "raw body for a two-input model",
        "pair",
        {"content": FLOATS_1x4, "headers": {"Inference-Header-Content-Length": "0"}},
        400,
        "a raw binary body (Inference-Header-Content-Length: 0) needs a model with exactly one "
        "input; this one has 2 (x, idx)",
    ),
    (
        "raw body of the wrong size",
        "identity",
        {"content": FLOATS_1x4[:12], "headers": {"Inference-Header-Content-Length": "0"}},
        400,
        "input 'x': the raw body holds 3 FP32 elements, which do not fill shape [-1, 4] with batch 1",
    ),
    (
        "corrupt gzip",
        "identity",
        {"content": b"not gzip at all", "headers": {"Content-Encoding": "gzip"}},
        400,
        "the body is not valid gzip data: Error -3 while decompressing data: incorrect header check",
    ),
    (
        "gzip that inflates past the limit",
        "identity",
        {
            "content": gzip.compress(b" " * (BODY_LIMIT + 1)),
            "headers": {"Content-Encoding": "gzip"},
        },
        413,
        f"the gzip body inflates past the limit of {BODY_LIMIT} bytes",
    ),
    (
        "body over the limit",
        "identity",
        {"content": b" " * (BODY_LIMIT + 1)},
        413,
        f"request body of {BODY_LIMIT + 1} bytes exceeds the limit of {BODY_LIMIT}",
    ),
    (
        "unknown content encoding",
        "identity",
        {"content": b"{}", "headers": {"Content-Encoding": "br"}},
        415,
        "Content-Encoding 'br' is not supported (gzip or deflate)",
    ),
    (
        "shared memory",
        "identity",
        {"json": fp32("x", [[1, 2, 3, 4]], parameters={"shared_memory_region": "r"})},
        501,
        "input 'x': shared memory is not supported",
    ),
    (
        "classification",
        "identity",
        {
            "json": {
                **fp32("x", [[1, 2, 3, 4]]),
                "outputs": [{"name": "y", "parameters": {"classification": 2}}],
            }
        },
        501,
        "output 'y': the classification parameter is not supported",
    ),
]


@pytest.mark.parametrize(
    ("model", "request_args", "status", "message"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_malformed_infer_requests(
    client: httpx.Client, model: str, request_args: dict[str, Any], status: int, message: str
) -> None:
    response = client.post(f"/v2/models/{model}/infer", **request_args)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error.startswith(message) if message.endswith(" ") else error == message


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("/v2/models/identity/versions/9/infer", 404, "model 'identity' has no version 9"),
        (
            "/v2/models/identity/versions/abc/infer",
            400,
            "model version 'abc' is not a positive integer",
        ),
        (
            "/v2/models/identity/versions/0/infer",
            400,
            "model version '0' is not a positive integer",
        ),
    ],
)
def test_unknown_model_or_version(
    client: httpx.Client, path: str, status: int, message: str
) -> None:
    expect(client.post(path, json=fp32("x", [[1, 2, 3, 4]])), status, message)


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v2/models/nope", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope/config", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope/ready", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope/stats", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/identity/versions/4/ready", 404, "model 'identity' has no version 4"),
        (
            "GET",
            "/v2/models/identity/infer",
            405,
            "method GET is not allowed on /v2/models/identity/infer (allowed: POST)",
        ),
        (
            "POST",
            "/v2/repository/index",
            400,
            "the body is not valid JSON: invalid literal, expected 'null': line 1 column 1 (char 0)",
        ),
    ],
)
def test_other_routes_answer_json_errors(
    client: httpx.Client, method: str, path: str, status: int, message: str
) -> None:
    expect(
        client.request(method, path, content=b"nope" if method == "POST" else None), status, message
    )


def test_raw_body_is_one_tensor_with_every_output_binary(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/identity/infer",
        content=FLOATS_1x4,
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}
    ]
    assert response.content[length:] == FLOATS_1x4


def test_json_answer_never_carries_empty_parameters(client: httpx.Client) -> None:
    """perf_analyzer's C++ client fails on an output whose parameters lack binary_data_size."""
    response = client.post(
        "/v2/models/identity/infer",
        json={
            **fp32("x", [[1, 2, 3, 4]]),
            "id": "abc",
            "parameters": {"binary_data_output": False},
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert response.json() == {
        "model_name": "identity",
        "model_version": "1",
        "id": "abc",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
    }


def test_perf_analyzer_style_headers_on_an_all_json_body(client: httpx.Client) -> None:
    """The C++ client always sends the header length and a Content-Type, even with no binary."""
    body = json.dumps(fp32("x", [[1, 2, 3, 4]])).encode()
    response = client.post(
        "/v2/models/identity/versions/1/infer",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Inference-Header-Content-Length": str(len(body)),
            "Expect": "",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1, 2, 3, 4]


def test_json_nan_and_infinity_are_read_and_come_back_exactly_in_binary(
    client: httpx.Client,
) -> None:
    """perf_analyzer's JSON mode writes random floats, NaN and Infinity as bare words."""
    header = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, Infinity, -Infinity, 2.5]}], "parameters": {"binary_data_output": true}}'
    response = client.post(
        "/v2/models/identity/infer",
        content=header,
        headers={
            "Content-Type": "application/json",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    y = np.frombuffer(response.content[length:], dtype="<f4")
    assert np.isnan(y[0])
    assert y[1:].tolist() == [np.inf, -np.inf, 2.5]


# -- 503s: a full queue, a request past its timeout --------------------------------------

HOLD_WORK = 3000  # about a second of compute on one thread


def busy_request(x: float, work: int, **parameters: object) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [x] * 4},
            {"name": "work", "shape": [1], "datatype": "INT64", "data": [work]},
        ],
        "parameters": parameters,
    }


@pytest.fixture
def held(server: ServerProcess) -> Iterator[tuple[ThreadPoolExecutor, "Future[httpx.Response]"]]:
    """`busy`'s only instance, occupied by a request that runs about a second."""
    url = server.url
    wait_for(lambda: model_counters(url, "busy")["running"] == 0, "busy to be idle")
    with ThreadPoolExecutor(4) as pool:
        holder = pool.submit(
            httpx.post, f"{url}/v2/models/busy/infer", json=busy_request(-1, HOLD_WORK), timeout=60
        )
        wait_for(lambda: model_counters(url, "busy")["running"] == 1, "the holder to run")
        yield pool, holder
        assert holder.result().status_code == 200


def test_full_queue_is_503_with_retry_after(
    client: httpx.Client,
    held: tuple[ThreadPoolExecutor, "Future[httpx.Response]"],
    server: ServerProcess,
) -> None:
    pool, _ = held
    queued = [
        pool.submit(client.post, "/v2/models/busy/infer", json=busy_request(i, 0)) for i in range(2)
    ]
    wait_for(lambda: model_counters(server.url, "busy")["queued"] == 2, "two queued requests")
    response = client.post("/v2/models/busy/infer", json=busy_request(9, 0))
    expect(response, 503, "model 'busy' is overloaded: queue is full (2 requests waiting)")
    assert response.headers["retry-after"] == "7"  # INSCALE_RETRY_AFTER_S above
    assert [f.result().status_code for f in queued] == [200, 200]


def test_timeout_parameter_is_the_request_deadline(
    client: httpx.Client, held: tuple[ThreadPoolExecutor, "Future[httpx.Response]"]
) -> None:
    response = client.post("/v2/models/busy/infer", json=busy_request(1, 0, timeout=50_000))
    expect(response, 503, "model 'busy': request timed out after 50 ms in the queue")
    stats = client.get("/v2/models/busy/stats").json()["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] >= 1


def test_a_client_that_disconnects_leaves_the_queue(
    held: tuple[ThreadPoolExecutor, "Future[httpx.Response]"], server: ServerProcess
) -> None:
    before = model_counters(server.url, "busy")
    body = json.dumps(busy_request(5, 0)).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(
            b"POST /v2/models/busy/infer HTTP/1.1\r\nHost: t\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: model_counters(server.url, "busy")["queued"] == 1, "a queued request")
    wait_for(
        lambda: model_counters(server.url, "busy")["cancelled"] - before["cancelled"] == 1,
        "the request to leave the queue",
    )
    assert model_counters(server.url, "busy")["queued"] == 0
