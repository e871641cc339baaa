"""The workers' exception tree.

Every error a client can cause is a ``ClientError`` carrying an OpenAI-style ``type``/``code``/``param`` and
the HTTP status the frontend answers with; the single exception handler in the frontend maps these and
turns anything else into a 500 (a server bug must never look like a client mistake).
"""

from __future__ import annotations


class TriptychError(Exception):
    """Base of every error raised by the worker runtime."""


class ClientError(TriptychError):
    """A request the client can fix: ``status`` is the HTTP status, ``code`` a stable machine-readable
    reason."""

    status: int = 400
    error_type: str = "invalid_request_error"
    code: str = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
