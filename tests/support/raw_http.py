"""HTTP/1.1 over raw asyncio streams: for tests that must see exactly what each connection
sent and got (partial requests, keep-alive, `Connection: close`, a close before any answer),
which a client library would hide behind pooling and retries."""

import asyncio
import contextlib
import time
from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()

    def error(self) -> str:
        message: str = orjson.loads(self.body)["error"]
        return message


def request_bytes(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response; IncompleteReadError if the connection ends before it is whole."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, body)


class Connection:
    """One client connection, with its own keep-alive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def call(self, method: str, path: str, body: bytes = b"") -> RawResponse:
        await self.send(request_bytes(method, path, body))
        return await read_response(self.reader)

    async def closed_after(self, limit_s: float) -> tuple[bytes, float]:
        """Everything the server sends until it closes the connection, and when (monotonic).

        The client's side is closed too: the connection is over."""
        try:
            data = await asyncio.wait_for(self.reader.read(), limit_s)
            return data, time.monotonic()
        finally:
            await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):  # the server reset it first: closed anyway
            await self.writer.wait_closed()


async def parse_response(data: bytes) -> RawResponse:
    """The response at the start of bytes already read (e.g. all a connection got)."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_response(reader)
