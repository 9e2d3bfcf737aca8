"""Structured logging with the current request's id on every record.

The id lives in a context variable set by the HTTP middleware, so any module can log and the
line can be tied back to the request (and to the id sent in a 5xx body) without passing the
id around.
"""

import contextvars
import itertools
import logging
import os
import sys
import time

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# A per-process random prefix and a counter: unique across replicas, and far cheaper than
# uuid4 on every request.
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)
MAX_ID_LENGTH = 128  # a client's own id is cut to this before it is logged or echoed


def new_request_id() -> str:
    return f"{_PREFIX}-{next(_COUNTER):x}"


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn adds ANSI-coloured copies of its messages
}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.process,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id.get()
        return f"{line} [request_id={rid}]" if rid else line


def configure_logging(level: str, fmt: str, access_log: bool = False) -> None:
    """Send our logs and uvicorn's through one handler on stderr.

    uvicorn's access logger is silenced unless asked for: a line per request costs more
    than a percent of the request path.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = not access_log
