"""The real `tritonclient.grpc` (sync and aio) against a real server: what Triton's users run.

tritonclient always sends tensors raw (`raw_input_contents`); the typed `contents` form, health,
reflection and metrics are in tests/test_grpc_service.py, load and shutdown in
tests/test_grpc_serving.py.
"""

import asyncio
import queue
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from support.grpc_server import GrpcServer, running_grpc_server
from support.onnx_models import add_model, fixed_batch, identity, two_in_two_out
from support.v2 import DATATYPES, add_datatype_models, bf16_model, sample

BUNDLED = Path(__file__).resolve().parents[1] / "service" / "inscale" / "bundled_models"
T = 10.0  # seconds: every client call is bounded
EXTRA_MODELS = ["pair", "fixed", "nobatch", "bf16", "digits-wide", "spare", "counted"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("grpc-client")
    add_datatype_models(repo)
    add_model(repo, "pair", two_in_two_out(), config={"batching": {"max_queue_delay_ms": 2}})
    add_model(repo, "fixed", fixed_batch())
    add_model(repo, "nobatch", identity(), config={"batching": {"enabled": False}})
    add_model(repo, "bf16", bf16_model(), config={"warmup": False})
    add_model(repo, "spare", identity())  # loaded and unloaded by one test only
    add_model(repo, "counted", identity(shape=("N", 3)))  # statistics: no other test uses it
    shutil.copytree(BUNDLED / "digits-wide", repo / "digits-wide")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcServer]:
    with running_grpc_server(repo) as running:
        yield running


@pytest.fixture
def client(server: GrpcServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.target)
    yield c
    c.close()


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def pair_inputs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((rows, 3)).astype(np.float32),
        rng.integers(0, 3, (rows, 2)).astype(np.int64),
    )


def pair_tensors(x: np.ndarray, idx: np.ndarray) -> list[triton.InferInput]:
    return [tensor("x", x, "FP32"), tensor("idx", idx, "INT64")]


def digit_images(rows: int, seed: int) -> np.ndarray:
    """8x8 images with pixel values 0 to 16, as digits-wide was trained on."""
    return np.random.default_rng(seed).integers(0, 17, (rows, 64)).astype(np.float32)


def failure(exc: pytest.ExceptionInfo[InferenceServerException]) -> tuple[str, str]:
    return exc.value.status(), exc.value.message()


# -- server and model descriptions ------------------------------------------------------


def test_server_live_ready_and_metadata_as_over_http(
    client: triton.InferenceServerClient, server: GrpcServer
) -> None:
    assert client.is_server_live(client_timeout=T)
    assert client.is_server_ready(client_timeout=T)
    metadata = client.get_server_metadata(as_json=True, client_timeout=T)
    http = httpx.get(f"{server.url}/v2", timeout=T).json()
    assert metadata == {
        "name": "inscale",
        "version": http["version"],
        "extensions": http["extensions"],
    }
    assert "model_repository" in metadata["extensions"]


def test_model_ready_and_unknown_models(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("pair", client_timeout=T)
    assert client.is_model_ready("pair", "1", client_timeout=T)
    # Unknown models and versions are `ready: false`, as Triton answers, so a client's
    # wait-until-ready loop works (tritonclient.grpc raises on an error status here).
    assert client.is_model_ready("no-such-model", client_timeout=T) is False
    assert client.is_model_ready("pair", "7", client_timeout=T) is False
    with pytest.raises(InferenceServerException) as bad:
        client.is_model_ready("pair", "seven", client_timeout=T)
    assert failure(bad) == (
        "StatusCode.INVALID_ARGUMENT",
        "model version 'seven' is not a positive integer",
    )


def test_model_metadata_shows_the_batch_dim_as_minus_one(
    client: triton.InferenceServerClient, server: GrpcServer
) -> None:
    metadata = client.get_model_metadata("pair", client_timeout=T)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (
        "pair",
        ["1"],
        "onnxruntime_onnx",
    )
    tensors = [(t.name, t.datatype, list(t.shape)) for t in [*metadata.inputs, *metadata.outputs]]
    assert tensors == [
        ("x", "FP32", [-1, 3]),
        ("idx", "INT64", [-1, 2]),
        ("scaled", "FP32", [-1, 3]),
        ("picked", "FP32", [-1, 2]),
    ]
    http = httpx.get(f"{server.url}/v2/models/pair", timeout=T).json()
    assert [t["shape"] for t in http["inputs"] + http["outputs"]] == [t[2] for t in tensors]
    fixed = client.get_model_metadata("fixed", "1", client_timeout=T)
    assert [list(t.shape) for t in fixed.inputs] == [[2, 3]]


def test_model_config_in_triton_form(client: triton.InferenceServerClient) -> None:
    pair = client.get_model_config("pair", client_timeout=T).config
    assert (pair.name, pair.platform, pair.max_batch_size) == ("pair", "onnxruntime_onnx", 32)
    dims = [
        (t.name, triton.model_config_pb2.DataType.Name(t.data_type), list(t.dims))
        for t in pair.input
    ]
    assert dims == [("x", "TYPE_FP32", [3]), ("idx", "TYPE_INT64", [2])]  # no batch dim
    assert [(t.name, list(t.dims)) for t in pair.output] == [("scaled", [3]), ("picked", [2])]
    assert pair.HasField("dynamic_batching")
    assert pair.dynamic_batching.max_queue_delay_microseconds == 2000
    fixed = client.get_model_config("fixed", client_timeout=T).config  # no dynamic first axis
    assert fixed.max_batch_size == 0
    assert [list(t.dims) for t in fixed.input] == [[2, 3]]
    assert not fixed.HasField("dynamic_batching")
    nobatch = client.get_model_config("nobatch", client_timeout=T).config  # batching off
    assert nobatch.max_batch_size == 32
    assert [list(t.dims) for t in nobatch.input] == [[4]]
    assert not nobatch.HasField("dynamic_batching")
    strings = client.get_model_config("id_bytes", client_timeout=T).config
    assert strings.input[0].data_type == triton.model_config_pb2.TYPE_STRING


# -- inference --------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [d for d, _, _ in DATATYPES])
def test_every_datatype_round_trips_raw(
    client: triton.InferenceServerClient, datatype: str
) -> None:
    values = sample(datatype, rows=4, rng=np.random.default_rng(3))
    result = client.infer(
        f"id_{datatype.lower()}", [tensor("x", values, datatype)], client_timeout=T
    )
    output = result.get_output("y")
    assert (output.datatype, list(output.shape)) == (datatype, [4, 3])
    got = result.as_numpy("y")
    if datatype == "BYTES":  # tritonclient answers bytes objects; the model holds text
        assert [[v.decode() for v in row] for row in got] == values.tolist()
    else:
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, values)


def test_bf16_is_read_from_the_wire_and_refused_clearly(
    client: triton.InferenceServerClient,
) -> None:
    values = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    with pytest.raises(InferenceServerException) as to_fp32:
        client.infer("id_fp32", [tensor("x", values, "BF16")], client_timeout=T)
    assert failure(to_fp32) == (
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': expected datatype FP32, got BF16; this model cannot take BF16",
    )
    with pytest.raises(InferenceServerException) as to_bf16:
        client.infer("bf16", [tensor("x", values, "BF16")], client_timeout=T)
    assert failure(to_bf16) == (
        "StatusCode.UNIMPLEMENTED",
        "input 'x': BF16 tensors are not supported",
    )
    assert client.is_model_ready("bf16", client_timeout=T)  # and it keeps answering


def test_requested_outputs_select_and_order(client: triton.InferenceServerClient) -> None:
    x, idx = pair_inputs(2, seed=2)
    everything = client.infer("pair", pair_tensors(x, idx), request_id="req-7", client_timeout=T)
    response = everything.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", "pair", "1")
    assert [o.name for o in response.outputs] == ["scaled", "picked"]
    only = client.infer(
        "pair",
        pair_tensors(x, idx),
        outputs=[triton.InferRequestedOutput("picked")],
        client_timeout=T,
    )
    assert [o.name for o in only.get_response().outputs] == ["picked"]
    assert only.as_numpy("scaled") is None
    np.testing.assert_array_equal(only.as_numpy("picked"), np.take_along_axis(x, idx, axis=1))
    reordered = client.infer(
        "pair",
        pair_tensors(x, idx),
        outputs=[triton.InferRequestedOutput("picked"), triton.InferRequestedOutput("scaled")],
        client_timeout=T,
    )
    assert [o.name for o in reordered.get_response().outputs] == ["picked", "scaled"]
    np.testing.assert_array_equal(reordered.as_numpy("scaled"), 2 * x)


def test_multi_row_requests(client: triton.InferenceServerClient) -> None:
    x, idx = pair_inputs(32, seed=4)
    result = client.infer("pair", pair_tensors(x, idx), client_timeout=T)
    assert result.as_numpy("scaled").shape == (32, 3)
    np.testing.assert_array_equal(result.as_numpy("scaled"), 2 * x)
    np.testing.assert_array_equal(result.as_numpy("picked"), np.take_along_axis(x, idx, axis=1))
    images = digit_images(17, seed=5)
    digits = client.infer("digits-wide", [tensor("input", images, "FP32")], client_timeout=T)
    assert digits.as_numpy("label").shape == (17,)
    assert digits.as_numpy("probabilities").shape == (17, 10)


async def test_aio_client_describes_and_serves_64_concurrent_requests_as_onnx_runtime_does(
    server: GrpcServer, repo: Path
) -> None:
    session = ort.InferenceSession(
        str(repo / "digits-wide" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    images = digit_images(256, seed=6)
    requests = [images[i * 4 : i * 4 + 1 + i % 4] for i in range(64)]  # 1 to 4 rows each
    async with triton_aio.InferenceServerClient(server.target) as client:
        assert await client.is_server_live(client_timeout=T)
        assert await client.is_server_ready(client_timeout=T)
        assert await client.is_model_ready("digits-wide", client_timeout=T)
        metadata = await client.get_model_metadata("digits-wide", client_timeout=T)
        assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("input", [-1, 64])]
        config = (await client.get_model_config("digits-wide", client_timeout=T)).config
        assert [list(t.dims) for t in config.output] == [[], [10]]  # label: one value a row
        before = await client.get_inference_statistics("digits-wide", client_timeout=T)
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.infer("digits-wide", [tensor("input", rows, "FP32")], client_timeout=30)
                    for rows in requests
                )
            ),
            timeout=60,
        )
        after = await client.get_inference_statistics("digits-wide", client_timeout=T)
    for rows, answer in zip(requests, answers, strict=True):
        label, probabilities = session.run(["label", "probabilities"], {"input": rows})
        np.testing.assert_array_equal(answer.as_numpy("label"), label)
        # Bit for bit here (7 runs for 64 requests), but a batch's GEMM may block differently
        # on another CPU: allow the last float bits.
        np.testing.assert_allclose(answer.as_numpy("probabilities"), probabilities, rtol=1e-6)
    (was,), (now,) = before.model_stats, after.model_stats
    assert now.inference_count - was.inference_count == sum(len(r) for r in requests)
    assert 1 <= now.execution_count - was.execution_count <= 64


# -- the repository and statistics ----------------------------------------------------


def test_repository_index_lists_every_model(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True, client_timeout=T)["models"]
    names = [row["name"] for row in index]
    assert names == sorted(names)
    assert len(names) == len(DATATYPES) + len(EXTRA_MODELS)
    assert {"name": "pair", "version": "1", "state": "READY"} in index


def test_unload_refuses_requests_and_load_brings_the_model_back(
    client: triton.InferenceServerClient,
) -> None:
    ones = np.ones((1, 4), dtype=np.float32)
    assert (
        client.infer("spare", [tensor("x", ones, "FP32")], client_timeout=T).as_numpy("y")
        is not None
    )
    client.unload_model("spare", client_timeout=T)
    with pytest.raises(InferenceServerException) as gone:
        client.infer("spare", [tensor("x", ones, "FP32")], client_timeout=T)
    assert failure(gone) == ("StatusCode.NOT_FOUND", "unknown model 'spare'")
    index = client.get_model_repository_index(as_json=True, client_timeout=T)["models"]
    assert {"name": "spare", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    client.load_model("spare", client_timeout=T)
    assert client.is_model_ready("spare", client_timeout=T)
    again = client.infer("spare", [tensor("x", 2 * ones, "FP32")], client_timeout=T)
    np.testing.assert_array_equal(again.as_numpy("y"), 2 * ones)
    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("no-such-model", client_timeout=T)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_move_by_exactly_what_was_sent(client: triton.InferenceServerClient) -> None:
    def stats() -> Any:  # a ModelStatistics message
        (model,) = client.get_inference_statistics("counted", "1", client_timeout=T).model_stats
        return model

    before = stats()
    values = np.arange(9, dtype=np.float32).reshape(3, 3)
    for _ in range(4):
        client.infer("counted", [tensor("x", values, "FP32")], client_timeout=T)
    with pytest.raises(InferenceServerException):  # refused before it is queued
        client.infer("counted", [tensor("x", values[:, :2], "FP32")], client_timeout=T)
    after = stats()
    assert (after.name, after.version) == ("counted", "1")
    assert after.inference_count - before.inference_count == 12  # rows
    assert after.execution_count - before.execution_count == 4  # model runs, one at a time
    was, now = before.inference_stats, after.inference_stats
    assert now.success.count - was.success.count == 4
    assert now.queue.count - was.queue.count == 4
    assert now.fail.count == was.fail.count
    assert now.success.ns > now.compute_infer.ns > was.compute_infer.ns
    assert {b.batch_size for b in after.batch_stats} == {3}
    everything = client.get_inference_statistics(client_timeout=T).model_stats
    assert {m.name for m in everything} >= {"pair", "counted", "fixed", "spare"}


# -- streaming --------------------------------------------------------------------------


def test_stream_answers_each_request_by_id_and_a_bad_one_with_its_error(
    client: triton.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
    sent = {f"s{i}": pair_inputs(1 + i % 3, seed=20 + i) for i in range(8)}
    client.start_stream(lambda result, error: answers.put((result, error)), stream_timeout=30)
    try:
        for rid, (x, idx) in sent.items():
            client.async_stream_infer("pair", pair_tensors(x, idx), request_id=rid)
            if rid == "s3":  # one bad request in the middle: x has 2 columns, not 3
                client.async_stream_infer("pair", pair_tensors(x[:, :2], idx), request_id="bad")
        got = [answers.get(timeout=T) for _ in range(len(sent) + 1)]
    finally:
        client.stop_stream()
    errors = [e for r, e in got if e is not None]
    assert [e.message() for e in errors] == [
        f"input 'x': expected shape [-1, 3], got [{len(sent['s3'][0])}, 2] (axis 1 must be 3)"
    ]
    results = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(results) == sorted(sent)
    for rid, (x, idx) in sent.items():
        np.testing.assert_array_equal(results[rid].as_numpy("scaled"), 2 * x)
        np.testing.assert_array_equal(
            results[rid].as_numpy("picked"), np.take_along_axis(x, idx, 1)
        )


async def test_aio_stream_infer_answers_each_request_by_id(server: GrpcServer) -> None:
    sent = {f"a{i}": pair_inputs(1 + i % 4, seed=40 + i) for i in range(12)}

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for rid, (x, idx) in sent.items():
            yield {"model_name": "pair", "inputs": pair_tensors(x, idx), "request_id": rid}
        yield {"model_name": "no-such-model", "inputs": pair_tensors(x, idx), "request_id": "bad"}

    results: dict[str, Any] = {}
    errors: list[str] = []
    async with triton_aio.InferenceServerClient(server.target) as client:
        stream = client.stream_infer(requests(), stream_timeout=30)
        async with asyncio.timeout(30):
            async for result, error in stream:
                if error is not None:
                    errors.append(error.message())
                else:
                    results[result.get_response().id] = result
                if len(results) + len(errors) == len(sent) + 1:
                    break
    assert errors == ["unknown model 'no-such-model'"]
    assert sorted(results) == sorted(sent)
    for rid, (x, _) in sent.items():
        np.testing.assert_array_equal(results[rid].as_numpy("scaled"), 2 * x)
