"""What an HTTP request costs before any of inscale's code, beside what inscale costs.

Three servers answer the same wrk load, one at a time, pinned to the same core, in interleaved
rounds:
- `protocol`: a bare asyncio protocol (uvloop, httptools) writing a fixed answer from its
  parser callback: the floor of a Python HTTP/1.1 server on this machine;
- `asgi`: a bare ASGI app under uvicorn (httptools, uvloop, no access log) reading the body and
  sending a fixed answer: what uvicorn's per-request machinery adds to that floor;
- `inscale`: `inscale serve` on the Identity model through `/predict`.

For each it prints requests/s and the server's user and system CPU per request (from
/proc/PID/stat, read around the measured run), and writes them to JSON. Issue 12 used these to
decide where the request path's remaining cost was: uvicorn's ASGI cycle (about 14 us of user
CPU per request here) was worth leaving for the common request.

    .venv/bin/python -m loadtests.bench_ceiling --seconds 8 --rounds 3
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import machine, wrk
from loadtests.harness.cpu import TICK
from loadtests.harness.processes import ROOT, Started, free_port, pinned, spawned, wait_http_ok
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

SERVERS = ("protocol", "asgi", "inscale")
ANSWER = b'{"outputs":[[1.0,2.0,3.0,4.0]]}'


async def raw_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The `asgi` server's app: read the whole body, answer a fixed JSON body."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class _Answering(asyncio.Protocol):
    """The `protocol` server: parse with httptools, answer each complete request at once."""

    _HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no asyncio subclass
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(self._HEAD % len(ANSWER) + ANSWER)


def _serve_protocol(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Answering, "127.0.0.1", port)
        print(f"listening on {port}", flush=True)
        await server.serve_forever()

    uvloop.run(main())


@contextmanager
def _server(kind: str, work: Path, cpu: int) -> Iterator[Started]:
    if kind == "inscale":
        with inscale_server(work / "inscale.log", model_repository=work / "repo", cpus=[cpu]) as s:
            yield s
        return
    port = free_port()
    if kind == "asgi":
        app = "loadtests.bench_ceiling:raw_asgi_app"
        cmd = [*pinned([cpu]), sys.executable, "-m", "uvicorn", app, "--port", str(port)]
        cmd += ["--http", "httptools", "--loop", "uvloop", "--no-access-log"]
        cmd += ["--log-level", "warning"]
    else:
        cmd = [*pinned([cpu]), sys.executable, "-m", "loadtests.bench_ceiling"]
        cmd += ["--serve-protocol", str(port)]
    with spawned(cmd, work / f"{kind}.log", cwd=ROOT) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(url, 30, proc)  # the bare servers answer any path
        yield Started(url, proc.pid, work / f"{kind}.log")


def _cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def _turn(kind: str, args: argparse.Namespace, work: Path, body: Path) -> dict[str, float]:
    with _server(kind, work, args.server_cpu) as server:
        url = f"{server.url}/predict"
        client = [args.client_cpu]
        wrk.run(url, body, connections=args.connections, seconds=1, cpus=client)  # warm-up
        user0, system0 = _cpu_split(server.pid)
        report = wrk.run(url, body, connections=args.connections, seconds=args.seconds, cpus=client)
        user1, system1 = _cpu_split(server.pid)
    answered = report.requests_per_s * args.seconds
    return {
        "requests_per_s": report.requests_per_s,
        "user_us_per_request": (user1 - user0) / answered * 1e6,
        "system_us_per_request": (system1 - system0) / answered * 1e6,
        "p50_us": report.as_dict()["p50_us"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "ceiling.json")
    parser.add_argument("--serve-protocol", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_protocol is not None:
        _serve_protocol(args.serve_protocol)
        return 0
    with tempfile.TemporaryDirectory(prefix="inscale-ceiling-") as scratch:
        work = Path(scratch)
        build_repository(work / "repo", ["identity"])
        body = one_row_bodies(work, ["identity"])["identity"]
        rows: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            order = SERVERS if round_ % 2 == 0 else SERVERS[::-1]
            for kind in order:
                figures = _turn(kind, args, work, body)
                rows.append({"server": kind, "round": round_, **figures})
                print(
                    f"round {round_} {kind:9} {figures['requests_per_s']:9.0f} req/s  "
                    f"user {figures['user_us_per_request']:6.1f} us  "
                    f"system {figures['system_us_per_request']:5.1f} us per request"
                )
    print(f"\nmedians of {args.rounds} rounds, {args.connections} connections, one server core")
    print(f"{'server':10} {'req/s':>9} {'user us':>8} {'system us':>10}")
    medians = {}
    for kind in SERVERS:
        mine = [r for r in rows if r["server"] == kind]
        medians[kind] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("requests_per_s", "user_us_per_request", "system_us_per_request")
        }
        m = medians[kind]
        print(
            f"{kind:10} {m['requests_per_s']:9.0f} {m['user_us_per_request']:8.1f} "
            f"{m['system_us_per_request']:10.1f}"
        )
    write_results(
        args.out, machine.facts(), connections=args.connections, rows=rows, medians=medians
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
