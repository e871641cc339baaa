"""The role pools: fields every role has, the worker roles' parallelism and batch, and autoscaling."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from triptych_operator.api.base import (
    ENV_NAME_PATTERN,
    MAX_GPUS_PER_POD,
    MAX_NUM_SEQS,
    MAX_REPLICAS,
    RESERVED_ENV_PREFIX,
    TENSOR_PARALLEL_SIZES,
    ApiModel,
    WorkerRoleName,
    cel,
    validations,
)
from triptych_operator.api.quantities import Quantity

# ------------------------------------------------------------------------------------------------ roles


class Toleration(ApiModel):
    """A toleration added to the role's pods (the GPU taint is tolerated automatically on GPU roles)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
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
        json_schema_extra=validations(
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
        json_schema_extra=validations(
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
            **validations(_ENV_NOT_RESERVED),
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

    model_config = ConfigDict(json_schema_extra=validations(_REPLICAS_IN_RANGE))


class WorkerRole(RoleBase):
    """A GPU worker pool (CPU for the reference backend)."""

    model_config = ConfigDict(json_schema_extra=validations(_REPLICAS_IN_RANGE, _GPUS_MATCH, _GPUS_BOUNDED))

    tensor_parallel: int = Field(
        default=1,
        description="Tensor-parallel size (a power of two); GPUs per pod = tensorParallel x dataParallelLocal.",  # noqa: E501
        ge=1,
        le=MAX_GPUS_PER_POD,
        json_schema_extra=validations(
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
        json_schema_extra=validations(
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
