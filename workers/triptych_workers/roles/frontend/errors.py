"""The frontend's own errors and the one map from any exception to an OpenAI error body.

``error_body`` serves the app's exception handler (a JSON body with its status) and a stream whose headers
are already gone (``error_sse``: the same body as an event); both also give the outcome the request is
counted under. A ``ClientError`` keeps its own status, timeouts become 504, an unavailable or lost worker 503
(as does a pool that stayed empty while the request was held for it: ``PoolUnavailable``), and anything else
a 500 that reveals nothing.
"""

from __future__ import annotations

import logging

from triptych_workers.errors import ClientError
from triptych_workers.metrics import Outcome
from triptych_workers.protocol import ErrorInfo, ErrorResponse
from triptych_workers.roles.pipeline import PoolUnavailable
from triptych_workers.transport import (
    DeadlineExpired,
    NoResponders,
    RequestCancelled,
    RequestTimeout,
    TransportError,
    WorkerBusy,
    WorkerLost,
)

log = logging.getLogger(__name__)


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class Unsupported(ClientError):
    code = "unsupported_parameter"


class Overloaded(Exception):
    """The frontend is at its concurrent-request limit (503)."""


class DeadlineExceeded(Exception):
    """The request ran past its deadline (504)."""


def error_body(exc: BaseException) -> tuple[int, ErrorResponse, Outcome]:
    """The one mapping from an exception to (HTTP status, OpenAI error body, outcome label)."""
    if isinstance(exc, ClientError):
        # The log says why, beside the client's 4xx (e.g. a media URL the deployment's media policy refuses).
        log.info("request refused (%d %s): %s", exc.status, exc.code, exc)
        return exc.status, ErrorResponse.from_exception(exc), "client_error"
    if isinstance(exc, DeadlineExceeded | RequestTimeout | DeadlineExpired | TimeoutError):
        info = ErrorInfo(
            message="the request did not finish within its deadline", type="timeout", code="timeout"
        )
        return 504, ErrorResponse(error=info), "timeout"
    if isinstance(exc, WorkerLost | RequestCancelled):
        log.warning("request failed, its worker lost (503): %s: %s", type(exc).__name__, exc)
        # Not the client's cancellation (a client that left gets no answer at all): the worker holding the
        # request was shut down past its drain deadline, died or froze. Another worker can serve a retry.
        info = ErrorInfo(
            message="the worker serving this request stopped before it finished (shut down or lost); retry",
            type="service_unavailable",
            code="worker_lost",
        )
        return 503, ErrorResponse(error=info), "busy"
    if isinstance(exc, PoolUnavailable):
        log.warning("request refused (503): %s", exc)
        # The request waited for a pool scaled to zero (or starting) that did not come up in time: say so,
        # the message names the role and the wait. No Retry-After: this handler's responses carry no headers.
        info = ErrorInfo(message=str(exc), type="service_unavailable", code="pool_unavailable")
        return 503, ErrorResponse(error=info), "busy"
    if isinstance(exc, Overloaded | WorkerBusy | NoResponders):
        # At INFO: under overload there is one per refused request, the expected answer, not a fault.
        log.info("request refused (503): %s: %s", type(exc).__name__, exc)
        info = ErrorInfo(
            message="the service is overloaded or has no worker for this request; retry later",
            type="service_unavailable",
            code="service_unavailable",
        )
        return 503, ErrorResponse(error=info), "busy"
    if isinstance(exc, TransportError):
        log.warning("request failed in the pipeline: %s: %s", type(exc).__name__, exc)
    else:
        log.error("request failed", exc_info=exc)
    return 500, ErrorResponse.internal(), "error"


def error_sse(body: ErrorResponse) -> str:
    """``body`` as a server-sent event, for a stream that has already sent its headers."""
    return f"data: {body.model_dump_json()}\n\n"
