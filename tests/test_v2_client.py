"""The real `tritonclient[http]` against a real server: what Triton's users run, unchanged."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from support.onnx_models import add_model, fixed_batch, identity, two_in_two_out
from support.server import ServerProcess, running_server
from support.v2 import DATATYPES, add_datatype_models, bf16_model, sample

EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("v2-client")
    add_datatype_models(repo)
    add_model(repo, "pair", two_in_two_out(), config={"batching": {"max_queue_delay_ms": 2}})
    add_model(repo, "fixed", fixed_batch())
    add_model(repo, "nobatch", identity(), config={"batching": {"enabled": False}})
    add_model(repo, "bf16", bf16_model(), config={"warmup": False})
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with running_server(repo) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=16)
    yield c
    c.close()


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def pair_inputs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    idx = rng.integers(0, 3, (rows, 2)).astype(np.int64)
    return x, idx


# -- server and model descriptions ------------------------------------------------------


def test_server_metadata_lists_what_is_implemented(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "inscale"
    assert metadata["extensions"] == EXTENSIONS


def test_health_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("pair")
    assert client.is_model_ready("pair", "1")
    assert not client.is_model_ready("pair", "7")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_shows_the_batch_dim_as_minus_one(
    client: triton.InferenceServerClient,
) -> None:
    assert client.get_model_metadata("pair") == {
        "name": "pair",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "idx", "datatype": "INT64", "shape": [-1, 2]},
        ],
        "outputs": [
            {"name": "scaled", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "picked", "datatype": "FP32", "shape": [-1, 2]},
        ],
    }
    assert client.get_model_metadata("fixed", "1")["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [2, 3]}
    ]


def test_model_config_in_triton_form(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("pair")
    assert config["name"] == "pair"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 32
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "idx", "data_type": "TYPE_INT64", "dims": [2]},
    ]
    assert config["output"] == [
        {"name": "scaled", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "picked", "data_type": "TYPE_FP32", "dims": [2]},
    ]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["dynamic_batching"]["preferred_batch_size"] == []
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert config["instance_group"] == [{"name": "pair", "kind": "KIND_CPU", "count": 1}]


def test_model_config_of_unbatched_models(client: triton.InferenceServerClient) -> None:
    fixed = client.get_model_config("fixed")  # no dynamic first axis: not batchable
    assert fixed["max_batch_size"] == 0
    assert fixed["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 3]}]
    assert "dynamic_batching" not in fixed
    nobatch = client.get_model_config("nobatch")  # batchable graph, batching switched off
    assert nobatch["max_batch_size"] == 32
    assert nobatch["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert "dynamic_batching" not in nobatch
    assert client.get_model_config("id_bytes")["input"][0]["data_type"] == "TYPE_STRING"


# -- inference --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)]
)
def test_infer_binary_json_and_mixed(
    client: triton.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    x, idx = pair_inputs(5, seed=1)
    result = client.infer(
        "pair",
        [tensor("x", x, "FP32", binary_in), tensor("idx", idx, "INT64", not binary_in)],
        outputs=[
            triton.InferRequestedOutput("scaled", binary_data=binary_out),
            triton.InferRequestedOutput("picked", binary_data=not binary_out),
        ],
    )
    response = result.get_response()
    assert response["model_name"] == "pair"
    assert response["model_version"] == "1"
    by_name = {o["name"]: o for o in response["outputs"]}
    assert ("data" in by_name["scaled"]) is not binary_out
    assert ("data" in by_name["picked"]) is binary_out
    np.testing.assert_allclose(result.as_numpy("scaled"), 2 * x, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("picked"), np.take_along_axis(x, idx, axis=1))


def test_default_is_binary_out_and_requested_outputs_select_and_order(
    client: triton.InferenceServerClient,
) -> None:
    x, idx = pair_inputs(2, seed=2)
    inputs = [tensor("x", x, "FP32"), tensor("idx", idx, "INT64")]
    everything = client.infer("pair", inputs, request_id="req-7")
    response = everything.get_response()
    assert response["id"] == "req-7"
    assert [o["name"] for o in response["outputs"]] == ["scaled", "picked"]
    assert all(o["parameters"]["binary_data_size"] > 0 for o in response["outputs"])
    only = client.infer("pair", inputs, outputs=[triton.InferRequestedOutput("picked")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["picked"]
    assert only.as_numpy("scaled") is None
    reordered = client.infer(
        "pair",
        inputs,
        outputs=[triton.InferRequestedOutput("picked"), triton.InferRequestedOutput("scaled")],
    )
    assert [o["name"] for o in reordered.get_response()["outputs"]] == ["picked", "scaled"]
    np.testing.assert_allclose(reordered.as_numpy("scaled"), 2 * x, rtol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", [d for d, _, _ in DATATYPES])
def test_every_datatype_round_trips(
    client: triton.InferenceServerClient, datatype: str, binary: bool
) -> None:
    values = sample(datatype, rows=4, rng=np.random.default_rng(3))
    model = f"id_{datatype.lower()}"
    result = client.infer(
        model,
        [tensor("x", values, datatype, binary)],
        outputs=[triton.InferRequestedOutput("y", binary_data=binary)],
    )
    output = result.get_output("y")
    assert output["datatype"] == datatype
    assert output["shape"] == [4, 3]
    got = result.as_numpy("y")
    if datatype == "BYTES":
        got = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(
            got
        )
        assert got.tolist() == values.tolist()
    else:
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, values)


def test_bf16_is_accepted_on_the_wire_and_answered_clearly(
    client: triton.InferenceServerClient,
) -> None:
    values = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    with pytest.raises(InferenceServerException) as to_fp32:
        client.infer("id_fp32", [tensor("x", values, "BF16")])
    assert to_fp32.value.status() == "400"
    assert "input 'x': expected datatype FP32, got BF16" in to_fp32.value.message()
    with pytest.raises(InferenceServerException) as to_bf16:
        client.infer("bf16", [tensor("x", values, "BF16")])
    assert to_bf16.value.status() == "501"
    assert "input 'x': BF16 tensors are not supported" in to_bf16.value.message()
    assert client.is_model_ready("bf16")  # and it keeps serving (refusing) later requests


def test_multi_row_request_and_gzip_bodies(client: triton.InferenceServerClient) -> None:
    x, idx = pair_inputs(32, seed=4)
    for compression in (None, "gzip", "deflate"):
        result = client.infer(
            "pair",
            [tensor("x", x, "FP32"), tensor("idx", idx, "INT64")],
            request_compression_algorithm=compression,
        )
        assert result.as_numpy("scaled").shape == (32, 3)
        np.testing.assert_allclose(result.as_numpy("scaled"), 2 * x, rtol=1e-6)


def test_concurrent_async_requests_match_onnx_runtime_row_for_row(
    client: triton.InferenceServerClient, repo: Path
) -> None:
    session = ort.InferenceSession(
        str(repo / "pair" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    requests = [pair_inputs(1 + i % 4, seed=100 + i) for i in range(64)]
    pending = [
        client.async_infer("pair", [tensor("x", x, "FP32"), tensor("idx", idx, "INT64", False)])
        for x, idx in requests
    ]
    for (x, idx), handle in zip(requests, pending, strict=True):
        result = handle.get_result(timeout=30)
        scaled, picked = session.run(["scaled", "picked"], {"x": x, "idx": idx})
        np.testing.assert_array_equal(result.as_numpy("scaled"), scaled)
        np.testing.assert_array_equal(result.as_numpy("picked"), picked)
    stats = client.get_inference_statistics("pair")["model_stats"][0]
    assert stats["inference_count"] >= sum(len(x) for x, _ in requests)


def test_errors_carry_the_server_message(client: triton.InferenceServerClient) -> None:
    x = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(InferenceServerException) as shape:
        client.infer("id_fp32", [tensor("x", x, "FP32")])
    assert shape.value.status() == "400"
    assert (
        shape.value.message() == "input 'x': expected shape [-1, 3], got [2, 5] (axis 1 must be 3)"
    )
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [tensor("x", x, "FP32")])
    assert unknown.value.status() == "404"
    assert unknown.value.message() == "unknown model 'no-such-model'"
    with pytest.raises(InferenceServerException) as output:
        client.infer(
            "id_fp32", [tensor("x", x[:, :3], "FP32")], outputs=[triton.InferRequestedOutput("z")]
        )
    assert output.value.message() == "unknown output 'z'; the model's outputs are: y"


# -- statistics and the repository ------------------------------------------------------


def test_statistics_count_requests_rows_and_runs(client: triton.InferenceServerClient) -> None:
    def stats() -> dict[str, Any]:  # a JSON document
        document = client.get_inference_statistics("id_int32", "1")
        (model,) = document["model_stats"]
        return model  # type: ignore[no-any-return]

    before = stats()
    values = sample("INT32", rows=3, rng=np.random.default_rng(5))
    for _ in range(4):
        client.infer("id_int32", [tensor("x", values, "INT32")])
    with pytest.raises(InferenceServerException):
        client.infer("id_int32", [tensor("x", values[:, :2], "INT32")])  # refused before queueing
    after = stats()
    assert after["name"] == "id_int32"
    assert after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 12  # rows
    assert after["execution_count"] - before["execution_count"] == 4  # model runs
    assert after["last_inference"] >= before["last_inference"]
    inference = after["inference_stats"]
    assert set(inference) == {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
        "cache_hit", "cache_miss",
    }  # fmt: skip
    assert inference["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    assert inference["success"]["ns"] > inference["compute_infer"]["ns"] > 0
    assert inference["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert inference["queue"]["count"] - before["inference_stats"]["queue"]["count"] == 4
    assert inference["cache_hit"] == {"count": 0, "ns": 0}
    by_size = {b["batch_size"]: b for b in after["batch_stats"]}
    assert by_size[3]["compute_infer"]["count"] >= 4
    everything = client.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in everything} >= {"pair", "id_int32", "fixed", "bf16"}


def test_repository_index_lists_every_model(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    names = [row["name"] for row in index]
    assert names == sorted(names)
    assert {"name": "pair", "version": "1", "state": "READY", "reason": ""} in index
    assert len(index) == len(DATATYPES) + 4
