"""The transport layer: the NATS request plane and the NIXL/inline data plane.

It sits below the engines and the roles and knows nothing of either: it moves bytes (requests, reply chunks,
payload buffers) plus small string headers. See ``request_plane`` and ``data_plane`` for the message flows.
"""

from triptych_workers.transport.connection import NatsConnection, NatsSettings
from triptych_workers.transport.data_plane import (
    DataPlane,
    DataPlaneSettings,
    InlineDataPlane,
    NixlDataPlane,
    Received,
    TransferDescriptor,
    TransferPlane,
)
from triptych_workers.transport.errors import (
    DataPlaneError,
    DeadlineExpired,
    LeaseExpired,
    NixlUnavailable,
    NoResponders,
    RemoteError,
    RequestCancelled,
    RequestTimeout,
    TransferFailed,
    TransferTimeout,
    TransportClosed,
    TransportError,
    WorkerBusy,
    WorkerLost,
)
from triptych_workers.transport.health import TransportHealth, assess
from triptych_workers.transport.metrics import TransportMetrics
from triptych_workers.transport.request_plane import (
    Handler,
    LoadBoard,
    Reply,
    ReplyStream,
    Request,
    RequestClient,
    WorkerLoad,
    WorkerServer,
    WorkerSettings,
)
from triptych_workers.transport.subjects import Subjects

__all__ = [
    "DataPlane",
    "DataPlaneError",
    "DataPlaneSettings",
    "DeadlineExpired",
    "Handler",
    "InlineDataPlane",
    "LeaseExpired",
    "LoadBoard",
    "NatsConnection",
    "NatsSettings",
    "NixlDataPlane",
    "NixlUnavailable",
    "NoResponders",
    "Received",
    "RemoteError",
    "Reply",
    "ReplyStream",
    "Request",
    "RequestCancelled",
    "RequestClient",
    "RequestTimeout",
    "Subjects",
    "TransferDescriptor",
    "TransferFailed",
    "TransferPlane",
    "TransferTimeout",
    "TransportClosed",
    "TransportError",
    "TransportHealth",
    "TransportMetrics",
    "WorkerBusy",
    "WorkerLoad",
    "WorkerLost",
    "WorkerServer",
    "WorkerSettings",
    "assess",
]
