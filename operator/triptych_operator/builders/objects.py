"""Pure builders of one role's objects: ConfigMap (worker configuration), Service, Deployment.

Services (one per role, named `<name>-<role>`): the frontend's is a ClusterIP Service (the entry point:
HTTP_PORT for the OpenAI API, METRICS_PORT); every worker role's is headless, because its clients address
pods one by one (the frontend's router and peers pick a pod; the autoscaler and Prometheus scrape each pod's
METRICS_PORT) rather than through a load-balanced virtual IP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
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
    LIVENESS_PATH,
    METRICS_PORT,
    READINESS_PATH,
)

from triptych_operator.builders.commands import (
    ENGINE_HEALTH_PATH,
    MODEL_MOUNT,
    REFERENCE_PREPARE_COMMAND,
    engine_command,
    model_ref,
)
from triptych_operator.naming import child_name, labels, owner_reference, selector_labels, service_host
from triptych_operator.settings import OperatorSettings
from triptych_operator.spec import MultimodalDeploymentSpec, Role, RoleBase, WorkerRole, parse_quantity

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
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
UCX_TCP_CPU = "tcp"  # the reference backend has no CUDA transports
# Requests for containers the user gave none for (CPU-only pods must not be BestEffort).
FRONTEND_REQUESTS = {"cpu": "250m", "memory": "256Mi"}
# The reference model is tiny: a small CPU request lets a demo and a test deployment share the 2-core node.
REFERENCE_WORKER_REQUESTS = {"cpu": "100m", "memory": "1Gi"}
SIDECAR_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
# The reference backend's init container writes the tiny fixed-seed model (a few MB) into an emptyDir.
REFERENCE_MODEL_VOLUME_SIZE = "1Gi"
PREPARE_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def _metadata(
    name: str, namespace: str, uid: str, spec: MultimodalDeploymentSpec, role: Role
) -> dict[str, Any]:
    return {
        "name": child_name(name, role),
        "namespace": namespace,
        "labels": labels(name, role, spec.backend),
        "ownerReferences": [owner_reference(name, uid)],
    }


# ------------------------------------------------------------------------------------------------ config


def worker_config(
    name: str, namespace: str, spec: MultimodalDeploymentSpec, role: Role, nats_url: str
) -> dict[str, Any]:
    """What `triptych-worker` reads from CONFIG_PATH (camelCase keys, like the CRD's)."""
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
        "model": {"name": spec.model.name, "source": source, "path": model_ref(spec)},
        "modalities": list(spec.modalities),
        "media": spec.media.model_dump(by_alias=True),
        "encoderCache": {
            "capacity": str(spec.encoder_cache.capacity),
            "capacityBytes": int(parse_quantity(spec.encoder_cache.capacity)),
        },
        "peers": {r: service_host(name, r, namespace) for r in spec.present_roles()},
        "ports": {"http": HTTP_PORT, "metrics": METRICS_PORT, "engine": ENGINE_PORT},
        "nats": {"url": nats_url},
    }
    if role != "frontend" and spec.backend != "reference":
        cfg["engine"] = {"url": f"http://127.0.0.1:{ENGINE_PORT}", "healthPath": ENGINE_HEALTH_PATH}
    return cfg


def build_config_map(  # noqa: PLR0917 - the builders' uniform (name, namespace, uid, spec, role, ...)
    name: str,
    namespace: str,
    uid: str,
    spec: MultimodalDeploymentSpec,
    role: Role,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The role's ConfigMap: `config.yaml` for triptych-worker, plus engine files (TRT-LLM's engine.yaml)."""
    data = {
        CONFIG_FILE: yaml.safe_dump(
            worker_config(name, namespace, spec, role, settings.nats_url), sort_keys=True
        )
    }
    engine = engine_command(spec, role)
    if engine is not None:
        data.update(engine.files)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace, uid, spec, role),
        "data": data,
    }


# ------------------------------------------------------------------------------------------------ service


def build_service(
    name: str, namespace: str, uid: str, spec: MultimodalDeploymentSpec, role: Role
) -> dict[str, Any]:
    """ClusterIP for the frontend, headless for worker roles (see the module docstring)."""
    ports = [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]
    svc: dict[str, Any] = {"selector": selector_labels(name, role), "ports": ports}
    if role == "frontend":
        ports.insert(0, {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"})
        svc["type"] = "ClusterIP"
    else:
        svc["clusterIP"] = "None"
        svc["publishNotReadyAddresses"] = False
        if spec.backend != "reference":
            ports.append({"name": "engine", "port": ENGINE_PORT, "targetPort": "engine", "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, uid, spec, role),
        "spec": svc,
    }


# ------------------------------------------------------------------------------------------------ deployment


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _merge_env(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`extra` replaces entries of `base` with the same name; order: base's first, then new names."""
    names = {e["name"] for e in extra}
    return [e for e in base if e["name"] not in names] + extra


def _resources(role: RoleBase, defaults: Mapping[str, str], devices: Mapping[str, int]) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if role.resources is not None:
        requests.update(role.resources.requests)
        limits.update(role.resources.limits)
    if not requests and not limits:
        requests.update(defaults)
    for resource, count in devices.items():  # extended resources: requests must equal limits
        requests[resource] = count
        limits[resource] = count
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _worker_env(name: str, namespace: str, role: Role, nats_url: str) -> list[dict[str, Any]]:
    return [
        {"name": ENV_ROLE, "value": role},
        {"name": ENV_DEPLOYMENT, "value": name},
        {"name": ENV_NAMESPACE, "value": namespace},
        {"name": ENV_CONFIG, "value": CONFIG_PATH},
        {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": ENV_NATS_URL, "value": nats_url},
    ]


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


def build_deployment(  # noqa: PLR0912, PLR0915, PLR0917 - one pod template, built top to bottom
    name: str,
    namespace: str,
    uid: str,
    spec: MultimodalDeploymentSpec,
    role: Role,
    settings: OperatorSettings,
    *,
    rdma_available: bool,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The role's Deployment. `rdma_available` is `auto` resolved by the caller; `replicas` overrides the
    spec's (the autoscaler's decision for an autoscaled role)."""
    role_spec = spec.role(role)
    if role_spec is None:
        raise ValueError(f"role {role} is not present")
    worker = role_spec if isinstance(role_spec, WorkerRole) else None
    gpu = worker is not None and spec.uses_gpus
    engine = engine_command(spec, role)
    transport = spec.networking.transport
    rdma = gpu and (transport == "rdma" or (transport == "auto" and rdma_available))
    image = role_spec.image or (
        (settings.frontend_image or settings.image_for(spec.backend))
        if role == "frontend"
        else settings.image_for(spec.backend)
    )

    config_map = build_config_map(name, namespace, uid, spec, role, settings)
    config_hash = hashlib.sha256(yaml.safe_dump(config_map["data"], sort_keys=True).encode()).hexdigest()
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": child_name(name, role)}}]
    config_mount = {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    data_mounts: list[dict[str, Any]] = []
    init_containers: list[dict[str, Any]] = []
    if worker is not None:
        shm = settings.shm_sizes[spec.backend]
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        data_mounts.append({"name": "shm", "mountPath": "/dev/shm"})  # noqa: S108
    # Worker roles load the model; the reference frontend loads its tokenizer and chat template from it.
    src = spec.model.source
    if worker is not None or spec.backend == "reference":
        model_mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        if src is not None and src.pvc is not None:
            volumes.append(
                {"name": "model", "persistentVolumeClaim": {"claimName": src.pvc, "readOnly": True}}
            )
            data_mounts.append(model_mount)
        elif spec.backend == "reference":
            volumes.append({"name": "model", "emptyDir": {"sizeLimit": REFERENCE_MODEL_VOLUME_SIZE}})
            data_mounts.append(model_mount)
            init_containers.append(
                {
                    "name": "prepare-model",
                    "image": role_spec.image or settings.image_for(spec.backend),
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": list(REFERENCE_PREPARE_COMMAND),
                    "resources": PREPARE_RESOURCES,
                    "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}],
                }
            )

    user_env = [{"name": e.name, "value": e.value} for e in role_spec.env]
    net_env = _ucx_env(spec, rdma) if worker is not None else []
    devices: dict[str, int] = {}
    if gpu and worker is not None:
        devices[GPU_RESOURCE] = worker.gpus_per_pod
    if rdma and spec.networking.rdma is not None:
        devices[spec.networking.rdma.resource] = spec.networking.rdma.count
    offline = (
        [{"name": "HF_HUB_OFFLINE", "value": "1"}] if spec.model.source and spec.model.source.pvc else []
    )

    worker_cmd = ["triptych-worker", role, "--config", CONFIG_PATH]
    worker_ports = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    if role == "frontend":
        worker_ports.insert(0, {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"})
    worker_container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": worker_cmd,
        "ports": worker_ports,
        "startupProbe": _http_probe(LIVENESS_PATH, "metrics", 5, 120),
        "livenessProbe": _http_probe(LIVENESS_PATH, "metrics", 10, 3),
        "readinessProbe": _http_probe(READINESS_PATH, "metrics", 5, 3),
        "volumeMounts": [config_mount],
    }
    base_env = _worker_env(name, namespace, role, settings.nats_url)
    containers: list[dict[str, Any]]
    if engine is None:
        # Reference backend or frontend: triptych-worker is the main container.
        worker_container["command"] = worker_cmd + list(role_spec.extra_args)
        worker_container["env"] = _merge_env(base_env + offline + net_env, user_env)
        defaults = FRONTEND_REQUESTS if role == "frontend" else REFERENCE_WORKER_REQUESTS
        worker_container["resources"] = _resources(role_spec, defaults, devices)
        worker_container["volumeMounts"] = [config_mount, *data_mounts]
        containers = [worker_container]
    else:
        engine_container: dict[str, Any] = {
            "name": "engine",
            "image": image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": engine.command,
            "ports": [{"name": "engine", "containerPort": ENGINE_PORT, "protocol": "TCP"}, *engine.ports],
            "env": _merge_env(offline + engine.env + net_env, user_env),
            "resources": _resources(role_spec, {}, devices),
            # Loading weights can take long: up to 30 minutes before liveness applies.
            "startupProbe": _http_probe(ENGINE_HEALTH_PATH, "engine", 10, 180),
            "livenessProbe": _http_probe(ENGINE_HEALTH_PATH, "engine", 15, 4),
            "readinessProbe": _http_probe(ENGINE_HEALTH_PATH, "engine", 5, 3),
            "volumeMounts": [config_mount, *data_mounts],
        }
        if rdma:
            engine_container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
        worker_container["env"] = base_env
        worker_container["resources"] = SIDECAR_RESOURCES
        containers = [engine_container, worker_container]

    pod_annotations = {CONFIG_HASH_ANNOTATION: config_hash}
    if rdma and spec.networking.rdma is not None and spec.networking.rdma.networks:
        pod_annotations[MULTUS_ANNOTATION] = ",".join(spec.networking.rdma.networks)
    tolerations = [dict(GPU_TOLERATION)] if gpu else []
    tolerations += [t.model_dump(by_alias=True, exclude_none=True) for t in role_spec.tolerations]
    pod: dict[str, Any] = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30 if role == "frontend" else 60,
        "containers": containers,
        "volumes": volumes,
    }
    if init_containers:
        pod["initContainers"] = init_containers
    if role_spec.node_selector:
        pod["nodeSelector"] = dict(role_spec.node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    affinity = _affinity(name, spec, role, gpu)
    if affinity:
        pod["affinity"] = affinity
    spread = _spread(name, spec, role)
    if spread:
        pod["topologySpreadConstraints"] = spread

    # GPU pools roll without surge (a surge pod needs spare GPUs that may not exist); CPU pools surge.
    rolling = {"maxSurge": 0, "maxUnavailable": 1} if gpu else {"maxSurge": 1, "maxUnavailable": 0}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace, uid, spec, role),
        "spec": {
            "replicas": role_spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector_labels(name, role)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": settings.progress_deadline_seconds,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {"labels": labels(name, role, spec.backend), "annotations": pod_annotations},
                "spec": pod,
            },
        },
    }


__all__ = ["build_config_map", "build_deployment", "build_service", "worker_config"]
