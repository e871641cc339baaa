"""What every backend profile shares: the interface, the context a profile builds from, and the helpers
that build the two kinds of container a Triptych pod has.

A profile answers, for one role of one MultimodalDeployment, what only its backend knows: which image
defaults and /dev/shm size it wants, what it loads as the model, what extra keys the worker configuration
and the Service need, the engine's command line, and the pod parts (containers, init containers, volumes).
Everything else (metadata, the config and shm volumes, placement, rollout strategy) is the generic
builder's (`builders/objects.py`), which names no backend.

Two pod shapes exist, and each has one helper here:
- `main_worker_container`: `triptych-worker <role>` is the pod's only container and runs the engine in its
  own process (an in-process backend's workers; every backend's frontend).
- `engine_server_parts`: the backend's own server in an `engine` container on ENGINE_PORT, with
  `triptych-worker` beside it as a sidecar (request plane, probes, metrics adapted to the contract's names).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from triptych_contract import (
    CONFIG_PATH,
    ENGINE_PORT,
    HTTP_PORT,
    LIVENESS_PATH,
    METRICS_PORT,
    READINESS_PATH,
    Backend,
)
from triptych_contract.backends import BACKEND_FACTS, BUILTIN_MODEL_PREPARE_MODULE, BackendFacts

from triptych_operator.api import REFERENCE_BUILTIN, MultimodalDeploymentSpec, Role, RoleBase, WorkerRole

MODEL_MOUNT = "/models"
# The builtin models (model.source.builtin; tiny-qwen2-vl is always the reference backend's): the worker
# image writes them (triptych_workers.engines.builtin). The reference's has its own writer and directory.
BUILTIN_MODEL_DIR = f"{MODEL_MOUNT}/reference"
BUILTIN_PREPARE_COMMAND = ["python", "-m", BUILTIN_MODEL_PREPARE_MODULE, "--out", BUILTIN_MODEL_DIR]
BUILTIN_MODEL_VOLUME_SIZE = "1Gi"


def builtin_model_dir(name: str) -> str:
    """Where a builtin model is written in the pod (the reference's directory is historic)."""
    return BUILTIN_MODEL_DIR if name == REFERENCE_BUILTIN else f"{MODEL_MOUNT}/{name}"


def builtin_prepare_command(name: str) -> list[str]:
    """The init container's command that writes builtin model ``name`` into ``builtin_model_dir(name)``."""
    if name == REFERENCE_BUILTIN:
        return list(BUILTIN_PREPARE_COMMAND)
    return [
        "python",
        "-m",
        "triptych_workers.engines.builtin.prepare",
        "--model",
        name,
        "--out",
        builtin_model_dir(name),
    ]


PREPARE_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - engines serve the pod network (the worker and the frontend call them)
ENGINE_HEALTH_PATH = "/health"  # vLLM, SGLang and trtllm-serve all serve it on their HTTP port
# Requests for containers the user gave none for (CPU-only pods must not be BestEffort).
FRONTEND_REQUESTS = {"cpu": "250m", "memory": "256Mi"}
SIDECAR_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}

Json = dict[str, Any]


@dataclass
class EngineCommand:
    """What the engine container runs and what it needs beside the command line."""

    command: list[str]
    env: list[Json] = field(default_factory=list)
    ports: list[Json] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # extra ConfigMap keys mounted beside config.yaml


@dataclass(frozen=True)
class PodContext:
    """One role's pod as the generic builder resolved it, for the profile to fill in.

    `mounts` are the volume mounts every data-handling container gets (the config, and /dev/shm for worker
    roles); `worker_env` is triptych-worker's own environment; `network_env` is UCX's (worker roles only);
    `devices` the extended resources (GPUs, RDMA) the main container must request.
    """

    deployment: str  # the MultimodalDeployment's name
    namespace: str
    spec: MultimodalDeploymentSpec
    role: Role
    role_spec: RoleBase
    worker: WorkerRole | None  # None for the frontend
    image: str  # the main container's image (the frontend may have its own)
    backend_image: str  # the backend's worker image (init containers run from it)
    image_pull_policy: str
    mounts: tuple[Json, ...]
    worker_env: tuple[Json, ...]
    network_env: tuple[Json, ...]
    devices: Mapping[str, int]
    rdma: bool

    @property
    def user_env(self) -> list[Json]:
        return [{"name": e.name, "value": e.value} for e in self.role_spec.env]

    @property
    def model_pvc(self) -> str | None:
        src = self.spec.model.source
        return src.pvc if src is not None else None

    @property
    def offline_env(self) -> list[Json]:
        """A model read from a volume needs no hub: say so, so a library never tries to reach one."""
        return [{"name": "HF_HUB_OFFLINE", "value": "1"}] if self.model_pvc else []

    def pvc_model(self) -> tuple[list[Json], list[Json]]:
        """(volumes, mounts) of the model PVC when the spec names one, else nothing."""
        if self.model_pvc is None:
            return [], []
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": self.model_pvc, "readOnly": True}}
        return [volume], [model_mount()]

    def local_model(self, *, builtin: str | None) -> tuple[list[Json], list[Json], list[Json]]:
        """(volumes, mounts, init containers) of a model read from the pod's own files: the PVC when the
        spec names one; else, for a builtin model (its name), an emptyDir that an init container from the
        backend's image fills (a few MB in seconds; the fixed-seed weights are the same in every pod, so
        each pod writes its own copy and no shared volume is needed); else nothing (a hub id)."""
        volumes, mounts = self.pvc_model()
        if volumes or builtin is None:
            return volumes, mounts, []
        prepare = {
            "name": "prepare-model",
            "image": self.backend_image,
            "imagePullPolicy": self.image_pull_policy,
            "command": builtin_prepare_command(builtin),
            "resources": PREPARE_RESOURCES,
            "volumeMounts": [model_mount(read_only=False)],
        }
        volume = {"name": "model", "emptyDir": {"sizeLimit": BUILTIN_MODEL_VOLUME_SIZE}}
        return [volume], [model_mount()], [prepare]


@dataclass
class PodParts:
    """What a profile contributes to a pod: its containers, and the init containers and volumes they need
    (appended after the generic builder's config and shm volumes)."""

    containers: list[Json]
    init_containers: list[Json] = field(default_factory=list)
    volumes: list[Json] = field(default_factory=list)


class BackendProfile(ABC):
    """One serving backend, as the operator sees it. Profiles are stateless: one instance serves all."""

    name: ClassVar[Backend]

    @property
    def facts(self) -> BackendFacts:
        """What the contract's table says of this backend (devices, RDMA, default image, shm, batch)."""
        return BACKEND_FACTS[self.name]

    def max_num_seqs(self, worker: WorkerRole) -> int:
        """Requests one pod of a worker role runs at once: the role's maxNumSeqs, else this backend's
        default. The engine's batch limit and the worker's serving.concurrency both come from here."""
        return self.facts.default_max_num_seqs if worker.max_num_seqs is None else worker.max_num_seqs

    def model_ref(self, spec: MultimodalDeploymentSpec) -> str:
        """What the engine loads: a path under the PVC mount, the builtin model's directory, else a hub id
        (the model's name by default)."""
        src = spec.model.source
        if src is not None and src.pvc is not None:
            return MODEL_MOUNT + (src.path or "").rstrip("/")
        if src is not None and src.builtin is not None:
            return builtin_model_dir(src.builtin)
        if src is not None and src.hub is not None:
            return src.hub
        return spec.model.name

    def engine(self, spec: MultimodalDeploymentSpec, role: Role) -> EngineCommand | None:
        """The engine container's command for a worker role; None when triptych-worker runs the engine in
        its own process (and for the frontend, which runs no engine)."""
        return None

    def worker_config(self, spec: MultimodalDeploymentSpec, role: Role) -> Json:
        """Keys this backend adds to the role's worker configuration (`config.yaml`)."""
        return {}

    def service_ports(self, role: Role) -> list[Json]:
        """Ports the role's Service exposes besides metrics (and the frontend's HTTP port)."""
        return []

    @abstractmethod
    def pod_parts(self, ctx: PodContext, engine: EngineCommand | None) -> PodParts:
        """The containers (and what they need) of one role's pod; `engine` is `self.engine(...)`, computed
        once by the caller."""


class EngineServerProfile(BackendProfile):
    """A backend whose engine is its own server process (vLLM, SGLang, TensorRT-LLM): the engine container
    on ENGINE_PORT does the KV and embedding transfers itself; triptych-worker is its sidecar."""

    max_num_seqs_flag: ClassVar[str]  # the engine's option for `max_num_seqs` (vLLM's --max-num-seqs)

    @abstractmethod
    def command(self, spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
        """The backend's command line for a present worker role, before its batch limit and the user's
        extraArgs."""

    def engine(self, spec: MultimodalDeploymentSpec, role: Role) -> EngineCommand | None:
        worker = spec.worker(role) if role != "frontend" else None
        if worker is None:
            return None
        out = self.command(spec, role, worker)
        out.command += [self.max_num_seqs_flag, str(self.max_num_seqs(worker))]
        out.command += list(worker.extra_args)
        return out

    def worker_config(self, spec: MultimodalDeploymentSpec, role: Role) -> Json:
        if role == "frontend":
            return {}
        return {"engine": {"url": f"http://127.0.0.1:{ENGINE_PORT}", "healthPath": ENGINE_HEALTH_PATH}}

    def service_ports(self, role: Role) -> list[Json]:
        if role == "frontend":
            return []
        return [{"name": "engine", "port": ENGINE_PORT, "targetPort": "engine", "protocol": "TCP"}]

    def pod_parts(self, ctx: PodContext, engine: EngineCommand | None) -> PodParts:
        if engine is None:  # the frontend: triptych-worker alone, no model files needed
            return PodParts([main_worker_container(ctx, FRONTEND_REQUESTS)])
        volumes, model_mounts = ctx.pvc_model()
        return PodParts(engine_server_parts(ctx, engine, model_mounts), volumes=volumes)


# ------------------------------------------------------------------------------------------------ helpers


def model_mount(*, read_only: bool = True) -> Json:
    mount: Json = {"name": "model", "mountPath": MODEL_MOUNT}
    if read_only:
        mount["readOnly"] = True
    return mount


def compact_json(value: Mapping[str, Any]) -> str:
    """A JSON command-line argument, the way the engines' own docs write them (no spaces)."""
    return json.dumps(value, separators=(",", ":"))


def pod_ip_env(name: str) -> Json:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def http_probe(path: str, port: str, period: int, failures: int) -> Json:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def merge_env(base: Sequence[Json], extra: Sequence[Json]) -> list[Json]:
    """`extra` replaces entries of `base` with the same name; order: base's first, then new names."""
    names = {e["name"] for e in extra}
    return [e for e in base if e["name"] not in names] + list(extra)


def resources(role: RoleBase, defaults: Mapping[str, str], devices: Mapping[str, int]) -> Json:
    """The user's resources, else `defaults` as requests; extended resources with requests equal to limits."""
    requests: Json = {}
    limits: Json = {}
    if role.resources is not None:
        requests.update(role.resources.requests)
        limits.update(role.resources.limits)
    if not requests and not limits:
        requests.update(defaults)
    for resource, count in devices.items():
        requests[resource] = count
        limits[resource] = count
    out: Json = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _worker_base(ctx: PodContext) -> Json:
    """triptych-worker with its ports and probes (on the metrics port, like every role's)."""
    ports = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    if ctx.role == "frontend":
        ports.insert(0, {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"})
    return {
        "name": "worker",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["triptych-worker", ctx.role, "--config", CONFIG_PATH],
        "ports": ports,
        "startupProbe": http_probe(LIVENESS_PATH, "metrics", 5, 120),
        "livenessProbe": http_probe(LIVENESS_PATH, "metrics", 10, 3),
        "readinessProbe": http_probe(READINESS_PATH, "metrics", 5, 3),
        "volumeMounts": [ctx.mounts[0]],  # the config; a main container gets its data mounts too
    }


def main_worker_container(
    ctx: PodContext, default_requests: Mapping[str, str], extra_mounts: Sequence[Json] = ()
) -> Json:
    """triptych-worker as the pod's main container: the user's extraArgs, env and resources apply to it."""
    container = _worker_base(ctx)
    container["command"] += list(ctx.role_spec.extra_args)
    container["env"] = merge_env([*ctx.worker_env, *ctx.offline_env, *ctx.network_env], ctx.user_env)
    container["resources"] = resources(ctx.role_spec, default_requests, ctx.devices)
    container["volumeMounts"] = [*ctx.mounts, *extra_mounts]
    return container


def engine_server_parts(
    ctx: PodContext,
    engine: EngineCommand,
    extra_mounts: Sequence[Json],
    default_requests: Mapping[str, str] | None = None,
) -> list[Json]:
    """The engine container (the user's env, resources and devices apply to it; `default_requests` when
    the user gave none) and the worker sidecar."""
    container: Json = {
        "name": "engine",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": engine.command,
        "ports": [{"name": "engine", "containerPort": ENGINE_PORT, "protocol": "TCP"}, *engine.ports],
        "env": merge_env([*ctx.offline_env, *engine.env, *ctx.network_env], ctx.user_env),
        "resources": resources(ctx.role_spec, default_requests or {}, ctx.devices),
        # Loading weights can take long: up to 30 minutes before liveness applies.
        "startupProbe": http_probe(ENGINE_HEALTH_PATH, "engine", 10, 180),
        "livenessProbe": http_probe(ENGINE_HEALTH_PATH, "engine", 15, 4),
        "readinessProbe": http_probe(ENGINE_HEALTH_PATH, "engine", 5, 3),
        "volumeMounts": [*ctx.mounts, *extra_mounts],
    }
    if ctx.rdma:
        container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    sidecar = _worker_base(ctx)  # the config is its only mount: the engine holds the data
    # UCX's settings too: the sidecar reports whether they let the pod's transfers use RDMA
    # (triptych_transport_degraded), so it must see what the engine sees.
    sidecar["env"] = [dict(e) for e in (*ctx.worker_env, *ctx.network_env)]  # copies: no shared objects
    sidecar["resources"] = SIDECAR_RESOURCES
    return [container, sidecar]


__all__ = [
    "ALL_INTERFACES",
    "BUILTIN_MODEL_DIR",
    "ENGINE_HEALTH_PATH",
    "MODEL_MOUNT",
    "BackendProfile",
    "EngineCommand",
    "EngineServerProfile",
    "PodContext",
    "PodParts",
    "compact_json",
    "engine_server_parts",
    "http_probe",
    "main_worker_container",
    "merge_env",
    "model_mount",
    "pod_ip_env",
    "resources",
]
