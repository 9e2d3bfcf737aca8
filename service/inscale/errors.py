"""Errors raised by the serving core.

They carry no HTTP or gRPC: each protocol maps each family to a status in its own table
(`inscale/protocols/*/errors.py`). Messages are written
for the user who sent the request and name the thing that was wrong, so they can be returned
as they are.
"""

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")
QUOTE_LIMIT = 200  # characters of user input a message or a log line repeats


class InscaleError(Exception):
    """Base of every error the core raises on purpose."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidInput(InscaleError):
    """The request is malformed or does not match the model's signature."""


class PayloadTooLarge(InvalidInput):
    """The body, or a tensor it declares, is larger than the configured limit."""


class UnsupportedEncoding(InvalidInput):
    """The body is in an encoding the server does not read (a Content-Encoding but gzip or
    deflate): HTTP's 415, so a client knows to resend it plain."""


class ModelNotFound(InscaleError):
    """No such model or version in the repository."""


class ModelNotReady(InscaleError):
    """The model exists but cannot serve now (loading, failed, unloading, shutting down)."""


class Unsupported(InscaleError):
    """The request asks for something the model or server cannot do (e.g. BF16 data)."""


class QueueFull(InscaleError):
    """Back-pressure: the model's queue is at its bound; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        """`retry_after_s`: the server's `retry_after_s` setting, sent as the retry hint."""
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(QueueFull):
    """Admission: the model could not finish the request before its deadline (or latency
    objective) given the work queued ahead, so it was refused at once rather than queued."""


class DeadlineExceeded(InscaleError):
    """The request was still queued when its deadline passed, or could no longer meet it."""


class PermissionDenied(InscaleError):
    """A control call (load, unload) that the server's control API setting does not allow."""


class ModelExecutionError(InscaleError):
    """The model raised while running a batch. The message is logged, never sent."""


class ModelLoadError(InscaleError):
    """A model could not be loaded (corrupt file, bad config, no usable provider)."""


class ConfigError(ModelLoadError):
    """A model's config file is missing required structure or has invalid values."""


def lookup(exc: InscaleError, table: Mapping[type[InscaleError], T], default: T) -> T:
    """A protocol's entry for an error, found by walking its class hierarchy, so a subclass
    (`PayloadTooLarge`, a kind of `InvalidInput`) may have its own row and otherwise gets its
    family's."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def shortened(text: str, limit: int = QUOTE_LIMIT) -> str:
    """User input as a message or log line repeats it: cut to `limit` characters, so a
    5,000-character name costs neither the log nor the client 5,000 characters again."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`shortened`, in quotes: for names inside a sentence."""
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}...' ({len(text)} characters)"
