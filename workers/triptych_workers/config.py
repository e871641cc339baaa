"""The worker's configuration: the file the operator writes (``worker_config()`` in the operator's
``builders/objects.py``, YAML at ``CONFIG_PATH``) and the process settings ``main()`` builds from it.

The file uses the CRD's camelCase keys. Fields the operator writes are required where every role needs them;
in the ``serving`` and ``dataPlane`` blocks the operator writes what the spec says (the encode routing, where
images are decoded, a worker role's ``concurrency`` from its ``maxNumSeqs``, the requested transport) and the
other keys keep their defaults, which are the production values. Nothing here is read at import time:
``main()`` calls ``load_config`` and passes the result down explicitly.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from triptych_contract import HTTP_PORT, METRICS_PORT, Backend, EncodeRouting, ImageDecodePlace, Modality

from triptych_workers.errors import TriptychError
from triptych_workers.media.connector import FetchPolicy

RoleName = Literal["frontend", "encode", "prefill", "decode", "pd", "epd"]
Stage = Literal["encode", "prefill", "decode"]
Mode = Literal["E/P/D", "E/PD", "EP/D", "EPD"]
ROLE_NAMES: tuple[RoleName, ...] = ("frontend", "encode", "prefill", "decode", "pd", "epd")

# The stages each CLI role performs when the file does not say (the aggregated forms fold the others in).
DEFAULT_STAGES: dict[RoleName, tuple[Stage, ...]] = {
    "frontend": (),
    "encode": ("encode",),
    "prefill": ("prefill",),
    "decode": ("decode",),
    "pd": ("prefill", "decode"),
    "epd": ("encode", "prefill", "decode"),
}


class ConfigError(TriptychError):
    """The configuration file is missing, unreadable or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ModelConfig(_Model):
    name: str
    path: str = ""
    """What the engine loads: a directory (the PVC mount) or a hub id."""
    source: dict[str, Any] = Field(default_factory=dict)


class EncoderCacheConfig(_Model):
    capacity: str = "0"
    capacity_bytes: Annotated[int, Field(ge=0, alias="capacityBytes")] = 0


class PortsConfig(_Model):
    http: Annotated[int, Field(ge=0, le=65535)] = HTTP_PORT
    metrics: Annotated[int, Field(ge=0, le=65535)] = METRICS_PORT


class NatsConfig(_Model):
    url: str = "nats://127.0.0.1:4222"


class ServingConfig(_Model):
    """Request handling limits (see the module docstring for which ones the operator writes)."""

    request_timeout_seconds: Annotated[float, Field(gt=0, alias="requestTimeoutSeconds")] = 120.0
    """Deadline of one client request, end to end (media fetch, encode, prefill, every token)."""
    drain_timeout_seconds: Annotated[float, Field(gt=0, alias="drainTimeoutSeconds")] = 20.0
    """On SIGTERM: how long in-flight work may run before it is cancelled."""
    concurrency: Annotated[int, Field(ge=1)] = 1
    """Requests a worker runs at once: the operator writes the role's ``maxNumSeqs`` (the same number the
    engine server is given as its batch limit, so an engine behind the sidecar batches them). 1 when the file
    says nothing (a config written by hand)."""
    queue_capacity: Annotated[int, Field(ge=0, alias="queueCapacity")] = 16
    """Requests a worker accepts beyond ``concurrency`` (its local queue; the length is the queue depth)."""
    max_concurrent_requests: Annotated[int, Field(ge=1, alias="maxConcurrentRequests")] = 256
    """Frontend: client requests handled at once; more get a 503."""
    media_decode_threads: Annotated[int, Field(ge=1, alias="mediaDecodeThreads")] = 2
    engine_threads: Annotated[int | None, Field(ge=1, alias="engineThreads")] = None
    heartbeat_seconds: Annotated[float, Field(gt=0, alias="heartbeatSeconds")] = 1.0
    startup_timeout_seconds: Annotated[float, Field(gt=0, alias="startupTimeoutSeconds")] = 60.0
    decode_images_on: Annotated[ImageDecodePlace, Field(alias="decodeImagesOn")] = "encode"
    """Frontend: where images are decoded. ``encode``: the frontend reads only the header (format, pixel
    limit, size for the prompt) and the file travels as fetched to the worker that encodes it, which decodes
    it only on an encoder-cache miss; ``frontend``: decoded here, pixels travel. Chosen by measurement
    (``bench_pipeline``, README). Video and audio are always decoded by the frontend: their placeholder
    counts depend on the sampled frames and resampled length, which no header gives exactly."""
    encode_routing: Annotated[EncodeRouting, Field(alias="encodeRouting")] = "cache-aware"
    """Frontend: how encode work picks a worker. ``cache-aware`` prefers a worker whose encoder cache holds
    the item, else the least loaded; ``round-robin`` takes the workers in turn (see ``roles/routing.py``)."""
    cold_start_timeout_seconds: Annotated[float, Field(gt=0, alias="coldStartTimeoutSeconds")] = 180.0
    """Frontend: how long a request with media holds when the encode pool has no worker (scaled to zero on
    text-only traffic, or starting) before it gets a 503; the request's own deadline
    (``requestTimeoutSeconds``) bounds it too, whichever is earlier. While held it counts in
    ``triptych_pending_requests{role="encode"}``, which the autoscaler wakes the pool on."""


class DataPlaneConfig(_Model):
    nixl: bool = True
    """Use NIXL for large payloads when it is importable (inline over NATS otherwise)."""
    nixl_min_bytes: Annotated[int, Field(ge=0, alias="nixlMinBytes")] = 256 * 1024
    requested_transport: Annotated[Literal["auto", "rdma", "tcp"], Field(alias="requestedTransport")] = "auto"
    lease_timeout_seconds: Annotated[float, Field(gt=0, alias="leaseTimeoutSeconds")] = 30.0


class EngineServerConfig(_Model):
    """Where a backend's own server runs beside this sidecar (vLLM, SGLang, TensorRT-LLM pods)."""

    url: str
    health_path: Annotated[str, Field(alias="healthPath")] = "/health"


class WorkerConfig(_Model):
    """The operator's per-role config file (see the module docstring)."""

    deployment: str
    namespace: str
    role: str = ""
    stages: tuple[Stage, ...] | None = None
    backend: Backend  # no default: the operator always writes it, and a guess would pick the wrong engine
    mode: Mode = "E/P/D"
    model: ModelConfig
    modalities: tuple[Modality, ...] = ("image", "video", "audio")
    media: FetchPolicy = Field(default_factory=FetchPolicy)
    encoder_cache: Annotated[EncoderCacheConfig, Field(alias="encoderCache")] = Field(
        default_factory=EncoderCacheConfig
    )
    peers: dict[str, str] = Field(default_factory=dict)
    ports: PortsConfig = Field(default_factory=PortsConfig)
    nats: NatsConfig = Field(default_factory=NatsConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    data_plane: Annotated[DataPlaneConfig, Field(alias="dataPlane")] = Field(default_factory=DataPlaneConfig)
    engine: EngineServerConfig | None = None
    """The engine server this worker drives (engine-server backends only; the operator writes it)."""


def load_config(path: Path) -> WorkerConfig:
    """Read and validate the YAML config file; ``ConfigError`` says what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping")
    try:
        return WorkerConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config {path} is invalid: {exc}") from exc


@dataclass(frozen=True)
class Settings:
    """Everything one worker process runs with: built once in ``main()`` and passed explicitly."""

    role: RoleName
    config: WorkerConfig
    stages: tuple[Stage, ...]
    host: str = "0.0.0.0"  # noqa: S104 - pods serve on every interface; tests pass 127.0.0.1
    worker_id: str = ""

    @classmethod
    def build(
        cls, role: RoleName, config: WorkerConfig, *, host: str, worker_id: str | None = None
    ) -> Settings:
        stages = DEFAULT_STAGES[role]
        if role in ("encode", "prefill", "decode") and config.stages:
            # The operator folds absent roles into the next one (a decode pod in E/PD also prefills).
            stages = tuple(config.stages)
        wid = worker_id or f"{role}-{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
        wid = "".join(c if c.isalnum() or c in "-_" else "-" for c in wid)
        return cls(role=role, config=config, stages=stages, host=host, worker_id=wid)

    @property
    def deployment(self) -> str:
        return self.config.deployment

    @property
    def nats_role(self) -> str:
        """The pool this process serves on the request plane: the operator's role name (an aggregated worker
        is the deployment's decode role)."""
        if self.config.role in ("encode", "prefill", "decode"):
            return self.config.role
        return {"pd": "decode", "epd": "decode"}.get(self.role, self.role)

    @property
    def metrics_role(self) -> str:
        """The ``role`` label of this process's metrics (the operator's role name)."""
        return self.config.role or self.role
