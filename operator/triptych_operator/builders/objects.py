"""Pure builders of one role's objects: ConfigMap (worker configuration), Service, Deployment.

Generic: nothing here names a backend. What differs per backend (model, engine command, containers,
init containers, extra config and ports) comes from its profile (`builders/backends/`); this module adds
what every pod has (metadata, the config and /dev/shm volumes, triptych-worker's environment, UCX, devices,
placement, rollout strategy).

Services (one per role, named `<name>-<role>`): the frontend's is a ClusterIP Service (the entry point:
HTTP_PORT for the OpenAI API, METRICS_PORT); every worker role's is headless, because its clients address
pods one by one (the frontend's router and peers pick a pod; the autoscaler and Prometheus scrape each pod's
METRICS_PORT) rather than through a load-balanced virtual IP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from triptych_contract import (
    API_GROUP,
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_PATH,
    ENGINE_PORT,
    ENV_CONFIG,
    ENV_DEPLOYMENT,
    ENV_NAMESPACE,
    ENV_NATS_URL,
    ENV_POD_IP,
    ENV_ROLE,
    HTTP_PORT,
    LABEL_DEPLOYMENT,
    LABEL_ROLE,
    METRICS_PORT,
)

from triptych_operator.api import (
    ROLE_KIND,
    MultimodalDeploymentSpec,
    Role,
    RoleBase,
    WorkerRole,
    parse_quantity,
)
from triptych_operator.builders.backends import BackendProfile, EngineCommand, PodContext, profile_for
from triptych_operator.cluster import GPU_PRODUCT_LABEL, GPU_RESOURCE
from triptych_operator.naming import (
    API_VERSION_FULL,
    Owner,
    child_name,
    labels,
    owner_reference,
    selector_labels,
    service_host,
)
from triptych_operator.settings import OperatorSettings

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
MULTUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CONFIG_HASH_ANNOTATION = f"{API_GROUP}/config-sha256"
# NIXL/UCX over RoCE/InfiniBand, field-proven defaults (REFERENCE.md); spec.networking.rdma.ucx overrides.
UCX_RDMA_DEFAULTS = {
    "UCX_TLS": "rc_x,rc,dc_x,dc,cuda_copy,cuda_ipc",
    "UCX_RNDV_SCHEME": "get_zcopy",
    "UCX_RNDV_THRESH": "0",
    "UCX_IB_GID_INDEX": "3",
}
UCX_TCP_GPU = "tcp,cuda_copy"
UCX_TCP_CPU = "tcp"  # a CPU backend has no CUDA transports


@dataclass(frozen=True)
class RoleBuild:
    """One present role of one MultimodalDeployment, as every builder of the role's objects takes it: whose
    it is, the spec, the role, the operator's settings, the backend's profile (looked up once, here) and
    whether the role's pods move data over RDMA (`uses_rdma`, decided once)."""

    owner: Owner
    spec: MultimodalDeploymentSpec
    role: Role
    settings: OperatorSettings
    profile: BackendProfile
    rdma: bool

    @classmethod
    def of(
        cls,
        owner: Owner,
        spec: MultimodalDeploymentSpec,
        role: Role,
        settings: OperatorSettings,
        *,
        rdma_available: bool,
    ) -> RoleBuild:
        rdma = uses_rdma(spec, role, rdma_available=rdma_available)
        return cls(owner, spec, role, settings, profile_for(spec.backend), rdma)

    @property
    def role_spec(self) -> RoleBase:
        role_spec = self.spec.role(self.role)
        if role_spec is None:
            raise ValueError(f"role {self.role} is not present")
        return role_spec

    @property
    def worker(self) -> WorkerRole | None:
        """The role's worker pool spec; None for the frontend."""
        return self.spec.worker(self.role) if self.role != "frontend" else None


def _metadata(b: RoleBuild) -> dict[str, Any]:
    name = b.owner.name
    return {
        "name": child_name(name, b.role),
        "namespace": b.owner.namespace,
        "labels": labels(name, b.role, b.spec.backend),
        "ownerReferences": [owner_reference(name, b.owner.uid)],
    }


# ------------------------------------------------------------------------------------------------ config


def _serving(b: RoleBuild) -> dict[str, Any]:
    """The `serving` section: the spec's, plus for a worker role the requests its pods run at once (the
    same limit the engine is given). The frontend has its own limit (maxConcurrentRequests)."""
    serving = b.spec.serving.model_dump(by_alias=True)
    if b.worker is not None:
        serving["concurrency"] = b.profile.max_num_seqs(b.worker)
    return serving


def worker_config(b: RoleBuild) -> dict[str, Any]:
    """What `triptych-worker` reads from CONFIG_PATH (camelCase keys, like the CRD's). `b.rdma`: the role's
    pods are given RDMA (`uses_rdma`), which the worker checks UCX actually uses (its degraded-transport
    metric, `triptych_transport_degraded`)."""
    name, namespace, spec, role, profile = b.owner.name, b.owner.namespace, b.spec, b.role, b.profile
    src = spec.model.source
    source: dict[str, Any] = {"hub": spec.model.name}
    if src is not None:
        source = src.model_dump(by_alias=True, exclude_none=True)
    cfg: dict[str, Any] = {
        "deployment": name,
        "namespace": namespace,
        "role": role,
        "stages": spec.stages(role),
        "backend": spec.backend,
        "mode": spec.mode,
        "model": {"name": spec.model.name, "source": source, "path": profile.model_ref(spec)},
        "modalities": list(spec.modalities),
        # What the frontend's fetcher reads; the PVC is the operator's to mount, not the fetcher's business.
        "media": spec.media.model_dump(by_alias=True, exclude={"local_media_pvc"}),
        "serving": _serving(b),
        "encoderCache": {
            "capacity": str(spec.encoder_cache.capacity),
            "capacityBytes": int(parse_quantity(spec.encoder_cache.capacity)),
        },
        "peers": {r: service_host(name, r, namespace) for r in spec.present_roles()},
        "ports": {"http": HTTP_PORT, "metrics": METRICS_PORT, "engine": ENGINE_PORT},
        "nats": {"url": b.settings.nats_url},
        "dataPlane": {"requestedTransport": "rdma" if b.rdma else "tcp"},
    }
    cfg.update(profile.worker_config(spec, role))
    return cfg


def build_config_map(b: RoleBuild, engine: EngineCommand | None) -> dict[str, Any]:
    """The role's ConfigMap: `config.yaml` for triptych-worker, plus the engine's files (TRT-LLM's
    engine.yaml). `engine` is the profile's engine command for the role, computed once by the caller."""
    config = worker_config(b)
    data = {CONFIG_FILE: yaml.safe_dump(config, sort_keys=True)}
    if engine is not None:
        data.update(engine.files)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(b),
        "data": data,
    }


def config_hash(config_map: Mapping[str, Any]) -> str:
    """What rolls a role's pods when its configuration changes (a pod template annotation)."""
    return hashlib.sha256(yaml.safe_dump(config_map["data"], sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ service


def build_service(b: RoleBuild) -> dict[str, Any]:
    """ClusterIP for the frontend, headless for worker roles (see the module docstring)."""
    ports = [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]
    svc: dict[str, Any] = {"selector": selector_labels(b.owner.name, b.role), "ports": ports}
    if b.role == "frontend":
        ports.insert(0, {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"})
        svc["type"] = "ClusterIP"
    else:
        svc["clusterIP"] = "None"
        svc["publishNotReadyAddresses"] = False
    ports += b.profile.service_ports(b.role)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(b),
        "spec": svc,
    }


# ------------------------------------------------------------------------------------------------ deployment


def _worker_env(b: RoleBuild) -> list[dict[str, Any]]:
    return [
        {"name": ENV_ROLE, "value": b.role},
        {"name": ENV_DEPLOYMENT, "value": b.owner.name},
        {"name": ENV_NAMESPACE, "value": b.owner.namespace},
        {"name": ENV_CONFIG, "value": CONFIG_PATH},
        {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": ENV_NATS_URL, "value": b.settings.nats_url},
    ]


def uses_rdma(spec: MultimodalDeploymentSpec, role: Role, *, rdma_available: bool) -> bool:
    """Whether the role's pods move data over RDMA: GPU worker roles, when the spec asks for it or
    (`auto`) some node advertises the RDMA resource."""
    transport = spec.networking.transport
    gpu = role != "frontend" and spec.uses_gpus
    return gpu and (transport == "rdma" or (transport == "auto" and rdma_available))


def _ucx_env(spec: MultimodalDeploymentSpec, rdma: bool) -> list[dict[str, Any]]:
    if rdma:
        overrides = spec.networking.rdma.ucx if spec.networking.rdma is not None else {}
        values = {**UCX_RDMA_DEFAULTS, **overrides}
    else:
        values = {"UCX_TLS": UCX_TCP_GPU if spec.uses_gpus else UCX_TCP_CPU}
    return [{"name": k, "value": v} for k, v in values.items()]


def _affinity(name: str, spec: MultimodalDeploymentSpec, role: Role, gpu: bool) -> dict[str, Any]:
    affinity: dict[str, Any] = {}
    topo = spec.topology
    if topo is None:
        return affinity
    if gpu and topo.gpu_product is not None:
        term = {
            "matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [topo.gpu_product]}]
        }
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    colocate = topo.colocate
    if colocate is not None and role in colocate.roles:
        # One term over all co-located roles, this one included: the first pod matches its own term, which
        # the scheduler accepts when no matching pod exists yet, so `required` cannot deadlock.
        pod_term = {
            "labelSelector": {
                "matchLabels": {LABEL_DEPLOYMENT: name},
                "matchExpressions": [{"key": LABEL_ROLE, "operator": "In", "values": list(colocate.roles)}],
            },
            "topologyKey": colocate.topology_key,
        }
        if colocate.mode == "required":
            affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [pod_term]}
        else:
            affinity["podAffinity"] = {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": pod_term}
                ]
            }
    return affinity


def _spread(name: str, spec: MultimodalDeploymentSpec, role: Role) -> list[dict[str, Any]]:
    if spec.topology is None or spec.topology.spread is None:
        return []
    s = spec.topology.spread
    return [
        {
            "maxSkew": s.max_skew,
            "topologyKey": s.topology_key,
            "whenUnsatisfiable": s.when_unsatisfiable,
            "labelSelector": {"matchLabels": selector_labels(name, role)},
            "matchLabelKeys": ["pod-template-hash"],  # count only the current revision's pods
        }
    ]


def _devices(
    spec: MultimodalDeploymentSpec, worker: WorkerRole | None, *, gpu: bool, rdma: bool
) -> dict[str, int]:
    devices: dict[str, int] = {}
    if gpu and worker is not None:
        devices[GPU_RESOURCE] = worker.gpus_per_pod
    if rdma and spec.networking.rdma is not None:
        devices[spec.networking.rdma.resource] = spec.networking.rdma.count
    return devices


def _base_volumes(b: RoleBuild) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(volume, mount) of what every pod of the role has: its config, /dev/shm for worker roles, and the
    local-media PVC for a frontend that reads file:// URLs. One place decides each pair."""
    name, spec, role = b.owner.name, b.spec, b.role
    pairs = [
        (
            {"name": "config", "configMap": {"name": child_name(name, role)}},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        )
    ]
    if role != "frontend":
        shm = {
            "name": "shm",
            "emptyDir": {"medium": "Memory", "sizeLimit": b.settings.shm_size_for(spec.backend)},
        }
        pairs.append((shm, {"name": "shm", "mountPath": "/dev/shm"}))  # noqa: S108
    if role == "frontend" and spec.media.local_media_pvc is not None:
        claim = {"claimName": spec.media.local_media_pvc, "readOnly": True}
        pairs.append(
            (
                {"name": "local-media", "persistentVolumeClaim": claim},
                {"name": "local-media", "mountPath": spec.media.allowed_local_media_path, "readOnly": True},
            )
        )
    return pairs


def _pod_context(b: RoleBuild, mounts: list[dict[str, Any]]) -> PodContext:
    spec, role, settings, role_spec, worker = b.spec, b.role, b.settings, b.role_spec, b.worker
    gpu = worker is not None and spec.uses_gpus
    backend_image = role_spec.image or settings.image_for(spec.backend)
    image = backend_image
    if role == "frontend" and role_spec.image is None and settings.frontend_image is not None:
        image = settings.frontend_image
    return PodContext(
        deployment=b.owner.name,
        namespace=b.owner.namespace,
        spec=spec,
        role=role,
        role_spec=role_spec,
        worker=worker,
        image=image,
        backend_image=backend_image,
        image_pull_policy=settings.image_pull_policy,
        mounts=tuple(mounts),
        worker_env=tuple(_worker_env(b)),
        network_env=tuple(_ucx_env(spec, b.rdma) if worker is not None else []),
        devices=_devices(spec, worker, gpu=gpu, rdma=b.rdma),
        rdma=b.rdma,
    )


def _placement(name: str, spec: MultimodalDeploymentSpec, ctx: PodContext) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and spread of one role's pods (only the keys that apply)."""
    gpu = GPU_RESOURCE in ctx.devices
    out: dict[str, Any] = {}
    if ctx.role_spec.node_selector:
        out["nodeSelector"] = dict(ctx.role_spec.node_selector)
    tolerations = [dict(GPU_TOLERATION)] if gpu else []
    tolerations += [t.model_dump(by_alias=True, exclude_none=True) for t in ctx.role_spec.tolerations]
    if tolerations:
        out["tolerations"] = tolerations
    affinity = _affinity(name, spec, ctx.role, gpu)
    if affinity:
        out["affinity"] = affinity
    spread = _spread(name, spec, ctx.role)
    if spread:
        out["topologySpreadConstraints"] = spread
    return out


def build_deployment(
    b: RoleBuild, *, engine: EngineCommand | None, config_sha256: str, replicas: int | None = None
) -> dict[str, Any]:
    """The role's Deployment. `engine` and `config_sha256` come from the same role's ConfigMap build
    (`build_role`); `replicas` overrides the spec's (the autoscaler's decision for an autoscaled role)."""
    name, spec, role = b.owner.name, b.spec, b.role
    base = _base_volumes(b)
    ctx = _pod_context(b, [m for _, m in base])
    parts = b.profile.pod_parts(ctx, engine)
    volumes = [v for v, _ in base]
    pod: dict[str, Any] = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30 if role == "frontend" else 60,
        "containers": parts.containers,
        "volumes": volumes + parts.volumes,
    }
    if parts.init_containers:
        pod["initContainers"] = parts.init_containers
    pod.update(_placement(name, spec, ctx))
    pod_annotations = {CONFIG_HASH_ANNOTATION: config_sha256}
    if ctx.rdma and spec.networking.rdma is not None and spec.networking.rdma.networks:
        pod_annotations[MULTUS_ANNOTATION] = ",".join(spec.networking.rdma.networks)
    # GPU pools roll without surge (a surge pod needs spare GPUs that may not exist); CPU pools surge.
    gpu = GPU_RESOURCE in ctx.devices
    rolling = {"maxSurge": 0, "maxUnavailable": 1} if gpu else {"maxSurge": 1, "maxUnavailable": 0}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(b),
        "spec": {
            "replicas": ctx.role_spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector_labels(name, role)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": b.settings.progress_deadline_seconds,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {"labels": labels(name, role, spec.backend), "annotations": pod_annotations},
                "spec": pod,
            },
        },
    }


def build_role_scale(b: RoleBuild) -> dict[str, Any]:
    """The role's MultimodalRole (autoscaling.scaler External): the object whose /scale a user's HPA or
    KEDA drives. No spec.replicas here: the operator seeds it once (kube.seed_replicas) and never applies
    it, so the field belongs to whatever scales the role."""
    return {
        "apiVersion": API_VERSION_FULL,
        "kind": ROLE_KIND,
        "metadata": _metadata(b),
        "spec": {},
    }


def build_role(
    owner: Owner,
    spec: MultimodalDeploymentSpec,
    role: Role,
    settings: OperatorSettings,
    *,
    rdma_available: bool,
    replicas: int | None = None,
) -> list[dict[str, Any]]:
    """One role's ConfigMap, Service and Deployment (and its MultimodalRole for scaler External); the
    profile, the RDMA decision, the engine command and the config hash made once."""
    b = RoleBuild.of(owner, spec, role, settings, rdma_available=rdma_available)
    engine = b.profile.engine(spec, role)
    config_map = build_config_map(b, engine)
    deployment = build_deployment(b, engine=engine, config_sha256=config_hash(config_map), replicas=replicas)
    scale = [build_role_scale(b)] if spec.scaler(role) == "External" else []
    return [*scale, config_map, build_service(b), deployment]


__all__ = [
    "RoleBuild",
    "build_config_map",
    "build_deployment",
    "build_role",
    "build_role_scale",
    "build_service",
    "config_hash",
    "worker_config",
]
