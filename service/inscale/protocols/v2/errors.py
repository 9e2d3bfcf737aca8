"""The Open Inference Protocol's HTTP statuses for the core's errors, as Triton answers them.

Its clients (tritonclient, perf_analyzer) expect a request that timed out in the queue to be
"unavailable" (503) like a full queue, not a gateway timeout. An unknown model is 404 on every
route, infer included (Triton answers 400 on infer); the README says so.
"""

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

V2_STATUS: ErrorTable = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    UnsupportedEncoding: 415,
    ModelNotFound: 404,
    PermissionDenied: 403,
    ModelNotReady: 503,
    QueueFull: 503,
    DeadlineExceeded: 503,
    Unsupported: 501,
    ModelLoadError: 400,
    ModelExecutionError: 500,
}
