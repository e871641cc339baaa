"""The transport's exception tree.

Low-level failures (nats-py timeouts, NIXL status strings, UCX errors) are translated here into the most
specific type, with the cause chained, so roles decide policy (retry another worker, give up, map to an
OpenAI error) on types rather than on library internals. None of these is a ``ClientError``: a transport
failure is never the client's fault, and the frontend's handler turns it into a 5xx (or 503 when busy).
"""

from __future__ import annotations

from triptych_workers.errors import TriptychError


class TransportError(TriptychError):
    """Base of every request-plane and data-plane failure."""


class TransportClosed(TransportError):
    """The connection or plane was used before ``start()`` or after ``close()``."""


class RequestTimeout(TransportError):
    """The caller's deadline passed before the reply stream ended."""


class NoResponders(TransportError):
    """Nothing subscribes to the subject (no worker of that role, or the targeted worker is gone)."""


class WorkerBusy(TransportError):
    """The worker's local queue is full; the caller should retry another worker (or the pool) later."""

    def __init__(self, message: str, *, worker_id: str = "") -> None:
        super().__init__(message)
        self.worker_id = worker_id


class WorkerLost(TransportError):
    """Nothing was heard for the request within the liveness timeout: the worker holding it died, froze or
    lost its connection (a live worker sends keepalives while it holds a request)."""


class RemoteError(TransportError):
    """The worker's handler failed; ``code`` is the worker's machine-readable reason."""

    def __init__(self, message: str, *, code: str = "internal", worker_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.worker_id = worker_id


class RequestCancelled(RemoteError):
    """The worker stopped the request because it was cancelled (by this caller or by shutdown)."""


class DeadlineExpired(RemoteError):
    """The worker dropped the request because its deadline had passed before (or while) it ran."""


class DataPlaneError(TransportError):
    """Base of the data plane's failures."""


class TransferFailed(DataPlaneError):
    """A transfer could not be completed (NIXL reported an error, the producer is unreachable...)."""


class TransferTimeout(DataPlaneError):
    """A transfer did not complete within its deadline."""


class LeaseExpired(DataPlaneError):
    """The producer no longer holds the payload: it was released, or its lease ran out before the read."""


class NixlUnavailable(DataPlaneError):
    """NIXL cannot be used in this process (not installed, no UCX plugin, agent creation failed)."""
