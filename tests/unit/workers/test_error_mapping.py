"""The one mapping from a failure to what the client gets (status, OpenAI error body) and the outcome label
the request metrics count it under."""

from __future__ import annotations

import pytest
from triptych_workers.media.errors import MediaURLRefused
from triptych_workers.roles.frontend import DeadlineExceeded, Overloaded, error_body
from triptych_workers.transport import (
    DeadlineExpired,
    NoResponders,
    RemoteError,
    RequestCancelled,
    WorkerBusy,
    WorkerLost,
)


@pytest.mark.parametrize(
    ("exc", "status", "code", "outcome"),
    [
        (DeadlineExceeded(), 504, "timeout", "timeout"),
        (DeadlineExpired("deadline passed while running"), 504, "timeout", "timeout"),
        (WorkerBusy("full"), 503, "service_unavailable", "busy"),
        (NoResponders("nobody"), 503, "service_unavailable", "busy"),
        # The worker holding the request went away: say so (a retry goes to another worker).
        (WorkerLost("silent for 5 s"), 503, "worker_lost", "busy"),
        (RequestCancelled("cancelled", code="cancelled"), 503, "worker_lost", "busy"),
        (RemoteError("ValueError: boom"), 500, None, "error"),
        (RuntimeError("bug"), 500, None, "error"),
    ],
)
def test_failures_map_to_status_code_and_outcome(
    exc: BaseException, status: int, code: str | None, outcome: str
) -> None:
    got_status, body, got_outcome = error_body(exc)
    assert (got_status, got_outcome) == (status, outcome)
    if code is not None:
        assert body.error.code == code
    if status == 500:  # internals never leak to the client
        assert "boom" not in body.error.message
        assert "bug" not in body.error.message


def test_a_client_error_keeps_its_status_and_reason() -> None:
    status, body, outcome = error_body(
        MediaURLRefused("private address 10.0.0.1 is not allowed", param="url")
    )
    assert 400 <= status < 500
    assert outcome == "client_error"
    assert "10.0.0.1" in body.error.message


def test_overload_at_the_frontend_is_a_503() -> None:
    status, _, outcome = error_body(Overloaded("queue full"))
    assert (status, outcome) == (503, "busy")
