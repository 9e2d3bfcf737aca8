"""gRPC serving under load and failure, on a real server with the `busy` model.

As in tests/test_serving.py, a "holder" request with a large `work` keeps the model's single
instance busy while the test puts other requests in a known state, observed through
`GET /models/{name}` (never by sleeping): queued requests are ones the server accepted.
"""

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from support.grpc_server import GrpcServer, running_grpc_server, wait_for_log
from support.onnx_models import add_model, busy, two_in_two_out
from support.v2 import model_counters, wait_for

T = 10.0  # seconds: every call is bounded
HOLD_WORK = 4000  # about 1.4 s of compute: far longer than the test's own steps
ONE_THREAD = {"runtime": {"intra_op_threads": 1}}


def busy_config(max_queue_size: int) -> dict[str, object]:
    # No admission: busy's run time is chosen per request, not by its rows.
    batching = {
        "max_batch_size": 16,
        "max_queue_delay_ms": 5,
        "max_queue_size": max_queue_size,
        "admission": False,
    }
    return {**ONE_THREAD, "batching": batching, "timeout_ms": 60_000}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("grpc-serving")
    add_model(repo, "busy", busy(), config=busy_config(64))
    add_model(repo, "load", busy(), config=busy_config(256))  # the SIGTERM test's traffic
    add_model(repo, "pair", two_in_two_out())
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcServer]:
    with running_grpc_server(repo) as running:
        yield running


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def busy_request(x: float, work: int = 0, rows: int = 1, model: str = "busy", rid: str = "") -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.inputs.add(name="work", datatype="INT64", shape=[rows])
    request.raw_input_contents.append(np.full((rows, 4), x, np.float32).tobytes())
    request.raw_input_contents.append(np.full(rows, work, np.int64).tobytes())
    return request


def y_of(response: Any) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(-1, 4)


def unary(target: str, request: Any, timeout: float = 30) -> Any:
    with grpc.insecure_channel(target) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=timeout
        )


def hold(server: GrpcServer, pool: ThreadPoolExecutor, model: str = "busy") -> "Future[Any]":
    """Occupy `model`'s only instance with a gRPC request; returns once it runs."""
    wait_for(
        lambda: (s := model_counters(server.url, model))["running"] == s["queued"] == 0, "idle"
    )
    holder = pool.submit(unary, server.target, busy_request(-1.0, HOLD_WORK, model=model))
    wait_for(lambda: model_counters(server.url, model)["running"] == 1, "the holder running")
    return holder


def queued(server: GrpcServer, count: int, model: str = "busy") -> None:
    wait_for(lambda: model_counters(server.url, model)["queued"] == count, f"{count} queued")


# -- deadlines --------------------------------------------------------------------------


def test_a_short_grpc_deadline_on_a_stalled_model_is_exceeded_and_never_runs(
    server: GrpcServer, pool: ThreadPoolExecutor
) -> None:
    before = model_counters(server.url, "busy")
    holder = hold(server, pool)
    client = triton.InferenceServerClient(server.target)
    try:
        inputs = [triton.InferInput("x", [1, 4], "FP32"), triton.InferInput("work", [1], "INT64")]
        inputs[0].set_data_from_numpy(np.ones((1, 4), np.float32))
        inputs[1].set_data_from_numpy(np.zeros(1, np.int64))
        with pytest.raises(InferenceServerException) as by_client:
            client.infer("busy", inputs, client_timeout=0.2)  # the gRPC deadline
        # The protocol's `timeout` parameter (microseconds) bounds the wait as well.
        with pytest.raises(InferenceServerException) as by_parameter:
            client.infer("busy", inputs, timeout=100_000, client_timeout=T)
    finally:
        client.close()
    with pytest.raises(grpc.RpcError) as by_stub:
        unary(server.target, busy_request(2.0), timeout=0.2)
    assert by_client.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert by_stub.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert by_parameter.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert (
        by_parameter.value.message() == "model 'busy': request timed out after 100 ms in the queue"
    )
    # All three failed while the holder still ran: the deadlines were kept, not outwaited.
    assert model_counters(server.url, "busy")["running"] == 1
    np.testing.assert_array_equal(y_of(holder.result(T)), np.full((1, 4), -1.0))
    after = model_counters(server.url, "busy")
    assert after["rows"] - before["rows"] == 1  # only the holder ran
    dropped = sum(after[k] - before[k] for k in ("timed_out", "cancelled"))
    assert dropped == 3  # each late request left the queue without running
    assert after["queued"] == 0


# -- mixed traffic ------------------------------------------------------------------------


def test_http_and_grpc_requests_for_one_model_run_together(
    server: GrpcServer, pool: ThreadPoolExecutor
) -> None:
    before = model_counters(server.url, "busy")
    holder = hold(server, pool)

    def predict(x: float) -> np.ndarray:
        body = {"model": "busy", "inputs": {"x": [[x] * 4] * 2, "work": [0, 0]}}
        response = httpx.post(f"{server.url}/predict", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return np.array(response.json()["outputs"]["y"], np.float32)

    def v2(x: float) -> np.ndarray:
        body = {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [x] * 4},
                {"name": "work", "shape": [1], "datatype": "INT64", "data": [0]},
            ]
        }
        response = httpx.post(f"{server.url}/v2/models/busy/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(-1, 4)

    def by_grpc(x: float) -> np.ndarray:
        return y_of(unary(server.target, busy_request(x, rows=3)))

    callers = [predict, v2, by_grpc, predict, v2, by_grpc, predict]  # 14 rows: one batch of 16
    futures = [pool.submit(call, float(i)) for i, call in enumerate(callers)]
    queued(server, len(callers))
    holder.result(T)
    for i, (call, future) in enumerate(zip(callers, futures, strict=True)):
        rows = {predict: 2, v2: 1, by_grpc: 3}[call]
        np.testing.assert_array_equal(future.result(T), np.full((rows, 4), float(i)))
    after = model_counters(server.url, "busy")
    assert after["requests"] - before["requests"] == 8
    assert after["runs"] - before["runs"] == 2  # the holder, then all seven together


# -- shutdown -----------------------------------------------------------------------------


class Load:
    """`LOADERS` callers, each sending requests one after another over one channel until the
    server refuses one after SIGTERM; every outcome is counted by status code."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.outcomes: Counter[str] = Counter()
        self.terminated = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, answers: int = 200) -> None:
        self.tasks = [asyncio.create_task(self._caller(i)) for i in range(LOADERS)]
        async with asyncio.timeout(30):
            while self.outcomes["OK"] < answers:
                await asyncio.sleep(0.01)

    async def _caller(self, value: int) -> None:
        for _ in range(5_000):
            request = busy_request(float(value), work=2, model="load")
            try:
                response = await self.stub.ModelInfer(request, timeout=15)
            except grpc.aio.AioRpcError as exc:
                self.outcomes[exc.code().name] += 1
                if self.terminated.is_set():
                    return
                raise
            assert (y_of(response) == value).all()
            self.outcomes["OK"] += 1
        raise AssertionError("SIGTERM never stopped the load")

    async def finish(self) -> None:
        async with asyncio.timeout(30):  # never a hang
            await asyncio.gather(*self.tasks)


LOADERS = 64


async def test_sigterm_during_grpc_load_answers_what_was_accepted_and_ends_streams(
    repo: Path,
) -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    with running_grpc_server(repo) as server:

        def counters() -> dict[str, Any]:
            return model_counters(server.url, "busy")

        async with grpc.aio.insecure_channel(server.target) as channel:
            stub: Any = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            load = Load(stub)
            await load.start()
            # A known set the server accepted: a running holder, then requests queued behind it.
            holder = asyncio.ensure_future(
                stub.ModelInfer(busy_request(-1.0, HOLD_WORK), timeout=30)
            )
            await asyncio.to_thread(wait_for, lambda: counters()["running"] == 1, "holder runs")
            held = [
                asyncio.ensure_future(stub.ModelInfer(busy_request(float(i)), timeout=30))
                for i in range(5)
            ]
            stream = stub.ModelStreamInfer(timeout=30)
            for i in range(2):
                await stream.write(busy_request(10.0 + i, rid=f"st{i}"))
            await asyncio.to_thread(wait_for, lambda: counters()["queued"] == 7, "7 queued")
            server.process.terminate()
            load.terminated.set()
            async with asyncio.timeout(30):  # never a hang
                answers = await asyncio.gather(holder, *held)
                streamed = [await stream.read(), await stream.read()]
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await stream.read()
            await load.finish()
            refused = await asyncio.gather(
                stub.ModelInfer(busy_request(0.0), timeout=5), return_exceptions=True
            )
        assert server.process.proc is not None
        assert server.process.proc.wait(30) in (0, -signal.SIGTERM)
    for i, answer in enumerate(answers):
        assert (y_of(answer) == (-1.0 if i == 0 else i - 1)).all()
    assert [(s.error_message, s.infer_response.id) for s in streamed] == [("", "st0"), ("", "st1")]
    assert [y_of(s.infer_response)[0, 0] for s in streamed] == [10.0, 11.0]
    assert (ended.value.code(), ended.value.details()) == (
        unavailable,
        "the server is shutting down",
    )
    assert isinstance(refused[0], grpc.aio.AioRpcError) and refused[0].code() is unavailable
    # Each caller ends on its first refusal, which is UNAVAILABLE (retry elsewhere): never
    # CANCELLED, INTERNAL or DEADLINE_EXCEEDED.
    assert set(load.outcomes) <= {"OK", "UNAVAILABLE"}, load.outcomes
    assert load.outcomes["OK"] >= 200
    assert load.outcomes["UNAVAILABLE"] == LOADERS
    assert "gRPC server stopped" in server.process.log_text()


async def test_rpcs_refused_at_sigterm_get_unavailable_not_cancelled(repo: Path) -> None:
    with running_grpc_server(repo) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            load = Load(service_pb2_grpc.GRPCInferenceServiceStub(channel))
            await load.start()
            server.process.terminate()
            load.terminated.set()
            await load.finish()
    assert load.outcomes["UNAVAILABLE"] == LOADERS, load.outcomes


# -- several workers ----------------------------------------------------------------------


def test_workers_share_the_grpc_port_and_a_single_worker_server_cannot_take_it(
    repo: Path,
) -> None:
    with running_grpc_server(repo, "--workers", "2", listeners=2) as server:
        wait_for_log(server.process, "loaded model pair", count=2)
        for i in range(40):  # a new connection each: the kernel spreads them over the workers
            with grpc.insecure_channel(server.target) as channel:
                stub: Any = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                good = service_pb2.ModelInferRequest(model_name="pair")
                good.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents[
                    :
                ] = [i, 1, 2]
                good.inputs.add(name="idx", datatype="INT64", shape=[1, 2]).contents.int64_contents[
                    :
                ] = [0, 2]
                picked = np.frombuffer(
                    stub.ModelInfer(good, timeout=T).raw_output_contents[1], np.float32
                )
                assert picked.tolist() == [float(i), 2.0]
                bad = service_pb2.ModelInferRequest()
                bad.CopyFrom(good)
                bad.inputs[1].contents.int64_contents[:] = [0, 9]  # out of range: the run fails
                with pytest.raises(grpc.RpcError) as failed:  # its log record names the worker
                    stub.ModelInfer(bad, timeout=T, metadata=[("x-request-id", f"w{i}")])
                assert failed.value.code() == grpc.StatusCode.INTERNAL
        wanted = {f"w{i}" for i in range(40)}
        wait_for(
            lambda: wanted <= {r.get("request_id") for r in server.process.log_records()},
            "every failure logged",
        )
        pids = {r["process"] for r in server.process.log_records() if r.get("request_id") in wanted}
        assert len(pids) == 2, "both workers answered gRPC connections"

        # One worker binds without SO_REUSEPORT, so a port already taken is an error at start.
        cmd = [sys.executable, "-m", "inscale", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--grpc-port", str(server.port), "--model-repository", str(repo)]
        try:
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("a second server started on a gRPC port two workers hold")
        assert second.returncode != 0
        assert f"gRPC cannot listen on 127.0.0.1:{server.port}" in second.stdout + second.stderr
        assert unary(server.target, busy_request(3.0)).model_name == "busy"  # still served
