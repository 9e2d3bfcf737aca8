"""The V2 codec in-process: what the wire tests cannot see (copies, exact bytes, BF16 rounding)."""

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from inscale.datatypes import BY_NAME
from inscale.errors import InvalidInput
from inscale.http.body import inflate
from inscale.protocols.v2 import codec
from inscale.signature import Signature, TensorSpec
from inscale.validation import InputRules


def spec(name: str, datatype: str, *shape: int | None) -> TensorSpec:
    return TensorSpec(name, BY_NAME[datatype], tuple(shape), (None,) * len(shape))


def signature(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> InputRules:
    """The input rules of a model with this signature, as the data plane hands them over."""
    sig = Signature(tuple(inputs), tuple(outputs))
    return InputRules(sig, sig.batchable, 32, {})


FLOAT_MODEL = signature([spec("x", "FP32", None, 4)], [spec("y", "FP32", None, 4)])


def binary_body(
    inputs: list[tuple[str, str, list[int], bytes]], **document: object
) -> tuple[bytes, int]:
    header = json.dumps(
        {
            **document,
            "inputs": [
                {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(b)}}
                for n, t, s, b in inputs
            ],
        }
    ).encode()
    return header + b"".join(b for *_, b in inputs), len(header)


def test_binary_inputs_are_views_of_the_body_not_copies() -> None:
    values = np.arange(8, dtype=np.float32)
    body, length = binary_body([("x", "FP32", [2, 4], values.tobytes())])
    buffer = bytearray(body)
    request = codec.decode_request(buffer, length, FLOAT_MODEL)  # type: ignore[arg-type]
    x = request.arrays["x"]
    assert x.shape == (2, 4)
    assert x.dtype == np.float32
    assert np.shares_memory(x, np.frombuffer(buffer, dtype=np.uint8))
    np.testing.assert_array_equal(x.reshape(-1), values)


def test_nested_and_flat_json_data_decode_alike() -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    nested = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": rows}]}
    flat = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [v for row in rows for v in row],
            }
        ]
    }
    a = codec.decode_request(json.dumps(nested).encode(), None, FLOAT_MODEL).arrays["x"]
    b = codec.decode_request(json.dumps(flat).encode(), None, FLOAT_MODEL).arrays["x"]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 4)


def test_request_parameters() -> None:
    document = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}],
        "parameters": {"timeout": 2500, "priority": 3, "binary_data_output": True},
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    request = codec.decode_request(json.dumps(document).encode(), None, FLOAT_MODEL)
    assert request.id == "r1"
    assert request.timeout_s == pytest.approx(0.0025)
    assert request.priority == 3
    assert request.outputs == (codec.RequestedOutput("y", binary=False),)  # overrides the default
    del document["outputs"]
    request = codec.decode_request(json.dumps(document).encode(), None, FLOAT_MODEL)
    assert request.outputs == (codec.RequestedOutput("y", binary=True),)


def test_response_bytes_follow_the_binary_format() -> None:
    model = signature(
        [spec("x", "FP32", None, 1)],
        [spec("flag", "BOOL", None, 2), spec("word", "BYTES", None), spec("half", "FP16", None)],
    )
    request = codec.InferRequest(
        None,
        {},
        (
            codec.RequestedOutput("word", True),
            codec.RequestedOutput("flag", True),
            codec.RequestedOutput("half", False),
        ),
        None,
        0,
    )
    results = {
        "flag": np.array([[True, False]]),
        "word": np.array(["hé", ""], dtype=object),
        "half": np.array([1.5], dtype=np.float16),
    }
    body, length = codec.encode_response("m", 3, request, results, model.signature)
    assert length is not None
    header = json.loads(body[:length])
    assert header == {
        "model_name": "m",
        "model_version": "3",
        "outputs": [
            {
                "name": "word",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": 11},
            },
            {
                "name": "flag",
                "datatype": "BOOL",
                "shape": [1, 2],
                "parameters": {"binary_data_size": 2},
            },
            {"name": "half", "datatype": "FP16", "shape": [1], "data": [1.5]},
        ],
    }
    assert (
        body[length:] == struct.pack("<I", 3) + "hé".encode() + struct.pack("<I", 0) + b"\x01\x00"
    )


def test_all_json_response_has_no_header_length() -> None:
    request = codec.InferRequest(None, {}, (codec.RequestedOutput("y", False),), None, 0)
    body, length = codec.encode_response(
        "m", 1, request, {"y": np.ones((1, 4), np.float32)}, FLOAT_MODEL.signature
    )
    assert length is None
    assert json.loads(body)["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}
    ]


def test_bf16_json_values_become_rounded_bfloat16_words() -> None:
    model = signature([spec("x", "BF16", None, 4)], [spec("y", "FP32", None, 4)])
    values = [1.0, -2.0, 1.5, 1.00390625]  # the last is halfway between two BF16s: to even
    document = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BF16", "data": values}]}
    words = codec.decode_request(json.dumps(document).encode(), None, model).arrays["x"]
    assert words.dtype == np.uint16
    assert words.tolist() == [[0x3F80, 0xC000, 0x3FC0, 0x3F80]]


def test_uint64_json_values_past_2_to_the_63() -> None:
    model = signature([spec("x", "UINT64", None, 2)], [spec("y", "UINT64", None, 2)])
    document = {
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "UINT64", "data": [2**64 - 1, 1]}]
    }
    x = codec.decode_request(json.dumps(document).encode(), None, model).arrays["x"]
    assert x.dtype == np.uint64
    assert x.tolist() == [[2**64 - 1, 1]]
    document["inputs"][0]["data"] = [2**64 - 1, 1.5]
    with pytest.raises(InvalidInput, match="expected integers from 0 to 2\\*\\*64 - 1"):
        codec.decode_request(json.dumps(document).encode(), None, model)


@pytest.mark.parametrize(
    ("input_spec", "raw", "shape"),
    [
        (spec("x", "FP32", None, 4), np.zeros(4, np.float32).tobytes(), (1, 4)),
        (spec("x", "FP32", 2, 3), np.zeros(6, np.float32).tobytes(), (2, 3)),  # not batchable
        (spec("x", "INT64", None, None), np.zeros(5, np.int64).tobytes(), (1, 5)),  # inferred
        (
            spec("x", "BYTES", None, None),
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 0),
            (1, 2),
        ),
    ],
)
def test_raw_body_shapes(input_spec: TensorSpec, raw: bytes, shape: tuple[int, ...]) -> None:
    model = signature([input_spec], [spec("y", input_spec.datatype.name, *input_spec.shape)])
    request = codec.decode_request(raw, 0, model)
    assert request.arrays["x"].shape == shape
    assert request.outputs == (codec.RequestedOutput("y", binary=True),)


def test_inflate_within_the_limit() -> None:
    body = b'{"inputs": []}' * 100
    assert inflate(gzip.compress(body), "gzip", 10_000) == body
    assert inflate(zlib.compress(body), "Deflate", 10_000) == body
    assert inflate(body, None, 10) is body
    with pytest.raises(InvalidInput, match="the gzip body is truncated"):
        inflate(gzip.compress(body)[:-12], "gzip", 10_000)


def test_json_nan_and_infinity_as_triton_and_perf_analyzer_write_them() -> None:
    text = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, Infinity, -Infinity, 1]}]}'
    x = codec.decode_request(text, None, FLOAT_MODEL).arrays["x"]
    assert np.isnan(x[0, 0])
    assert x[0, 1:].tolist() == [np.inf, -np.inf, 1.0]
    with pytest.raises(InvalidInput, match="the request body is not valid JSON: "):
        codec.decode_request(text.replace(b"1]", b"NaN"), None, FLOAT_MODEL)
