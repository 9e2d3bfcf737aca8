"""What the inference routes' one-layer data path (`inscale.http.fast_path`, answers written whole
by `inscale.http.whole_response`) must keep of uvicorn's own response handling, on a real server
over raw sockets: keep-alive and `Connection: close`, HTTP/1.0, pipelined requests answered in
order, request ids echoed only when safe, the HTTP series counted, and no request leaving
garbage for the cyclic collector (which once cost this path its p99: a collector pass over
thousands of dead requests stalled the loop for 5-25 ms)."""

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from support.raw_http import Connection, parse_response, read_response, request_bytes
from support.server import ServerProcess, running_server

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = orjson.dumps({"model": "identity", "inputs": [ROW]})
V2 = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})


@pytest.fixture(scope="module")
def own_server(test_repo: Path) -> Iterator[ServerProcess]:
    """Its own server: the collector's counts must be this module's requests only."""
    with running_server(test_repo) as proc:
        yield proc


def _port(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_keep_alive_answers_carry_the_defaults_and_the_id(own_server: ServerProcess) -> None:
    async def go() -> list[dict[str, str]]:
        connection = await Connection.open(_port(own_server))
        try:
            heads = []
            for rid in ("first-id", "second-id"):
                await connection.send(request_bytes("POST", "/predict", PREDICT, X_Request_ID=rid))
                response = await read_response(connection.reader)
                assert response.status == 200
                assert orjson.loads(response.body)["outputs"] == {"y": [ROW]}
                heads.append(response.headers)
            return heads
        finally:
            await connection.close()

    heads = asyncio.run(go())
    assert [h["x-request-id"] for h in heads] == ["first-id", "second-id"]
    for head in heads:
        assert head["content-type"] == "application/json"
        assert "date" in head  # uvicorn's default headers, written with ours
        assert "connection" not in head  # kept alive: the second answer came on it


@pytest.mark.parametrize(
    ("request_line", "header", "framing"),  # a Content-Length: the direct path; chunked: ASGI
    [
        ("POST /predict HTTP/1.1", "Connection: close\r\n", "length"),
        ("POST /predict HTTP/1.1", "Connection: close\r\n", "chunked"),
        ("POST /predict HTTP/1.0", "", "length"),  # HTTP/1.0 has no chunked bodies
    ],
)
def test_a_last_request_is_answered_then_closed(
    own_server: ServerProcess, request_line: str, header: str, framing: str
) -> None:
    if framing == "length":
        body = f"Content-Length: {len(PREDICT)}\r\n\r\n".encode() + PREDICT
    else:
        body = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(PREDICT), PREDICT)
    raw = (
        f"{request_line}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{header}"
    ).encode() + body

    async def go() -> bytes:
        connection = await Connection.open(_port(own_server))
        await connection.send(raw)
        data, _ = await connection.closed_after(10)  # the server closes: end of stream
        return data

    data = asyncio.run(go())
    response = asyncio.run(parse_response(data))
    assert response.status == 200 and response.closes
    assert orjson.loads(response.body)["outputs"] == {"y": [ROW]}
    assert len(data) == data.index(b"\r\n\r\n") + 4 + len(response.body)  # nothing after it


def test_pipelined_requests_are_answered_in_order(own_server: ServerProcess) -> None:
    rows = [[float(i)] * 4 for i in range(5)]
    sent = b"".join(
        request_bytes(
            "POST",
            "/predict",
            orjson.dumps({"model": "identity", "inputs": [row]}),
            X_Request_ID=f"p{i}",
        )
        for i, row in enumerate(rows)
    )

    async def go() -> list[tuple[str, object]]:
        connection = await Connection.open(_port(own_server))
        try:
            await connection.send(sent)  # all five in one write, before any answer
            answers = []
            for _ in rows:
                response = await read_response(connection.reader)
                assert response.status == 200
                answers.append(
                    (response.headers["x-request-id"], orjson.loads(response.body)["outputs"]["y"])
                )
            return answers
        finally:
            await connection.close()

    assert asyncio.run(go()) == [(f"p{i}", [row]) for i, row in enumerate(rows)]


def test_request_ids_are_cut_and_control_characters_refused(own_server: ServerProcess) -> None:
    async def go(rid: bytes) -> tuple[int, str | None]:
        connection = await Connection.open(_port(own_server))
        try:
            head = request_bytes("POST", "/predict", PREDICT).replace(
                b"\r\n\r\n", b"\r\nX-Request-ID: " + rid + b"\r\n\r\n", 1
            )
            await connection.send(head)
            response = await read_response(connection.reader)
            return response.status, response.headers.get("x-request-id")
        finally:
            await connection.close()

    assert asyncio.run(go(b"a" * 300)) == (200, "a" * 128)  # cut to the documented length
    assert asyncio.run(go(b"caf\xe9")) == (200, "caf\xe9")  # obs-text is echoed as sent
    # The parser refuses a control character before any app sees it (the data path checks
    # again, for servers that do not); the server goes on serving.
    assert asyncio.run(go(b"bad\x01id"))[0] == 400
    assert httpx.post(f"{own_server.url}/predict", content=PREDICT, timeout=10).status_code == 200


def test_every_answer_is_counted_once(own_server: ServerProcess) -> None:
    def count(path: str, status: str) -> float:
        text = httpx.get(f"{own_server.url}/metrics", timeout=10).text
        pattern = (
            rf'^inscale_http_requests_total\{{[^}}]*method="POST"[^}}]*'
            rf'route="{re.escape(path)}"[^}}]*status="{status}"[^}}]*\}} (\S+)'
        )
        return sum(float(v) for v in re.findall(pattern, text, re.M))

    before = count("/predict", "200"), count("/predict", "404")
    with httpx.Client(base_url=own_server.url, timeout=10) as client:
        for _ in range(7):
            assert client.post("/predict", content=PREDICT).status_code == 200
        for _ in range(3):
            missing = client.post("/predict", json={"model": "nope", "inputs": [ROW]})
            assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert (count("/predict", "200"), count("/predict", "404")) == (before[0] + 7, before[1] + 3)


def test_requests_leave_no_garbage_cycles(own_server: ServerProcess) -> None:
    """The server raises the collector's first threshold (`inscale.app`), so a cycle left per
    request shows as whole collections' worth of objects; none must be found."""

    def collected() -> float:
        text = httpx.get(f"{own_server.url}/metrics", timeout=10).text
        found = re.findall(r"^python_gc_objects_collected_total\{[^}]*\} (\S+)", text, re.M)
        assert found, "the server exports the collector's counts"
        return sum(float(v) for v in found)

    requests = 3000
    with httpx.Client(base_url=own_server.url, timeout=10) as client:
        before = collected()
        for i in range(requests):
            if i % 2:
                response = client.post("/predict", content=PREDICT)
            else:
                response = client.post("/v2/models/identity/infer", content=V2)
            assert response.status_code == 200
        after = collected()
    # With the cycle the first version of this path had, this read 20 objects per request.
    assert (after - before) / requests < 0.5


def test_path_matches_are_remembered_within_a_bound_and_each_request_gets_its_own_params() -> None:
    """The data path matches a URL against the route patterns once; a scanner's endless
    distinct paths must not grow that memory without bound."""
    from inscale.http import data_routes
    from inscale.protocols.v2 import routes as v2_routes

    table = data_routes.RouteTable(v2_routes.DATA_ROUTES)
    route, params = table.match("POST", "/v2/models/m1/versions/3/infer")
    assert route is not None and params == {"name": "m1", "version": "3"}
    params["name"] = "changed by an endpoint"
    assert table.match("POST", "/v2/models/m1/versions/3/infer")[1]["name"] == "m1"
    assert table.match("GET", "/v2/models/m1/versions/3/infer")[0] is None  # method counts
    for i in range(3 * data_routes._SEEN_MAX):
        assert table.match("GET", f"/scan/{i}") == (None, {})
        assert len(table._seen) <= data_routes._SEEN_MAX
    assert table.match("POST", "/v2/models/m2/infer")[1] == {"name": "m2"}


def _chunked(body: bytes) -> Iterator[bytes]:
    """A body httpx sends chunked (no Content-Length): one the direct path leaves to ASGI."""
    yield body[:5]
    yield body[5:]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", PREDICT),
        ("/predict", b'{"model": "identity", "inputs": [[1.0, 2.0]]}'),  # wrong row length
        ("/predict", b'{"model": "identity", "inputs": '),  # not JSON
        ("/predict", b'{"model": "nope", "inputs": [[1.0]]}'),  # unknown model
        ("/v2/models/identity/infer", V2),
        ("/v2/models/identity/versions/1/infer", V2),
        ("/v2/models/identity/infer", V2.replace(b"FP32", b"FP99")),
        ("/v2/models/nope/infer", V2),
    ],
)
def test_the_direct_path_and_the_asgi_driver_answer_alike(
    own_server: ServerProcess, path: str, body: bytes
) -> None:
    """A plain request is served inside the protocol (`inscale.http.direct_path`); the same
    request gzip-encoded or chunked goes through uvicorn's cycle and the ASGI driver. Their
    answers must not differ in anything but the request id."""
    import gzip

    url = f"{own_server.url}{path}"
    ways: dict[str, tuple[bytes | Iterator[bytes], dict[str, str]]] = {
        "plain": (body, {}),
        "gzip": (gzip.compress(body), {"Content-Encoding": "gzip"}),
        "chunked": (_chunked(body), {}),
    }
    answers = {}
    with httpx.Client(timeout=10) as client:
        for way, (content, extra) in ways.items():
            rid = f"id-{way}"
            headers = {"Content-Type": "application/json", "X-Request-ID": rid, **extra}
            response = client.post(url, headers=headers, content=content)
            assert response.headers["x-request-id"] == rid
            kept = {k: v for k, v in response.headers.items() if k not in ("date", "x-request-id")}
            answers[way] = (response.status_code, kept, response.content)
    assert answers["plain"] == answers["gzip"] == answers["chunked"]
    assert answers["plain"][0] < 500


def test_the_fastapi_registration_serves_the_data_routes_too(test_repo: Path) -> None:
    """The data routes are FastAPI routes as well (the OpenAPI schema, and an app mounted
    without inscale's drivers in front); through FastAPI alone they answer the same."""
    from fastapi import FastAPI

    from inscale.app import create_app
    from inscale.settings import ServerSettings

    inner: object = create_app(ServerSettings(model_repository=test_repo))
    while not isinstance(inner, FastAPI):  # inside the drivers and the middleware layers
        inner = getattr(inner, "rest", None) or inner.app  # type: ignore[attr-defined]
    app = inner

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                for _ in range(200):
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                good = await client.post("/predict", content=PREDICT)
                bad = await client.post(
                    "/v2/models/identity/infer", content=V2.replace(b"FP32", b"FP99")
                )
                return good, bad

    good, bad = asyncio.run(go())
    assert good.status_code == 200, good.text
    assert good.json()["outputs"] == {"y": [ROW]}
    assert good.headers["content-type"] == "application/json"
    assert bad.status_code == 400 and "FP99" in bad.json()["error"]
