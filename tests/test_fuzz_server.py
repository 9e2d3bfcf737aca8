"""The decoder fuzzing of tests/test_fuzz_decoders.py through a real server process (fewer
examples): every answer is a 4xx with a JSON message or equals ONNX Runtime run directly on
the same input, never a 5xx or a hang, and the server's resident memory stays bounded by the
body limit whatever a request declares (read from /proc/PID/status: VmHWM is the peak).
"""

import gzip
import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from inscale.errors import InscaleError
from inscale.protocols.predict import codec as predict_codec
from inscale.protocols.v2 import codec as v2_codec
from support.fuzz_inputs import WireRequest, predict_requests, v2_requests
from support.fuzz_models import MIXED, MODELS, SCALE, Reference, rules_for, write_fuzz_repository
from support.fuzz_settings import fuzzed
from support.server import ServerProcess, running_server

BODY_LIMIT = 256 * 1024
# What the server may grow past its peak after warm-up: a few bodies at the limit (the read
# body, its inflated copy, the arrays) and allocator slack. A decoder that trusted a declared
# shape, or inflated a bomb, would pass it by orders of magnitude.
RSS_GROWTH_LIMIT = 8 * BODY_LIMIT + 48 * 2**20
QUICK_S = 2.0  # an attack is answered at once, not after reading or allocating much


@dataclass
class Served:
    process: ServerProcess
    client: httpx.Client
    reference: Reference
    baseline_peak: int  # VmHWM after warm-up, bytes

    def memory(self, field: str = "VmHWM") -> int:
        assert self.process.proc is not None
        status = Path(f"/proc/{self.process.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/PID/status")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("fuzz")
    files = write_fuzz_repository(repo)
    env = {"INSCALE_MAX_BODY_BYTES": str(BODY_LIMIT)}
    with (
        running_server(repo, env=env) as process,
        httpx.Client(base_url=process.url, timeout=10) as client,
    ):
        warm = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
        assert client.post("/v2/models/scale/infer", json=warm).status_code == 200
        served = Served(process, client, Reference(files), 0)
        served.baseline_peak = served.memory()
        yield served


def refused_with_a_message(response: httpx.Response) -> None:
    """A 4xx with a JSON message; a 501 only for a feature the README lists as unsupported."""
    assert response.status_code < 500 or (
        response.status_code == 501 and "not supported" in response.text
    ), f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message.strip()


def _from_json(values: Any, datatype: str, expected: np.ndarray) -> None:
    flat = np.array(values, dtype=object).reshape(-1)
    want = expected.reshape(-1)
    if datatype.startswith("FP"):
        finite = np.isfinite(want)
        assert all(v is None for v in flat[~finite]), "non-finite values are written as null"
        got = np.array(list(flat[finite]), dtype=np.float64).astype(want.dtype)
        assert got.tobytes() == want[finite].tobytes()
    else:
        assert flat.tolist() == want.tolist()


def _from_binary(raw: bytes, datatype: str, expected: np.ndarray) -> None:
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            elements.append(raw[offset + 4 : offset + 4 + length].decode())
            offset += 4 + length
        assert elements == expected.reshape(-1).tolist()
    else:
        got = np.frombuffer(raw, dtype=expected.dtype.newbyteorder("<")).astype(expected.dtype)
        want = expected.reshape(-1)
        if want.dtype.kind == "f":  # NaN as NaN: a JSON input's NaN has no sign or payload
            nan = np.isnan(want)
            assert np.array_equal(np.isnan(got), nan)
            got, want = got[~nan], want[~nan]
        assert got.tobytes() == want.tobytes()


def check_v2_answer(served: Served, request: WireRequest, response: httpx.Response) -> None:
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the mix
    if response.status_code != 200:
        refused_with_a_message(response)
        return
    # What was sent: the arrays drawn, or (for a broken request the server took) what the
    # decoder makes of it, checked against ONNX Runtime all the same.
    length_text = request.headers.get("Inference-Header-Content-Length")
    decoded = v2_codec.decode_request(
        request.body, v2_codec.parse_header_length(length_text), rules_for(MIXED)
    )
    arrays = decoded.arrays if request.arrays is None else request.arrays
    expected = served.reference.run("mixed", arrays)
    datatypes = {p.output: p.datatype for p in MIXED}
    answer_length = response.headers.get("inference-header-content-length")
    end = len(response.content) if answer_length is None else int(answer_length)
    header = json.loads(response.content[:end])
    binary = response.content[end:]
    assert [o["name"] for o in header["outputs"]] == [o.name for o in decoded.outputs]
    offset = 0
    for output, wanted in zip(header["outputs"], decoded.outputs, strict=True):
        name = output["name"]
        assert output["datatype"] == datatypes[name]
        assert output["shape"] == list(expected[name].shape)
        assert ("data" not in output) == wanted.binary
        if wanted.binary:
            size = output["parameters"]["binary_data_size"]
            _from_binary(binary[offset : offset + size], datatypes[name], expected[name])
            offset += size
        else:
            _from_json(output["data"], datatypes[name], expected[name])
    assert offset == len(binary)


@fuzzed(60)
@given(v2_requests(MIXED))
def test_v2_requests_get_a_4xx_with_a_message_or_the_onnx_runtime_answer(
    served: Served, request: WireRequest
) -> None:
    # As bytes: httpx refuses str header values that are not ASCII ("²"), a server must not.
    # Stripped: HTTP drops the whitespace around a value (h11 refuses to send it).
    headers = {key.encode(): value.strip().encode() for key, value in request.headers.items()}
    response = served.client.post("/v2/models/mixed/infer", content=request.body, headers=headers)
    check_v2_answer(served, request, response)


@fuzzed(40)
@given(st.one_of(predict_requests("mixed", MIXED), predict_requests("scale", SCALE)))
def test_predict_requests_get_a_4xx_with_a_message_or_the_onnx_runtime_answer(
    served: Served, request: WireRequest
) -> None:
    response = served.client.post("/predict", content=request.body, headers=request.headers)
    event(f"status {response.status_code}")
    if response.status_code != 200:
        refused_with_a_message(response)
        return
    answer = response.json()
    ports = MODELS[answer["model"]]
    arrays = request.arrays
    if arrays is None:  # a broken request the server took: what the decoder makes of it
        try:
            parsed = predict_codec.parse_request(request.body)
            arrays = predict_codec.to_arrays(parsed.inputs, rules_for(ports))
        except InscaleError as exc:
            raise AssertionError(f"the server took what the decoder refuses: {exc}") from exc
    expected = served.reference.run(answer["model"], arrays)
    assert sorted(answer["outputs"]) == sorted(expected)
    for port in ports:
        _from_json(answer["outputs"][port.output], port.datatype, expected[port.output])


@fuzzed(15)
@given(v2_requests(MIXED, broken=False), st.sampled_from(["gzip", "deflate"]))
def test_compressed_requests_get_the_same_answer(
    served: Served, request: WireRequest, encoding: str
) -> None:
    packed = gzip.compress(request.body) if encoding == "gzip" else zlib.compress(request.body)
    headers = {**request.headers, "Content-Encoding": encoding}
    response = served.client.post("/v2/models/mixed/infer", content=packed, headers=headers)
    check_v2_answer(served, request, response)


def _tensor(name: str, datatype: str, shape: list[int], **rest: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **rest}


def _binary(tensor: dict[str, Any], data: bytes, declared: str | None = None) -> dict[str, Any]:
    header = json.dumps({"inputs": [tensor]}).encode()
    return {
        "content": header + data,
        "headers": {"Inference-Header-Content-Length": declared or str(len(header))},
    }


def _bomb(inflated: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    chunk = b"\0" * 2**20
    parts = [packer.compress(chunk) for _ in range(inflated // len(chunk))]
    return b"".join([*parts, packer.flush()])


ATTACKS: dict[str, dict[str, Any]] = {
    "binary tensor claiming 2**40 x 64 FP32": _binary(
        _tensor("x", "FP32", [2**40, 64], parameters={"binary_data_size": 16}), b"\0" * 16
    ),
    "binary BYTES tensor claiming a billion elements": _binary(
        _tensor("s", "BYTES", [10**9, 2], parameters={"binary_data_size": 8}), b"\0" * 8
    ),
    "JSON shape [1e9, 64]": {"json": {"inputs": [_tensor("x", "FP32", [10**9, 64], data=[1])]}},
    "a zero dim beside 2**64 - 1": {
        "json": {"inputs": [_tensor("x", "FP32", [0, 2**64 - 1], data=[])]}
    },
    "a rank of 70": {"json": {"inputs": [_tensor("x", "FP32", [1] * 70, data=[1])]}},
    "header length past the body": _binary(
        _tensor("x", "FP32", [1, 4], data=[1] * 4), b"", "1000000"
    ),
    "header length of 5,000 digits": _binary(_tensor("x", "FP32", [1, 4]), b"", "9" * 5000),
    "gzip bomb: 64 MiB of zeros in a small body": {
        "content": _bomb(64 * 2**20),
        "headers": {"Content-Encoding": "gzip"},
    },
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_are_refused_quickly_and_memory_stays_bounded(served: Served, attack: str) -> None:
    started = time.monotonic()
    response = served.client.post("/v2/models/mixed/infer", **ATTACKS[attack])
    elapsed = time.monotonic() - started
    assert 400 <= response.status_code < 500, response.text
    refused_with_a_message(response)
    assert elapsed < QUICK_S, f"{attack}: {elapsed:.2f} s"
    grown = served.memory() - served.baseline_peak
    assert grown < RSS_GROWTH_LIMIT, f"{attack}: peak RSS grew by {grown / 2**20:.1f} MiB"


def test_the_server_is_still_healthy_and_its_memory_bounded_after_the_fuzzing(
    served: Served,
) -> None:
    grown = served.memory() - served.baseline_peak
    assert grown < RSS_GROWTH_LIMIT, f"peak RSS grew by {grown / 2**20:.1f} MiB"
    assert served.client.get("/v2/health/ready").status_code == 200
    assert served.process.proc is not None and served.process.proc.poll() is None


@pytest.mark.parametrize("route", ["ready", "config", "stats"])
def test_a_version_of_5000_digits_in_the_path_is_a_400(served: Served, route: str) -> None:
    response = served.client.get(f"/v2/models/scale/versions/{'9' * 5000}/{route}")
    assert response.status_code == 400, response.text
    refused_with_a_message(response)
