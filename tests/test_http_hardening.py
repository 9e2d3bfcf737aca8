"""Read timeouts and connection caps on a real server, over raw sockets.

Each test starts its own server with short limits, so the timeouts fire within the test. A
connection the server closes shows as end of stream on the client (`Connection.closed_after`).
"""

import asyncio
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_serving import HOLD_WORK, busy_body, hold, post

from support.raw_http import Connection, parse_response, request_bytes
from support.server import ServerProcess, running_server

HEADER_TIMEOUT_S = 2.0
HALF_A_HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
SLACK_S = 3.0  # how late after its deadline a close may come on a loaded 2-core machine


@pytest.fixture(scope="module")
def strict_server(test_repo: Path) -> Iterator[ServerProcess]:
    with running_server(
        test_repo,
        "--header-timeout-s",
        str(HEADER_TIMEOUT_S),
        "--body-timeout-s",
        "1",
        "--keep-alive-timeout-s",
        "1",
    ) as proc:
        yield proc


async def _is_live(port: int) -> bool:
    connection = await Connection.open(port)
    try:
        response = await connection.call("GET", "/health/live")
        return response.status == 200 and response.body == b'{"live":true}'
    finally:
        await connection.close()


async def _half_open(port: int, count: int) -> None:
    connections = []
    opened = []
    for _ in range(count):
        opened.append(time.monotonic())
        connection = await Connection.open(port)
        await connection.send(HALF_A_HEADER)
        connections.append(connection)
    closing = [asyncio.ensure_future(c.closed_after(HEADER_TIMEOUT_S + 30)) for c in connections]
    # Meanwhile (well before the timeout) the server answers as usual, and holds them all.
    assert await _is_live(port)
    assert not any(task.done() for task in closing), "a connection closed before its timeout"
    results = await asyncio.gather(*closing)
    for (data, closed_at), opened_at in zip(results, opened, strict=True):
        assert closed_at - opened_at >= HEADER_TIMEOUT_S - 0.05
        assert closed_at - opened_at <= HEADER_TIMEOUT_S + SLACK_S
        response = await parse_response(data)
        assert response.status == 408 and response.closes
        assert response.error() == (
            f"the request headers did not arrive within {HEADER_TIMEOUT_S:g} s (--header-timeout-s)"
        )
    assert await _is_live(port)


def test_half_open_connections_are_all_closed_after_the_header_timeout(
    strict_server: ServerProcess,
) -> None:
    assert strict_server.port is not None
    asyncio.run(_half_open(strict_server.port, 200))


async def _silent(port: int) -> tuple[bytes, float]:
    opened = time.monotonic()
    connection = await Connection.open(port)
    data, closed_at = await connection.closed_after(HEADER_TIMEOUT_S + SLACK_S)
    return data, closed_at - opened


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    strict_server: ServerProcess,
) -> None:
    assert strict_server.port is not None
    data, after_s = asyncio.run(_silent(strict_server.port))
    assert data == b""  # no request begun: nothing to answer
    assert HEADER_TIMEOUT_S - 0.05 <= after_s <= HEADER_TIMEOUT_S + SLACK_S


async def _trickled(port: int, pieces: list[bytes], pause_s: float) -> bytes:
    connection = await Connection.open(port)
    for piece in pieces:
        await connection.send(piece)
        await asyncio.sleep(pause_s)
    response = await asyncio.wait_for(connection.reader.read(4096), 10)
    await connection.close()
    return response


def test_headers_sent_in_pieces_within_the_timeout_are_answered(
    strict_server: ServerProcess,
) -> None:
    assert strict_server.port is not None
    whole = request_bytes("GET", "/health/live")
    pieces = [whole[:10], whole[10:25], whole[25:]]
    # Three reads spread over less than the header timeout: one request, answered.
    data = asyncio.run(_trickled(strict_server.port, pieces, HEADER_TIMEOUT_S / 5))
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b'{"live":true}')


async def _slow_body(port: int) -> tuple[bytes, float]:
    connection = await Connection.open(port)
    head = request_bytes("POST", "/predict").replace(b"Content-Length: 0", b"Content-Length: 100")
    await connection.send(head + b'{"inputs": ')
    sent = time.monotonic()
    data, closed_at = await connection.closed_after(1 + SLACK_S)
    return data, closed_at - sent


def test_a_body_that_does_not_arrive_in_time_gets_408(strict_server: ServerProcess) -> None:
    assert strict_server.port is not None
    data, after_s = asyncio.run(_slow_body(strict_server.port))
    assert 1 - 0.05 <= after_s <= 1 + SLACK_S
    response = asyncio.run(parse_response(data))
    assert response.status == 408 and response.closes
    assert response.error() == "the request body did not arrive within 1 s (--body-timeout-s)"
    # The route reading the body saw its client go: not a server failure in the log.
    crashes = [r for r in strict_server.log_records() if "crashed" in str(r.get("msg"))]
    assert crashes == []


async def _idle_after_answer(port: int) -> tuple[int, bytes, float]:
    connection = await Connection.open(port)
    response = await connection.call("GET", "/health/live")
    answered = time.monotonic()
    data, closed_at = await connection.closed_after(1 + SLACK_S)
    return response.status, data, closed_at - answered


def test_an_idle_keep_alive_connection_closes_after_its_own_limit(
    strict_server: ServerProcess,
) -> None:
    assert strict_server.port is not None
    status, data, after_s = asyncio.run(_idle_after_answer(strict_server.port))
    assert status == 200 and data == b""
    # The keep-alive limit (1 s), not the header timeout (2 s).
    assert 1 - 0.05 <= after_s < HEADER_TIMEOUT_S


async def _answered_again_while_due(port: int) -> tuple[list[int], bytes, float]:
    # Answers 0.6 s apart on one connection, over more than the 1 s limit from the first:
    # the wait armed by the first answer finds a later one and waits on from that. The
    # inference request takes the direct path, the probe FastAPI's: both end the same way.
    connection = await Connection.open(port)
    predict = b'{"model": "identity", "inputs": [[1, 2, 3, 4]]}'
    statuses = []
    try:
        for path, body in [("/health/live", b""), ("/predict", predict)] * 2:
            answer = await connection.call("POST" if body else "GET", path, body)
            statuses.append(answer.status)
            answered = time.monotonic()
            await asyncio.sleep(0.6)
        data, closed_at = await connection.closed_after(1 + SLACK_S)
    finally:  # a failed call must not leave the socket for a later test's GC to report
        await connection.close()
    return statuses, data, closed_at - answered


def test_a_connection_answered_again_gets_the_limit_from_its_last_answer(
    strict_server: ServerProcess,
) -> None:
    assert strict_server.port is not None
    statuses, data, after_s = asyncio.run(_answered_again_while_due(strict_server.port))
    assert statuses == [200] * 4 and data == b""  # open all along: 1.8 s, limit 1 s
    assert 1 - 0.05 <= after_s < HEADER_TIMEOUT_S  # 1 s after the last answer


# -- caps ---------------------------------------------------------------------------------


async def _wait_ready(connection: Connection) -> None:
    deadline = time.monotonic() + 60
    while (await connection.call("GET", "/health/ready")).status != 200:
        assert time.monotonic() < deadline, "server never became ready"
        await asyncio.sleep(0.05)


async def _connection_cap(port: int, cap: int) -> None:
    # `cap` connections, each answered once (so the server has surely accepted it); the
    # first also waits for readiness, so no other client's connection is counted.
    held = [await Connection.open(port)]
    await _wait_ready(held[0])
    for _ in range(cap - 1):
        held.append(await Connection.open(port))
        assert (await held[-1].call("GET", "/health/live")).status == 200
    # Up to twice the cap, a connection is kept until it sends its request...
    over = [await Connection.open(port) for _ in range(cap)]
    # ...past that, it is closed at once, long before any timeout, with no answer.
    past = await Connection.open(port)
    data, _ = await past.closed_after(HEADER_TIMEOUT_S / 2)
    assert data == b""
    refused = await over[0].call("GET", "/health/live")
    assert refused.status == 503 and refused.closes
    assert refused.headers["retry-after"] == "7"
    assert refused.error() == (
        f"the server has {cap} connections open, its limit (--max-connections); retry later"
    )
    assert (await over[0].closed_after(SLACK_S))[0] == b""
    for connection in over:
        await connection.close()
    # Below the cap again: the held connections still answer, and a new one is served.
    assert (await held[0].call("GET", "/health/live")).status == 200
    await held.pop().close()
    deadline = time.monotonic() + 10
    while True:  # the server sees the client's close a moment after it is sent
        fresh = await Connection.open(port)
        answer = await fresh.call("GET", "/health/live")
        await fresh.close()
        if answer.status == 200:
            break
        assert answer.status == 503 and time.monotonic() < deadline
    for connection in held:
        await connection.close()


def test_connections_past_the_cap_get_503_and_past_twice_it_are_closed(test_repo: Path) -> None:
    cap = 4
    server = ServerProcess(
        [
            "--model-repository",
            str(test_repo),
            "--max-connections",
            str(cap),
            "--header-timeout-s",
            str(HEADER_TIMEOUT_S * 5),
            "--retry-after-s",
            "7",
        ]
    )
    server.start()
    try:
        assert server.port is not None
        asyncio.run(_connection_cap(server.port, cap))
    finally:
        server.stop()


async def _in_flight_cap(port: int, busy: "list[Future[httpx.Response]]") -> None:
    probe = await Connection.open(port)
    try:
        await _refused_at_the_cap(probe, busy)
    finally:  # a failed check must not leave the socket for a later test's GC to report
        await probe.close()


async def _refused_at_the_cap(probe: Connection, busy: "list[Future[httpx.Response]]") -> None:
    started = time.monotonic()
    while True:  # 200 until the second `busy` request is in (it is submitted, not yet read)
        response = await probe.call("GET", "/health/live")
        if response.status == 503:
            break
        assert response.status == 200 and time.monotonic() - started < 20
    assert not response.closes  # the connection is fine; only the server is busy
    assert response.headers["retry-after"] == "1"
    assert response.error() == (
        "the server has 2 requests in flight, its limit (--max-requests-in-flight); retry later"
    )
    for request in busy:  # refused at once, while both still run or wait
        assert not request.done()
    for request in busy:
        assert (await asyncio.wrap_future(request)).status_code == 200
    # Below the cap again, on the same connection.
    assert (await probe.call("GET", "/health/live")).status == 200


def post_admitted(url: str, body: dict[str, object]) -> httpx.Response:
    """`post`, sent again while refused at the cap: the probe's own request is in flight for
    a moment each time round, so the cap of 2 is reached if this one arrives then (a CI run
    saw it refused and answered before the probe's check)."""
    deadline = time.monotonic() + 20
    while (response := post(url, body)).status_code == 503 and time.monotonic() < deadline:
        pass
    return response


def test_requests_past_the_in_flight_cap_get_503_at_once(test_repo: Path) -> None:
    with (
        # The probe's connection idles while the two requests run (about 5 s on a quiet
        # machine, longer on a busy one): a keep-alive timeout past that keeps it open for
        # the last check, on the same connection.
        running_server(
            test_repo, "--max-requests-in-flight", "2", "--keep-alive-timeout-s", "60"
        ) as server,
        ThreadPoolExecutor(4) as pool,
    ):
        assert server.port is not None
        # One request running on `busy`'s only instance, for about 4 s: the probe must see the
        # cap reached while it runs, and a busy machine took over a second to get there.
        holder = hold(server.url, pool, 4 * HOLD_WORK)
        queued = pool.submit(post_admitted, server.url, busy_body(3.0))  # a second one waiting
        asyncio.run(_in_flight_cap(server.port, [holder, queued]))


def test_worker_processes_use_the_same_protocol(test_repo: Path) -> None:
    with running_server(test_repo, "--workers", "2", "--header-timeout-s", "1") as server:
        assert server.port is not None

        async def check(port: int) -> bytes:
            assert await _is_live(port)
            connection = await Connection.open(port)
            await connection.send(HALF_A_HEADER)
            return (await connection.closed_after(1 + SLACK_S))[0]

        data = asyncio.run(check(server.port))
        assert asyncio.run(parse_response(data)).status == 408


def _open_file_limit_of_server(tmp_path: Path, limits: tuple[int, int]) -> tuple[int, str]:
    """Start a server under `limits` (soft, hard), read its soft limit, and stop it."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    cmd = [sys.executable, "-m", "inscale", "serve", "--port", "0", "--grpc-port", "0"]
    cmd += ["--model-repository", str(tmp_path), "--max-connections", "100"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=lower
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Uvicorn running" in line:
            break
    soft = next(
        int(row.split()[3])
        for row in Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        if row.startswith("Max open files")
    )
    proc.send_signal(signal.SIGTERM)
    lines += proc.stdout.readlines()
    proc.wait(20)
    proc.stdout.close()
    return soft, "".join(lines)


def test_the_open_file_limit_is_raised_to_fit_the_connection_cap(tmp_path: Path) -> None:
    needed = 2 * 100 + 1024  # twice the cap, and the process's other files
    soft, log = _open_file_limit_of_server(tmp_path, (256, needed + 100))
    assert soft == needed and "open-file limit" not in log
    # A hard limit below it: raised as far as allowed, and said.
    soft, log = _open_file_limit_of_server(tmp_path, (256, 512))
    assert soft == 512
    assert f"the open-file limit (512) is below what --max-connections 100 needs ({needed})" in log
