"""`/predict`'s statuses for the core's errors: a deadline passed in the queue is a gateway
timeout (504), as an HTTP client or proxy expects."""

from inscale.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    Unsupported,
    UnsupportedEncoding,
)
from inscale.http.errors import ErrorTable

PREDICT_STATUS: ErrorTable = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    UnsupportedEncoding: 415,
    ModelNotFound: 404,
    PermissionDenied: 403,
    ModelNotReady: 503,
    QueueFull: 503,
    DeadlineExceeded: 504,
    Unsupported: 501,
    ModelLoadError: 400,
    ModelExecutionError: 500,
}
