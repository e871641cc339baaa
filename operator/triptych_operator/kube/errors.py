"""The kube module's exception tree: API errors mapped by status code, the client's exception chained as the
cause and response bodies truncated, so callers decide on retry policy by type and never parse HTTP bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

BODY_LIMIT = 512  # characters of a response body kept in an error message


class KubeError(Exception):
    """An API request failed. `status` is the HTTP status (0 when no response came back)."""

    transient = False

    def __init__(self, message: str, *, status: int = 0, reason: str = "", body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body[:BODY_LIMIT]
        super().__init__(message)


class NotFound(KubeError):
    """404: the object (or its namespace, or the resource type) does not exist."""


class Conflict(KubeError):
    """409: a precondition or resourceVersion conflict (or AlreadyExists); retrying reads afresh."""

    transient = True


class Invalid(KubeError):
    """422: the API server refused the object (schema, CEL, immutable field). Permanent for that input."""


class Forbidden(KubeError):
    """401/403: RBAC does not allow the request (the chart's ClusterRole lacks a verb)."""


class TooManyRequests(KubeError):
    """429: API priority and fairness or an eviction budget said later; `retry_after` in seconds."""

    transient = True

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(KubeError):
    """5xx: the API server (or etcd, or a webhook) failed; transient."""

    transient = True


class Unavailable(KubeError):
    """No response: connection refused/reset, timeout, TLS failure (API server restarting)."""

    transient = True


def status_error(  # noqa: PLR0911 - one return per status class
    status: int, reason: str, body: str, what: str, headers: Mapping[str, str]
) -> KubeError:
    message = f"{what}: {status} {reason}"
    try:
        detail = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        detail = ""
    if detail:
        message += f": {detail[:BODY_LIMIT]}"
    kwargs: dict[str, Any] = {"status": status, "reason": reason, "body": body}
    if status == 404:
        return NotFound(message, **kwargs)
    if status == 409:
        return Conflict(message, **kwargs)
    if status == 422:
        return Invalid(message, **kwargs)
    if status in (401, 403):
        return Forbidden(message, **kwargs)
    if status == 429:
        try:
            retry_after = float(headers.get("Retry-After", "1"))
        except ValueError:
            retry_after = 1.0
        return TooManyRequests(message, retry_after=retry_after, **kwargs)
    if status >= 500:
        return ServerError(message, **kwargs)
    return KubeError(message, **kwargs)
