"""Property tests of every request decoder, in-process (fast, many examples): `/predict` JSON,
V2 JSON tensors, V2 binary framing with Inference-Header-Content-Length, raw bodies, and
compressed bodies.

The invariant everywhere: a decoder either refuses the input with one of the core's errors and
a message a user can act on (which every protocol maps to a 4xx), or returns exactly the arrays
that were sent, never allocating more than the body could describe. Any other exception is a
5xx on the wire. tests/test_fuzz_server.py checks the same through a real server.
"""

import gzip
import json
import math
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from inscale.datatypes import BY_NAME
from inscale.errors import InscaleError, InvalidInput, PayloadTooLarge, Unsupported
from inscale.http.body import inflate
from inscale.protocols import json_values, raw_tensors
from inscale.protocols.predict import codec as predict_codec
from inscale.protocols.v2 import codec as v2_codec
from inscale.validation import InputRules, count_rows
from support.fuzz_inputs import (
    NASTY_LENGTHS,
    NASTY_SHAPES,
    WireRequest,
    predict_requests,
    v2_requests,
)
from support.fuzz_inputs import json_values as any_json
from support.fuzz_models import MIXED, SCALE, Port, rules_for
from support.fuzz_settings import fuzzed

# Memory a decoder may use beyond a multiple of the body: parsed JSON is Python objects (about
# 32 bytes per number of 2+ characters), so 40x the body is generous, and a decoder that
# allocates for a declared shape (a billion rows of 64) blows far past it.
BODY_FACTOR = 40
SLACK = 1 << 20


MIXED_RULES = rules_for(MIXED)
SCALE_RULES = rules_for(SCALE)
STRINGS_RULES = rules_for((Port("s", "BYTES", (2,), "t"),))


class AllocationPeak:
    """The most memory allocated at once inside the block, beyond what was in use before it.

    numpy reports its buffers to tracemalloc, so this sees what a decoder allocated; tracing
    only around the decoder keeps example generation at full speed.
    """

    bytes = 0

    def __enter__(self) -> "AllocationPeak":
        tracemalloc.start()
        return self

    def __exit__(self, *_: object) -> None:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.bytes = peak


def refused_properly(exc: InscaleError) -> None:
    assert isinstance(exc, InvalidInput | Unsupported), repr(exc)
    assert exc.message.strip(), "an error with no message"
    assert len(exc.message) < 2_000, "a message that repeats the request"


def assert_same_arrays(got: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(sent)
    for name, array in sent.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        if array.dtype.kind == "f":
            # Bit for bit (-0.0 is not 0.0), but NaN only as NaN: JSON has one NaN, no sign
            # or payload.
            nan = np.isnan(array)
            np.testing.assert_array_equal(np.isnan(got[name]), nan, err_msg=name)
            assert got[name][~nan].tobytes() == array[~nan].tobytes(), name
        else:
            np.testing.assert_array_equal(got[name], array)


def decode_v2(request: WireRequest, rules: InputRules) -> v2_codec.InferRequest:
    length = v2_codec.parse_header_length(request.headers.get("Inference-Header-Content-Length"))
    decoded = v2_codec.decode_request(request.body, length, rules)
    count_rows(rules, decoded.arrays)  # what the data plane checks next
    return decoded


def bounded(body: bytes, peak: int) -> None:
    assert peak <= BODY_FACTOR * len(body) + SLACK, f"{peak} bytes for a {len(body)}-byte body"


# -- V2 -------------------------------------------------------------------------------------


@fuzzed(80)
@given(v2_requests(MIXED, broken=False))
def test_v2_valid_requests_decode_to_exactly_the_arrays_sent(request: WireRequest) -> None:
    assert request.arrays is not None
    decoded = decode_v2(request, MIXED_RULES)
    assert_same_arrays(decoded.arrays, request.arrays)
    assert all(o.binary == request.binary_outputs for o in decoded.outputs)


@fuzzed(250)
@given(v2_requests(MIXED, broken=True))
def test_v2_broken_requests_are_refused_with_a_message_or_decoded_within_the_body(
    request: WireRequest,
) -> None:
    try:
        with AllocationPeak() as used:
            decoded = decode_v2(request, MIXED_RULES)
    except InscaleError as exc:
        refused_properly(exc)
        return
    finally:
        bounded(request.body, used.bytes)
    assert sum(a.nbytes for a in decoded.arrays.values()) <= 8 * len(request.body)


@fuzzed(200)
@given(st.binary(max_size=64))
def test_a_raw_body_is_one_tensor_of_batch_one_or_refused(body: bytes) -> None:
    try:
        decoded = v2_codec.decode_request(body, 0, SCALE_RULES)
    except InscaleError as exc:
        refused_properly(exc)
        assert len(body) != 16
        return
    assert len(body) == 16
    np.testing.assert_array_equal(
        decoded.arrays["x"].view(np.uint8), np.frombuffer(body, np.uint8).reshape(1, 16)
    )


@fuzzed(200)
@given(st.binary(max_size=64))
def test_a_raw_body_of_strings_is_refused_or_holds_two(body: bytes) -> None:
    try:
        decoded = v2_codec.decode_request(body, 0, STRINGS_RULES)
    except InscaleError as exc:
        refused_properly(exc)
        return
    assert decoded.arrays["s"].shape == (1, 2)
    assert raw_tensors.to_binary(BY_NAME["BYTES"], decoded.arrays["s"]) == body


@fuzzed(300)
@given(st.sampled_from(sorted(BY_NAME)), st.sampled_from(NASTY_SHAPES), st.binary(max_size=64))
@example("FP32", [0, 10**30], b"")  # numpy cannot make a shape past 2**63 elements, even of 0
@example("BYTES", [0] * 70, b"")  # nor one of rank 70
def test_binary_tensors_are_refused_or_views_no_larger_than_their_bytes(
    datatype: str, shape: object, data: bytes
) -> None:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return  # the V2 header check refuses these before this layer (fuzzed above)
    try:
        array = raw_tensors.from_binary("t", BY_NAME[datatype], shape, memoryview(data))
    except InscaleError as exc:
        refused_properly(exc)
        return
    assert list(array.shape) == shape
    assert array.nbytes <= 2 * len(data)  # BYTES: 8-byte pointers, each element >= 4 bytes


@fuzzed(300)
@given(st.sampled_from(sorted(BY_NAME)), st.sampled_from(NASTY_SHAPES), any_json())
@example("FP32", [0, 2**64 - 1], [])
@example("INT64", [1] * 70, [1])
def test_json_tensors_are_refused_or_have_the_declared_shape(
    datatype: str, shape: object, data: object
) -> None:
    document = {"inputs": [{"name": "t", "datatype": datatype, "shape": shape, "data": data}]}
    body = json.dumps(document).encode()
    rules = rules_for((Port("t", datatype, (4,), "o"),))
    try:
        decoded = v2_codec.decode_request(body, None, rules)
    except InscaleError as exc:
        refused_properly(exc)
        return
    assert isinstance(shape, list)
    assert list(decoded.arrays["t"].shape) == shape


@fuzzed(300)
@given(st.one_of(st.text(max_size=8), st.sampled_from(NASTY_LENGTHS)))
@example("²")  # str.isdigit says yes, int() says no
@example("9" * 5000)  # past Python's 4,300-digit limit for int()
def test_header_lengths_are_byte_counts_or_refused(text: str) -> None:
    try:
        length = v2_codec.parse_header_length(text)
    except InscaleError as exc:
        refused_properly(exc)
        return
    assert length is not None and length >= 0
    assert str(length) == text.strip().lstrip("0") or length == 0


# -- /predict -------------------------------------------------------------------------------


def decode_predict(request: WireRequest, rules: InputRules) -> dict[str, np.ndarray]:
    parsed = predict_codec.parse_request(request.body)
    arrays = predict_codec.to_arrays(parsed.inputs, rules)
    count_rows(rules, arrays)
    return arrays


@fuzzed(80)
@given(st.one_of(predict_requests("mixed", MIXED, False), predict_requests("scale", SCALE, False)))
def test_predict_valid_requests_decode_to_exactly_the_arrays_sent(request: WireRequest) -> None:
    assert request.arrays is not None
    rules = SCALE_RULES if len(request.arrays) == 1 else MIXED_RULES
    assert_same_arrays(decode_predict(request, rules), request.arrays)


@fuzzed(200)
@given(st.one_of(predict_requests("mixed", MIXED, True), predict_requests("scale", SCALE, True)))
@example(WireRequest(b'{"inputs": [[1, 2, 3, 4]], "version": "\\u00b2"}'))
@example(WireRequest(b'{"inputs": [[1, 2, 3, 4]], "version": "' + b"9" * 5000 + b'"}'))
@example(WireRequest(b'{"inputs": [[1e300, 2, 3, 4]]}'))  # no silent infinity in FP32
def test_predict_broken_requests_are_refused_with_a_message_or_decoded_within_the_body(
    request: WireRequest,
) -> None:
    for rules in (MIXED_RULES, SCALE_RULES):
        try:
            with AllocationPeak() as used:
                decode_predict(request, rules)
        except InscaleError as exc:
            refused_properly(exc)
        finally:
            bounded(request.body, used.bytes)


# -- JSON values and compressed bodies ------------------------------------------------------


@fuzzed(400)
@given(any_json(), st.sampled_from(sorted(BY_NAME)))
@example([1e300], "FP32")
@example([70000], "FP16")
@example([65504, 65520], "FP16")  # the largest float16, and the least integer past it
@example([[1e200, 1.0], [-3.5e38, 0.5]], "FP32")  # squares past float64's range
@example([3.4e38, 1.0], "FP32")  # within range, at the edge
@example([1, 2**63], "UINT64")  # numpy reads this pair as float64: exact integers are kept
def test_json_values_become_arrays_of_the_dtype_or_are_refused(data: object, name: str) -> None:
    dtype = BY_NAME[name].numpy
    try:
        array = json_values.to_array("t", data, dtype)
    except InscaleError as exc:
        refused_properly(exc)
        return
    assert array.dtype == dtype
    if dtype.kind in "iu" and array.size:
        flat = np.array(data, dtype=object).reshape(-1)
        assert [int(v) for v in flat] == [int(v) for v in array.reshape(-1)]
    if dtype.kind == "f":
        source = np.array(data, dtype=np.float64)
        # No finite value became infinite: that would be a silent change of the input.
        assert np.array_equal(np.isfinite(source), np.isfinite(array))


LIMIT = 4096


@fuzzed(200)
@given(st.binary(max_size=2 * LIMIT), st.sampled_from(["gzip", "deflate", "GZIP", " deflate "]))
def test_compressed_bodies_inflate_to_what_was_sent_within_the_limit(
    body: bytes, encoding: str
) -> None:
    packed = gzip.compress(body) if "gzip" in encoding.lower() else zlib.compress(body)
    try:
        inflated = inflate(packed, encoding, LIMIT)
    except PayloadTooLarge as exc:
        assert len(body) > LIMIT, exc.message
        return
    assert inflated == body


@fuzzed(300)
@given(
    st.binary(max_size=256), st.one_of(st.sampled_from(["gzip", "deflate"]), st.text(max_size=8))
)
@example(gzip.compress(b"\0" * (64 * LIMIT)), "gzip")  # a bomb: 64x the limit
@example(gzip.compress(b"{}")[:-3], "gzip")  # truncated
def test_any_bytes_with_any_encoding_are_refused_or_inflate_within_the_limit(
    body: bytes, encoding: str
) -> None:
    try:
        with AllocationPeak() as used:
            inflated = inflate(body, encoding, LIMIT)
    except InscaleError as exc:
        refused_properly(exc)
        return
    finally:
        assert used.bytes <= 4 * LIMIT + SLACK
    assert len(inflated) <= max(LIMIT, len(body))


def test_the_shape_product_is_checked_before_anything_is_allocated() -> None:
    """A binary tensor claiming a billion rows costs a multiplication, not memory."""
    with AllocationPeak() as used:
        with pytest.raises(InvalidInput, match="needs 256000000000 bytes"):
            raw_tensors.from_binary("x", BY_NAME["FP32"], [10**9, 64], memoryview(b"\0" * 16))
        with pytest.raises(InvalidInput, match="cannot hold that many"):
            raw_tensors.from_binary("s", BY_NAME["BYTES"], [10**9, 64], memoryview(b"\0" * 16))
    assert used.bytes < SLACK
    assert math.prod([10**9, 64]) * 4 > SLACK
