"""Serving behaviour under load and failure, on a real server with the `busy` model.

`busy` runs for as long as its largest `work` value asks (about 0.35 ms per unit on one
thread), so a "holder" request keeps the single instance busy while the test puts other
requests in a known state, observed through `GET /models/busy` (never by sleeping).
"""

import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.server import ServerProcess, running_server

HOLD_WORK = 3000  # about a second of compute: far longer than the test's own steps


def stats(url: str, model: str = "busy") -> dict[str, Any]:
    version: dict[str, Any] = httpx.get(f"{url}/models/{model}").json()["versions"][0]
    return version["stats"]  # type: ignore[no-any-return]


def wait_for(url: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check(stats(url)):
            return
        time.sleep(0.01)
    raise AssertionError(f"stats never matched: {stats(url)}")


def busy_body(x: float, work: int = 0, **extra: object) -> dict[str, object]:
    return {"model": "busy", "inputs": {"x": [[x, x, x, x]], "work": [work]}, **extra}


def post(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=60)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def hold(url: str, pool: ThreadPoolExecutor, work: int = HOLD_WORK) -> "Future[httpx.Response]":
    """Occupy the busy model's only instance; returns once that request is running."""
    wait_for(url, lambda s: s["running"] == 0 and s["queued"] == 0)
    holder = pool.submit(post, url, busy_body(-1.0, work))
    wait_for(url, lambda s: s["running"] == 1)
    return holder


def test_requests_queued_during_a_run_are_served_in_one_batch(
    server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    before = stats(server.url)
    holder = hold(server.url, pool)
    waiting = [pool.submit(post, server.url, busy_body(float(i))) for i in range(3)]
    wait_for(server.url, lambda s: s["queued"] == 3)
    assert holder.result().status_code == 200
    for i, future in enumerate(waiting):
        response = future.result()
        assert response.status_code == 200, response.text
        assert response.json()["outputs"]["y"] == [[float(i)] * 4]
    after = stats(server.url)
    assert after["requests"] - before["requests"] == 4
    assert after["runs"] - before["runs"] == 2  # the holder, then the three together


def test_a_lone_request_is_not_held_back_by_the_queue_delay(server: ServerProcess) -> None:
    # `patient` waits up to 5 s to fill a batch; alone on an idle model it must not wait.
    before = stats(server.url, "patient")
    started = time.monotonic()
    response = httpx.post(
        f"{server.url}/predict", json={"model": "patient", "inputs": [[1, 2, 3, 4]]}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    after = stats(server.url, "patient")
    assert after["queue_seconds"] - before["queue_seconds"] < 1.0
    assert elapsed < 2.5, f"a lone request took {elapsed:.2f} s: held for the 5 s delay?"


def test_full_queue_answers_503_at_once_with_retry_after(
    server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    holder = hold(server.url, pool)
    queued = [pool.submit(post, server.url, busy_body(float(i))) for i in range(3)]
    wait_for(server.url, lambda s: s["queued"] == 3)  # max_queue_size of busy
    rejected = post(server.url, busy_body(9.0))
    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "7"  # the session server's --retry-after-s
    assert "overloaded" in rejected.json()["error"]
    assert "queue is full" in rejected.json()["error"]
    assert holder.result().status_code == 200
    assert [f.result().status_code for f in queued] == [200, 200, 200]


def test_request_past_its_deadline_in_the_queue_gets_504(
    server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    before = stats(server.url)
    holder = hold(server.url, pool)
    late = post(server.url, busy_body(1.0, timeout_ms=100))
    assert late.status_code == 504
    assert late.json() == {"error": "model 'busy': request timed out after 100 ms in the queue"}
    assert stats(server.url)["timed_out"] - before["timed_out"] == 1
    assert holder.result().status_code == 200
    assert stats(server.url)["rows"] - before["rows"] == 1  # the late request never ran


def test_a_client_that_disconnects_leaves_the_queue(
    server: ServerProcess, pool: ThreadPoolExecutor
) -> None:
    before = stats(server.url)
    holder = hold(server.url, pool)
    body = b'{"model":"busy","inputs":{"x":[[5,5,5,5]],"work":[0]}}'
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_for(server.url, lambda s: s["queued"] == 1)
    staying = pool.submit(post, server.url, busy_body(6.0))
    wait_for(server.url, lambda s: s["queued"] == 2)
    raw.close()
    wait_for(server.url, lambda s: s["cancelled"] - before["cancelled"] == 1)
    assert holder.result().status_code == 200
    assert staying.result().json()["outputs"]["y"] == [[6.0] * 4]
    after = stats(server.url)
    assert after["rows"] - before["rows"] == 2  # holder and the staying request only
    assert after["queued"] == 0


def test_a_model_that_raises_answers_500_and_keeps_serving(server: ServerProcess) -> None:
    bad = httpx.post(
        f"{server.url}/predict",
        json={"model": "pair", "inputs": {"x": [[1, 2, 3]], "idx": [[0, 7]]}},
    )
    assert bad.status_code == 500
    message = bad.json()["error"]
    assert message.startswith("the server failed to handle this request (request id ")
    assert bad.headers["x-request-id"] in message
    assert "GatherElements" not in message  # internals stay in the log
    good = httpx.post(
        f"{server.url}/predict",
        json={"model": "pair", "inputs": {"x": [[1, 2, 3]], "idx": [[2, 0]]}},
    )
    assert good.status_code == 200
    assert good.json()["outputs"]["picked"] == [[3.0, 1.0]]
    assert any(
        r.get("request_id") == bad.headers["x-request-id"] and r.get("level") == "error"
        for r in server.log_records()
    )


def test_sigterm_drains_in_flight_and_queued_requests(test_repo: Path) -> None:
    with running_server(test_repo) as proc, ThreadPoolExecutor(4) as pool:
        holder = hold(proc.url, pool)
        queued = pool.submit(post, proc.url, busy_body(3.0))
        wait_for(proc.url, lambda s: s["queued"] == 1)
        proc.terminate()
        assert holder.result().status_code == 200
        response = queued.result()
        assert response.status_code == 200
        assert response.json()["outputs"]["y"] == [[3.0] * 4]
        assert proc.proc is not None
        # uvicorn re-raises the signal once it has shut down cleanly: "killed by SIGTERM"
        # after a graceful drain is the conventional exit, and what a supervisor expects.
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proc.url}/health/live", timeout=2)
        assert "shut down: every model drained" in proc.log_text()


def test_sigterm_past_the_grace_period_cancels_what_is_left(test_repo: Path) -> None:
    # The holder's run (about 5 s) outlasts the 1 s grace: uvicorn then cancels every request
    # task. Each connection is closed without an answer (a client that kept waiting would not
    # get one) and the queued request leaves the queue, well before the run ends.
    with (
        running_server(test_repo, "--shutdown-grace-s", "1") as proc,
        ThreadPoolExecutor(4) as pool,
    ):
        holder = hold(proc.url, pool, 5 * HOLD_WORK)
        queued = pool.submit(post, proc.url, busy_body(3.0))
        wait_for(proc.url, lambda s: s["queued"] == 1)
        signalled = time.monotonic()
        proc.terminate()
        for request in (holder, queued):
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                request.result()
        assert time.monotonic() - signalled < 4  # cut at the grace period, not the run's end
        assert proc.proc is not None
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Cancel 2 running task(s), timeout graceful shutdown exceeded" in proc.log_text()
        records = proc.log_records()
        (drained,) = [r for r in records if "requests_unanswered" in r]
        assert drained["requests_unanswered"] == 2
        assert not [r for r in records if "exc" in r]  # no failure behind the cancellations


def test_health_and_listing(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/health/ready").json() == {"ready": True}
    listing = httpx.get(f"{server.url}/models").json()["models"]
    states = {m["name"]: m["versions"][0]["state"] for m in listing}
    assert states["identity"] == "READY"
    assert states["broken"] == "UNAVAILABLE"
    meta = httpx.get(f"{server.url}/models/pair").json()["versions"][0]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "idx", "datatype": "INT64", "shape": [-1, 2]},
    ]
    assert meta["providers"] == ["CPUExecutionProvider"]
    assert meta["batching"]["max_batch_size"] == 32


def test_not_ready_until_models_are_loaded_and_live_meanwhile(tmp_path: Path) -> None:
    # An empty repository: the server is live, but never ready (no model can serve).
    with running_server(tmp_path, ready=False) as proc:
        assert httpx.get(f"{proc.url}/health/live").status_code == 200
        deadline = time.monotonic() + 10
        while "no model could be loaded" not in proc.log_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = httpx.get(f"{proc.url}/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}


def test_several_worker_processes_serve_the_same_models(test_repo: Path) -> None:
    with running_server(test_repo, "--workers", "2") as proc:
        # Readiness answers from one worker; wait until both have loaded the model.
        deadline = time.monotonic() + 30
        while proc.log_text().count('"loaded model identity') < 2:
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.05)
        pids = set()
        for i in range(40):
            response = httpx.post(
                f"{proc.url}/predict", json={"model": "identity", "inputs": [[i, 0, 0, 1]]}
            )
            assert response.status_code == 200
            assert response.json()["outputs"]["y"] == [[float(i), 0.0, 0.0, 1.0]]
        for record in proc.log_records():
            if str(record.get("msg", "")).startswith("loaded model identity"):
                pids.add(record.get("process"))
        assert len(pids) == 2, "each worker process loads the models itself"
