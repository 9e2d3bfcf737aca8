"""An open-loop HTTP load generator: requests leave at the times a schedule says, whatever
the server does, and each one's latency runs from its scheduled time (so a slow server is
not excused by a client that waited for it: no coordinated omission).

Closed-loop tools (wrk, perf_analyzer) send the next request when the last is answered, so
an overloaded server slows its own load down; real traffic does not wait. The schedule is
Poisson arrivals at a rate, optionally in bursts (the rate times `burst_factor` for
`burst_s` of every `period_s`).

Run as a process of its own, pinned away from the server:
`python -m loadtests.harness.open_loop --url URL --path /predict --body FILE --rate R
--duration-s S`; it prints one JSON document: what was sent, and per status the count and
latency quantiles. Connections are opened as needed, up to `--max-connections`; a request
that finds every connection busy waits for one, and that wait counts in its latency.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Tally:
    latencies: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: int = 0  # connection failures: no HTTP answer
    sent: int = 0
    behind_s: float = 0.0  # the generator's own lag behind the schedule, worst seen


def schedule(
    rate: float, duration_s: float, seed: int, burst_factor: float, burst_s: float, period_s: float
) -> list[float]:
    """Send times (seconds from the start) of a Poisson process, with bursts if asked."""
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while True:
        in_burst = burst_factor > 1 and (t % period_s) < burst_s
        t += rng.expovariate(rate * (burst_factor if in_burst else 1.0))
        if t >= duration_s:
            return times
        times.append(t)


class Connections:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.freed = asyncio.Condition()

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.open < self.limit:
                self.open += 1
                try:
                    return await asyncio.open_connection(self.host, self.port)
                except OSError:
                    self.open -= 1
                    raise
            async with self.freed:
                await self.freed.wait()

    async def give(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is None:
            self.open -= 1
        else:
            self.idle.append(conn)
        async with self.freed:
            self.freed.notify()


async def one(request: bytes, due: float, pool: Connections, tally: Tally) -> None:
    conn = None
    try:
        conn = await pool.take()
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        keep = True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        await reader.readexactly(length)
        tally.latencies[status].append(time.perf_counter() - due)
        if not keep:
            writer.close()
            conn = None
    except (OSError, asyncio.IncompleteReadError, ValueError):
        tally.errors += 1
        if conn is not None:
            conn[1].close()
        conn = None
    finally:
        await pool.give(conn)


async def drive(
    url: str, path: str, body: bytes, times: list[float], max_connections: int
) -> tuple[Tally, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool = Connections(host, port, max_connections)
    tally = Tally()
    tasks = set()
    start = time.perf_counter()
    for offset in times:
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            tally.behind_s = max(tally.behind_s, -delay)
        task = asyncio.create_task(one(request, due, pool, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        tally.sent += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return tally, time.perf_counter() - start


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(tally: Tally, elapsed_s: float, slo_s: float) -> dict[str, object]:
    ok = tally.latencies.get(200, [])
    return {
        "sent": tally.sent,
        "elapsed_s": elapsed_s,
        "generator_behind_s": tally.behind_s,
        "connection_errors": tally.errors,
        "by_status": {
            str(status): {
                "count": len(values),
                "p50_ms": quantile(values, 0.5) * 1000,
                "p99_ms": quantile(values, 0.99) * 1000,
            }
            for status, values in sorted(tally.latencies.items())
        },
        "goodput_per_s": sum(1 for v in ok if v <= slo_s) / elapsed_s,
        "ok_p50_ms": quantile(ok, 0.5) * 1000,
        "ok_p99_ms": quantile(ok, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=10)
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--slo-ms", type=float, default=50, help="what counts as goodput")
    parser.add_argument("--burst-factor", type=float, default=1.0)
    parser.add_argument("--burst-s", type=float, default=0.5)
    parser.add_argument("--period-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    times = schedule(
        args.rate, args.duration_s, args.seed, args.burst_factor, args.burst_s, args.period_s
    )
    driving = drive(args.url, args.path, args.body.read_bytes(), times, args.max_connections)
    try:
        import uvloop  # the server's own loop: the generator needs every microsecond
    except ImportError:  # pragma: no cover
        tally, elapsed = asyncio.run(driving)
    else:
        tally, elapsed = uvloop.run(driving)
    json.dump(summary(tally, elapsed, args.slo_ms / 1000), sys.stdout)
    print()


if __name__ == "__main__":
    main()
