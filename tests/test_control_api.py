"""The control API (load, unload) is refused unless enabled: off by default, a bearer token, or
open; reads stay open. Real server processes, real HTTP and gRPC clients."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from support.grpc_server import GrpcServer, running_grpc_server
from support.onnx_models import add_model, identity

OFF = (
    "the control API is off on this server: start it with --control-api token (and "
    "INSCALE_CONTROL_TOKEN or INSCALE_CONTROL_TOKEN_FILE) to load and unload models"
)
NEEDS_TOKEN = "this call needs the control token: send 'Authorization: Bearer <token>'"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("control")
    add_model(repo, "m", identity())
    return repo


@pytest.fixture(scope="module")
def off(repo: Path) -> Iterator[GrpcServer]:
    with running_grpc_server(repo, "--control-api", "off") as server:  # the default
        yield server


def grpc_call(server: GrpcServer, method: str, metadata: Any = None) -> grpc.StatusCode:
    with grpc.insecure_channel(server.target) as channel:
        stub: Any = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = getattr(service_pb2, f"{method}Request")(model_name="m")
        try:
            getattr(stub, method)(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                assert exc.details() in (OFF, NEEDS_TOKEN)
            return exc.code()
    return grpc.StatusCode.OK


def test_off_refuses_load_and_unload_and_says_how_to_enable(off: GrpcServer) -> None:
    for action in ("load", "unload"):
        response = httpx.post(f"{off.url}/v2/repository/models/m/{action}")
        assert (response.status_code, response.json()) == (403, {"error": OFF})
    for method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        assert grpc_call(off, method) is grpc.StatusCode.PERMISSION_DENIED
    assert httpx.post(f"{off.url}/v2/models/m/infer", json=one_row()).status_code == 200


def test_reads_stay_open_when_control_is_off(off: GrpcServer) -> None:
    assert httpx.post(f"{off.url}/v2/repository/index").status_code == 200
    for path in ("/v2/models/m", "/v2/models/m/config", "/v2/models/m/stats", "/models/m"):
        assert httpx.get(f"{off.url}{path}").status_code == 200, path
    assert httpx.get(f"{off.url}/metrics").status_code == 200


def one_row() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}


@pytest.mark.parametrize("source", ["env", "file"])
def test_token_mode_needs_the_bearer_token(repo: Path, tmp_path: Path, source: str) -> None:
    if source == "env":
        args: tuple[str, ...] = ("--control-api", "token")
        env = {"INSCALE_CONTROL_TOKEN": TOKEN}
    else:
        token_file = tmp_path / "token"
        token_file.write_text(f"  {TOKEN}\n")  # a mounted Secret may end in a newline
        args = ("--control-api", "token", "--control-token-file", str(token_file))
        env = {}
    with running_grpc_server(repo, *args, env=env) as server:
        url = f"{server.url}/v2/repository/models/m/unload"
        refused = [
            httpx.post(url),
            httpx.post(url, headers={"Authorization": "Bearer wrong"}),
            httpx.post(url, headers={"Authorization": TOKEN}),  # not a bearer credential
        ]
        assert [(r.status_code, r.json()) for r in refused] == [(403, {"error": NEEDS_TOKEN})] * 3
        assert httpx.get(f"{server.url}/v2/models/m/ready").status_code == 200  # still loaded
        allowed = httpx.post(url, headers={"Authorization": f"bearer {TOKEN}"})
        assert allowed.status_code == 200
        assert grpc_call(server, "RepositoryModelLoad") is grpc.StatusCode.PERMISSION_DENIED
        wrong = [("authorization", "Bearer nope")]
        assert grpc_call(server, "RepositoryModelLoad", wrong) is grpc.StatusCode.PERMISSION_DENIED
        right = [("authorization", f"Bearer {TOKEN}")]
        assert grpc_call(server, "RepositoryModelLoad", right) is grpc.StatusCode.OK
        assert httpx.get(f"{server.url}/v2/models/m/ready").status_code == 200


def test_open_mode_is_logged_loudly(repo: Path) -> None:
    with running_grpc_server(repo, "--control-api", "open") as server:
        assert httpx.post(f"{server.url}/v2/repository/models/m/load").status_code == 200
        assert "the control API is OPEN" in server.process.log_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model-control", "explicit", "--control-api", "off"],
            "--model-control explicit loads models only through the control API, which is off",
        ),
        (["--control-api", "token"], "--control-api token needs a token"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(
    tmp_path: Path, args: list[str], message: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no INSCALE_* from outside
    done = subprocess.run(
        [sys.executable, "-m", "inscale", "serve", "--port", "0", "--grpc-port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
