"""What the command-line tools share: reading a model folder, the profiler's request and its
checkpoint folder, each against a real model, a real server or a real file on disk.

The tools' own suites (test_profile, test_optimize, test_drift_reference) run them whole; here
are the paths a whole run seldom takes: refusals, and the request built without sample rows.
"""

import json
import shutil
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from inscale.model_folder import (
    ToolError,
    ask_server_to_load,
    cpu_session,
    read_config,
    version_file,
)
from inscale.profile.checkpoint import CHECKPOINT, CheckpointError, open_folder, save
from inscale.profile.payload import build_payload
from inscale.signature import signature_of
from support.server import ServerProcess

BUNDLED = Path(__file__).resolve().parent.parent / "service" / "inscale" / "bundled_models"
DIGITS = BUNDLED / "digits"


def digits_without_samples(into: Path) -> Path:
    """The bundled digits with only its version folder: no sample rows, no reference."""
    model = into / "digits"
    shutil.copytree(DIGITS / "1", model / "1")
    return model


def answers(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return client.post(path, content=body, headers=headers)


# -- model_folder ---------------------------------------------------------------------------


def test_version_file_takes_the_newest_or_the_one_asked_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    model = digits_without_samples(tmp_path)
    shutil.copytree(model / "1", model / "3")
    (model / "2").mkdir()  # a version folder without a model file is not a version
    assert version_file(model, None) == (3, model / "3" / "model.onnx")
    assert version_file(model, 1) == (1, model / "1" / "model.onnx")
    with pytest.raises(ToolError, match="has no version 2"):
        version_file(model, 2)
    with pytest.raises(ToolError, match="does not exist"):
        version_file(tmp_path / "nothing", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ToolError, match=r"has no version folder with model\.onnx"):
        version_file(empty, None)


def test_a_file_onnx_runtime_cannot_load_is_refused_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"this is not an onnx file")
    with pytest.raises(ToolError) as refused:
        cpu_session(broken)
    assert str(broken) in refused.value.message and "cannot be loaded" in refused.value.message
    assert "\n" not in refused.value.message


def test_a_config_with_a_misspelt_key_is_refused_naming_it(tmp_path: Path) -> None:
    model = digits_without_samples(tmp_path)
    (model / "config.yaml").write_text("batching:\n  max_batch_sise: 8\n")
    with pytest.raises(ToolError, match="max_batch_sise"):
        read_config(model)


def test_asking_a_server_to_load_says_when_it_refuses_or_cannot_be_reached(
    bundled_server: ServerProcess,
) -> None:
    with pytest.raises(ToolError, match=r"config written, but the server refused to load it \(4"):
        ask_server_to_load(bundled_server.url, "no-such-model", None, "config written")
    with socket.socket() as sock:  # a port bound here and never listened on refuses connections
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ToolError, match="could not be asked to load it"):
            ask_server_to_load(closed, "digits", "token", "config written")


# -- the profiler's request -----------------------------------------------------------------


def test_v2_binary_rows_from_the_sample_file_get_the_same_answer_as_predict(
    bundled_server: ServerProcess,
) -> None:
    signature = signature_of(cpu_session(DIGITS / "1" / "model.onnx"))
    binary = build_payload(DIGITS, "digits", 1, signature, 3, "v2-binary")
    assert binary.path == "/v2/models/digits/versions/1/infer"
    assert binary.source == "3 row(s) of samples.npz"
    headers = {"Content-Type": binary.content_type, **binary.extra_headers}
    v2 = answers(bundled_server, binary.path, binary.body, headers)
    assert v2.status_code == 200, v2.text
    [label] = [out for out in v2.json()["outputs"] if out["datatype"] == "INT64"]

    predict = build_payload(DIGITS, "digits", 1, signature, 3, "predict")
    reply = answers(
        bundled_server, predict.path, predict.body, {"Content-Type": "application/json"}
    )
    assert reply.status_code == 200, reply.text
    assert label["data"] == np.ravel(reply.json()["outputs"][label["name"]]).tolist()


def test_more_rows_than_the_sample_file_holds_repeat_it(tmp_path: Path) -> None:
    model = digits_without_samples(tmp_path)
    rows = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    np.savez(model / "samples.npz", input=rows)
    signature = signature_of(cpu_session(model / "1" / "model.onnx"))
    payload = build_payload(model, "digits", 1, signature, 5, "predict")
    sent = np.asarray(json.loads(payload.body)["inputs"]["input"])
    assert sent.shape == (5, 64)
    assert np.array_equal(sent, rows[[0, 1, 0, 1, 0]])


def test_without_sample_rows_random_rows_shaped_by_the_signature_are_served(
    tmp_path: Path, bundled_server: ServerProcess
) -> None:
    model = digits_without_samples(tmp_path)
    signature = signature_of(cpu_session(model / "1" / "model.onnx"))
    for protocol in ("predict", "v2-binary"):
        payload = build_payload(model, "digits", 1, signature, 4, protocol)
        assert payload.source == "4 random row(s) shaped by the model's inputs"
        headers = {"Content-Type": payload.content_type, **payload.extra_headers}
        reply = answers(bundled_server, payload.path, payload.body, headers)
        assert reply.status_code == 200, (protocol, reply.text)
    header_length = int(payload.extra_headers["Inference-Header-Content-Length"])
    header = json.loads(payload.body[:header_length])
    [tensor] = header["inputs"]
    assert tensor["shape"] == [4, 64] and tensor["datatype"] == "FP32"
    assert (
        len(payload.body) - header_length == tensor["parameters"]["binary_data_size"] == 4 * 64 * 4
    )


# -- the profiler's checkpoint folder -------------------------------------------------------


def test_a_checkpoint_folder_refuses_what_it_cannot_resume(tmp_path: Path) -> None:
    identity = {"model": "digits", "cores": [0]}
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        open_folder(not_a_folder, identity)

    out = tmp_path / "sweep"
    assert open_folder(out, identity) == []
    save(out, identity, [{"trial": 1}])
    assert open_folder(out, identity) == [{"trial": 1}]  # resumed

    (out / CHECKPOINT).write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"cannot be read .* remove it to start over"):
        open_folder(out, identity)
    (out / CHECKPOINT).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        open_folder(out, identity)


def test_a_checkpoint_folder_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    with pytest.raises(CheckpointError, match="cannot be written"):
        open_folder(blocked / "sweep", {"model": "digits"})
