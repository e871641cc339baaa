"""The spec's sections other than the roles: the model, media fetching, serving, the encoder cache,
networking, the egress NetworkPolicy and GPU placement."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from triptych_contract import BYTES_PER_MB, EncodeRouting, ImageDecodePlace

from triptych_operator.api.base import (
    DOMAIN_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    RESOURCE_NAME_PATTERN,
    ApiModel,
    ClaimName,
    Transport,
    WorkerRoleName,
    cel,
    validations,
)
from triptych_operator.api.quantities import Quantity

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
        json_schema_extra=validations(
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
        json_schema_extra=validations(
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
        json_schema_extra=validations(
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
            **validations(
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
        json_schema_extra=validations(
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
        json_schema_extra=validations(
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
