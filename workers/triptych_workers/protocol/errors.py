"""OpenAI-shaped error bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from triptych_workers.errors import ClientError
from triptych_workers.protocol.base import ResponseModel


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    error: ErrorInfo

    @classmethod
    def from_exception(cls, exc: ClientError) -> ErrorResponse:
        """The body for a client error; its HTTP status is ``exc.status``."""
        return cls(error=ErrorInfo(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code))

    @classmethod
    def internal(cls) -> ErrorResponse:
        """The body for anything that is not a ``ClientError`` (status 500); it reveals no internals."""
        return cls(
            error=ErrorInfo(
                message="internal server error", type="internal_server_error", code="internal_error"
            )
        )
